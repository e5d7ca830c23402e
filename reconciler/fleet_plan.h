// PlanFleet: one reconcile pass's pure core. From the stored objects and the connected
// hosts' views it computes placements (stable: what runs keeps its CPUs when it still
// fits) and, per host, the differ's ordered plan. No I/O.
//
// A standby takeover on a host (the agent's watchdog moved X's devices to X-standby and
// swapped their roles) is kept: X is then served by the kernel X-standby, and X-standby
// by the kernel X, so the controller does not undo the failover.
//
// Rollouts: a set member whose plan takes it down (a kernel Replace, a re-create) goes
// only while fewer than the set's `rollout.maxUnavailable` members (default 1) are down;
// the others wait (`deferred`), in name order, for a later pass.
//
// Hosts never connected (no topology yet) take no part: instances fixed to them wait, and
// InstanceSets spread over the others. Hosts connected before but unreachable now keep
// their instances' placements (their last view counts) but get no plan.
#ifndef MKFLEET_RECONCILER_FLEET_PLAN_H_
#define MKFLEET_RECONCILER_FLEET_PLAN_H_

#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mkfleet/v1/manifest.pb.h"
#include "planner/placement.h"
#include "reconciler/differ.h"
#include "reconciler/host_connection.h"

namespace mkfleet::reconciler {

// The planner's view of a host: its topology and the pool its agent reports (all pool
// CPUs, memory and devices, in use or not). InvalidArgument names the host and the field
// for a pool the topology cannot hold (a CPU or NUMA node it lacks). Devices the topology
// lacks are left out of the pool, with a line in `warnings` (may be null).
absl::StatusOr<planner::HostInfo> HostInfoFromView(const mkfleet::v1::Host& host, const HostView& view,
                                                   std::vector<std::string>* warnings = nullptr);

// One placed request: what it runs and who owns it.
struct PlannedInstance {
  std::string host;
  std::string kernel;      // the kernel that serves it (differs after a standby takeover)
  std::string owner;       // "InstanceSet/<name>" for set members, "" otherwise
  std::string standby_for; // for a warm standby: the instance it backs
  int64_t generation = 0;
  const mkfleet::v1::KernelInstanceSpec* spec = nullptr;  // points into PlanFleet's inputs
};

struct FleetPlan {
  std::map<std::string, Plan> hosts;  // every reachable host, with a possibly empty plan
  std::map<std::string, mkfleet::v1::Placement> placements;  // by instance name
  std::map<std::string, PlannedInstance> planned;             // by instance name, placed ones
  std::vector<planner::Unschedulable> unschedulable;
  std::vector<std::string> waiting;   // "web-1: host node-c is not connected yet"
  std::vector<std::string> problems;  // hosts left out and pool parts ignored, with why
  // Hosts whose agent lends another pool than their spec asks for: the change (also first
  // in the host's plan when it is reachable).
  std::map<std::string, mkfleet::v1::Action> pool_changes;
  // Set members whose update (a kernel Replace or a re-create) waits for the rollout
  // budget: instance -> why. Their actions are left out of the plans.
  std::map<std::string, std::string> deferred;
};

FleetPlan PlanFleet(const std::vector<mkfleet::v1::Host>& hosts, const std::map<std::string, HostView>& views,
                    const std::vector<mkfleet::v1::KernelInstance>& instances,
                    const std::vector<mkfleet::v1::InstanceSet>& sets);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_FLEET_PLAN_H_
