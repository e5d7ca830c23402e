// PlanFleet: one reconcile pass's pure core. From the stored objects and the hosts' views it
// computes placements (planner::PlaceFleet: what runs keeps its CPUs when it still fits; a
// resize that cannot be met keeps the current placement) and, per reachable host, the
// differ's ordered plan. No I/O.
//
// Ownership: every kernel on a host is either managed (the agent recorded an owner when
// mkfleet created it; or, recorded for nobody, it matches a KernelInstance or an
// InstanceSet member by name and is adopted with a claim) or unmanaged: reported per host,
// its resources held, never touched.
//
// A standby takeover on a host (the agent's watchdog moved X's devices to X-standby and
// swapped their roles) is kept: X is then served by the kernel X-standby, and X-standby
// by the kernel X, so the controller does not undo the failover.
//
// Live updates (update.strategy Morph): a running kernel that differs from its spec gets a
// surge placement (planner request "morph-surge/<name>", placed last, like a warm standby on
// its host and NUMA nodes) and a morph-start action; with no room the differ notes
// "MorphNoSurge: <the planner's reason>". While a morph runs its new kernel is held as it is;
// once committed, the kernel "<name>-next" serves <name> (and the next update boots <name>
// again). A revision that rolled back is held (`morph_retry` lifts that for one request).
//
// Rollouts (rollouts.h): `member_specs` holds set members at the spec of the revision their
// rollout keeps them at; the others run their set's template. Besides, a set member whose plan takes it down (a kernel Replace, a re-create) goes
// only while fewer than the set's `rollout.maxUnavailable` members (default 1) are down;
// the others wait (`deferred`), in name order, for a later pass.
//
// Hosts: one never connected takes no part (instances fixed to it wait); while one is still
// expected to connect (within its unreachable_after grace), InstanceSets that select it
// keep exactly their members, so a restarted controller does not add or remove members
// before it has seen every host. A host connected before but unreachable now keeps its
// instances' placements (its last view counts) but gets no plan. A deleted Host
// (metadata.deletion_unix_ms) takes nothing new and gets its managed kernels deleted; once
// none is left it is `drained`.
#ifndef MKFLEET_RECONCILER_FLEET_PLAN_H_
#define MKFLEET_RECONCILER_FLEET_PLAN_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mkfleet/v1/manifest.pb.h"
#include "planner/fleet_placement.h"
#include "planner/placement.h"
#include "reconciler/differ.h"
#include "reconciler/host_connection.h"

namespace mkfleet::reconciler {

// The planner's view of a host: its topology and the pool its agent reports (all pool
// CPUs, memory and devices, in use or not). InvalidArgument names the host and the field
// for a pool the topology cannot hold (a CPU or NUMA node it lacks). Devices the topology
// lacks are left out of the pool, with a line in `warnings` (may be null).
// The owner a KernelInstance's kernels record: "KernelInstance/<name>@<created revision>"
// (without "@…" for an object that has no created revision).
std::string KernelInstanceOwner(const mkfleet::v1::KernelInstance& ki);

absl::StatusOr<planner::HostInfo> HostInfoFromView(const mkfleet::v1::Host& host, const HostView& view,
                                                   std::vector<std::string>* warnings = nullptr);

// One placed request: what it runs and who owns it.
struct PlannedInstance {
  std::string host;
  std::string kernel;       // the kernel that serves it (differs after a standby takeover)
  std::string owner;        // "InstanceSet/<name>" for set members, "" otherwise
  std::string recorded_owner;  // what the agent records: "KernelInstance/x@<created revision>" or "InstanceSet/s"
  std::string standby_for;  // for a warm standby: the instance it backs
  int64_t generation = 0;
  const mkfleet::v1::KernelInstanceSpec* spec = nullptr;  // points into PlanFleet's inputs
};

struct FleetPlan {
  std::map<std::string, Plan> hosts;  // every reachable host, with a possibly empty plan
  std::map<std::string, mkfleet::v1::Placement> placements;  // by instance name
  std::map<std::string, PlannedInstance> planned;             // by instance name, placed ones
  // The names in `planned` per host, in name order (what one host's send looks at: a scan
  // of `planned` per host was hosts x instances per pass).
  std::map<std::string, std::vector<std::string>> planned_on;
  // By instance name, or by set name for replicas that fit nowhere.
  std::vector<planner::Unschedulable> unschedulable;
  // Running instances whose changed resources cannot be met: kept as they are, and why.
  std::map<std::string, std::string> infeasible;
  std::map<std::string, std::string> waiting;        // instance -> why ("host node-c is not connected yet")
  std::map<std::string, std::string> host_problems;  // host -> why it is left out or part of its pool ignored
  // Hosts whose agent lends another pool than their spec asks for: the change (also first
  // in the host's plan when it is reachable).
  std::map<std::string, mkfleet::v1::Action> pool_changes;
  // Set members whose update (a kernel Replace or a re-create) waits for the rollout
  // budget: instance -> why. Their actions are left out of the plans.
  std::map<std::string, std::string> deferred;
  // Instances changed outside mkfleet on a host whose driftPolicy is Report: left as found
  // (their actions taken out of the plans by DriftTracker), and why.
  std::map<std::string, std::string> drift_held;
  // Per host: kernels no object owns.
  std::map<std::string, std::vector<mkfleet::v1::KernelRef>> unmanaged;
  // Deleted Hosts with no managed kernel left: they can go.
  std::set<std::string> drained;
  // Sets held at their members while a selected host may still connect.
  std::set<std::string> frozen_sets;
};

// `hold_current`: instances planned exactly where they run whatever their spec (a
// RolloutPolicy holds their actions back: what their spec would free is not free).
// `keep_sets`: sets that keep exactly the members they have (as frozen_sets, without being
// reported there): a plan of part of the fleet (Reconciler's early send) must not add or
// remove members it cannot see the rest of.
// `in_flight`: requests whose create was sent but whose kernel the views do not show yet,
// where they were sent: planned there as if they ran (kept, their resources held; first to
// go when their set shrinks), so a pass in between does not place them again elsewhere.
FleetPlan PlanFleet(const std::vector<mkfleet::v1::Host>& hosts, const std::map<std::string, HostView>& views,
                    const std::vector<mkfleet::v1::KernelInstance>& instances,
                    const std::vector<mkfleet::v1::InstanceSet>& sets,
                    const std::map<std::string, mkfleet::v1::Placement>& in_flight = {},
                    const std::set<std::string>& morph_retry = {},
                    const std::map<std::string, const mkfleet::v1::KernelInstanceSpec*>& member_specs = {},
                    const std::map<std::string, const mkfleet::v1::KernelInstanceSpec*>& set_specs = {},
                    const std::set<std::string>& keep_sets = {},
                    const std::set<std::string>& hold_current = {},
                    const std::map<std::string, mkfleet::v1::Placement>& previous = {});

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_FLEET_PLAN_H_
