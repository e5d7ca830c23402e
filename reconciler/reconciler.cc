#include "reconciler/reconciler.h"

#include <iostream>
#include <set>

#include "absl/strings/str_cat.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {
namespace {
namespace v1 = mkfleet::v1;
}  // namespace

Reconciler::Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options, EventLog* events)
    : store_(store), objects_(objects), events_(events), clock_(clock), options_(options), queue_(clock) {}

void Reconciler::Emit(const std::string& kind, const std::string& name, const std::string& host, bool warning,
                      const std::string& reason, const std::string& message) {
  if (events_ == nullptr) return;
  v1::Event e;
  e.set_kind(kind);
  e.set_name(name);
  e.set_host(host);
  e.set_type(warning ? "Warning" : "Normal");
  e.set_reason(reason);
  e.set_message(message);
  absl::Status s = events_->Record(std::move(e));
  if (!s.ok()) std::cerr << "events: " << s.message() << "\n";
}

Reconciler::~Reconciler() { Stop(); }

void Reconciler::Start() {
  SyncConnections();
  watcher_ = std::thread([this] { WatchStore(); });
  worker_ = std::thread([this] { Work(); });
}

void Reconciler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  queue_.ShutDown();
  if (watcher_.joinable()) watcher_.join();
  if (worker_.joinable()) worker_.join();
  std::map<std::string, std::pair<std::string, std::unique_ptr<HostConnection>>> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  for (auto& [host, c] : connections) c.second->Stop();
}

void Reconciler::SyncConnections() {
  auto hosts = objects_.List("Host");
  if (!hosts.ok()) return;
  std::map<std::string, std::string> wanted;
  for (const v1::Object& o : *hosts) wanted[o.host().metadata().name()] = o.host().spec().agent();
  std::vector<std::unique_ptr<HostConnection>> closed;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto w = wanted.find(it->first);
      if (w == wanted.end() || w->second != it->second.first) {
        closed.push_back(std::move(it->second.second));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [host, address] : wanted) {
      if (connections_.count(host) || address.empty()) continue;
      HostConnectionOptions o;
      o.unreachable_after = options_.unreachable_after;
      o.on_change = [this](const std::string& h) { queue_.Add(h); };
      auto c = std::make_unique<HostConnection>(host, address, clock_, o);
      c->Start();
      connections_[host] = {address, std::move(c)};
    }
  }
  for (auto& c : closed) c->Stop();
  for (const auto& [host, address] : wanted) queue_.Add(host);
}

void Reconciler::WatchStore() {
  auto rev = store_.Revision();
  int64_t seen = rev.ok() ? *rev : 0;
  absl::Duration last_resync = clock_.Monotonic();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    auto next = store_.WaitForRevision(seen, absl::Milliseconds(200));
    bool changed = false;
    if (next.ok() && *next > seen) {
      // Only object changes matter; the loop's own status writes must not wake it.
      auto events = store_.EventsSince(seen, "/objects/");
      changed = !events.ok() || !events->empty();
      seen = *next;
    }
    bool resync = clock_.Monotonic() - last_resync >= options_.resync;
    if (changed || resync) {
      if (resync) last_resync = clock_.Monotonic();
      SyncConnections();
    }
  }
}

void Reconciler::Work() {
  while (true) {
    std::string host;
    if (!queue_.Get(&host, absl::Milliseconds(200))) {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      continue;
    }
    absl::Status s = ReconcileHost(host);
    if (s.ok()) {
      queue_.Forget(host);
    } else {
      // Logged once per failure; the backoff bounds how often.
      std::cerr << "reconcile " << host << ": " << s.message() << " (retry " << queue_.Failures(host) + 1 << ")\n";
      queue_.AddRateLimited(host);
    }
    queue_.Done(host);
  }
}

absl::Status Reconciler::ReconcileHost(const std::string& host) {
  ++passes_;
  auto host_objects = objects_.List("Host");
  if (!host_objects.ok()) return host_objects.status();
  auto instance_objects = objects_.List("KernelInstance");
  if (!instance_objects.ok()) return instance_objects.status();
  auto set_objects = objects_.List("InstanceSet");
  if (!set_objects.ok()) return set_objects.status();
  std::vector<v1::Host> hosts;
  for (const v1::Object& o : *host_objects) hosts.push_back(o.host());
  std::vector<v1::KernelInstance> instances;
  for (const v1::Object& o : *instance_objects) instances.push_back(o.kernel_instance());
  std::vector<v1::InstanceSet> sets;
  for (const v1::Object& o : *set_objects) sets.push_back(o.instance_set());

  std::map<std::string, HostView> views;
  HostConnection* target = nullptr;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, c] : connections_) {
      views[name] = c.second->View();
      if (name == host) target = c.second.get();
    }
  }
  if (target == nullptr) return absl::OkStatus();  // deleted meanwhile
  FleetPlan fleet = PlanFleet(hosts, views, instances, sets);
  auto plan = fleet.hosts.find(host);
  if (plan == fleet.hosts.end()) {
    absl::Status down = views[host].connected
                            ? absl::OkStatus()
                            : absl::UnavailableError(absl::StrCat("host ", host, ": ", views[host].error));
    RecordStatus(host, instances, fleet, views[host], {}, {}, down);
    return down;
  }
  absl::Status sent = absl::OkStatus();
  std::map<std::string, std::string> failed;  // instance -> why
  std::set<std::string> in_plan;
  for (const v1::Action& a : plan->second.actions) in_plan.insert(a.instance());
  if (!plan->second.actions.empty()) {
    v1::ActionBatch batch;
    for (const v1::Action& a : plan->second.actions) *batch.add_actions() = a;
    actions_sent_ += batch.actions_size();
    auto response = target->Execute(batch);
    if (!response.ok()) {
      sent = response.status();
      Emit("Host", host, host, true, "HostError", std::string(sent.message()));
    } else {
      std::map<std::string, std::string> instance_of;
      for (const v1::Action& a : batch.actions()) instance_of[a.id()] = a.instance();
      for (const v1::ActionResult& r : response->results()) {
        if (!r.replayed()) {
          const std::string step = r.id().substr(r.id().rfind('/') + 1);
          Emit("KernelInstance", instance_of[r.id()], host, r.code() != 0, r.code() == 0 ? "ActionDone" : "ActionFailed",
               r.code() == 0 ? step : absl::StrCat(step, ": ", r.message()));
        }
        if (r.code() == 0) continue;
        failed.emplace(instance_of[r.id()], absl::StrCat(r.id(), ": ", r.message()));
        if (sent.ok()) sent = absl::AbortedError(absl::StrCat("host ", host, ": action ", r.id(), ": ", r.message()));
      }
    }
  }
  if (sent.ok()) {
    // The watchdog's local policies for this host's instances: failover (Standby names
    // the "<name>-standby" kernel the planner placed beside it) and restart.
    v1::SetPolicyRequest policies;
    for (const v1::KernelInstance& ki : instances) {
      auto p = fleet.placements.find(ki.metadata().name());
      if (p == fleet.placements.end() || p->second.host() != host) continue;
      v1::LocalPolicy* lp = policies.add_policies();
      lp->set_instance(ki.metadata().name());
      *lp->mutable_failover() = ki.spec().failover();
      if (ki.spec().failover().policy() == v1::FAILOVER_STANDBY) {
        lp->set_standby_instance(ki.metadata().name() + "-standby");
      }
    }
    std::string wire = policies.SerializeAsString();
    bool changed;
    {
      absl::MutexLock lock(&mu_);
      changed = policies.policies_size() > 0 && policies_sent_[host] != wire;
    }
    if (changed) {
      absl::Status s = target->SetPolicy(policies);
      if (s.ok()) {
        absl::MutexLock lock(&mu_);
        policies_sent_[host] = wire;
      } else {
        sent = s;
        Emit("Host", host, host, true, "PolicyFailed", std::string(s.message()));
      }
    }
  }
  RecordStatus(host, instances, fleet, views[host], in_plan, failed, sent);
  return sent;
}

namespace {

v1::Condition Cond(const std::string& type, bool ok, const std::string& reason, const std::string& message) {
  v1::Condition c;
  c.set_type(type);
  c.set_status(ok ? v1::CONDITION_TRUE : v1::CONDITION_FALSE);
  c.set_reason(reason);
  c.set_message(message);
  return c;
}

v1::KernelState Wanted(v1::Phase phase) {
  switch (phase) {
    case v1::PHASE_READY:
      return v1::KERNEL_STATE_READY;
    case v1::PHASE_LOADED:
      return v1::KERNEL_STATE_LOADED;
    default:
      return v1::KERNEL_STATE_ACTIVE;
  }
}

}  // namespace

void Reconciler::RecordStatus(const std::string& host, const std::vector<v1::KernelInstance>& instances,
                              const FleetPlan& fleet, const HostView& view, const std::set<std::string>& in_plan,
                              const std::map<std::string, std::string>& failed, const absl::Status& sent) {
  std::map<std::string, std::string> unschedulable;
  for (const auto& u : fleet.unschedulable) unschedulable[u.name] = u.reason;
  std::map<std::string, std::string> waiting;
  for (const std::string& w : fleet.waiting) waiting[w.substr(0, w.find(':'))] = w.substr(w.find(':') + 2);
  for (const v1::KernelInstance& ki : instances) {
    const std::string& name = ki.metadata().name();
    auto placed = fleet.placements.find(name);
    const std::string& target = placed != fleet.placements.end() ? placed->second.host() : ki.spec().host();
    if (target != host) continue;  // another host's pass records it
    v1::InstanceStatus st;
    if (unschedulable.count(name) || waiting.count(name)) {
      st.set_phase("Pending");
      bool u = unschedulable.count(name) > 0;
      *st.add_conditions() =
          Cond("Scheduled", false, u ? "Unschedulable" : "HostNotConnected", u ? unschedulable[name] : waiting[name]);
    } else if (placed != fleet.placements.end()) {
      *st.add_conditions() = Cond("Scheduled", true, "Placed", absl::StrCat("on ", host));
      auto observed = view.instances.find(name);
      v1::KernelState want = Wanted(ki.spec().phase());
      if (observed != view.instances.end()) {
        const v1::InstanceStatus& o = observed->second.status();
        st.set_kernel_state(o.kernel_state());
        *st.mutable_placement() = o.placement();
        *st.mutable_provenance() = o.provenance();
        st.set_restart_count(o.restart_count());
        st.set_role(o.role());
      } else {
        st.set_kernel_state(v1::KERNEL_STATE_ABSENT);
        *st.mutable_placement() = placed->second;
      }
      bool converged = !in_plan.count(name) && st.kernel_state() == want;
      bool is_failed = failed.count(name) > 0 || st.kernel_state() == v1::KERNEL_STATE_FAILED;
      st.set_phase(is_failed ? "Failed" : converged ? (want == v1::KERNEL_STATE_ACTIVE ? "Running" : want == v1::KERNEL_STATE_LOADED ? "Loaded" : "Ready") : "Creating");
      *st.add_conditions() = Cond("Ready", converged, converged ? "Converged" : "Converging",
                                  converged ? "" : absl::StrCat("kernel state ", v1::KernelState_Name(st.kernel_state()),
                                                                ", want ", v1::KernelState_Name(want)));
      *st.add_conditions() = Cond("Progressing", in_plan.count(name) > 0, in_plan.count(name) ? "ActionsSent" : "Idle", "");
      if (is_failed) {
        *st.add_conditions() = Cond("Degraded", true, failed.count(name) ? "ActionFailed" : "KernelFailed",
                                    failed.count(name) ? failed.at(name) : "");
      } else if (!sent.ok() && in_plan.count(name)) {
        *st.add_conditions() = Cond("Degraded", true, "HostError", std::string(sent.message()));
      }
      if (converged) st.set_observed_generation(ki.metadata().generation());
    }
    auto wrote = objects_.PutInstanceStatus(name, st);
    if (wrote.ok() && *wrote && st.conditions_size() > 0) {
      const v1::Condition& scheduled = st.conditions(0);
      if (scheduled.status() == v1::CONDITION_FALSE) {
        Emit("KernelInstance", name, host, true, scheduled.reason(), scheduled.message());
      } else if (st.observed_generation() == ki.metadata().generation() && st.phase() != "Failed") {
        Emit("KernelInstance", name, host, false, "Ready", absl::StrCat(st.phase(), " on ", host));
      }
    }
    if (!wrote.ok()) std::cerr << "reconcile " << host << ": status of " << name << ": " << wrote.status().message() << "\n";
  }
}

}  // namespace mkfleet::reconciler
