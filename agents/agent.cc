#include "agents/agent.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agents/agent_metrics.h"
#include "common/file_util.h"
#include "kernel/device_tree.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;

bool Same(const v1::ObservedInstance& a, const v1::ObservedInstance& b) {
  return a.SerializeAsString() == b.SerializeAsString();
}

}  // namespace

Agent::Agent(AgentOptions options, kernel::HostKernel& kernel, std::shared_ptr<const planner::Topology> topology,
             ActionJournal& journal, LivenessProbe& probe, Clock& clock)
    : options_(std::move(options)),
      kernel_(kernel),
      topology_(std::move(topology)),
      probe_(probe),
      clock_(clock),
      journal_(journal),
      executor_(kernel, journal, topology_) {
  auto obs = kernel_.ObserveShared();
  absl::MutexLock lock(&mu_);
  // Versions start at the wall clock, so a client's version from an earlier run of this
  // agent is older than everything here and gets a fresh snapshot.
  version_ = absl::ToUnixMillis(clock_.Now()) * 1000;
  first_version_ = version_;
  load_status_ = LoadPolicies();
  // Adopt what already runs: the kernel is the source of truth.
  Fold(obs, 0);
  for (const auto& in : state_.instances()) {
    watched_[in.name()].last = in.status().kernel_state();
    Event(in.name(), "Normal", "Adopted", absl::StrCat("found ", kernel::KernelStateName(in.status().kernel_state())));
  }
}

Agent::~Agent() { Stop(); }

absl::Status Agent::EnableMorph(GuestDialer dial, MorphOptions options) {
  MorphHooks hooks;
  hooks.event = [this](const std::string& name, const std::string& type, const std::string& reason,
                       const std::string& message) {
    absl::MutexLock lock(&mu_);
    Event(name, type, reason, message);
    RequestRefresh();
  };
  hooks.hold = [this](const std::string& name) {
    absl::MutexLock lock(&mu_);
    ++morphing_[name];
  };
  hooks.release = [this](const std::string& name) {
    absl::MutexLock lock(&mu_);
    auto it = morphing_.find(name);
    if (it != morphing_.end() && --it->second <= 0) morphing_.erase(it);
    RequestRefresh();
  };
  hooks.changed = [this] {
    absl::MutexLock lock(&mu_);
    RequestRefresh();
  };
  morpher_ = std::make_unique<Morpher>(std::move(options), kernel_, topology_, std::move(dial), clock_, hooks);
  executor_.SetMorphHandler(morpher_.get());
  return morpher_->Resume();
}

void Agent::Start() {
  thread_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stop_) return;
      }
      Tick();
      if (&clock_ != &Clock::Real()) {
        clock_.SleepFor(options_.poll_interval);
        continue;
      }
      // The next pass comes after poll_interval, or sooner when an Execute has changed
      // something, so that watchers see its result without waiting for the poll; but
      // never sooner than kMinGap after the last pass, so that back-to-back batches are
      // not slowed by a full observation after each.
      const absl::Duration kMinGap = std::min(absl::Milliseconds(5), options_.poll_interval);
      absl::Time last = absl::Now();
      absl::MutexLock lock(&mu_);
      auto wake = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || refresh_requested_; };
      mu_.AwaitWithTimeout(absl::Condition(&wake), options_.poll_interval);
      if (refresh_requested_ && !stop_) {
        auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_; };
        mu_.AwaitWithDeadline(absl::Condition(&stopping), last + kMinGap);
      }
      refresh_requested_ = false;
    }
  });
}

absl::Duration Agent::NextDue() {
  absl::MutexLock lock(&mu_);
  if (!Tracked() || !ticked_ || refresh_requested_) return absl::ZeroDuration();
  return next_due_;
}

bool Agent::TickIfDue() {
  const bool tracked = Tracked();
  // Read before the pass: a change made during it (by it, or by a batch) brings another.
  const uint64_t generation = tracked ? options_.kernel_generation() : 0;
  {
    absl::MutexLock lock(&mu_);
    if (stop_) return false;
    bool due = !tracked || !ticked_ || refresh_requested_ || generation != seen_generation_ ||
               clock_.Monotonic() >= next_due_;
    if (!due) return false;
    ticked_ = true;
    refresh_requested_ = false;
    seen_generation_ = generation;
  }
  Tick();
  if (!tracked) return true;
  absl::Duration next = options_.kernel_next_change();
  // An instance whose probe answered on the kernel as it is now would answer the same.
  const bool follows = options_.probe_follows_kernel && options_.probe_follows_kernel();
  const uint64_t now_generation = options_.kernel_generation();
  absl::MutexLock lock(&mu_);
  for (const auto& [name, w] : watched_) {
    next = std::min(next, w.restart_at);
    const v1::LocalPolicy* policy = PolicyFor(name);
    if (w.last == v1::KERNEL_STATE_ACTIVE && policy != nullptr && policy->failover().policy() != v1::FAILOVER_NONE &&
        !(follows && w.answered && w.misses == 0 && w.answered_at == now_generation)) {
      next = std::min(next, w.next_probe);
    }
  }
  next_due_ = next;
  return true;
}

void Agent::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (morpher_ != nullptr) morpher_->Stop();
}

void Agent::Event(const std::string& name, const std::string& type, const std::string& reason,
                  const std::string& message) {
  v1::Event e;
  e.set_kind("KernelInstance");
  e.set_name(name);
  e.set_host(options_.host);
  e.set_type(type);
  e.set_reason(reason);
  // Bounded, so that the kept events (max_events of them) always fit one Watch message.
  e.set_message(message.size() <= kMaxEventMessage ? message
                                                   : absl::StrCat(message.substr(0, kMaxEventMessage), "..."));
  e.set_time_unix_ms(absl::ToUnixMillis(clock_.Now()));
  NewVersion();
  e.set_seq(version_);
  events_.push_back(e);
  while (events_.size() > options_.max_events) events_.pop_front();
}

void Agent::Refresh() {
  int64_t batches_before;
  {
    absl::MutexLock lock(&mu_);
    batches_before = batches_done_;
  }
  auto obs = kernel_.ObserveShared();
  absl::MutexLock lock(&mu_);
  Fold(obs, batches_before);
}

void Agent::Fold(const Observation& observed, int64_t batches_before) {
  if (!observed.ok()) {
    // Reported once per distinct error, so a persistent one does not flood the events.
    std::string message(observed.status().message());
    if (message != last_observe_error_) Event("", "Warning", "ObserveFailed", message);
    last_observe_error_ = message;
    return;
  }
  last_observe_error_.clear();
  const kernel::HostObservation* obs = observed->get();
  // The same read as the last fold (the driver answered from it: nothing changed in the
  // kernel) and the same watchdog records and morphs: the state stays as it is. At rest, an
  // emulated host's probe passes cost no rebuild of its state.
  std::vector<FoldInput> inputs;
  inputs.reserve(obs->instances.size());
  for (const kernel::InstanceInfo& info : obs->instances) {
    FoldInput& in = inputs.emplace_back();
    auto w = watched_.find(info.name);
    if (w != watched_.end()) {
      in.role = w->second.role;
      in.restart_count = w->second.restart_count;
      in.crash_loop = w->second.crash_loop;
      in.restarts = w->second.restarts.size();
    }
    if (morpher_ != nullptr) {
      if (auto m = morpher_->StatusOf(info.name)) in.morph = m->SerializeAsString();
    }
  }
  // The batches this state follows: a client that had a batch answered waits for a state
  // at least this far (else it would plan from a state the batch has changed already).
  const int64_t mark = BatchMark(batches_before);
  const bool mark_moved = mark > state_.batch_mark();
  if (obs->read != 0 && obs->read == folded_read_ && inputs == folded_inputs_) {
    if (mark_moved) {  // nothing else to show, but the batches done are
      NewVersion();
      state_.set_batch_mark(mark);
      state_.set_resource_version(version_);
    }
    return;
  }
  folded_read_ = obs->read;
  folded_inputs_ = std::move(inputs);
  // Physical -> logical CPU numbers for users.
  absl::flat_hash_map<uint64_t, uint32_t> logical;
  for (const auto& [l, p] : topology_->physical_ids) logical[p] = l;
  auto to_logical = [&](uint64_t p) { return logical.count(p) ? logical[p] : static_cast<uint32_t>(p); };

  v1::HostState next;
  std::set<uint64_t> lent;
  std::map<uint32_t, uint64_t> memory_lent;  // NUMA node -> bytes
  std::set<std::string> devices_lent;
  std::map<std::string, const v1::ObservedInstance*> old;
  for (const auto& in : state_.instances()) old[in.name()] = &in;
  for (const kernel::InstanceInfo& info : obs->instances) {
    v1::ObservedInstance* o = next.add_instances();
    o->set_name(info.name);
    o->set_owner(info.owner);
    o->set_reports_removable_memory(true);
    for (const auto& [node, sizes] : info.removable_by_node) {
      for (uint64_t bytes : sizes) {
        v1::NodeBytes* r = o->add_removable_memory();
        r->set_node(node);
        r->set_bytes(bytes);
      }
    }
    v1::InstanceStatus* s = o->mutable_status();
    s->set_kernel_state(info.state);
    s->set_phase(kernel::KernelStateName(info.state));
    v1::Placement* p = s->mutable_placement();
    p->set_host(options_.host);
    p->set_instance_id(info.id);
    for (uint64_t c : info.resources.cpus) {
      p->add_cpus(to_logical(c));
      p->add_physical_cpus(c);
      lent.insert(c);
    }
    if (!info.resources.cpus.empty()) p->set_boot_cpu(to_logical(info.resources.cpus[0]));
    for (uint32_t n : info.resources.numa_nodes) p->add_numa_nodes(n);
    if (!info.memory_by_node.empty()) {
      // Per NUMA node, as the kernel holds it.
      for (const auto& [node, bytes] : info.memory_by_node) {
        auto* mem = p->add_memory();
        mem->set_node(node);
        mem->set_bytes(bytes);
        memory_lent[node] += bytes;
      }
    } else {
      auto* mem = p->add_memory();
      mem->set_node(info.resources.numa_nodes.empty() ? 0 : info.resources.numa_nodes[0]);
      mem->set_bytes(info.resources.memory_bytes);
      memory_lent[mem->node()] += info.resources.memory_bytes;
    }
    for (const auto& d : info.resources.devices) {
      p->add_devices()->set_pci(d.pci_id);
      devices_lent.insert(d.pci_id);
    }
    if (info.resources.llc_way_mask) p->set_llc_mask(*info.resources.llc_way_mask);
    *s->mutable_provenance() = info.provenance;
    if (morpher_ != nullptr) {
      if (auto m = morpher_->StatusOf(info.name)) {
        *s->mutable_morph() = *m;
        if (m->phase() == v1::MORPH_COMMITTED) {
          s->set_revision(m->revision());
          s->set_previous_revision(m->previous_revision());
        } else {
          s->set_revision(m->previous_revision());
        }
      }
    }
    auto w = watched_.find(info.name);
    if (w != watched_.end()) {
      s->set_role(w->second.role);
      s->set_restart_count(w->second.restart_count);
      if (w->second.crash_loop) {
        auto* c = s->add_conditions();
        c->set_type("Degraded");
        c->set_status(v1::CONDITION_TRUE);
        c->set_reason("CrashLoop");
        c->set_message(absl::StrCat("restarted ", w->second.restarts.size(), " times within ",
                                    absl::FormatDuration(options_.restart_window)));
      }
    }
  }
  v1::PoolUsage* pool = next.mutable_pool();
  for (uint64_t c : obs->pool.cpus) {
    pool->add_cpus(to_logical(c));
    if (!lent.count(c)) pool->add_cpus_free(to_logical(c));
  }
  for (const auto& m : obs->pool.memory) {
    auto* nb = pool->add_memory();
    nb->set_node(m.numa);
    nb->set_bytes(m.size);
    uint64_t used = std::min<uint64_t>(memory_lent[m.numa], m.size);
    memory_lent[m.numa] -= used;
    auto* fb = pool->add_memory_free();
    fb->set_node(m.numa);
    fb->set_bytes(m.size - used);
  }
  for (const auto& d : obs->pool.devices) {
    pool->add_devices(d.pci_id);
    if (!devices_lent.count(d.pci_id)) pool->add_devices_free(d.pci_id);
  }
  // What changed since the last pass: one new version for all of it.
  std::vector<v1::ObservedInstance*> changed;
  std::set<std::string> now_names;
  for (auto& in : *next.mutable_instances()) {
    now_names.insert(in.name());
    auto it = old.find(in.name());
    if (it != old.end()) {
      in.set_version(it->second->version());
      if (Same(*it->second, in)) continue;
    }
    changed.push_back(&in);
  }
  std::vector<std::string> removed_names;
  for (const auto& [name, in] : old) {
    if (!now_names.count(name)) removed_names.push_back(name);
  }
  bool pool_changed = next.pool().SerializeAsString() != state_.pool().SerializeAsString();
  next.set_batch_mark(std::max(mark, state_.batch_mark()));
  if (pool_changed || !changed.empty() || !removed_names.empty() || mark_moved) {
    NewVersion();
  }
  if (pool_changed) pool_changed_at_ = version_;
  for (v1::ObservedInstance* in : changed) {
    in->set_version(version_);
    changed_at_[in->name()] = version_;
  }
  for (const std::string& name : removed_names) {
    removed_at_.emplace_back(version_, name);
    changed_at_.erase(name);
    watched_.erase(name);
    touched_at_.erase(name);
  }
  while (removed_at_.size() > kMaxRemovals) {
    removals_forgotten_ = removed_at_.front().first;
    removed_at_.pop_front();
  }
  state_ = std::move(next);
  state_.set_resource_version(version_);
}

const v1::LocalPolicy* Agent::PolicyFor(const std::string& name) const {
  auto it = policies_.find(name);
  return it == policies_.end() ? nullptr : &it->second;
}

void Agent::Tick() {
  // The observation and every kernel call happen without the lock: Execute, Watch and
  // Inventory go on meanwhile, and a slow call delays nothing else.
  int64_t batches_before;
  {
    absl::MutexLock lock(&mu_);
    batches_before = batches_done_;
  }
  // Decided on this observation; published only after the watchdog has acted on it, so
  // the controller does not act on a crash the watchdog is handling (a restart, a takeover).
  // Read before the observation and the probes: a probe's answer holds for this generation.
  const uint64_t generation = options_.kernel_generation ? options_.kernel_generation() : 0;
  auto obs = kernel_.ObserveShared();
  absl::Duration now = clock_.Monotonic();
  std::vector<Step> steps;
  struct ProbeJob {
    std::string name;
    uint32_t id;
    uint32_t misses;
  };
  std::vector<ProbeJob> probes;
  {
    absl::MutexLock lock(&mu_);
    if (!obs.ok()) {
      Fold(obs, batches_before);
      return;
    }
    for (const kernel::InstanceInfo& in : (*obs)->instances) {
      const std::string& name = in.name;
      Watched& w = watched_[name];
      v1::KernelState cur = in.state;
      w.id = in.id;
      // An Execute is changing it, or changed it after this observation: it records the
      // result itself.
      if (in_flight_.count(name) || morphing_.count(name)) continue;
      auto touched = touched_at_.find(name);
      if (touched != touched_at_.end() && touched->second > batches_before) continue;
      v1::KernelState last = w.last;
      w.last = cur;
      if (cur != v1::KERNEL_STATE_ACTIVE) w.answered = false;
      const v1::LocalPolicy* policy = PolicyFor(name);
      if (last == v1::KERNEL_STATE_ACTIVE && cur == v1::KERNEL_STATE_LOADED &&
          w.restart_at == absl::InfiniteDuration()) {
        Event(name, "Warning", "Crashed", "unrequested active -> loaded (kernel panic or poweroff inside)");
        OnFailure(name, w, "crash", &steps);
      } else if (cur == v1::KERNEL_STATE_ACTIVE && policy != nullptr &&
                 policy->failover().policy() != v1::FAILOVER_NONE && now >= w.next_probe) {
        absl::Duration every = policy->failover().heartbeat().interval() > 0
                                   ? absl::Milliseconds(policy->failover().heartbeat().interval())
                                   : options_.default_heartbeat;
        uint32_t misses = policy->failover().heartbeat().misses() > 0 ? policy->failover().heartbeat().misses()
                                                                     : options_.default_misses;
        w.next_probe = now + every;
        probes.push_back({name, w.id, misses});
      }
      if (w.restart_at != absl::InfiniteDuration() && now >= w.restart_at) {
        w.restart_at = absl::InfiniteDuration();
        steps.push_back({Step::kRestart, name, "", w.restarts.empty() ? absl::InfiniteDuration() : w.restarts.back()});
      }
    }
  }
  // Liveness probes (a vsock connect on a real host) outside the lock.
  for (const ProbeJob& job : probes) {
    bool alive = probe_.Probe(job.name, job.id);
    absl::MutexLock lock(&mu_);
    auto it = watched_.find(job.name);
    if (it == watched_.end()) continue;
    Watched& w = it->second;
    if (alive) {
      w.misses = 0;
      w.answered = true;
      w.answered_at = generation;
    } else if (++w.misses >= job.misses) {
      w.misses = 0;
      Event(job.name, "Warning", "Hung", absl::StrCat(job.misses, " liveness probes failed in a row"));
      steps.insert(steps.begin(), {Step::kForceHalt, job.name, ""});
    }
  }
  if (steps.empty()) {
    absl::MutexLock lock(&mu_);
    Fold(obs, batches_before);
    return;
  }
  for (size_t i = 0; i < steps.size(); ++i) {
    const Step step = steps[i];
    switch (step.kind) {
      case Step::kForceHalt: {
        absl::Status s = kernel_.Halt(step.name, /*force=*/true);
        absl::MutexLock lock(&mu_);
        Event(step.name, s.ok() ? "Normal" : "Warning", "ForceHalted",
              s.ok() ? "NMI sent to its CPUs" : std::string(s.message()));
        auto it = watched_.find(step.name);
        if (it != watched_.end()) OnFailure(step.name, it->second, "hang", &steps);
        break;
      }
      case Step::kTakeover:
        Takeover(step.name, step.standby, step.detected);
        break;
      case Step::kRestart: {
        // Asked to boot; the next passes see it come up (or fail again).
        absl::Status s = kernel_.Start(step.name, /*wait=*/false);
        absl::MutexLock lock(&mu_);
        Watched& w = watched_[step.name];
        ++w.restart_count;
        if (s.ok()) metrics::Restarted(clock_.Monotonic() - step.detected);
        Event(step.name, s.ok() ? "Normal" : "Warning", "Restarted",
              s.ok() ? absl::StrCat("started again (restart ", w.restart_count, ")") : std::string(s.message()));
        break;
      }
    }
  }
  // The acted-on instances' new states are the baseline for the next pass (a restart is not
  // mistaken for anything, the old primary's state after a takeover is expected).
  auto after = kernel_.ObserveShared();
  absl::MutexLock lock(&mu_);
  Fold(after, batches_before);
  std::set<std::string> acted;
  for (const Step& step : steps) {
    acted.insert(step.name);
    if (!step.standby.empty()) acted.insert(step.standby);
  }
  for (const auto& in : state_.instances()) {
    if (acted.count(in.name()) && !in_flight_.count(in.name())) watched_[in.name()].last = in.status().kernel_state();
  }
}

void Agent::OnFailure(const std::string& name, Watched& w, const std::string& what, std::vector<Step>* steps) {
  const v1::LocalPolicy* policy = PolicyFor(name);
  if (policy == nullptr || policy->failover().policy() == v1::FAILOVER_NONE) {
    Event(name, "Warning", "NoPolicy", absl::StrCat("left ", what == "crash" ? "loaded" : "halted", ": policy None"));
    return;
  }
  absl::Duration now = clock_.Monotonic();
  if (policy->failover().policy() == v1::FAILOVER_STANDBY && !policy->standby_instance().empty() &&
      w.role != "standby") {
    steps->push_back({Step::kTakeover, name, policy->standby_instance(), now});
    // The failed kernel comes back as the new standby, at once (after the takeover).
    steps->push_back({Step::kRestart, name, "", now});
    return;
  }
  absl::Duration window = policy->restart_window_ms() > 0 ? absl::Milliseconds(policy->restart_window_ms())
                                                          : options_.restart_window;
  uint32_t max = policy->max_restarts() > 0 ? policy->max_restarts() : options_.max_restarts;
  while (!w.restarts.empty() && now - w.restarts.front() > window) w.restarts.pop_front();
  if (w.restarts.size() >= max) {
    w.crash_loop = true;
    Event(name, "Warning", "CrashLoop",
          absl::StrCat("failed ", w.restarts.size() + 1, " times within ", absl::FormatDuration(window), "; not restarting"));
    return;
  }
  absl::Duration backoff = options_.restart_backoff * (1 << std::min<size_t>(w.restarts.size(), 16));
  w.restarts.push_back(now);
  w.restart_at = now + backoff;
  Event(name, "Normal", "RestartScheduled", absl::StrCat("restart in ", absl::FormatDuration(backoff)));
}

void Agent::Takeover(const std::string& failed, const std::string& standby, absl::Duration detected) {
  std::vector<kernel::DeviceEntry> devices;
  {
    absl::MutexLock lock(&mu_);
    for (const auto& in : state_.instances()) {
      if (in.name() != failed) continue;
      for (const auto& d : in.status().placement().devices()) devices.push_back({d.pci(), "", "vfio-pci", 0});
    }
  }
  absl::Status s = kernel_.MoveDevices(failed, standby, devices);
  std::vector<std::string> names;
  for (const auto& d : devices) names.push_back(d.pci_id);
  absl::MutexLock lock(&mu_);
  if (!s.ok()) {
    metrics::TakeoverFailed();
    Event(failed, "Warning", "TakeoverFailed", std::string(s.message()));
    return;
  }
  metrics::Failover(clock_.Monotonic() - detected);
  Event(failed, "Normal", "StandbyTakeover",
        absl::StrCat(standby, " took over devices [", absl::StrJoin(names, ", "), "]"));
  // Roles swap; each now backs the other.
  watched_[standby].role = "primary";
  watched_[failed].role = "standby";
  v1::LocalPolicy& sp = policies_[standby];
  sp.set_instance(standby);
  *sp.mutable_failover() = policies_[failed].failover();
  sp.set_standby_instance(failed);
  policies_[failed].set_standby_instance(standby);
  (void)SavePolicies(policies_);  // a failure is a Warning event: the takeover itself happened
}

v1::InventoryResponse Agent::Inventory() {
  v1::InventoryResponse r;
  r.set_host(options_.host);
  *r.mutable_topology() = topology_->ToProto();
  auto d = kernel_.ProbeDialect();
  r.set_dialect(d.ok() ? kernel::DialectName(*d) : "unknown");
  r.add_capabilities("hotplug-cpu");
  r.add_capabilities("hotplug-memory");
  r.add_capabilities("hotplug-device");
  r.add_capabilities("standby-takeover");
  r.set_agent_version(options_.version);
  absl::MutexLock lock(&mu_);
  *r.mutable_pool() = state_.pool();
  return r;
}

absl::StatusOr<v1::ExecuteResponse> Agent::Execute(const v1::ActionBatch& batch) {
  std::set<std::string> touched;
  for (const auto& a : batch.actions()) touched.insert(a.instance());
  {
    // The watchdog leaves these alone until their new state is recorded below.
    absl::MutexLock lock(&mu_);
    for (const std::string& name : touched) ++in_flight_[name];
  }
  absl::StatusOr<v1::ExecuteResponse> r = executor_.Execute(batch);
  // The batch's instances take their new state as expected (read now, without the lock); a
  // crash elsewhere during the batch is still a transition for the watchdog to see. The
  // full state is rebuilt by the watchdog's next pass.
  std::map<std::string, v1::KernelState> after;
  for (const std::string& name : touched) {
    if (name.empty()) continue;
    auto state = kernel_.StateOf(name);
    if (state.ok()) after[name] = *state;
  }
  absl::MutexLock lock(&mu_);
  ++batches_done_;
  const int64_t mark = BatchMark(batches_done_);
  for (const std::string& name : touched) {
    if (--in_flight_[name] == 0) in_flight_.erase(name);
    if (name.empty()) continue;
    touched_at_[name] = batches_done_;
    auto it = after.find(name);
    if (it != after.end() && it->second != v1::KERNEL_STATE_ABSENT) {
      watched_[name].last = it->second;
    } else {
      touched_at_.erase(name);
    }
  }
  RequestRefresh();
  if (!r.ok()) {
    Event("", "Warning", "BatchRefused", std::string(r.status().message()));
    return r;
  }
  r->set_batch_mark(mark);
  for (int i = 0; i < r->results_size() && i < batch.actions_size(); ++i) {
    const v1::ActionResult& res = r->results(i);
    if (res.replayed()) continue;
    const v1::Action& a = batch.actions(i);
    Event(a.instance(), res.code() == 0 ? "Normal" : "Warning", res.code() == 0 ? "ActionDone" : "ActionFailed",
          absl::StrCat(a.id(), res.message().empty() ? "" : ": ", res.message()));
  }
  return r;
}

absl::Status Agent::SetPolicy(const v1::SetPolicyRequest& request) {
  for (const auto& p : request.policies()) {
    if (p.instance().empty()) return absl::InvalidArgumentError("policy without an instance");
    if (p.failover().policy() == v1::FAILOVER_STANDBY && p.standby_instance().empty()) {
      return absl::InvalidArgumentError(absl::StrCat("policy for ", p.instance(), ": Standby needs standby_instance"));
    }
    if (p.standby_instance() == p.instance()) {
      return absl::InvalidArgumentError(absl::StrCat("policy for ", p.instance(), ": an instance cannot be its own standby"));
    }
  }
  const v1::Fence& fence = request.fence();
  if (fence.epoch() != 0 || fence.sequence() != 0) {
    v1::Fence taken = journal_.fence();
    if (FenceBefore(fence, taken)) {
      return absl::AbortedError(absl::StrCat("stale policy update: fence ", fence.epoch(), ".", fence.sequence(),
                                             " is older than ", taken.epoch(), ".", taken.sequence()));
    }
    absl::Status s = journal_.RecordFence(fence);
    if (!s.ok()) return s;
  }
  absl::MutexLock lock(&mu_);
  // Written first: a policy that could not be kept (a full disk) is not taken.
  std::map<std::string, v1::LocalPolicy> next = request.replace() ? std::map<std::string, v1::LocalPolicy>() : policies_;
  for (const auto& p : request.policies()) next[p.instance()] = p;
  if (absl::Status saved = SavePolicies(next); !saved.ok()) return saved;
  policies_ = std::move(next);
  for (const auto& p : request.policies()) {
    Watched& w = watched_[p.instance()];
    if (w.role.empty() && p.failover().policy() == v1::FAILOVER_STANDBY) w.role = "primary";
    if (!p.standby_instance().empty() && watched_[p.standby_instance()].role.empty()) {
      watched_[p.standby_instance()].role = "standby";
    }
  }
  RequestRefresh();  // probes follow the new policies from the next pass
  return absl::OkStatus();
}

absl::Status Agent::SavePolicies(const std::map<std::string, v1::LocalPolicy>& policies) {
  if (options_.state_dir.empty()) return absl::OkStatus();
  v1::SetPolicyRequest all;
  for (const auto& [name, p] : policies) *all.add_policies() = p;
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);  // mkagent made it 0700 already
  absl::Status s = WriteFileAtomically(options_.state_dir + "/policies.pb", all.SerializeAsString());
  if (!s.ok()) Event("", "Warning", "PolicySaveFailed", std::string(s.message()));
  return s;
}

absl::Status Agent::LoadPolicies() {
  if (options_.state_dir.empty()) return absl::OkStatus();
  const std::string path = options_.state_dir + "/policies.pb";
  auto data = ReadFile(path, /*follow_symlinks=*/false);
  if (absl::IsNotFound(data.status())) return absl::OkStatus();  // none set yet
  if (!data.ok()) return data.status();
  v1::SetPolicyRequest all;
  if (!all.ParseFromString(*data)) {
    return absl::DataLossError(absl::StrCat(path, " is corrupt (", data->size(), " bytes); move it away to start with "
                                            "no local policies (the controller sends them again)"));
  }
  for (const auto& p : all.policies()) policies_[p.instance()] = p;
  return absl::OkStatus();
}

v1::HostState Agent::Snapshot() {
  absl::MutexLock lock(&mu_);
  v1::HostState s = state_;
  s.set_snapshot(true);
  s.set_resource_version(version_);
  for (const auto& e : events_) *s.add_events() = e;
  return s;
}

bool Agent::WaitForChange(int64_t version, absl::Duration timeout, v1::HostState* out) {
  absl::MutexLock lock(&mu_);
  auto newer = [this, version]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return version_ > version || stop_; };
  if (!mu_.AwaitWithTimeout(absl::Condition(&newer), timeout) || stop_) return false;
  out->Clear();
  out->set_resource_version(version_);
  out->set_batch_mark(state_.batch_mark());
  if (pool_changed_at_ > version) *out->mutable_pool() = state_.pool();
  for (const auto& in : state_.instances()) {
    auto it = changed_at_.find(in.name());
    if (it != changed_at_.end() && it->second > version) *out->add_instances() = in;
  }
  if (version < removals_forgotten_ || version < first_version_) {
    // Too far behind to list what went, or from an earlier run of this agent (which may
    // have seen kernels this one never knew): the whole state instead.
    out->set_snapshot(true);
    out->clear_instances();
    *out->mutable_instances() = state_.instances();
    *out->mutable_pool() = state_.pool();
  } else {
    for (const auto& [at, name] : removed_at_) {
      if (at > version) out->add_removed(name);
    }
  }
  for (const auto& e : events_) {
    if (e.seq() > version) *out->add_events() = e;
  }
  return true;
}

std::vector<v1::Event> Agent::Events() {
  absl::MutexLock lock(&mu_);
  return {events_.begin(), events_.end()};
}

}  // namespace mkfleet::agents
