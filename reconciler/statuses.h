// ComputeStatuses: the statuses and events one reconcile pass produces, as a pure function
// of what it planned, what the hosts report and what happened when it sent the plans. No
// I/O and no clock; the reconciler writes the result. Statuses are rebuilt from what is
// observed every pass (never from the previous status); the previous ones only decide what
// changed (so a converged fleet writes nothing) and which transitions make events.
//
// Instances (KernelInstances and set members): phase, kernel state, placement, role,
// serving kernel, conditions Scheduled / Ready / Progressing / Degraded / Resized,
// observedGeneration, restart count. Ready=False always carries the real cause (an
// action's error, a crash loop, an unreachable host), not just a state. Hosts: reachable,
// dialect, pool usage, phase (Terminating while a deleted Host drains), unmanaged kernels,
// conditions Reachable / PoolValid / PoolSynced. Sets: replicas (the spec's count), ready and
// updated members (only those seen on a connected host), conditions Scheduled / Ready.
// RolloutPolicies: members, revisions, the rollout, conditions Ready / Progressing / Conflict.
#ifndef MKFLEET_RECONCILER_STATUSES_H_
#define MKFLEET_RECONCILER_STATUSES_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/host_connection.h"

namespace mkfleet::reconciler {

// What sending one host its plan came to.
struct HostOutcome {
  absl::Status sent;                           // the call itself (or why nothing was sent)
  std::set<std::string> in_plan;               // kernels the sent plan touched
  std::map<std::string, std::string> failed;   // kernel -> why one of its actions failed
  std::map<std::string, std::string> held_back;  // kernel -> why its actions wait (retry backoff)
  std::string pool_note;                       // what a pool change left as it was
  std::vector<mkfleet::v1::Event> events;      // per action failure and more, from the send
};

struct PassInputs {
  const std::set<std::string>& batch;  // the hosts this pass served
  const std::vector<mkfleet::v1::Host>& hosts;
  const std::vector<mkfleet::v1::KernelInstance>& instances;
  const std::vector<mkfleet::v1::InstanceSet>& sets;
  const FleetPlan& fleet;
  const std::map<std::string, HostView>& views;
  const std::map<std::string, HostOutcome>& outcomes;
  // The statuses stored now: key (StatusKey) -> serialized status.
  const std::map<std::string, std::string>& previous;
  // The sets' rollouts, by set name (may be null).
  const std::map<std::string, mkfleet::v1::RolloutStatus>* rollouts = nullptr;
  // The RolloutPolicies and their statuses as the rollouts computed them (may be null).
  const std::vector<mkfleet::v1::RolloutPolicy>* policies = nullptr;
  const std::map<std::string, mkfleet::v1::RolloutPolicyStatus>* policy_statuses = nullptr;
  // Members: the rollout that paces each and the revision of it it runs (may be null).
  const std::map<std::string, std::pair<std::string, uint32_t>>* member_revisions = nullptr;
  // The batch hosts' drift (DriftTracker), by host (may be null).
  const std::map<std::string, std::vector<mkfleet::v1::Drift>>* drift = nullptr;
  // A local pass (Reconciler's early send that stands for the whole pass): only the batch
  // hosts' own statuses (their instances and themselves); no sweep of deleted instances'
  // statuses, no sets, no policies (`instances` and `fleet` hold only the batch's part).
  bool local = false;
};

struct StatusUpdate {
  std::map<std::string, std::string> writes;  // key -> serialized, only changed ones
  std::vector<std::string> deletes;           // keys of statuses that go
  std::vector<mkfleet::v1::Event> events;
};

StatusUpdate ComputeStatuses(const PassInputs& in);

mkfleet::v1::Event MakeEvent(const std::string& kind, const std::string& name, const std::string& host, bool warning,
                             const std::string& reason, const std::string& message);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_STATUSES_H_
