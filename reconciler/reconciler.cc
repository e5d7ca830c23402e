#include "reconciler/reconciler.h"

#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_join.h"

#include "absl/strings/str_cat.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {
namespace {
namespace v1 = mkfleet::v1;
const std::string kEmpty;

// A pass serves every ready host at once, so the global limit (per host taken) is sized
// for a fleet of thousands; per-host backoff keeps its defaults (5 ms doubling to 1000 s).
WorkQueueOptions QueueOptions() {
  WorkQueueOptions o;
  o.qps = 2000;
  o.burst = 2000;
  return o;
}
}  // namespace

Reconciler::Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options, EventLog* events)
    : store_(store), objects_(objects), events_(events), clock_(clock), options_(options),
      queue_(clock, QueueOptions()) {}

v1::Event Reconciler::MakeEvent(const std::string& kind, const std::string& name, const std::string& host,
                               bool warning, const std::string& reason, const std::string& message) {
  v1::Event e;
  e.set_kind(kind);
  e.set_name(name);
  e.set_host(host);
  e.set_type(warning ? "Warning" : "Normal");
  e.set_reason(reason);
  e.set_message(message);
  return e;
}

void Reconciler::ForwardAgentEvents(const std::string& host, std::vector<v1::Event> events) {
  if (events_ == nullptr) return;
  // Action results are recorded by the pass that sent them; the rest (crash, hang,
  // restart, takeover, adoption) only the agent knows. The last one still goes through,
  // so that its seq is remembered.
  std::vector<v1::Event> keep;
  for (size_t i = 0; i < events.size(); ++i) {
    v1::Event& e = events[i];
    bool action = e.reason() == "ActionDone" || e.reason() == "ActionFailed";
    if (action && i + 1 < events.size()) continue;
    if (e.host().empty()) e.set_host(host);
    if (e.kind() == "KernelInstance" && e.name().empty()) {
      e.set_kind("Host");
      e.set_name(host);
    }
    if (action) e.set_reason(e.reason() == "ActionDone" ? "AgentActionDone" : "AgentActionFailed");
    keep.push_back(std::move(e));
  }
  absl::Status s = events_->RecordAll(std::move(keep));
  if (!s.ok()) std::cerr << "events from " << host << ": " << s.message() << "\n";
}

Reconciler::~Reconciler() { Stop(); }

std::pair<int, int> Reconciler::HostCounts() {
  absl::MutexLock lock(&mu_);
  int connected = 0;
  for (auto& [name, c] : connections_) connected += c.second->View().connected ? 1 : 0;
  return {static_cast<int>(connections_.size()), connected};
}

void Reconciler::Start() {
  SyncConnections(true);
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

void Reconciler::SyncConnections(bool objects_changed) {
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
      if (events_ != nullptr) {
        o.on_events = [this](const std::string& h, std::vector<v1::Event> e) { ForwardAgentEvents(h, std::move(e)); };
        o.events_after = events_->LastAgentSeq(host);
      }
      auto c = std::make_unique<HostConnection>(host, address, clock_, o);
      c->Start();
      connections_[host] = {address, std::move(c)};
    }
  }
  for (auto& c : closed) c->Stop();
  // On a resync a failing host keeps its backoff (its retry is already scheduled); a change
  // of the objects may be the fix, so it goes at once.
  for (const auto& [host, address] : wanted) {
    if (objects_changed || queue_.Failures(host) == 0) queue_.Add(host);
  }
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
      SyncConnections(changed);
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
    // Every host ready now joins this pass: one plan for all of them.
    std::vector<std::string> batch = {host};
    while (queue_.Get(&host, absl::ZeroDuration())) batch.push_back(host);
    std::map<std::string, absl::Status> results = ReconcileHosts(batch);
    for (const std::string& h : batch) {
      const absl::Status& s = results[h];
      if (s.ok()) {
        queue_.Forget(h);
      } else {
        // Logged once per failure; the backoff bounds how often.
        std::cerr << "reconcile " << h << ": " << s.message() << " (retry " << queue_.Failures(h) + 1 << ")\n";
        queue_.AddRateLimited(h);
      }
      queue_.Done(h);
    }
  }
}

absl::Status Reconciler::ReconcileHost(const std::string& host) { return ReconcileHosts({host})[host]; }

std::map<std::string, absl::Status> Reconciler::ReconcileHosts(const std::vector<std::string>& batch_hosts) {
  absl::MutexLock pass(&pass_mu_);
  ++passes_;
  std::map<std::string, absl::Status> result;
  auto fail_all = [&](const absl::Status& s) {
    for (const std::string& h : batch_hosts) result[h] = s;
    return result;
  };
  auto host_objects = objects_.List("Host");
  if (!host_objects.ok()) return fail_all(host_objects.status());
  auto instance_objects = objects_.List("KernelInstance");
  if (!instance_objects.ok()) return fail_all(instance_objects.status());
  auto set_objects = objects_.List("InstanceSet");
  if (!set_objects.ok()) return fail_all(set_objects.status());
  std::vector<v1::Host> hosts;
  for (const v1::Object& o : *host_objects) hosts.push_back(o.host());
  std::vector<v1::KernelInstance> instances;
  for (const v1::Object& o : *instance_objects) instances.push_back(o.kernel_instance());
  std::vector<v1::InstanceSet> sets;
  for (const v1::Object& o : *set_objects) sets.push_back(o.instance_set());

  std::map<std::string, HostView> views;
  std::map<std::string, HostConnection*> targets;
  std::set<std::string> batch;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, c] : connections_) views[name] = c.second->View();
    for (const std::string& h : batch_hosts) {
      auto c = connections_.find(h);
      if (c == connections_.end()) {
        result[h] = absl::OkStatus();  // deleted meanwhile
        continue;
      }
      targets[h] = c->second.second.get();
      batch.insert(h);
    }
  }
  FleetPlan fleet = PlanFleet(hosts, views, instances, sets);

  // The hosts' batches go out in parallel; each worker takes the next host.
  std::vector<std::string> order(batch.begin(), batch.end());
  std::vector<HostOutcome> outcomes(order.size());
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < order.size(); i = next++) {
      const std::string& h = order[i];
      auto plan = fleet.hosts.find(h);
      if (plan == fleet.hosts.end()) {
        const HostView& v = views[h];
        if (!v.connected) outcomes[i].sent = absl::UnavailableError(absl::StrCat("host ", h, ": ", v.error));
        continue;
      }
      outcomes[i] = RunHost(h, targets[h], &plan->second, fleet);
    }
  };
  size_t workers = std::min<size_t>(order.size(), 32);
  if (workers <= 1) {
    worker();
  } else {
    std::vector<std::thread> threads;
    for (size_t i = 0; i < workers; ++i) threads.emplace_back(worker);
    for (auto& t : threads) t.join();
  }
  std::map<std::string, HostOutcome> by_host;
  std::vector<v1::Event> events;
  for (size_t i = 0; i < order.size(); ++i) {
    result[order[i]] = outcomes[i].sent;
    for (v1::Event& e : outcomes[i].events) events.push_back(std::move(e));
    outcomes[i].events.clear();
    by_host[order[i]] = std::move(outcomes[i]);
  }
  RecordStatuses(batch, hosts, instances, sets, fleet, views, by_host, &events);
  if (events_ != nullptr) {
    absl::Status s = events_->RecordAll(std::move(events));
    if (!s.ok()) std::cerr << "events: " << s.message() << "\n";
  }
  return result;
}

Reconciler::HostOutcome Reconciler::RunHost(const std::string& host, HostConnection* target, const Plan* plan,
                                            const FleetPlan& fleet) {
  HostOutcome out;
  for (const v1::Action& a : plan->actions) out.in_plan.insert(a.instance());
  if (!plan->actions.empty()) {
    v1::ActionBatch batch;
    for (const v1::Action& a : plan->actions) *batch.add_actions() = a;
    actions_sent_ += batch.actions_size();
    auto response = target->Execute(batch);
    if (!response.ok()) {
      out.sent = response.status();
      out.events.push_back(MakeEvent("Host", host, host, true, "HostError", std::string(out.sent.message())));
    } else {
      std::map<std::string, std::string> instance_of;
      for (const v1::Action& a : batch.actions()) instance_of[a.id()] = a.instance();
      for (const v1::ActionResult& r : response->results()) {
        const std::string& instance = instance_of[r.id()];
        if (instance.empty() && r.code() == 0) out.pool_note = r.message();  // the pool change
        if (!r.replayed()) {
          std::string step = r.id().substr(r.id().rfind('/') + 1);
          if (instance.empty()) step = step.substr(0, step.rfind('-'));  // "pool-change"
          out.events.push_back(MakeEvent(instance.empty() ? "Host" : "KernelInstance", instance.empty() ? host : instance,
                                         host, r.code() != 0, r.code() == 0 ? "ActionDone" : "ActionFailed",
                                         r.code() == 0 ? (r.message().empty() ? step : absl::StrCat(step, ": ", r.message()))
                                                       : absl::StrCat(step, ": ", r.message())));
        }
        if (r.code() == 0) continue;
        out.failed.emplace(instance_of[r.id()], absl::StrCat(r.id(), ": ", r.message()));
        if (out.sent.ok()) {
          out.sent = absl::AbortedError(absl::StrCat("host ", host, ": action ", r.id(), ": ", r.message()));
        }
      }
    }
  }
  if (!out.sent.ok()) return out;
  // The watchdog's local policies for the instances placed here (KernelInstances and set
  // members), the complete set so that deleted instances' policies go: failover (Standby
  // names the kernel that backs it) and restart.
  v1::SetPolicyRequest policies;
  policies.set_replace(true);
  for (const auto& [name, p] : fleet.planned) {
    if (p.host != host || !p.standby_for.empty() || p.spec == nullptr) continue;
    v1::LocalPolicy* lp = policies.add_policies();
    lp->set_instance(p.kernel);
    *lp->mutable_failover() = p.spec->failover();
    if (p.spec->failover().policy() == v1::FAILOVER_STANDBY) {
      auto standby = fleet.planned.find(name + "-standby");
      if (standby != fleet.planned.end()) {
        lp->set_standby_instance(standby->second.kernel);
      } else {
        // No standby placed (yet): the watchdog restarts it instead.
        lp->mutable_failover()->set_policy(v1::FAILOVER_RESTART);
      }
    }
  }
  std::string wire = policies.SerializeAsString();
  {
    absl::MutexLock lock(&mu_);
    auto sent = policies_sent_.find(host);
    if (sent != policies_sent_.end() ? sent->second == wire : policies.policies_size() == 0) return out;
  }
  absl::Status s = target->SetPolicy(policies);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    policies_sent_[host] = wire;
  } else {
    out.sent = s;
    out.events.push_back(MakeEvent("Host", host, host, true, "PolicyFailed", std::string(s.message())));
  }
  return out;
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

namespace {

bool IsConverged(const v1::InstanceStatus& st) {
  for (const v1::Condition& c : st.conditions()) {
    if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
  }
  return false;
}

std::string PhaseFor(v1::KernelState want) {
  return want == v1::KERNEL_STATE_ACTIVE ? "Running" : want == v1::KERNEL_STATE_LOADED ? "Loaded" : "Ready";
}

}  // namespace

void Reconciler::RecordStatuses(const std::set<std::string>& batch, const std::vector<v1::Host>& hosts,
                                const std::vector<v1::KernelInstance>& instances,
                                const std::vector<v1::InstanceSet>& sets, const FleetPlan& fleet,
                                const std::map<std::string, HostView>& views,
                                const std::map<std::string, HostOutcome>& outcomes, std::vector<v1::Event>* events) {
  if (!status_loaded_) {
    auto kvs = store_.List("/status/");
    if (kvs.ok()) {
      for (KeyValue& kv : *kvs) status_cache_[kv.key] = std::move(kv.value);
      status_loaded_ = true;
    }
  }
  std::map<std::string, std::string> puts;  // key -> serialized, only changed ones
  auto put = [&](const std::string& key, const google::protobuf::Message& m) -> const std::string* {
    std::string value = m.SerializeAsString();
    auto cached = status_cache_.find(key);
    if (cached != status_cache_.end() && cached->second == value) return nullptr;
    auto& slot = puts[key];
    slot = std::move(value);
    return cached != status_cache_.end() ? &cached->second : &kEmpty;
  };

  std::map<std::string, std::string> unschedulable;
  for (const auto& u : fleet.unschedulable) unschedulable[u.name] = u.reason;
  std::map<std::string, std::string> waiting;
  for (const std::string& w : fleet.waiting) waiting[w.substr(0, w.find(':'))] = w.substr(w.find(':') + 2);
  std::map<std::string, int64_t> generation_of;  // KernelInstance -> generation

  // One instance's status: `spec`'s wanted phase against what its host reports.
  auto instance_status = [&](const std::string& name, const PlannedInstance& p, v1::KernelState want) {
    v1::InstanceStatus st;
    st.set_owner(p.owner);
    st.set_kernel(p.kernel);
    const std::string& host = p.host;
    *st.add_conditions() = Cond("Scheduled", true, "Placed", absl::StrCat("on ", host));
    const HostView& view = views.at(host);
    auto outcome = outcomes.find(host);
    static const HostOutcome kNone;
    const HostOutcome& o = outcome != outcomes.end() ? outcome->second : kNone;
    auto observed = view.instances.find(p.kernel);
    if (observed != view.instances.end()) {
      const v1::InstanceStatus& seen = observed->second.status();
      st.set_kernel_state(seen.kernel_state());
      *st.mutable_placement() = seen.placement();
      *st.mutable_provenance() = seen.provenance();
      st.set_restart_count(seen.restart_count());
      st.set_role(seen.role());
    } else {
      st.set_kernel_state(v1::KERNEL_STATE_ABSENT);
      *st.mutable_placement() = fleet.placements.at(name);
    }
    bool acting = o.in_plan.count(p.kernel) > 0;
    // What the plan cannot do for it (an update strategy not supported yet).
    std::string blocked;
    auto plan = fleet.hosts.find(host);
    if (plan != fleet.hosts.end()) {
      for (const std::string& note : plan->second.notes) {
        if (absl::StartsWith(note, p.kernel + ": ")) blocked = note.substr(p.kernel.size() + 2);
      }
    }
    auto deferred = fleet.deferred.find(name);
    if (deferred != fleet.deferred.end()) blocked = deferred->second;
    bool waiting = deferred != fleet.deferred.end();
    bool converged = !acting && st.kernel_state() == want && blocked.empty();
    bool is_failed = o.failed.count(p.kernel) > 0 || st.kernel_state() == v1::KERNEL_STATE_FAILED;
    st.set_phase(is_failed ? "Failed" : converged ? PhaseFor(want) : "Creating");
    *st.add_conditions() = Cond("Ready", converged,
                                converged         ? "Converged"
                                : waiting         ? "RolloutWaiting"
                                : blocked.empty() ? "Converging"
                                                  : "UpdateBlocked",
                                converged         ? ""
                                : !blocked.empty() ? blocked
                                                   : absl::StrCat("kernel state ", v1::KernelState_Name(st.kernel_state()),
                                                                  ", want ", v1::KernelState_Name(want)));
    *st.add_conditions() = Cond("Progressing", acting || waiting, acting ? "ActionsSent" : waiting ? "RollingOut" : "Idle", "");
    if (is_failed) {
      *st.add_conditions() = Cond("Degraded", true, o.failed.count(p.kernel) ? "ActionFailed" : "KernelFailed",
                                  o.failed.count(p.kernel) ? o.failed.at(p.kernel) : "");
    } else if (!o.sent.ok() && acting) {
      *st.add_conditions() = Cond("Degraded", true, "HostError", std::string(o.sent.message()));
    } else if (!blocked.empty() && !waiting) {
      *st.add_conditions() = Cond("Degraded", true, "UpdateNotSupported", blocked);
    }
    if (converged) st.set_observed_generation(p.generation);
    return st;
  };
  auto record = [&](const std::string& name, const std::string& host, const v1::InstanceStatus& st,
                    int64_t generation) {
    const std::string* before = put(StatusKey("KernelInstance", name), st);
    if (before == nullptr) return;
    v1::InstanceStatus old;
    old.ParseFromString(*before);
    const v1::Condition& scheduled = st.conditions(0);
    if (scheduled.status() == v1::CONDITION_FALSE) {
      if (old.conditions_size() == 0 || old.conditions(0).message() != scheduled.message()) {
        events->push_back(MakeEvent("KernelInstance", name, host, true, scheduled.reason(), scheduled.message()));
      }
    } else if (IsConverged(st) && st.observed_generation() == generation && st.phase() != "Failed" &&
               !(IsConverged(old) && old.observed_generation() == generation && old.phase() == st.phase())) {
      events->push_back(MakeEvent("KernelInstance", name, host, false, "Ready", absl::StrCat(st.phase(), " on ", host)));
    }
  };

  std::set<std::string> keep;  // status keys of instances that exist
  for (const v1::KernelInstance& ki : instances) {
    const std::string& name = ki.metadata().name();
    generation_of[name] = ki.metadata().generation();
    keep.insert(StatusKey("KernelInstance", name));
    if (unschedulable.count(name) || waiting.count(name)) {
      v1::InstanceStatus st;
      st.set_phase("Pending");
      bool u = unschedulable.count(name) > 0;
      *st.add_conditions() =
          Cond("Scheduled", false, u ? "Unschedulable" : "HostNotConnected", u ? unschedulable[name] : waiting[name]);
      record(name, ki.spec().host(), st, ki.metadata().generation());
    }
  }
  for (const auto& [name, p] : fleet.planned) {
    if (!p.standby_for.empty()) continue;
    keep.insert(StatusKey("KernelInstance", name));
    if (!batch.count(p.host) || p.spec == nullptr) continue;
    v1::InstanceStatus st = instance_status(name, p, Wanted(p.spec->phase()));
    record(name, p.host, st, p.generation);
  }
  // Set members neither planned nor running anywhere are gone; so are the statuses of
  // deleted KernelInstances.
  std::set<std::string> running;
  for (const auto& [h, v] : views) {
    for (const auto& [k, in] : v.instances) running.insert(k);
  }
  std::vector<std::string> deletes;
  const std::string instance_prefix = StatusKey("KernelInstance", "");
  for (const auto& [key, value] : status_cache_) {
    if (key.compare(0, instance_prefix.size(), instance_prefix) != 0 || keep.count(key)) continue;
    if (running.count(key.substr(instance_prefix.size()))) continue;
    deletes.push_back(key);
  }

  // Hosts of this pass.
  for (const v1::Host& h : hosts) {
    const std::string& name = h.metadata().name();
    if (!batch.count(name)) continue;
    const HostView& v = views.at(name);
    v1::HostStatus st;
    st.set_reachable(v.connected);
    st.set_dialect(v.inventory.dialect());
    st.set_agent_version(v.inventory.agent_version());
    *st.mutable_pool() = v.pool;
    *st.add_conditions() = Cond("Reachable", v.connected,
                                v.connected ? "Connected" : v.reachable ? "Connecting" : "Unreachable", v.error);
    std::string pool_problem;
    const std::string tag = absl::StrCat("Host/", name, ":");
    for (const std::string& problem : fleet.problems) {
      if (absl::StartsWith(problem, tag)) pool_problem = problem;
    }
    *st.add_conditions() = Cond("PoolValid", pool_problem.empty(), pool_problem.empty() ? "Valid" : "Invalid", pool_problem);
    if (v.connected && pool_problem.empty()) {
      // Whether the agent lends the pool the spec asks for (a change is sent otherwise).
      bool synced = !fleet.pool_changes.count(name);
      auto outcome = outcomes.find(name);
      std::string note = outcome != outcomes.end() ? outcome->second.pool_note : "";
      *st.add_conditions() = Cond("PoolSynced", synced, synced ? "Synced" : note.empty() ? "Changing" : "InUse",
                                  synced ? "" : note.empty() ? "a pool change was sent to the agent" : note);
    }
    if (v.connected && pool_problem.empty()) st.set_observed_generation(h.metadata().generation());
    const std::string* before = put(StatusKey("Host", name), st);
    if (before != nullptr) {
      v1::HostStatus old;
      old.ParseFromString(*before);
      if (old.reachable() != st.reachable() && !(before->empty() && !v.connected)) {
        events->push_back(MakeEvent("Host", name, name, !v.connected, v.connected ? "Connected" : "Disconnected",
                                    v.connected ? absl::StrCat("agent ", st.agent_version(), ", dialect ", st.dialect())
                                                : v.error));
      }
    }
  }

  // Apply this pass's instance statuses to the cache first: set status counts members.
  for (auto& [key, value] : puts) status_cache_[key] = value;
  for (const std::string& key : deletes) status_cache_.erase(key);
  std::map<std::string, std::pair<uint32_t, uint32_t>> members;  // set -> (ready, updated)
  std::map<std::string, uint32_t> replicas;
  for (const auto& [name, p] : fleet.planned) {
    if (p.owner.empty() || !p.standby_for.empty()) continue;
    const std::string set = p.owner.substr(p.owner.find('/') + 1);
    ++replicas[set];
    auto cached = status_cache_.find(StatusKey("KernelInstance", name));
    if (cached == status_cache_.end()) continue;
    v1::InstanceStatus st;
    st.ParseFromString(cached->second);
    if (st.observed_generation() == p.generation) {
      ++members[set].second;
      if (IsConverged(st) && st.phase() != "Failed") ++members[set].first;
    }
  }
  for (const v1::InstanceSet& s : sets) {
    const std::string& name = s.metadata().name();
    v1::InstanceSetStatus st;
    std::vector<std::string> problems;
    const std::string prefix = name + "-";
    for (const auto& u : fleet.unschedulable) {
      if (u.name == name || absl::StartsWith(u.name, prefix)) problems.push_back(absl::StrCat(u.name, ": ", u.reason));
    }
    st.set_replicas(replicas[name] + problems.size());
    st.set_ready_replicas(members[name].first);
    st.set_updated_replicas(members[name].second);
    bool all = problems.empty() && st.ready_replicas() == st.replicas();
    *st.add_conditions() = Cond("Scheduled", problems.empty(), problems.empty() ? "Placed" : "Unschedulable",
                                absl::StrJoin(problems, "; "));
    *st.add_conditions() = Cond("Ready", all, all ? "AllReady" : "Converging",
                                absl::StrCat(st.ready_replicas(), "/", st.replicas(), " ready"));
    if (all) st.set_observed_generation(s.metadata().generation());
    const std::string* before = put(StatusKey("InstanceSet", name), st);
    if (before != nullptr && all) {
      v1::InstanceSetStatus old;
      old.ParseFromString(*before);
      if (old.observed_generation() != s.metadata().generation()) {
        events->push_back(MakeEvent("InstanceSet", name, "", false, "Ready",
                                    absl::StrCat(st.ready_replicas(), "/", st.replicas(), " ready")));
      }
    }
  }
  std::vector<std::pair<std::string, std::string>> writes;
  for (auto& [key, value] : puts) {
    writes.emplace_back(key, value);
    status_cache_[key] = value;
  }
  absl::Status s = objects_.WriteStatuses(writes, deletes);
  if (!s.ok()) {
    std::cerr << "reconcile: writing " << writes.size() << " statuses: " << s.message() << "\n";
    status_loaded_ = false;  // the cache may be ahead of the store: read it again
    status_cache_.clear();
    return;
  }
  status_writes_ += writes.size() + deletes.size();
}

}  // namespace mkfleet::reconciler
