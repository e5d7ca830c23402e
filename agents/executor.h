// Executor: runs the controller's action batches on this host's kernel, exactly once per
// action id.
//  - Fencing: a batch whose fence (controller epoch, sequence) is older than one already
//    taken is refused whole (ABORTED), so a delayed or re-ordered call never undoes a
//    newer decision; the newest fence is journalled.
//  - Failure domains: each instance is one. After an action of an instance fails, the rest
//    of that instance's actions in the batch are not run (ABORTED, naming the failed one);
//    other instances go on.
//  - Before an instance is taken down to get a new kernel (replace, re-create), the image
//    its load will take is checked first, so a missing or mis-pinned kernel fails while the
//    old one still runs.
//  - Every action carries the kernel state it expects (checked before anything is touched)
//    and, once it succeeded, is recorded in the journal (synced per batch), so a re-sent id
//    returns the recorded result. A failed action changed nothing and runs again when
//    re-sent. An action whose effect is already there succeeds without a kernel call
//    (HostKernel is idempotent, memory changes carry their target), which also covers a
//    crash between running an action and recording it.
// Thread-safety: Execute calls are serialized (one batch at a time).
#ifndef MKFLEET_AGENTS_EXECUTOR_H_
#define MKFLEET_AGENTS_EXECUTOR_H_

#include <functional>
#include <memory>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "agents/action_journal.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology.h"

namespace mkfleet::agents {

// Runs the live-update actions (agents/morph.h; the Agent provides it).
// The image a LoadKernel action loads.
kernel::KernelImage KernelImageOf(const mkfleet::v1::LoadKernel& load);

class MorphHandler {
 public:
  virtual ~MorphHandler() = default;
  virtual absl::Status Start(const std::string& instance, const mkfleet::v1::MorphStart& start) = 0;
  virtual absl::Status Commit(const std::string& instance) = 0;
  virtual absl::Status Rollback(const std::string& instance, const std::string& reason) = 0;
};

// The kernel resources of a placement on this host: CPUs as physical ids (boot CPU first),
// the CPUs it may later be handed (every CPU of its NUMA nodes and of `also_nodes`), memory
// on the node with most of it (the others' shares are added in the create's transaction),
// devices, virtio, LLC ways.
absl::StatusOr<kernel::InstanceResources> PlacementResources(const planner::Topology& topology,
                                                             const mkfleet::v1::Placement& p,
                                                             const std::set<uint32_t>& also_nodes = {});

class Executor {
 public:
  Executor(kernel::HostKernel& kernel, ActionJournal& journal, std::shared_ptr<const planner::Topology> topology);

  // ABORTED for a stale fence (nothing run); otherwise one result per action.
  absl::StatusOr<mkfleet::v1::ExecuteResponse> Execute(const mkfleet::v1::ActionBatch& batch);

  // Called after each action that ran (not replayed), with its result: a test hook (the
  // fleet simulation checks that no action takes effect twice).
  void SetMorphHandler(MorphHandler* handler) { morph_ = handler; }
  void SetObserver(std::function<void(const mkfleet::v1::Action&, const mkfleet::v1::ActionResult&)> observer) {
    observer_ = std::move(observer);
  }

 private:
  absl::Status Run(const mkfleet::v1::Action& action);
  absl::StatusOr<kernel::InstanceResources> Resources(const mkfleet::v1::CreateInstance& create) const;
  std::vector<kernel::CpuEntry> Cpus(const mkfleet::v1::CpuChange& change) const;
  // FailedPrecondition naming the first CPU (physical ids) outside the pool.
  absl::Status InPool(const std::string& id, const std::vector<uint64_t>& physical);
  // The bytes per node to add (or remove) to reach the change's target, or its relative form.
  absl::StatusOr<std::vector<mkfleet::v1::NodeBytes>> MemoryDelta(const std::string& instance,
                                                                  const mkfleet::v1::MemoryChange& change, bool add);
  // Before the instance's first action, when that action takes it down: the image checks a
  // load in the same batch will make, and for a re-create (down, removed, created again)
  // that its new placement fits in what it holds, what is free and what the batch removes
  // before its create (CheckFits): a re-create into room another action was to make, and
  // did not, keeps the old kernel running.
  absl::Status Preflight(const mkfleet::v1::ActionBatch& batch, const std::string& instance);
  absl::Status CheckFits(const std::string& instance, const mkfleet::v1::Action& create,
                         const std::set<std::string>& freed);

  kernel::HostKernel& kernel_;
  ActionJournal& journal_;
  std::shared_ptr<const planner::Topology> topology_;
  absl::Mutex run_mu_;  // one batch at a time
  std::string note_;    // the last action's note (what a pool change left), under run_mu_
  std::function<void(const mkfleet::v1::Action&, const mkfleet::v1::ActionResult&)> observer_;
  MorphHandler* morph_ = nullptr;
};

// The kernel state an action leaves its instance in (KERNEL_STATE_UNKNOWN when it does not
// change it), for idempotent replays.
mkfleet::v1::KernelState StateAfter(const mkfleet::v1::Action& action);

// Whether `name` may name an instance: a DNS label (it also names files of the agent).
bool ValidInstanceName(const std::string& name);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_EXECUTOR_H_
