// Place(): the planner's one decision, as a pure function. Given every host's topology
// and pool, the desired instances and the current placements, it returns a placement per
// instance (or why it cannot be placed). No I/O, no clock, deterministic.
//
// Rules (docs/manifests.md, kernel-abi.md section 6):
// - smt WholeCore takes whole cores and never shares a core between instances; Any takes
//   single CPUs, never from a core held whole by another instance.
// - Compact packs into as few NUMA nodes / L3 domains as possible, Spread spreads over
//   NUMA nodes, SingleNuma requires one node, NearDevices follows the devices' node;
//   numaNodes restricts all of it; cpuSet is honoured exactly or rejected with the reason.
// - The boot CPU is listed first. Memory in 128Mi blocks on the CPUs' nodes (Local, Bind)
//   or over all allowed nodes (Interleave), never beyond a node's pool share.
// - Devices: whole functions are exclusive; vfs/namespaces take that many free VFs or NVMe
//   namespaces of one function, which then cannot be given whole.
// - llcWays: a contiguous way mask, free in every L3 domain of the instance's CPUs.
// - Stability: a current placement that is still valid and still matches its request is
//   kept as it is; a resized instance grows or shrinks in place when it can; nothing else
//   moves.
// Thread-safety: pure function.
#ifndef MKFLEET_PLANNER_PLACEMENT_H_
#define MKFLEET_PLANNER_PLACEMENT_H_

#include <map>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"
#include "planner/pool.h"
#include "planner/topology.h"

namespace mkfleet::planner {

struct HostInfo {
  std::string name;
  std::shared_ptr<const Topology> topology;
  Pool pool;
  std::map<std::string, std::string> labels;
  bool cordoned = false;
  // Draining (implies cordoned): the members of replicas InstanceSets here are replaced on
  // other hosts, paced by each set's rollout budget (fleet_placement.h).
  bool draining = false;
};

struct InstanceRequest {
  std::string name;
  std::string host;  // a fixed host; empty to choose one by `selector`
  mkfleet::v1::LabelSelector selector;
  mkfleet::v1::Resources resources;
  uint32_t id = 0;  // fixed instance id, 0 for none
  // A warm standby kernel: placed on the host of this instance, after it.
  std::string standby_for;
};

struct Unschedulable {
  std::string name;
  std::string reason;
};

inline std::ostream& operator<<(std::ostream& os, const Unschedulable& u) {
  return os << u.name << ": " << u.reason;
}

struct PlacementResult {
  std::map<std::string, mkfleet::v1::Placement> placements;  // by instance name
  std::vector<Unschedulable> unschedulable;                   // by instance name
};

PlacementResult Place(const std::vector<HostInfo>& hosts, const std::vector<InstanceRequest>& requests,
                      const std::map<std::string, mkfleet::v1::Placement>& current);

// The state behind Place(), kept between calls for incremental work: the controller (and
// the incremental benchmark) add, resize or remove one instance without replanning the
// fleet. Place() is Keep() for every current placement, then Place() for the rest.
// Thread-safety: not thread-safe; one engine per planning thread.
class PlacementEngine {
 public:
  explicit PlacementEngine(std::vector<HostInfo> hosts);
  ~PlacementEngine();
  PlacementEngine(const PlacementEngine&) = delete;
  PlacementEngine& operator=(const PlacementEngine&) = delete;

  // Takes `placement` for `req` as it is when it is still valid and still matches the
  // request; false (and nothing held) otherwise.
  bool Keep(const InstanceRequest& req, const mkfleet::v1::Placement& placement);
  // Places `req`. `prev`, its current placement if any, is where it grows or shrinks in
  // place. If `req` already holds resources they are reused or, on failure, kept as they
  // were. On failure `why` explains the nearest capacity.
  bool Place(const InstanceRequest& req, const mkfleet::v1::Placement* prev, mkfleet::v1::Placement* out,
             std::string* why);
  // Holds `placement` for `name` exactly as it is, whatever it was made for (a kernel no
  // object owns, an instance whose resize cannot be met): its CPUs (cores all of whose pool
  // CPUs it has are held whole), memory per node, devices and cache ways. False, nothing
  // held, when it conflicts with what is held or lies outside the pool; `why` says what.
  bool Hold(const std::string& name, const mkfleet::v1::Placement& placement, std::string* why);
  // Frees what the instance `name` holds (no-op if it holds nothing).
  void Release(const std::string& name);
  bool Holds(const std::string& name) const;
  // Capacity hint: about this many instances will be held.
  void Reserve(size_t instances);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Whether `labels` satisfy `selector` (every matchLabels pair present).
bool Matches(const mkfleet::v1::LabelSelector& selector, const std::map<std::string, std::string>& labels);

// Turns KernelInstances into requests. An instance with failover policy Standby also gets
// a request "<name>-standby" for its warm standby kernel (its own CPUs and memory, on the
// same host). InstanceSets are expanded by PlaceFleet (fleet_placement.h).
std::vector<InstanceRequest> BuildRequests(const std::vector<mkfleet::v1::KernelInstance>& instances);

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_PLACEMENT_H_
