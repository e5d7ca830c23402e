// Morpher: the agent's live-update state machine (docs/morph.md).
//   PREPARING     create `next` on the surge resources, load and start the new kernel, wait
//                 for both guests' heartbeats, MORPH_PREPARE to both
//   NEGOTIATING   MORPH_NEGOTIATE to the new guest, then the old one (which quiesces)
//   TRANSFERRING  the old guest's checkpoint, chunk by chunk, to the new guest (restore)
//   VALIDATING    MORPH_VALIDATE to the new guest; with a manual commit, wait for Commit()
//   COMMITTING    one overlay transaction moves every device of the old kernel to `next`;
//                 MORPH_COMMIT to the new guest (the handover gap ends), then the old one;
//                 the old kernel is halted, unloaded and removed, and `next` receives CPUs
//                 and memory by hot-plug until it has the target's
//   COMMITTED
// or, from any state before the devices moved, ROLLING_BACK (MORPH_ROLLBACK to the new
// guest; `next` halted, unloaded, removed; MORPH_ROLLBACK to the old guest, which resumes)
// -> ROLLED_BACK. The old kernel is never stopped before the commit.
//
// Every step is journaled (one file per morph under `dir`, replaced atomically; the first
// synced, the others written: they outlive the agent, and what a restart needs beyond the
// first the kernel tells) before it runs. After a restart, Resume() drives each unfinished morph to an end: one
// that had not moved the devices rolls back (the kernel says whether they moved), one that
// had goes on committing. So a device is never owned by both kernels or by neither.
// Rollback triggers: the new kernel crashes or stops answering, a hook fails or times out
// (the guest's ERROR), PREPARING..VALIDATING outlives the timeout, validation fails, a
// corrupt KMP frame, the old kernel crashing, Rollback().
// Thread-safety: all public methods are safe to call concurrently; each morph runs on a
// thread of its own.
#ifndef MKFLEET_AGENTS_MORPH_H_
#define MKFLEET_AGENTS_MORPH_H_

#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "absl/synchronization/mutex.h"
#include "agents/executor.h"
#include "agents/liveness.h"
#include "common/clock.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology.h"
#include "proto/morph_phase.h"

namespace mkfleet::agents {

using ::mkfleet::MorphEnded;
using ::mkfleet::MorphPhaseName;

struct MorphHooks {
  // An event about instance `name` (type Normal/Warning, reason, message).
  std::function<void(const std::string& name, const std::string& type, const std::string& reason,
                      const std::string& message)>
      event;
  // The watchdog leaves `name` alone from Hold until Release (the morph watches it).
  std::function<void(const std::string& name)> hold;
  std::function<void(const std::string& name)> release;
  // Something a watcher should see changed (a phase).
  std::function<void()> changed;
};

struct MorphOptions {
  std::string dir;  // the journal: one file per morph
  absl::Duration call_timeout = absl::Seconds(30);  // one KMP exchange (hooks included)
  absl::Duration heartbeat_wait = absl::Seconds(30);  // a new guest has this long to answer
  // Run each morph in the caller's thread (Start returns once it ended, or the retries
  // below gave up): the deterministic fleet simulation drives the agent from one thread.
  bool inline_runs = false;
  // Attempts at removing a kernel (the new one in a rollback, the old one after the commit)
  // before leaving it to the agent's next start; 0: until it works or the agent stops.
  int retries = 0;
  // Test hook: called at the start of each phase (e.g. to SIGKILL the agent there).
  std::function<void(mkfleet::v1::MorphPhase)> on_phase;
};

class Morpher final : public MorphHandler {
 public:
  Morpher(MorphOptions options, kernel::HostKernel& kernel, std::shared_ptr<const planner::Topology> topology,
          GuestDialer dial, Clock& clock, MorphHooks hooks);
  ~Morpher();

  // Begins a morph of kernel `instance` (journaled before it returns; then it runs on its
  // own). The same morph id again is a no-op; another while one runs is FailedPrecondition.
  absl::Status Start(const std::string& instance, const mkfleet::v1::MorphStart& start) override;
  // Manual commit: FailedPrecondition when no morph of `instance` waits for one (none, or
  // it already ended).
  absl::Status Commit(const std::string& instance) override;
  // Asks the running morph of `instance` to roll back; FailedPrecondition once it committed
  // (or there is none).
  absl::Status Rollback(const std::string& instance, const std::string& reason) override;
  // Picks up every morph the journal holds (at start): unfinished ones are driven to an end.
  absl::Status Resume();
  // The morph to report for kernel `name`: the running one it takes part in, or the last
  // one that ended with it serving.
  std::optional<mkfleet::v1::MorphStatus> StatusOf(const std::string& name);
  // Waits for every running morph's thread (tests); Stop() ends them early (agent exit:
  // the journal takes over at the next start).
  void Wait();
  void Stop();

 private:
  struct Run;
  // Commit (or roll back) the running morph of `instance`, refusing what cannot be.
  absl::Status Request(const std::string& instance, bool commit, const std::string& reason);
  // The morph of `instance` (by old or new kernel), under mu_.
  std::shared_ptr<Run> Find(const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Launch(std::shared_ptr<Run> run) ABSL_LOCKS_EXCLUDED(mu_);
  void Drive(std::shared_ptr<Run> run);
  absl::Status Save(Run& run, bool sync = false);
  // Whether the new kernel holds devices (only the commit gives it any).
  bool NextHoldsDevices(Run& run);
  // Steps; a non-OK status rolls the morph back with its message as the reason.
  absl::Status Prepare(Run& run);
  absl::Status Negotiate(Run& run);
  absl::Status Transfer(Run& run);
  absl::Status Validate(Run& run);
  absl::Status CommitDevices(Run& run);
  absl::Status Finish(Run& run);
  // Cancelled when the agent stops before the new kernel is gone (the journal says
  // RollingBack; the next start goes on).
  absl::Status RollBack(Run& run);
  // Runs `step` until it succeeds; Cancelled when the agent stops or `retries` ran out. One
  // Warning event `reason` on the first failure.
  absl::Status Retry(Run& run, const std::string& reason, const std::function<absl::Status()>& step);
  void SetPhase(Run& run, mkfleet::v1::MorphPhase phase, const std::string& message);
  // Dials instance `id`'s guest and waits for its heartbeat (naming `id`).
  absl::StatusOr<std::unique_ptr<kmp::Connection>> Connect(Run& run, const std::string& name, uint32_t id,
                                                          absl::Duration wait);
  // A KMP call bounded by the morph's deadline (before the commit) and call_timeout; the
  // reason names the side and the phase.
  absl::StatusOr<kmp::Frame> Call(Run& run, kmp::Connection& conn, const std::string& side, kmp::MsgType type,
                                  const google::protobuf::MessageLite& payload);
  // Whether the run was asked to stop (agent exit) or roll back.
  absl::Status Interrupted(Run& run);

  const MorphOptions options_;
  kernel::HostKernel& kernel_;
  std::shared_ptr<const planner::Topology> topology_;
  GuestDialer dial_;
  Clock& clock_;
  MorphHooks hooks_;
  absl::Mutex mu_;
  std::map<std::string, std::shared_ptr<Run>> runs_ ABSL_GUARDED_BY(mu_);  // by morph id
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_MORPH_H_
