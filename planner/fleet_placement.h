// PlaceFleet: the fleet's whole placement decision, shared by `mkapply plan` (offline, from
// specs and topology files) and the controller (live, from what agents report), so both
// decide the same on the same inputs. Pure; deterministic.
//
// Order: kernels held as they are (`fixed`: kernels no object owns), current placements
// kept when still valid and unchanged, changed ones grown or shrunk in place (or, when the
// change cannot be met, or its memory cannot shrink by whole regions, held as they are and
// reported in `infeasible`: a resize never takes a running instance down to fail), new instances (larger first, standbys after their
// primaries), then InstanceSet replicas.
//
// InstanceSets: members are named <set>-<host>-<n>. perHost: n = 0..perHost-1 on every
// selected uncordoned host (a cordoned one keeps the members it has). replicas: the
// members that exist stay (scale-down removes first those on cordoned hosts, then those in
// `removal_first`, then from the fullest spread domain and host, highest n first); each
// missing replica goes to the least used spread domain, then the least used host, then by
// name, among the hosts where it fits (capacity and cordon aware: a full or cordoned host
// is passed over, not reported). A set in `frozen_sets` keeps exactly its members.
// Draining hosts (`HostInfo::draining`): a replicas set's member there is replaced first, then
// removed. Replacements are placed on other hosts beyond `replicas`, at most the set's
// rollout maxSurge (default 1) beyond it at once; a member there goes once the set keeps at
// least replicas - maxUnavailable (default 1) members up without it (up: in `current` and
// not in `removal_first`); one that is not up goes at once. A replacement that fits nowhere
// leaves the member where it runs (the set is reported unschedulable, with why). perHost
// members belong to their host and stay, as do KernelInstances.
// Thread-safety: pure function.
#ifndef MKFLEET_PLANNER_FLEET_PLACEMENT_H_
#define MKFLEET_PLANNER_FLEET_PLACEMENT_H_

#include <map>
#include <set>
#include <string>
#include <vector>

#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"
#include "planner/placement.h"

namespace mkfleet::planner {

struct FleetInput {
  std::vector<HostInfo> hosts;
  std::vector<mkfleet::v1::KernelInstance> instances;
  std::vector<mkfleet::v1::InstanceSet> sets;
  // Where requests run now, by request name (instances, standbys, set members).
  std::map<std::string, mkfleet::v1::Placement> current;
  // The memory hot-remove can give back, per request and NUMA node, in the order it gives
  // it back (kernel/memory_regions.h): a change that shrinks a node's memory by an amount
  // these regions cannot add up to is infeasible. A request not listed may shrink freely.
  std::map<std::string, std::map<uint32_t, std::vector<uint64_t>>> removable_memory;
  // Where requests without a current placement last ran (a KernelInstance whose kernel
  // vanished: removed outside mkfleet, lost with its host's kernel): they go before the other
  // new requests, on that placement when it is free and still fits their request.
  std::map<std::string, mkfleet::v1::Placement> previous;
  // Held as they are before anything else, by a name of their own.
  std::map<std::string, mkfleet::v1::Placement> fixed;
  std::set<std::string> frozen_sets;
  // Requests kept exactly where they run (`current`) whatever their spec asks: their
  // actions are withheld this pass (a RolloutPolicy holds them back), so what their spec
  // would give back is not free for others.
  std::set<std::string> hold_current;
  // Set members to remove first when a set shrinks (not ready, failed).
  std::set<std::string> removal_first;
  // More requests, placed after everything else (a live update's surge: `standby_for` its
  // instance, on that instance's host). One that does not fit is unschedulable, with why.
  std::vector<InstanceRequest> after;
  // Set members whose rollout holds them at an older revision of their set's template: that
  // revision's resources, by member name; and per set, those of the members not listed
  // (while a failed revision is held back). Others take their set's template.
  std::map<std::string, mkfleet::v1::Resources> member_resources;
  std::map<std::string, mkfleet::v1::Resources> set_resources;
};

struct FleetPlacement {
  std::vector<InstanceRequest> requests;                       // everything placed or tried
  std::map<std::string, mkfleet::v1::Placement> placements;  // by request name
  std::vector<Unschedulable> unschedulable;  // by request name; missing replicas by set name
  // Changed requests whose change cannot be met: kept on their current placement, and why.
  std::map<std::string, std::string> infeasible;
  std::map<std::string, std::string> member_of;  // set member -> its set
};

FleetPlacement PlaceFleet(const FleetInput& input);

// The set a member name belongs to (<set>-<host>-<n> with `host` one of `hosts`), or "".
std::string SetOfMember(const std::string& member, const std::string& host,
                        const std::vector<mkfleet::v1::InstanceSet>& sets);

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_FLEET_PLACEMENT_H_
