// The rollout engine's pure core: one step of one rollout (an InstanceSet's move to its
// newest template revision), from the stored progress, what the members run and whether they
// are Ready, and the time. No I/O; the same inputs give the same outputs (the canaries are
// the members with the smallest hash of owner, revision and name).
//
// The steps, as docs/manifests.md ("rollout") and issue 13 describe them:
//  - canary (count or percent of the members, rounded up; chosen in the first wave) first;
//    with pauseAfterCanary the rollout pauses once they are done, until resumed;
//  - then waves (waves.by: a host label; each value's members are done before the next
//    value starts; values sorted, or in waves.order);
//  - a member is let move ("admitted") only within the fleet-wide budget: Replace,
//    maxUnavailable members down at once (down for any reason, or admitted and not yet
//    taken down); Morph, maxSurge members morphing at once;
//  - a member is done once it runs the revision and has been Ready for minReady; it has
//    failed when it is not Ready within healthTimeout of its admission, crash-loops, or its
//    live update to the revision rolled back;
//  - at maxFailures the rollout stops: Failed (held as it is), or with autoRollback
//    RollingBack (every admitted member goes back to the stable revision) then RolledBack:
//    the failed revision is held until a new revision (a spec change or an undo).
// Members not admitted keep the revision they run (a new member gets the target, or the
// stable revision while a failed one is held).
#ifndef MKFLEET_RECONCILER_ROLLOUT_H_
#define MKFLEET_RECONCILER_ROLLOUT_H_

#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"

namespace mkfleet::reconciler {

struct RolloutMember {
  std::string name;
  std::string wave;     // its host's value of waves.by ("" without waves or label)
  std::string kernel;   // the KernelRevision it serves ("" none yet)
  bool up = false;      // Ready: in its wanted state, not degraded, no live update running
  std::string failure;  // it crash-loops, or its live update to `failed_kernel` rolled back: why
  std::string failed_kernel;  // the kernel revision `failure` is about ("" any)
  // A RolloutPolicy's member has a spec of its own in each revision: revision -> its
  // KernelRevision there. Empty for a set's member (the view's revisions are the members').
  std::map<uint32_t, std::string> kernels;
};

struct RolloutView {
  std::string owner;  // "InstanceSet/web", "RolloutPolicy/web-fleet"
  mkfleet::v1::Rollout policy;
  bool morph = false;  // the target's update strategy is Morph
  uint32_t target = 0;              // the newest revision
  std::string target_kernel;        // its KernelRevision
  // KernelRevision -> the newest revision number with that kernel (every revision kept).
  std::map<std::string, uint32_t> revision_of_kernel;
  std::map<uint32_t, std::string> kernel_of_revision;
  std::vector<RolloutMember> members;  // every member seen, in any order
  absl::Time now;
  // Some host the set selects is not connected (a controller just started, an agent away):
  // members may be missing from `members`, so nothing moves on (no admission, failure or
  // completion) and members run what they were told.
  bool frozen = false;
  // The members the last reconcile pass placed (null: not known). A member let move and not
  // seen now holds budget while it is being re-created (a Replace); one the last pass did not
  // place is gone for good (a set that shrank, or one that no longer fits) and holds none.
  std::optional<std::set<std::string>> placed;
  // Members the last pass placed that no host shows yet (being created): down, for the
  // Replace budget (the planner's own maxUnavailable guard counts them so).
  std::set<std::string> creating;
};

struct RolloutStep {
  // The revision each member is to run; members not listed (and members not seen yet, such
  // as those about to be created) run `default_revision`: the target, or the stable one
  // while a failed revision is held back.
  std::map<std::string, uint32_t> revision_of;
  uint32_t default_revision = 0;
  // Transitions (reason, message), in order.
  std::vector<std::pair<std::string, std::string>> events;
  mkfleet::v1::RolloutStatus status;
  bool changed = false;  // `progress` changed: store it
};

// A count or a percentage of `total` (rounded up), at least `min`; `fallback` when unset.
uint32_t Resolve(const mkfleet::v1::IntOrPercent& v, uint32_t total, uint32_t fallback, uint32_t min);

// The stable revision a step of `progress` towards `target` goes from: a new target starts
// from the last revision that completed.
uint32_t StableFor(const mkfleet::v1::RolloutProgress& progress, uint32_t target);

// One step: updates `progress` (as stored; an empty one starts at `view.target` complete).
RolloutStep StepRollout(const RolloutView& view, mkfleet::v1::RolloutProgress* progress);

const char* RolloutPhaseName(mkfleet::v1::RolloutPhase phase);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_ROLLOUT_H_
