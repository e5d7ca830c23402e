// Agent: one host's agent core, behind the gRPC service (agent_service.h). It keeps the
// host's observed state (rebuilt from the kernel on every pass, versioned for Watch), runs
// action batches through the Executor, holds local policies, and runs the watchdog:
//  - every `poll_interval` (10 ms) it observes instance states; an unrequested
//    active -> loaded is a crash;
//  - every instance's liveness probe runs at its heartbeat interval; `misses` failures in
//    a row is a hang: force-halt, then as a crash;
//  - policy Restart: start again with exponential backoff; after max_restarts in the
//    window, give up and report CrashLoop;
//  - policy Standby: the standby (already active) receives the failed instance's devices
//    in one transaction, the roles swap, and the failed kernel restarts as the new standby.
// Every step is an event with its time. The watchdog never holds the agent's lock across a
// kernel call or a probe, and its restarts do not wait for the boot, so one slow boot or
// halt does not delay crash detection of the other instances.
//
// Observed state: each instance carries the version at which it last changed and its
// owner (as recorded at create); the host's version rises with every change. Removals are
// remembered for the last kMaxRemovals changes; a watcher further behind gets a snapshot.
// Thread-safety: all public methods are safe to call concurrently.
#ifndef MKFLEET_AGENTS_AGENT_H_
#define MKFLEET_AGENTS_AGENT_H_

#include <atomic>
#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "agents/action_journal.h"
#include "agents/executor.h"
#include "agents/liveness.h"
#include "agents/morph.h"
#include "common/clock.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology.h"

namespace mkfleet::agents {

struct AgentOptions {
  std::string host = "localhost";
  std::string state_dir;  // policies are persisted here
  absl::Duration poll_interval = absl::Milliseconds(10);
  absl::Duration default_heartbeat = absl::Milliseconds(100);
  uint32_t default_misses = 3;
  absl::Duration restart_backoff = absl::Milliseconds(100);  // doubles per restart
  uint32_t max_restarts = 5;
  absl::Duration restart_window = absl::Seconds(60);
  size_t max_events = 256;
  std::string version = "0.1.0";
  // The kernel's change tracking (the emulator's, EmulatedKernel::Generation and
  // NextTimedChange): with both set, TickIfDue() skips passes in which nothing can have
  // changed. Unset (a real kernel): every TickIfDue() is a pass.
  std::function<uint64_t()> kernel_generation;
  std::function<absl::Duration()> kernel_next_change;
  // Whether the liveness probe's answer changes only with the kernel's tracked state (the
  // emulator's probe while it runs no guest; asked at every pass). With the change tracking,
  // an instance whose last probe answered is probed again only once the kernel changed
  // since; one that missed keeps its heartbeat. Unset: every heartbeat probes.
  std::function<bool()> probe_follows_kernel;
};

class Agent {
 public:
  Agent(AgentOptions options, kernel::HostKernel& kernel, std::shared_ptr<const planner::Topology> topology,
        ActionJournal& journal, LivenessProbe& probe, Clock& clock);
  ~Agent();

  // Live updates (agents/morph.h) through `dial` to the instances' guests; resumes what the
  // morph journal (options.dir) holds. Call before Start().
  absl::Status EnableMorph(GuestDialer dial, MorphOptions options);
  Morpher* morpher() { return morpher_.get(); }

  // Runs the watchdog on its own thread until Stop().
  void Start();
  void Stop();
  // One watchdog pass (tests drive it with a simulated clock).
  void Tick();
  // For one watchdog shared by many agents (FleetWatchdog, instead of Start()): a pass if
  // one is due (a batch or a morph changed something, the kernel's generation moved, a
  // liveness probe, a restart or a timed kernel change is due, or this is the first), else
  // nothing. Returns whether it ran a pass.
  bool TickIfDue();

  mkfleet::v1::InventoryResponse Inventory();
  // ABORTED (nothing run) for a stale fence; else one result per action.
  absl::StatusOr<mkfleet::v1::ExecuteResponse> Execute(const mkfleet::v1::ActionBatch& batch);
  // ABORTED for a stale fence (the policies are not changed).
  absl::Status SetPolicy(const mkfleet::v1::SetPolicyRequest& request);
  const std::string& host() const { return options_.host; }
  // What reading the saved policies found: DataLoss for a corrupt file (the agent must not
  // start on it), the read error, or OK.
  const absl::Status& load_status() const { return load_status_; }
  // The executor, for test hooks (Executor::SetObserver).
  Executor& executor() { return executor_; }

  static constexpr size_t kMaxRemovals = 4096;
  // An event's message is cut to this many bytes: max_events (256) of them stay far below
  // gRPC's 4 MiB message limit in a Watch snapshot.
  static constexpr size_t kMaxEventMessage = 1024;

  // The full state now.
  mkfleet::v1::HostState Snapshot();
  // Called after every change of the state (a new resource version), with the agent's lock
  // held: it must be cheap and must not call into the agent (agent_watch.h's notifier only
  // marks the agent). Set before the agent is shared between threads.
  void SetChangeHook(std::function<void()> hook) { change_hook_ = std::move(hook); }
  // Set (true) whenever something asks for a pass sooner than its time (a batch, a morph's
  // step, new policies), for a watchdog that passes only the hosts whose flag it finds set
  // or whose time is due (fleet_watchdog.h). Null: none.
  void SetWakeFlag(std::atomic<bool>* flag) {
    absl::MutexLock lock(&mu_);
    wake_flag_ = flag;
  }
  // When TickIfDue is next due by time alone (a probe, a restart, a timed change of the
  // kernel), on the agent's clock's Monotonic(); zero (now) before the first pass, while a
  // pass is asked for, or when the kernel's changes are not tracked.
  absl::Duration NextDue();
  // Waits until the state is newer than `version` (or `timeout`); returns the changes since
  // `version` (a full snapshot if `version` is too old to diff). False on timeout.
  bool WaitForChange(int64_t version, absl::Duration timeout, mkfleet::v1::HostState* out);
  std::vector<mkfleet::v1::Event> Events();

 private:
  struct Watched {
    mkfleet::v1::KernelState last = mkfleet::v1::KERNEL_STATE_UNKNOWN;
    uint32_t id = 0;
    uint32_t misses = 0;
    absl::Duration next_probe;
    // The kernel's generation before the last probe that answered (probe_follows_kernel),
    // and whether there was one since the instance last became active.
    uint64_t answered_at = 0;
    bool answered = false;
    std::deque<absl::Duration> restarts;  // times of recent restarts
    absl::Duration restart_at = absl::InfiniteDuration();  // a pending restart
    bool crash_loop = false;
    std::string role;  // "", "primary", "standby"
    uint32_t restart_count = 0;
  };

  // Observes the kernel (no lock held) and folds the result into the state.
  void Refresh() ABSL_LOCKS_EXCLUDED(mu_);
  using Observation = absl::StatusOr<std::shared_ptr<const kernel::HostObservation>>;
  // `batches_before`: batches_done_ when `observed` began (the batches it shows).
  void Fold(const Observation& observed, int64_t batches_before) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // What of the agent's own state a fold shows beside an observed instance (its watchdog
  // record and its morph): a fold of the same read with the same of these changes nothing.
  struct FoldInput {
    std::string role;
    uint32_t restart_count = 0;
    bool crash_loop = false;
    size_t restarts = 0;
    std::string morph;  // the serialized MorphStatus, "" for none
    bool operator==(const FoldInput& o) const {
      return role == o.role && restart_count == o.restart_count && crash_loop == o.crash_loop &&
             restarts == o.restarts && morph == o.morph;
    }
  };
  // What the watchdog decided to do this pass, done without the lock.
  struct Step {
    enum Kind { kForceHalt, kTakeover, kRestart } kind;
    std::string name;
    std::string standby;  // kTakeover
    absl::Duration detected = absl::InfiniteDuration();  // when the failure was seen (Monotonic)
  };
  void Event(const std::string& name, const std::string& type, const std::string& reason, const std::string& message)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Decides what a failure of `name` leads to: a takeover step (appended to `steps`), a
  // scheduled restart, or giving up.
  void OnFailure(const std::string& name, Watched& w, const std::string& what, std::vector<Step>* steps)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Takeover(const std::string& name, const std::string& standby, absl::Duration detected) ABSL_LOCKS_EXCLUDED(mu_);
  const mkfleet::v1::LocalPolicy* PolicyFor(const std::string& name) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SavePolicies(const std::map<std::string, mkfleet::v1::LocalPolicy>& policies)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status LoadPolicies() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const AgentOptions options_;
  kernel::HostKernel& kernel_;
  std::shared_ptr<const planner::Topology> topology_;
  LivenessProbe& probe_;
  Clock& clock_;
  ActionJournal& journal_;
  Executor executor_;

  absl::Mutex mu_;
  std::map<std::string, Watched> watched_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, mkfleet::v1::LocalPolicy> policies_ ABSL_GUARDED_BY(mu_);
  mkfleet::v1::HostState state_ ABSL_GUARDED_BY(mu_);  // full, at version_
  int64_t version_ ABSL_GUARDED_BY(mu_) = 0;
  std::function<void()> change_hook_;
  std::map<std::string, int64_t> changed_at_ ABSL_GUARDED_BY(mu_);  // instance -> version of last change
  // The last fold's observation (HostObservation::read, 0: none) and agent-side inputs.
  uint64_t folded_read_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<FoldInput> folded_inputs_ ABSL_GUARDED_BY(mu_);
  std::deque<std::pair<int64_t, std::string>> removed_at_ ABSL_GUARDED_BY(mu_);  // (version, name), oldest first
  int64_t removals_forgotten_ ABSL_GUARDED_BY(mu_) = 0;  // the newest version of a forgotten removal
  // The version this run started at: anything older comes from an earlier run, which may
  // have seen kernels this run never knew (their removal is not in removed_at_).
  int64_t first_version_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<mkfleet::v1::Event> events_ ABSL_GUARDED_BY(mu_);
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::string last_observe_error_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> in_flight_ ABSL_GUARDED_BY(mu_);  // instances of running batches
  // Batches finished so far, and the count when each instance was last touched by one: a
  // watchdog observation older than that is not used for it.
  // A batch's mark (ExecuteResponse.batch_mark) is first_version_ + its count: above the
  // last run's (its versions started at an earlier time).
  int64_t batches_done_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> touched_at_ ABSL_GUARDED_BY(mu_);
  bool refresh_requested_ ABSL_GUARDED_BY(mu_) = false;  // an Execute changed something
  std::atomic<bool>* wake_flag_ ABSL_GUARDED_BY(mu_) = nullptr;
  // A new resource version (a change of the state), told to the change hook.
  void NewVersion() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    ++version_;
    if (change_hook_) change_hook_();
  }
  // The mark of the batch that made the count `batches` (ExecuteResponse.batch_mark).
  int64_t BatchMark(int64_t batches) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return first_version_ + batches; }
  // Whether the kernel's changes are tracked (a pass only when one may have come).
  bool Tracked() const { return options_.kernel_generation && options_.kernel_next_change; }
  // Asks for a pass (refresh_requested_, and the wake flag).
  void RequestRefresh() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    refresh_requested_ = true;
    if (wake_flag_ != nullptr) wake_flag_->store(true, std::memory_order_release);
  }
  // TickIfDue: the kernel generation the last pass started from, and when the next is due.
  bool ticked_ ABSL_GUARDED_BY(mu_) = false;
  uint64_t seen_generation_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration next_due_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
  int64_t pool_changed_at_ ABSL_GUARDED_BY(mu_) = 0;  // version of the last pool change
  // Kernels a running morph watches (the watchdog leaves them alone), by hold count.
  std::map<std::string, int> morphing_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Morpher> morpher_;
  std::thread thread_;
  absl::Status load_status_;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_AGENT_H_
