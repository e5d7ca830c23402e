#include "reconciler/reconciler.h"

#include "proto/morph_phase.h"


#include <functional>
#include <iostream>
#include <set>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "proto/deterministic.h"
#include "common/metrics.h"
#include "reconciler/controller_metrics.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {
namespace {

// How soon a pass follows one that left a rollout under way (its minReady and healthTimeout
// move on with time, not only with the hosts' changes).
constexpr absl::Duration kRolloutTick = absl::Milliseconds(250);
// Sharded: a host this member is assigned but does not own yet (handing over) is looked at
// again this soon.
constexpr absl::Duration kHandoverTick = absl::Milliseconds(200);
constexpr char kShardsPrefix[] = "/shards/";
constexpr char kWorkPrefix[] = "/shards/work/";
constexpr char kReportPrefix[] = "/shards/report/";
// The store revision of the objects the leader's last published plans were made from.
constexpr char kPlannedKey[] = "/shards/planned";
namespace v1 = mkfleet::v1;

// A pass's phases on the wall clock (not the injected one: what the machine spent), for
// the line a slow pass logs.
class PassTimer {
 public:
  explicit PassTimer(size_t hosts) : hosts_(hosts), start_(absl::Now()), last_(start_) {}
  void Phase(const char* name) {
    const absl::Time now = absl::Now();
    phases_.emplace_back(name, now - last_);
    last_ = now;
  }
  absl::Duration Total() const { return last_ - start_; }
  absl::Duration LastPhase() const { return phases_.empty() ? absl::ZeroDuration() : phases_.back().second; }
  std::string Line() const {
    std::string out = absl::StrCat("slow pass: ", hosts_, " hosts in ", absl::ToInt64Milliseconds(Total()), " ms (");
    for (size_t i = 0; i < phases_.size(); ++i) {
      absl::StrAppend(&out, i ? ", " : "", phases_[i].first, " ", absl::ToInt64Milliseconds(phases_[i].second));
    }
    return out + " ms)";
  }

 private:
  size_t hosts_;
  absl::Time start_, last_;
  std::vector<std::pair<const char*, absl::Duration>> phases_;
};

// Runs fn(i) for i in [0, n) on up to `parallel` threads (the caller's alone for 1).
void ForEachParallel(size_t n, int parallel, const std::function<void(size_t)>& fn) {
  std::atomic<size_t> next{0};
  auto worker = [&] {
    for (size_t i = next++; i < n; i = next++) fn(i);
  };
  size_t workers = std::min<size_t>(n, std::max(1, parallel));
  if (workers <= 1) {
    worker();
    return;
  }
  std::vector<std::thread> threads;
  for (size_t i = 0; i < workers; ++i) threads.emplace_back(worker);
  for (auto& t : threads) t.join();
}

// A pass serves every ready host at once, so the global limit (per host taken) is sized
// for a fleet of ten thousand: hosts that connect together are planned in one or two
// passes, not one pass per 2,000 (each plans the whole fleet: 10,000 hosts converged in
// 33 passes and 158 s, against 51 passes and 163-170 s); per-host backoff keeps its
// defaults (5 ms doubling to 1000 s).
WorkQueueOptions QueueOptions(absl::Duration max_delay) {
  WorkQueueOptions o;
  o.qps = 10000;
  o.burst = 10000;
  o.max_delay = max_delay;
  return o;
}

}  // namespace

Reconciler::Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options, EventLog* events)
    : store_(store),
      objects_(objects),
      events_(events),
      clock_(clock),
      options_(std::move(options)),
      queue_(clock, QueueOptions(options_.host_backoff_max)),
      dispatcher_(store, clock,
                  {options_.instance_backoff_base, options_.instance_backoff_max,
                   [this](const std::string& host, absl::Duration delay) { queue_.AddAfter(host, delay); },
                   [this](const std::string& host) {
                     return options_.shards != nullptr ? options_.shards->Owns(host) : Leading();
                   }}),
      rollouts_(store, clock),
      drift_(options_.drift_policy),
      last_resync_(clock.Monotonic()) {}

std::ostream& Reconciler::Log() {
  if (options_.log != nullptr) return *options_.log;
  thread_local std::ostream dropped(nullptr);
  return dropped;
}

Reconciler::~Reconciler() { Stop(); }

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
    } else if (e.kind() == "KernelInstance") {
      absl::MutexLock lock(&served_mu_);
      auto n = kernel_names_.find({host, e.name()});
      if (n != kernel_names_.end()) e.set_name(n->second);
    }
    if (action) e.set_reason(e.reason() == "ActionDone" ? "AgentActionDone" : "AgentActionFailed");
    keep.push_back(std::move(e));
  }
  absl::Status s = events_->RecordAll(std::move(keep));
  if (!s.ok()) Log() << "events from " << host << ": " << s.message() << "\n";
}

std::pair<int, int> Reconciler::HostCounts() {
  // (Asked several times a second by clients that wait: no copy of every host's view.)
  std::vector<std::shared_ptr<HostConnection>> links;
  {
    absl::MutexLock lock(&mu_);
    links.reserve(connections_.size());
    for (const auto& [name, c] : connections_) links.push_back(c.link);
  }
  int connected = 0;
  for (const auto& link : links) connected += link->Connected() ? 1 : 0;
  return {static_cast<int>(links.size()), connected};
}

absl::StatusOr<std::shared_ptr<const planner::Topology>> Reconciler::HostTopology(const std::string& host) {
  std::shared_ptr<HostConnection> link;
  {
    absl::MutexLock lock(&mu_);
    auto it = connections_.find(host);
    if (it == connections_.end()) {
      return absl::NotFoundError(absl::StrCat("host ", host, ": this controller has no connection to it (no such Host",
                                              options_.shards != nullptr ? ", or another member's shard)" : ")"));
    }
    link = it->second.link;
  }
  auto topology = link->Topology();
  if (topology == nullptr) {
    return absl::UnavailableError(absl::StrCat("host ", host, ": its agent has not reported its topology yet"));
  }
  return topology;
}

FleetPlan Reconciler::LastPlanForTest() {
  absl::MutexLock pass(&pass_mu_);
  return last_plan_;
}

void Reconciler::Start() {
  if (options_.connection_threads > 0) pool_ = std::make_unique<ConnectionPool>(clock_, options_.connection_threads);
  {
    absl::MutexLock lock(&mu_);
    threaded_ = true;
  }
  SyncConnections(true);
  auto rev = store_.Revision();
  seen_revision_ = rev.ok() ? *rev : 0;
  objects_revision_ = seen_revision_;
  watcher_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
      }
      PollStore(absl::Milliseconds(200));
    }
  });
  worker_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
      }
      RunDue(absl::Milliseconds(200));
    }
  });
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
  std::map<std::string, Connection> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  // All asked at once, then joined: one slow agent does not hold up the others.
  for (auto& [host, c] : connections) c.link->Cancel();
  for (auto& [host, c] : connections) c.link->Stop();
  connections.clear();  // their streams end (and wake the pool) before the pool goes
  pool_.reset();
}

void Reconciler::Step() {
  if (seen_revision_ < 0) {
    auto rev = store_.Revision();
    seen_revision_ = rev.ok() ? *rev : 0;
    objects_revision_ = seen_revision_;
    SyncConnections(true);
  }
  PollStore(absl::ZeroDuration());
  std::map<std::string, std::shared_ptr<HostConnection>> links;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, c] : connections_) links[name] = c.link;
  }
  for (auto& [name, link] : links) link->Poll();
  RunDue(absl::ZeroDuration());
}

absl::Duration Reconciler::NextDue() { return queue_.NextDue(); }

bool Reconciler::HostsConcerned(const std::vector<Event>& events, std::set<std::string>* hosts) {
  constexpr absl::string_view kHosts = "/objects/Host/";
  constexpr absl::string_view kInstances = "/objects/KernelInstance/";
  absl::MutexLock lock(&served_mu_);
  for (const Event& e : events) {
    absl::string_view key = e.key;
    if (absl::ConsumePrefix(&key, kHosts)) {
      hosts->insert(std::string(key));
      continue;
    }
    if (!absl::ConsumePrefix(&key, kInstances) || e.type != Event::Type::kPut) return false;
    v1::Object o;
    if (!o.ParseFromString(e.value) || o.kernel_instance().spec().host().empty()) return false;
    hosts->insert(o.kernel_instance().spec().host());
    auto s = serving_->find(std::string(key));
    if (s != serving_->end()) hosts->insert(s->second.first);
  }
  return true;
}

void Reconciler::SyncConnections(bool objects_changed, const std::set<std::string>* concerned) {
  auto hosts = objects_.ListSpecs("Host");
  if (!hosts.ok()) return;
  std::map<std::string, std::string> wanted;
  // Sharded: a member that does not lead connects to the hosts it is assigned only.
  const bool some = options_.shards != nullptr && !Leading();
  for (const v1::Object& o : *hosts) {
    const std::string& name = o.host().metadata().name();
    if (!some || options_.shards->Assigned(name)) wanted[name] = o.host().spec().agent();
  }
  std::vector<std::shared_ptr<HostConnection>> closed;
  std::vector<std::string> forgotten;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto w = wanted.find(it->first);
      if (w == wanted.end() || w->second != it->second.address) {
        closed.push_back(std::move(it->second.link));
        // What was kept for the host goes with it (nothing grows without bound).
        forgotten.push_back(it->first);
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [host, address] : wanted) {
      if (connections_.count(host) || address.empty()) continue;
      HostConnectionOptions o;
      o.unreachable_after = options_.unreachable_after;
      o.call_timeout = options_.call_timeout;
      o.on_change = [this](const std::string& h) { queue_.Add(h); };
      if (events_ != nullptr) {
        o.on_events = [this](const std::string& h, std::vector<v1::Event> e) {
          // Sharded: the leader sees every host; the host's owner records its events.
          if (options_.shards == nullptr || options_.shards->Assigned(h)) ForwardAgentEvents(h, std::move(e));
        };
        o.events_after = events_->LastAgentSeq(host);
      }
      std::unique_ptr<AgentClient> client =
          options_.client_factory ? options_.client_factory(host, address)
                                  : NewGrpcAgentClient(address, host, options_.agent_tls.get());
      auto link = std::make_shared<HostConnection>(host, address, std::move(client), clock_, o);
      if (threaded_ && pool_ != nullptr) {
        pool_->Add(link);
      } else if (threaded_) {
        link->Start();
      }
      connections_[host] = {address, std::move(link)};
    }
  }
  for (const std::string& host : forgotten) dispatcher_.Forget(host);
  for (auto& c : closed) c->Cancel();
  for (auto& c : closed) c->Stop();
  // On a resync a failing host keeps its backoff (its retry is already scheduled); a change
  // of the objects may be the fix, so it goes at once.
  std::vector<std::string> names;
  for (const auto& [host, address] : wanted) names.push_back(host);
  QueueHosts(names, objects_changed, concerned);
}

void Reconciler::QueueHosts(const std::vector<std::string>& hosts, bool objects_changed,
                            const std::set<std::string>* concerned) {
  for (const std::string& host : hosts) {
    const bool go = objects_changed ? concerned == nullptr || concerned->count(host) > 0 : queue_.Failures(host) == 0;
    if (go) queue_.Add(host);
  }
}

size_t Reconciler::PlanIds(const Plan& plan) {
  size_t fingerprint = plan.actions.size();
  for (const v1::Action& a : plan.actions) fingerprint = absl::HashOf(fingerprint, a.id());
  return fingerprint;
}

void Reconciler::NoteServing(const FleetPlan& fleet, const std::set<std::string>* hosts) {
  std::shared_ptr<const Serving> before;
  {
    absl::MutexLock lock(&served_mu_);
    before = serving_;
  }
  // A whole plan says where everything runs; a part of it (`hosts`) changes only its own
  // instances' entries (the map is copied only when one changes).
  std::shared_ptr<Serving> now = hosts == nullptr ? std::make_shared<Serving>() : nullptr;
  for (const auto& [name, p] : fleet.planned) {
    if (!p.standby_for.empty()) continue;
    if (now == nullptr) {
      auto s = before->find(name);
      if (s != before->end() && s->second == std::make_pair(p.host, p.kernel)) continue;
      now = std::make_shared<Serving>(*before);
    }
    if (hosts == nullptr) {
      now->emplace_hint(now->end(), name, std::make_pair(p.host, p.kernel));  // (name order)
    } else {
      (*now)[name] = {p.host, p.kernel};
    }
  }
  absl::MutexLock lock(&served_mu_);
  for (auto it = kernel_names_.begin(); it != kernel_names_.end();) {
    it = hosts == nullptr || hosts->count(it->first.first) ? kernel_names_.erase(it) : std::next(it);
  }
  for (const auto& [name, p] : fleet.planned) {
    if (p.kernel != name) kernel_names_[{p.host, p.kernel}] = name;
  }
  if (now != nullptr) serving_ = std::move(now);
}

void Reconciler::PollStore(absl::Duration wait) {
  auto next = store_.WaitForRevision(seen_revision_, wait);
  bool changed = false;
  if (options_.shards != nullptr) {
    if (shards_changed_.exchange(false)) {
      // New owners: fresh fences (the former owners' late batches are refused), and every
      // owned host gets its work again.
      dispatcher_.NewEpoch();
      {
        absl::MutexLock lock(&shard_mu_);
        work_sent_.clear();
      }
      changed = true;
    }
    if (next.ok()) FollowShards(seen_revision_, *next);
  }
  // The hosts the object changes concern (all of them unless every change is known to
  // concern only some: a pinned instance's change need not pass the whole fleet's hosts).
  std::set<std::string> concerned;
  bool some = options_.shards == nullptr;  // (sharded: the leader publishes every host's plan)
  bool hosts_changed = false;              // a Host object (its connection may change)
  if (next.ok() && *next > seen_revision_) {
    // Only object changes matter; the loop's own status writes must not wake it.
    auto events = store_.EventsSince(seen_revision_, "/objects/");
    changed |= !events.ok() || !events->empty();
    // What an early send may follow: puts of pinned KernelInstances only.
    if (!events.ok()) {
      nonlocal_revision_ = *next;
      hosts_changed = true;
    } else {
      for (const Event& e : *events) {
        if (!IsPinnedInstancePut(e)) nonlocal_revision_ = std::max(nonlocal_revision_.load(), e.revision);
        hosts_changed |= absl::StartsWith(e.key, "/objects/Host/");
      }
    }
    classified_revision_ = *next;
    some = some && events.ok() && HostsConcerned(*events, &concerned);
    // A sharded member sends published work only once the leader has planned from these.
    if (!events.ok()) {
      objects_revision_ = *next;
    } else if (!events->empty()) {
      objects_revision_ = std::max(objects_revision_.load(), events->back().revision);
    }
    seen_revision_ = *next;
  }
  bool resync = clock_.Monotonic() - last_resync_ >= options_.resync;
  if (!changed && !resync) return;
  if (resync) {
    last_resync_ = clock_.Monotonic();
    // History beyond the window goes: the store stays bounded under a steady fleet.
    if (next.ok() && *next > options_.history_window) {
      absl::Status s = store_.Compact(*next - options_.history_window);
      if (!s.ok()) Log() << "store: compact: " << s.message() << "\n";
    }
  }
  if (!resync && !hosts_changed && options_.shards == nullptr) {
    // No Host changed: the connections stay as they are (not a read of every Host for
    // one instance's change); the hosts the change concerns get a pass.
    std::vector<std::string> hosts;
    {
      absl::MutexLock lock(&mu_);
      for (const auto& [host, c] : connections_) hosts.push_back(host);
    }
    QueueHosts(hosts, changed, some ? &concerned : nullptr);
    return;
  }
  SyncConnections(changed, some && !resync ? &concerned : nullptr);
}

void Reconciler::RunDue(absl::Duration wait) {
  const bool leading = Leading();
  if (!leading && options_.shards == nullptr) {
    // A follower: its connections and views stay current, its queue fills; it passes
    // nothing until it leads (then it takes over without dialling every agent first).
    clock_.SleepFor(std::min(wait, absl::Milliseconds(50)));
    return;
  }
  std::string host;
  if (!queue_.Get(&host, wait)) return;
  // Every host ready now joins this pass: one plan for all of them.
  std::vector<std::string> batch = {host};
  while (queue_.Get(&host, absl::ZeroDuration())) batch.push_back(host);
  // A sharded member that does not lead sends its hosts what the leader published.
  std::map<std::string, absl::Status> results = leading ? ReconcileHosts(batch) : SendPublished(batch);
  for (const std::string& h : batch) {
    const absl::Status& s = results[h];
    if (s.ok()) {
      queue_.Forget(h);
    } else {
      // Logged once per failure; the backoff bounds how often.
      Log() << "reconcile " << h << ": " << s.message() << " (retry " << queue_.Failures(h) + 1 << ")\n";
      queue_.AddRateLimited(h);
      metrics::QueueRetry();
    }
    queue_.Done(h);
  }
}

bool Reconciler::IsPinnedInstancePut(const Event& e) {
  absl::string_view key = e.key;
  if (e.type != Event::Type::kPut || !absl::ConsumePrefix(&key, "/objects/KernelInstance/")) return false;
  v1::Object o;
  return o.ParseFromString(e.value) && !o.kernel_instance().spec().host().empty();
}

absl::Status Reconciler::ReconcileHost(const std::string& host) { return ReconcileHosts({host})[host]; }

absl::StatusOr<Reconciler::Objects_> Reconciler::ReadObjects() {
  Objects_ out;
  auto host_objects = objects_.ListSpecs("Host");
  if (!host_objects.ok()) return host_objects.status();
  auto instance_objects = objects_.ListSpecs("KernelInstance");
  if (!instance_objects.ok()) return instance_objects.status();
  auto set_objects = objects_.ListSpecs("InstanceSet");
  if (!set_objects.ok()) return set_objects.status();
  // Moved out of the copies ListSpecs made (a pass reads every object).
  out.hosts.reserve(host_objects->size());
  out.instances.reserve(instance_objects->size());
  out.sets.reserve(set_objects->size());
  for (v1::Object& o : *host_objects) out.hosts.push_back(std::move(*o.mutable_host()));
  for (v1::Object& o : *instance_objects) out.instances.push_back(std::move(*o.mutable_kernel_instance()));
  for (v1::Object& o : *set_objects) out.sets.push_back(std::move(*o.mutable_instance_set()));
  auto policy_objects = objects_.ListSpecs("RolloutPolicy");
  if (!policy_objects.ok()) return policy_objects.status();
  for (v1::Object& o : *policy_objects) out.policies.push_back(std::move(*o.mutable_rollout_policy()));
  return out;
}

std::map<std::string, HostView> Reconciler::Views(std::map<std::string, std::shared_ptr<HostConnection>>* links) {
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, c] : connections_) (*links)[name] = c.link;
  }
  // Each link is held by a shared pointer: a connection closed meanwhile stays valid here.
  std::map<std::string, HostView> views;
  for (auto& [name, link] : *links) views[name] = link->View();
  return views;
}

std::map<std::string, absl::Status> Reconciler::ReconcileHosts(const std::vector<std::string>& batch_hosts) {
  absl::MutexLock pass(&pass_mu_);
  ++passes_;
  hosts_reconciled_ += static_cast<int64_t>(batch_hosts.size());
  PassTimer timer(batch_hosts.size());
  std::map<std::string, absl::Status> result;
  const Early early = EarlySend(batch_hosts, &result);
  if (early != Early::kNone) timer.Phase(early == Early::kDone ? "local pass" : "early send");
  if (early == Early::kDone && !options_.check_early_sends) {
    metrics::PassDone("local", timer.Total());
    if (options_.slow_pass > absl::ZeroDuration() && timer.Total() >= options_.slow_pass) Log() << timer.Line() << "\n";
    return result;
  }
  result.clear();
  // Every write up to this revision is in what ReadObjects reads (a RolloutPolicy's status
  // says so: `rollout status --watch` waits for a pass that saw the change).
  const absl::StatusOr<int64_t> read_revision = store_.Revision();
  auto objects = ReadObjects();
  if (!objects.ok()) {
    for (const std::string& h : batch_hosts) result[h] = objects.status();
    return result;
  }
  timer.Phase("read objects");
  std::map<std::string, std::shared_ptr<HostConnection>> links;
  std::map<std::string, HostView> views = Views(&links);
  timer.Phase("views");
  std::set<std::string> batch;
  for (const std::string& h : batch_hosts) {
    if (!links.count(h)) {
      result[h] = absl::OkStatus();  // deleted meanwhile
      continue;
    }
    batch.insert(h);
  }
  // A `morph prepare` holds until a morph other than the one seen then shows.
  std::set<std::string> retry;
  {
    absl::MutexLock lock(&served_mu_);
    for (auto it = morph_retry_.begin(); it != morph_retry_.end();) {
      std::string seen;
      if (auto s = serving_->find(it->first); s != serving_->end()) {
        auto v = views.find(s->second.first);
        if (v != views.end()) {
          auto in = v->second.instances.find(s->second.second);
          if (in != v->second.instances.end()) seen = in->second.status().morph().id();
        }
      }
      if (seen != it->second) {
        it = morph_retry_.erase(it);
      } else {
        retry.insert(it->first);
        ++it;
      }
    }
  }
  // The rollouts decide which set members may move to their set's newest revision, and
  // which KernelInstances a RolloutPolicy paces may move to their spec.
  std::shared_ptr<const Serving> serving;
  {
    absl::MutexLock lock(&served_mu_);
    serving = serving_;
  }
  RolloutPass rollout =
      rollouts_.Step(objects->hosts, objects->sets, objects->instances, objects->policies, views, *serving,
                     read_revision.ok() ? *read_revision : 0);
  timer.Phase("rollouts");
  if (mkfleet::metrics::Enabled()) NoteRollouts(rollout);
  // Instances a policy holds back are planned with the spec it holds them at.
  std::vector<v1::KernelInstance> held_instances;
  if (!rollout.instance_specs.empty()) {
    held_instances = objects->instances;
    for (v1::KernelInstance& ki : held_instances) {
      auto held = rollout.instance_specs.find(ki.metadata().name());
      if (held != rollout.instance_specs.end()) *ki.mutable_spec() = held->second;
    }
  }
  const std::vector<v1::KernelInstance>& planned_instances =
      rollout.instance_specs.empty() ? objects->instances : held_instances;
  // What a rollout holds back keeps what it runs on: its actions are withheld this pass.
  std::set<std::string> held;
  for (const auto& [instance, why] : rollout.held) held.insert(instance);
  FleetPlan fleet = PlanFleet(objects->hosts, views, planned_instances, objects->sets, InFlightPlacements(views),
                              retry, rollout.member_specs, rollout.set_specs, {}, held, last_placed_);
  {
    std::map<std::string, v1::Placement> placed;
    for (const v1::KernelInstance& ki : objects->instances) {
      const std::string& name = ki.metadata().name();
      auto now = fleet.placements.find(name);
      if (now != fleet.placements.end()) {
        placed.emplace_hint(placed.end(), name, now->second);
      } else if (auto before = last_placed_.find(name); before != last_placed_.end()) {
        placed.emplace_hint(placed.end(), name, std::move(before->second));
      }
    }
    last_placed_ = std::move(placed);
  }
  timer.Phase("plan");
  metrics::Placement(timer.LastPhase());
  // (Their status says what holds them: a rollout, not a fault.)
  for (const auto& [instance, why] : rollout.held) fleet.deferred.emplace(instance, why);
  // Changes made outside mkfleet: put back (the plan does) or, driftPolicy Report, withheld.
  LoadStatusCache();
  DriftPass drift = drift_.Step(batch, objects->hosts, views, status_cache_, absl::ToUnixMillis(clock_.Now()), &fleet);
  timer.Phase("drift");
  NoteServing(fleet, nullptr);

  // The hosts' batches go out in parallel; each worker takes the next host. Sharded: the
  // hosts of other members get their plans through the store.
  std::vector<std::string> order(batch.begin(), batch.end());
  std::vector<HostOutcome> outcomes(order.size());
  std::vector<Op> publish;
  std::map<std::string, HostOutcome> published;  // sharded: other members' hosts, as their owners reported
  ForEachParallel(order.size(), options_.parallel_sends, [&](size_t i) {
    const std::string& h = order[i];
    auto plan = fleet.hosts.find(h);
    if (plan == fleet.hosts.end()) {
      const HostView& v = views[h];
      if (!v.connected) outcomes[i].sent = absl::UnavailableError(absl::StrCat("host ", h, ": ", v.error));
      return;
    }
    if (options_.shards != nullptr && !options_.shards->Assigned(h)) return;  // published below
    if (options_.shards != nullptr && !options_.shards->Owns(h)) {
      queue_.AddAfter(h, kHandoverTick);  // taking it over from its former owner
      return;
    }
    // The early send of this pass sent this batch already: once is enough.
    if (const HostOutcome* early = SentEarly(h, plan->second); early != nullptr) {
      outcomes[i] = *early;
      return;
    }
    // Planned from a view without the host's last batch: it may be done already, or half
    // done (new ids the agent refuses). The view showing it brings the host round again.
    if (views.at(h).settling && !plan->second.actions.empty()) {
      queue_.AddAfter(h, kSettleRecheck);
      return;
    }
    outcomes[i] = dispatcher_.Send(h, *links.at(h), plan->second, fleet);
  });
  early_sent_.clear();
  timer.Phase("send");
  if (!local_check_.empty()) {
    // After a local pass: a host that had nothing to do at the view it still shows has
    // nothing now either (the local pass changed no other host's plan).
    for (const auto& [h, plan] : fleet.hosts) {
      auto idle = settled_.idle.find(h);
      auto v = views.find(h);
      if (batch.count(h) || plan.actions.empty() || idle == settled_.idle.end() || v == views.end() ||
          v->second.state_version != idle->second) {
        continue;
      }
      LocalMismatch(absl::StrCat("host ", h, " was idle at view ", idle->second, " and now has ", plan.actions.size(),
                                 " action(s), first ", plan.actions.front().ShortDebugString()));
    }
  }
  if (options_.shards != nullptr) {
    // Every other member's host gets this pass's plan (not only the hosts of the batch), a
    // host without one (out of this leader's sight) none, and the mark says from which
    // objects: an owner sends work only once it is at least as new as the objects it saw
    // change (a plan made before a delete must not run after it).
    for (const auto& [h, plan] : fleet.hosts) {
      if (!options_.shards->Assigned(h)) published[h] = Publish(h, plan, fleet, &publish);
    }
    absl::MutexLock lock(&shard_mu_);
    // Work stays only for the other members' hosts this pass planned: a host this leader
    // sends to itself keeps none either (else, moved to another member later, its stale
    // work would go out there: sim seed 588, a create sent after the instance's delete).
    for (auto w = shard_work_.begin(); w != shard_work_.end();) {
      if (fleet.hosts.count(w->first) && !options_.shards->Assigned(w->first)) {
        ++w;
        continue;
      }
      publish.push_back({Op::Type::kDelete, kWorkPrefix + w->first, "", 0});
      w = shard_work_.erase(w);
    }
    if (read_revision.ok() && *read_revision != planned_written_) {
      publish.push_back({Op::Type::kPut, kPlannedKey, std::to_string(*read_revision), 0});
      planned_written_ = *read_revision;
    }
  }
  if (!publish.empty() && Leading()) {
    auto written = store_.Txn({}, publish);
    if (!written.ok()) {
      Log() << "shards: publishing " << publish.size() << " hosts' work: " << written.status().message() << "\n";
      absl::MutexLock lock(&shard_mu_);
      for (const Op& op : publish) {
        if (absl::StartsWith(op.key, kWorkPrefix)) shard_work_.erase(op.key.substr(sizeof(kWorkPrefix) - 1));
      }
      planned_written_ = -1;  // all again next pass
    }
  }
  std::map<std::string, HostOutcome> by_host;
  std::vector<v1::Event> events;
  for (size_t i = 0; i < order.size(); ++i) {
    // What its owner reported is the host's outcome for the statuses; this pass sent nothing.
    auto p = published.find(order[i]);
    if (p != published.end()) outcomes[i] = std::move(p->second);
    result[order[i]] = p != published.end() ? absl::OkStatus() : outcomes[i].sent;
    for (v1::Event& e : outcomes[i].events) events.push_back(std::move(e));
    outcomes[i].events.clear();
    by_host[order[i]] = std::move(outcomes[i]);
  }
  NoteSent(fleet, views, by_host);
  NoteSettled(fleet, *objects, rollout, views, retry, read_revision.ok() ? *read_revision : -1);
  for (v1::Event& e : rollout.events) events.push_back(std::move(e));
  for (v1::Event& e : drift.events) events.push_back(std::move(e));
  timer.Phase("publish");
  RecordStatuses(batch, *objects, fleet, views, by_host, rollout, drift, std::move(events));
  local_check_.clear();
  timer.Phase("statuses");
  FinalizeDrained(fleet);
  // A rollout under way moves on with time too (minReady, healthTimeout): another pass soon.
  if (rollout.active && !objects->hosts.empty()) queue_.AddAfter(objects->hosts.front().metadata().name(), kRolloutTick);
  // One plan covers the fleet: a host outside this batch whose plan it changed (a set that
  // may grow now that another host connected, a slot another host gave up) gets a pass of
  // its own, not only at its next change or the resync. Once per distinct plan: a plan held
  // back by backoff does not bring its host round again and again.
  std::map<std::string, size_t> plan_seen;
  std::vector<std::string> others;
  for (const auto& [h, plan] : fleet.hosts) {
    const size_t fingerprint = PlanIds(plan);
    plan_seen[h] = fingerprint;
    if (batch.count(h) || plan.actions.empty()) continue;
    auto last = last_plan_seen_.find(h);
    if (last == last_plan_seen_.end() || last->second != fingerprint) others.push_back(h);
  }
  last_plan_seen_ = std::move(plan_seen);
  for (const std::string& h : others) queue_.Add(h);
  if (options_.keep_last_plan) last_plan_ = std::move(fleet);
  timer.Phase("requeue");
  metrics::PassDone("whole", timer.Total());
  if (options_.slow_pass > absl::ZeroDuration() && timer.Total() >= options_.slow_pass) {
    Log() << timer.Line() << "\n";
  }
  return result;
}

namespace {

// Whether `p` takes a CPU or a device that a kernel other than `kernel` is seen holding.
bool Overlaps(const v1::Placement& p, const std::string& kernel, const HostView& view) {
  std::set<uint32_t> cpus(p.cpus().begin(), p.cpus().end());
  std::set<std::string> devices;
  for (const auto& d : p.devices()) devices.insert(d.pci());
  for (const auto& [name, in] : view.instances) {
    if (name == kernel) continue;
    for (uint32_t c : in.status().placement().cpus()) {
      if (cpus.count(c)) return true;
    }
    for (const auto& d : in.status().placement().devices()) {
      if (devices.count(d.pci())) return true;
    }
  }
  return false;
}

}  // namespace

std::map<std::string, v1::Placement> Reconciler::InFlightPlacements(const std::map<std::string, HostView>& views) {
  std::map<std::string, v1::Placement> out;
  const absl::Duration now = clock_.Monotonic();
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    auto view = views.find(it->second.placement.host());
    bool seen = view != views.end() && view->second.instances.count(it->second.kernel);
    // The host has shown a newer state since, with another kernel still on what the create
    // would take: it cannot have run as sent (the host refuses a CPU lent twice), and the
    // running kernel's placement is the fact (sim seed 1484: a batch lost with its agent).
    bool impossible = view != views.end() && view->second.state_version != it->second.basis &&
                      Overlaps(it->second.placement, it->second.kernel, view->second);
    if (view == views.end() || seen || impossible || now - it->second.sent > options_.unreachable_after) {
      it = in_flight_.erase(it);
      continue;
    }
    out[it->first] = it->second.placement;
    ++it;
  }
  return out;
}

void Reconciler::NoteSent(const FleetPlan& fleet, const std::map<std::string, HostView>& views,
                          const std::map<std::string, HostOutcome>& outcomes) {
  for (const auto& [request, p] : fleet.planned) {
    auto outcome = outcomes.find(p.host);
    auto plan = fleet.hosts.find(p.host);
    if (outcome == outcomes.end() || plan == fleet.hosts.end()) continue;
    const HostOutcome& o = outcome->second;
    if (o.failed.count(p.kernel)) {
      in_flight_.erase(request);  // planned afresh next time
      continue;
    }
    if (!o.in_plan.count(p.kernel) || o.held_back.count(p.kernel)) continue;
    bool creates = false;
    for (const v1::Action& a : plan->second.actions) creates |= a.instance() == p.kernel && a.has_create();
    // A batch whose fate is unknown (a lost response) counts as sent: it may have run.
    if (creates && !in_flight_.count(request)) {
      auto view = views.find(p.host);
      in_flight_[request] = {fleet.placements.at(request), p.kernel, clock_.Monotonic(),
                             view == views.end() ? 0 : view->second.state_version};
    }
  }
}

void Reconciler::FinalizeDrained(const FleetPlan& fleet) {
  for (const std::string& host : fleet.drained) {
    absl::Status s = objects_.FinishHostDelete(host);
    if (!s.ok()) {
      Log() << "Host/" << host << ": " << s.message() << "\n";
      continue;
    }
    if (events_ != nullptr) {
      events_->Record(MakeEvent("Host", host, host, false, "Deleted", "its instances are gone")).IgnoreError();
      events_->ForgetHost(host).IgnoreError();
    }
    if (options_.shards != nullptr) {
      (void)store_.Txn({}, {{Op::Type::kDelete, kWorkPrefix + host, "", 0}, {Op::Type::kDelete, kReportPrefix + host, "", 0}});
    }
  }
}

void Reconciler::LoadStatusCache() {
  if (status_loaded_) return;
  auto kvs = store_.List("/status/");
  if (!kvs.ok()) return;
  status_cache_.clear();
  for (KeyValue& kv : *kvs) status_cache_[kv.key] = std::move(kv.value);
  status_loaded_ = true;
  if (options_.count_instances || mkfleet::metrics::Enabled()) {
    std::vector<std::pair<std::string, const std::string*>> all;
    for (const auto& [key, value] : status_cache_) all.emplace_back(key, &value);
    CountPhases(all, /*reset=*/true);
  }
}

void Reconciler::CountPhases(const std::vector<std::pair<std::string, const std::string*>>& changes, bool reset) {
  static const std::string kInstances = StatusKey("KernelInstance", "");
  auto less = [](std::map<std::string, int64_t>& counts, const std::string& key) {
    if (!key.empty() && --counts[key] == 0) counts.erase(key);
  };
  absl::MutexLock lock(&phases_mu_);
  if (reset) {
    phase_of_.clear();
    phase_counts_.clear();
    morph_counts_.clear();
    host_counts_.clear();
  }
  for (const auto& [key, value] : changes) {
    if (!absl::StartsWith(key, kInstances)) continue;
    auto was = phase_of_.find(key);
    if (was != phase_of_.end()) {
      less(phase_counts_, was->second.phase);
      less(morph_counts_, was->second.morph);
      less(host_counts_, was->second.host);
    }
    if (value == nullptr) {
      if (was != phase_of_.end()) phase_of_.erase(was);
      continue;
    }
    v1::InstanceStatus st;
    st.ParseFromString(*value);
    Phases now{st.phase().empty() ? "Unknown" : st.phase(),
               st.morph().id().empty() ? "" : MorphPhaseName(st.morph().phase()), st.placement().host()};
    ++phase_counts_[now.phase];
    if (!now.morph.empty()) ++morph_counts_[now.morph];
    if (!now.host.empty()) ++host_counts_[now.host];
    phase_of_[key] = std::move(now);
  }
}

void Reconciler::NoteRollouts(const RolloutPass& rollout) {
  std::map<std::string, metrics::RolloutGauge> gauges;
  for (const auto& [set, st] : rollout.statuses) gauges["InstanceSet/" + set] = {st.phase(), st.revision()};
  for (const auto& [policy, st] : rollout.policy_statuses) {
    gauges["RolloutPolicy/" + policy] = {st.rollout().phase(), st.update_revision()};
  }
  for (const auto& [member, at] : rollout.member_revisions) {
    auto g = gauges.find(at.first);
    if (g == gauges.end()) continue;
    ++g->second.members;
    if (at.second == g->second.revision) ++g->second.updated;
  }
  absl::MutexLock lock(&phases_mu_);
  rollout_gauges_ = std::move(gauges);
}

void Reconciler::RecordStatuses(const std::set<std::string>& batch, const Objects_& objects, const FleetPlan& fleet,
                                const std::map<std::string, HostView>& views,
                                const std::map<std::string, HostOutcome>& outcomes,
                                const RolloutPass& rollouts, const DriftPass& drift, std::vector<v1::Event> events) {
  if (options_.may_act && !options_.may_act()) return;  // a deposed leader records nothing
  LoadStatusCache();
  StatusUpdate update = ComputeStatuses(
      {batch, objects.hosts, objects.instances, objects.sets, fleet, views, outcomes, status_cache_, &rollouts.statuses,
       &objects.policies, &rollouts.policy_statuses, &rollouts.member_revisions, &drift.by_host});
  if (!local_check_.empty()) {
    // The local pass recorded what this pass records, unless a batch host reported since.
    bool same = true;
    for (const auto& [h, version] : local_check_) {
      auto v = views.find(h);
      same = same && v != views.end() && v->second.state_version == version;
    }
    if (same && (!update.writes.empty() || !update.deletes.empty())) {
      std::string first = update.writes.empty() ? update.deletes.front() : update.writes.begin()->first;
      if (!update.writes.empty()) {
        // Both sides, readable.
        auto text = [&](const std::string& value) -> std::string {
          std::unique_ptr<google::protobuf::Message> m;
          if (absl::StartsWith(first, StatusKey("Host", ""))) m = std::make_unique<v1::HostStatus>();
          if (absl::StartsWith(first, StatusKey("KernelInstance", ""))) m = std::make_unique<v1::InstanceStatus>();
          if (absl::StartsWith(first, StatusKey("InstanceSet", ""))) m = std::make_unique<v1::InstanceSetStatus>();
          return m != nullptr && m->ParseFromString(value) ? m->ShortDebugString() : "?";
        };
        auto before = status_cache_.find(first);
        absl::StrAppend(&first, ": recorded [", before == status_cache_.end() ? "none" : text(before->second),
                        "], whole pass [", text(update.writes.begin()->second), "]");
      }
      LocalMismatch(absl::StrCat(update.writes.size(), " status write(s) and ", update.deletes.size(),
                                 " delete(s) left to the whole pass, first ", first));
    }
    local_check_.clear();
  }
  WriteStatuses(std::move(update), std::move(events));
}

void Reconciler::LocalMismatch(const std::string& what) {
  ++early_send_mismatches_;
  Log() << "local pass: the whole pass after it differs: " << what << "\n";
}

void Reconciler::WriteStatuses(StatusUpdate update, std::vector<v1::Event> events) {
  for (v1::Event& e : update.events) events.push_back(std::move(e));
  std::vector<std::pair<std::string, std::string>> writes(update.writes.begin(), update.writes.end());
  absl::Status s = objects_.WriteStatuses(writes, update.deletes);
  if (!s.ok()) {
    Log() << "reconcile: writing " << writes.size() << " statuses: " << s.message() << "\n";
    status_loaded_ = false;  // the cache may be behind the store: read it again
  } else {
    std::vector<std::pair<std::string, const std::string*>> changed;
    const bool counting = options_.count_instances || mkfleet::metrics::Enabled();
    for (auto& [key, value] : update.writes) {
      std::string& cached = status_cache_[key];
      cached = std::move(value);
      if (counting) changed.emplace_back(key, &cached);
    }
    for (const std::string& key : update.deletes) {
      status_cache_.erase(key);
      if (counting) changed.emplace_back(key, nullptr);
    }
    if (counting && !changed.empty()) CountPhases(changed, /*reset=*/false);
    status_writes_ += writes.size() + update.deletes.size();
  }
  if (events_ != nullptr && !events.empty()) {
    absl::Status e = events_->RecordAll(std::move(events));
    if (!e.ok()) Log() << "events: " << e.message() << "\n";
  }
}

std::map<std::string, std::vector<std::string>> Reconciler::Preview(const std::vector<v1::Object>& proposed) {
  std::map<std::string, std::vector<std::string>> out;
  auto objects = ReadObjects();
  if (!objects.ok()) return out;
  std::map<std::string, std::shared_ptr<HostConnection>> links;
  std::map<std::string, HostView> views = Views(&links);
  FleetPlan before = PlanFleet(objects->hosts, views, objects->instances, objects->sets);
  // The proposed objects in place of the stored ones (the same incarnation: applying them
  // keeps the stored object's created revision).
  auto replace = [](auto& list, const auto& item) {
    for (auto& x : list) {
      if (x.metadata().name() == item.metadata().name()) {
        const int64_t created = x.metadata().created_revision();
        x = item;
        x.mutable_metadata()->set_created_revision(created);
        return;
      }
    }
    list.push_back(item);
  };
  for (const v1::Object& o : proposed) {
    if (o.has_host()) replace(objects->hosts, o.host());
    if (o.has_kernel_instance()) replace(objects->instances, o.kernel_instance());
    if (o.has_instance_set()) replace(objects->sets, o.instance_set());
  }
  FleetPlan after = PlanFleet(objects->hosts, views, objects->instances, objects->sets);
  for (const auto& [name, p] : after.planned) {
    std::string object = p.owner.empty() ? absl::StrCat("KernelInstance/", p.standby_for.empty() ? name : p.standby_for)
                                         : p.owner;
    auto plan = after.hosts.find(p.host);
    if (plan == after.hosts.end()) continue;
    auto change = plan->second.changes.find(p.kernel);
    if (change == plan->second.changes.end()) continue;
    auto was = before.hosts.find(p.host);
    bool already = was != before.hosts.end() && was->second.changes.count(p.kernel) &&
                   was->second.changes.at(p.kernel).summary == change->second.summary;
    if (already) continue;  // what the loop does anyway, not this apply
    std::string line = absl::StrCat("would ", change->second.summary, " (", p.kernel, " on ", p.host, ")");
    if (absl::StartsWith(change->second.summary, "re-create")) {
      line = absl::StrCat("would re-create ", p.kernel, " on ", p.host, ": ", change->second.summary.substr(11));
    }
    out[object].push_back(line);
  }
  for (const auto& [name, why] : after.infeasible) {
    auto was = before.infeasible.find(name);
    if (was != before.infeasible.end() && was->second == why) continue;  // not this apply's doing
    auto p = after.planned.find(name);
    std::string object = p != after.planned.end() && !p->second.owner.empty() ? p->second.owner
                                                                                 : absl::StrCat("KernelInstance/", name);
    out[object].push_back(absl::StrCat("resize of ", name, " cannot be met; it keeps running as it is: ", why));
  }
  for (const auto& u : after.unschedulable) {
    bool before_too = false;
    for (const auto& b : before.unschedulable) before_too |= b.name == u.name && b.reason == u.reason;
    if (before_too) continue;
    bool set = false;
    for (const v1::InstanceSet& s : objects->sets) set |= s.metadata().name() == u.name;
    out[absl::StrCat(set ? "InstanceSet/" : "KernelInstance/", u.name)].push_back(
        absl::StrCat("would be unschedulable: ", u.reason));
  }
  return out;
}

absl::StatusOr<v1::MorphResponse> Reconciler::Morph(const v1::MorphRequest& request) {
  const std::string& name = request.name();
  const std::string what = absl::StrCat("KernelInstance/", name);
  std::string host, kernel;
  std::shared_ptr<HostConnection> link;
  v1::ObservedInstance seen;
  {
    absl::MutexLock lock(&served_mu_);
    auto s = serving_->find(name);
    if (s == serving_->end()) return absl::NotFoundError(absl::StrCat(what, " is not placed on any host"));
    host = s->second.first;
    kernel = s->second.second;
  }
  {
    absl::MutexLock lock(&mu_);
    auto c = connections_.find(host);
    if (c != connections_.end()) link = c->second.link;
  }
  const HostView view = link != nullptr ? link->View() : HostView();
  if (link == nullptr || !view.connected) {
    return absl::UnavailableError(absl::StrCat(what, ": host ", host, " is not connected"));
  }
  auto in = view.instances.find(kernel);
  if (in == view.instances.end()) return absl::NotFoundError(absl::StrCat(what, " has no kernel on ", host));
  seen = in->second;
  v1::MorphResponse out;
  out.set_host(host);
  out.set_kernel(kernel);
  const v1::InstanceStatus& st = seen.status();
  if (st.has_morph()) *out.mutable_morph() = st.morph();
  out.set_revision(ServingRevision(st));
  out.set_previous_revision(st.previous_revision());
  const v1::MorphPhase phase = st.morph().phase();
  const bool running = MorphRunning(st);
  const std::string& verb = request.verb();
  if (verb == "status") return out;
  if (verb == "commit" || verb == "rollback") {
    if (!running) {
      if (phase == v1::MORPH_COMMITTED && verb == "commit") {
        return absl::FailedPreconditionError(absl::StrCat("the live update ", st.morph().id(), " of ", what,
                                                          " is already committed (revision ", out.revision(), ")"));
      }
      if (phase == v1::MORPH_COMMITTED) {
        return absl::FailedPreconditionError(absl::StrCat("the live update ", st.morph().id(), " of ", what,
                                                          " is already committed: too late to roll back"));
      }
      return absl::FailedPreconditionError(absl::StrCat("no live update of ", what, " is in progress"));
    }
    v1::ActionBatch batch;
    v1::Action* a = batch.add_actions();
    a->set_instance(kernel);
    a->set_id(absl::StrCat(host, "/", kernel, "/morph-", verb, "/", st.morph().id()));
    if (verb == "commit") {
      a->mutable_morph_commit();
    } else {
      a->mutable_morph_rollback()->set_reason(request.reason().empty() ? "rollback requested" : request.reason());
    }
    auto r = link->Execute(batch);
    if (!r.ok()) return r.status();
    if (r->results_size() != 1) return absl::InternalError("the agent answered no result");
    const v1::ActionResult& res = r->results(0);
    if (res.code() != 0) return absl::Status(static_cast<absl::StatusCode>(res.code()), res.message());
    out.set_message(verb == "commit" ? absl::StrCat("committing the live update ", st.morph().id(), " of ", what)
                                     : absl::StrCat("rolling back the live update ", st.morph().id(), " of ", what));
    return out;
  }
  if (verb == "prepare") {
    if (running) {
      return absl::FailedPreconditionError(absl::StrCat("the live update ", st.morph().id(), " of ", what,
                                                        " is already in progress (", st.morph().id(), ")"));
    }
    auto objects = ReadObjects();
    if (!objects.ok()) return objects.status();
    const v1::KernelInstanceSpec* spec = nullptr;
    for (const auto& ki : objects->instances) {
      if (ki.metadata().name() == name) spec = &ki.spec();
    }
    if (spec == nullptr) {
      std::string set = planner::SetOfMember(name, host, objects->sets);
      for (const auto& s : objects->sets) {
        if (s.metadata().name() == set) spec = &s.spec().template_().spec();
      }
    }
    if (spec == nullptr) return absl::NotFoundError(absl::StrCat("no ", what));
    if (spec->update().strategy() != v1::UPDATE_MORPH) {
      return absl::FailedPreconditionError(absl::StrCat(what, ": spec.update.strategy is Replace; set it to Morph"));
    }
    if (SameKernel(*spec, st.provenance())) {
      return absl::FailedPreconditionError(absl::StrCat("nothing to update: ", what, " already runs its spec's kernel "
                                                        "(revision ", out.revision(), ")"));
    }
    {
      absl::MutexLock lock(&served_mu_);
      morph_retry_[name] = st.morph().id();
    }
    queue_.Add(host);
    out.set_message(absl::StrCat("the live update of ", what, " to revision ",
                                 KernelRevision(spec->kernel(), spec->rootfs().image()), " starts on the next pass"));
    return out;
  }
  return absl::InvalidArgumentError(absl::StrCat("morph: unknown verb \"", verb, "\" (status, prepare, commit, rollback)"));
}

void Reconciler::NoteShardRecord(const std::string& key, const std::string& value, bool deleted, bool queue) {
  const bool leading = Leading();
  if (absl::StartsWith(key, kWorkPrefix)) {
    const std::string host = key.substr(sizeof(kWorkPrefix) - 1);
    {
      absl::MutexLock lock(&shard_mu_);
      if (deleted) {
        shard_work_.erase(host);
      } else {
        shard_work_[host] = value;
      }
    }
    // New work for a host this member sends to (the leader's own writes wake nobody).
    if (queue && !leading && options_.shards->Assigned(host)) queue_.Add(host);
  } else if (key == kPlannedKey) {
    int64_t r = 0;
    if (!deleted && absl::SimpleAtoi(value, &r)) planned_revision_ = r;
    // Work held back as possibly stale may go now.
    if (queue && !leading) {
      absl::MutexLock lock(&mu_);
      for (const auto& [host, c] : connections_) queue_.Add(host);
    }
  } else if (absl::StartsWith(key, kReportPrefix)) {
    const std::string host = key.substr(sizeof(kReportPrefix) - 1);
    {
      absl::MutexLock lock(&shard_mu_);
      v1::HostReport r;
      if (deleted || !r.ParseFromString(value)) {
        shard_reports_.erase(host);
      } else {
        shard_reports_[host] = std::move(r);
      }
    }
    // An owner's outcome: the leader's statuses take it in a pass of that host.
    if (queue && leading && !options_.shards->Assigned(host)) queue_.Add(host);
  }
}

void Reconciler::FollowShards(int64_t after, int64_t now) {
  if (shards_loaded_ && now > after) {
    auto events = store_.EventsSince(after, kShardsPrefix);
    if (events.ok()) {
      for (const Event& e : *events) NoteShardRecord(e.key, e.value, e.type == Event::Type::kDelete, true);
      return;
    }
    shards_loaded_ = false;  // compacted past `after`: read them whole
  }
  if (shards_loaded_) return;
  auto all = store_.List(kShardsPrefix);
  if (!all.ok()) return;
  {
    absl::MutexLock lock(&shard_mu_);
    shard_work_.clear();
    shard_reports_.clear();
  }
  for (const KeyValue& kv : *all) NoteShardRecord(kv.key, kv.value, false, true);
  shards_loaded_ = true;
}

HostOutcome Reconciler::Publish(const std::string& host, const Plan& plan, const FleetPlan& fleet,
                                std::vector<Op>* publish) {
  v1::HostWork work;
  for (const v1::Action& a : plan.actions) *work.add_actions() = a;
  *work.mutable_policies() = PoliciesFor(host, fleet);
  std::string wire = DeterministicBytes(work);
  HostOutcome out;
  for (const v1::Action& a : plan.actions) out.in_plan.insert(a.instance());
  absl::MutexLock lock(&shard_mu_);
  auto& last = shard_work_[host];
  if (last != wire) {
    last = wire;
    publish->push_back({Op::Type::kPut, kWorkPrefix + host, std::move(wire), 0});
  }
  auto report = shard_reports_.find(host);
  if (report != shard_reports_.end()) {
    const v1::HostReport& r = report->second;
    for (const auto& [kernel, why] : r.failed()) {
      if (out.in_plan.count(kernel)) out.failed[kernel] = why;
    }
    for (const auto& [kernel, why] : r.held_back()) {
      if (out.in_plan.count(kernel)) out.held_back[kernel] = why;
    }
    out.pool_note = r.pool_note();
  }
  return out;
}

std::map<std::string, absl::Status> Reconciler::SendPublished(const std::vector<std::string>& hosts) {
  std::map<std::string, std::shared_ptr<HostConnection>> links;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& h : hosts) {
      auto c = connections_.find(h);
      if (c != connections_.end()) links[h] = c->second.link;
    }
  }
  std::vector<absl::Status> results(hosts.size());
  std::vector<std::vector<v1::Event>> events(hosts.size());
  std::vector<Op> reports;
  ForEachParallel(hosts.size(), options_.parallel_sends, [&](size_t i) {
    const std::string& h = hosts[i];
    auto link = links.find(h);
    if (link == links.end() || !options_.shards->Assigned(h)) return;  // not this member's (any more)
    if (!options_.shards->Owns(h)) {
      queue_.AddAfter(h, kHandoverTick);  // taking it over from its former owner
      return;
    }
    // Planned before the objects last changed: wait for the leader's next pass (the mark's
    // change brings the host round again).
    if (planned_revision_.load() < objects_revision_.load()) return;
    // Its last batch is not in its view yet (nor, then, in what the leader planned from).
    if (link->second->Settling()) {
      queue_.AddAfter(h, kSettleRecheck);
      return;
    }
    std::string wire;
    {
      absl::MutexLock lock(&shard_mu_);
      auto w = shard_work_.find(h);
      if (w == shard_work_.end()) return;  // nothing published for it yet
      wire = w->second;
      auto sent = work_sent_.find(h);
      // Sent already and it went through: the agent's journal would only replay it.
      if (sent != work_sent_.end() && sent->second == std::make_pair(absl::HashOf(wire), true)) return;
    }
    v1::HostWork work;
    if (!work.ParseFromString(wire)) {
      results[i] = absl::DataLossError(absl::StrCat("host ", h, ": the published work does not parse"));
      return;
    }
    Plan plan;
    plan.actions.assign(work.actions().begin(), work.actions().end());
    HostOutcome out = dispatcher_.Send(h, *link->second, plan, work.policies());
    v1::HostReport report;
    report.set_member(options_.shards->self());
    if (!out.sent.ok()) report.set_error(std::string(out.sent.message()));
    report.mutable_failed()->insert(out.failed.begin(), out.failed.end());
    report.mutable_held_back()->insert(out.held_back.begin(), out.held_back.end());
    report.set_pool_note(out.pool_note);
    std::string report_wire = DeterministicBytes(report);
    {
      absl::MutexLock lock(&shard_mu_);
      work_sent_[h] = {absl::HashOf(wire), out.sent.ok() && out.failed.empty() && out.held_back.empty()};
      auto& last = reported_[h];
      if (last != report_wire) {
        last = report_wire;
        reports.push_back({Op::Type::kPut, kReportPrefix + h, std::move(report_wire), 0});
      }
    }
    events[i] = std::move(out.events);
    results[i] = out.sent;
  });
  if (!reports.empty()) {
    auto written = store_.Txn({}, reports);
    if (!written.ok()) {
      Log() << "shards: reporting " << reports.size() << " hosts: " << written.status().message() << "\n";
      absl::MutexLock lock(&shard_mu_);
      for (const Op& op : reports) reported_.erase(op.key.substr(sizeof(kReportPrefix) - 1));
    }
  }
  std::vector<v1::Event> all;
  for (auto& e : events) {
    for (v1::Event& one : e) all.push_back(std::move(one));
  }
  if (events_ != nullptr && !all.empty()) {
    absl::Status e = events_->RecordAll(std::move(all));
    if (!e.ok()) Log() << "events: " << e.message() << "\n";
  }
  std::map<std::string, absl::Status> out;
  for (size_t i = 0; i < hosts.size(); ++i) out[hosts[i]] = results[i];
  return out;
}

}  // namespace mkfleet::reconciler
