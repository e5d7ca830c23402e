// Executor: runs the controller's action batches on this host's kernel, exactly once per
// action id. A batch runs in order and stops at the first failure; every action carries
// the kernel state it expects (checked before anything is touched) and, once it succeeded,
// is recorded in the journal (synced per batch), so a re-sent id returns the recorded
// result. A failed action changed nothing and runs again when re-sent. An action
// whose effect is already there succeeds without a kernel call (HostKernel is idempotent),
// which also covers a crash between running an action and recording it.
// Thread-safety: Execute calls are serialized (one batch at a time).
#ifndef MKFLEET_AGENTS_EXECUTOR_H_
#define MKFLEET_AGENTS_EXECUTOR_H_

#include <memory>

#include "absl/synchronization/mutex.h"
#include "agents/action_journal.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology.h"

namespace mkfleet::agents {

class Executor {
 public:
  Executor(kernel::HostKernel& kernel, ActionJournal& journal, std::shared_ptr<const planner::Topology> topology);

  mkfleet::v1::ExecuteResponse Execute(const mkfleet::v1::ActionBatch& batch);

  // Names of instances an action is currently changing (the watchdog leaves them alone).
  bool Busy(const std::string& instance) const;

 private:
  absl::Status Run(const mkfleet::v1::Action& action);
  absl::StatusOr<kernel::InstanceResources> Resources(const mkfleet::v1::CreateInstance& create) const;
  std::vector<kernel::CpuEntry> Cpus(const mkfleet::v1::CpuChange& change) const;
  // FailedPrecondition naming the first CPU (physical ids) outside the pool.
  absl::Status InPool(const std::string& id, const std::vector<uint64_t>& physical);
  absl::StatusOr<std::vector<kernel::MemoryEntry>> MemoryToAdd(const mkfleet::v1::MemoryChange& change);
  absl::StatusOr<std::vector<kernel::MemoryEntry>> MemoryToRemove(const std::string& instance,
                                                                 const mkfleet::v1::MemoryChange& change);

  kernel::HostKernel& kernel_;
  ActionJournal& journal_;
  std::shared_ptr<const planner::Topology> topology_;
  absl::Mutex run_mu_;  // one batch at a time
  std::string note_;    // the last action's note (what a pool change left), under run_mu_
  mutable absl::Mutex busy_mu_;
  std::string busy_ ABSL_GUARDED_BY(busy_mu_);
};

// The kernel state an action leaves its instance in (KERNEL_STATE_UNKNOWN when it does not
// change it), for idempotent replays.
mkfleet::v1::KernelState StateAfter(const mkfleet::v1::Action& action);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_EXECUTOR_H_
