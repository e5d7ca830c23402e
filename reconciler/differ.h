// The differ: a pure function from what one host should run to what it runs, giving the
// ordered actions that close the gap. No I/O, no clock; deterministic.
//
// Order within a plan: releases before acquisitions. Deletions (halt -> unload -> remove)
// and hot-plug removals come first, then creations (create -> load -> start), then
// hot-plug additions; so a device or CPU leaving one instance is free before another
// takes it. Every action names the kernel state it expects.
//
// Action ids are "<host>/<kernel>/g<generation>/v<basis>/<step>". The basis is the version
// at which the agent last saw the instance change (for one that does not exist yet: the
// host's version), so re-sending a plan made from the same view replays it (the agent's
// journal answers recorded ids) while any later plan (after a crash, a delete and
// re-create of the name, a second scale-down of one member) gets new ids and runs.
//
// Only kernels passed in `observed` are touched: the caller leaves out kernels that no
// object owns (they are reported, never deleted).
#ifndef MKFLEET_RECONCILER_DIFFER_H_
#define MKFLEET_RECONCILER_DIFFER_H_

#include <map>
#include <optional>
#include <string>
#include <vector>

#include "mkfleet/v1/agent.pb.h"
#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::reconciler {

struct DesiredInstance {
  std::string name;   // the kernel's name on the host
  std::string owner;  // "KernelInstance/web-1", "InstanceSet/edge": recorded by the agent
  int64_t generation = 0;
  mkfleet::v1::KernelInstanceSpec spec;  // kernel, rootfs, phase, update
  mkfleet::v1::Placement placement;      // from the planner
  // Instead of copies in `spec` and `placement` (PlanFleet: 10,000 of each per pass at
  // 1,000 hosts): what they point to, alive while the plan is computed.
  const mkfleet::v1::KernelInstanceSpec* spec_of = nullptr;
  const mkfleet::v1::Placement* placement_of = nullptr;
  const mkfleet::v1::KernelInstanceSpec& Spec() const { return spec_of != nullptr ? *spec_of : spec; }
  const mkfleet::v1::Placement& Where() const { return placement_of != nullptr ? *placement_of : placement; }
  // Live update (update.strategy Morph) of a kernel that differs from the spec: where the
  // new kernel boots (the planner's surge placement) and its name; or why none starts.
  std::optional<mkfleet::v1::Placement> morph_surge;
  std::string morph_next;
  std::string morph_blocked;  // "MorphNoSurge: ...", "MorphHeld: ..."
  std::string revision;       // KernelRevision of the spec's kernel
};

// A kernel's revision for people and morph status: a short hash of what SameKernel
// compares (image, initrd, command line, rootfs image).
std::string KernelRevision(const mkfleet::v1::KernelSpec& kernel, const std::string& rootfs_image);
std::string ProvenanceRevision(const mkfleet::v1::Provenance& p);
// The revision of the kernel an observed instance runs: as its agent reports it (after a live
// update), else from its provenance.
inline std::string ServingRevision(const mkfleet::v1::InstanceStatus& st) {
  return st.revision().empty() ? ProvenanceRevision(st.provenance()) : st.revision();
}
// The kernel state a spec's phase asks for (Running: active).
inline mkfleet::v1::KernelState WantedKernelState(mkfleet::v1::Phase phase) {
  return phase == mkfleet::v1::PHASE_READY    ? mkfleet::v1::KERNEL_STATE_READY
         : phase == mkfleet::v1::PHASE_LOADED ? mkfleet::v1::KERNEL_STATE_LOADED
                                              : mkfleet::v1::KERNEL_STATE_ACTIVE;
}
// The names mkfleet gives an instance's other kernels: its warm standby, the new kernel of a
// live update, and the planner's request for that update's surge room.
inline const std::string kStandbySuffix = "-standby";
inline const std::string kNextSuffix = "-next";
inline const std::string kSurgePrefix = "morph-surge/";
// Whether the loaded kernel (its provenance) is the one the spec asks for.
bool SameKernel(const mkfleet::v1::KernelInstanceSpec& spec, const mkfleet::v1::Provenance& p);

// What a plan does to one kernel, as data (for rollout limits, conditions and diff).
struct InstanceChange {
  enum class Kind { kCreate, kDelete, kRecreate, kReplace, kResize, kPhase, kClaim, kMorph };
  Kind kind = Kind::kCreate;
  // It takes a running kernel down to bring it back changed (re-create, kernel replace).
  bool disruptive = false;
  // For people: "re-create: the boot CPU 4 is not in the new placement".
  std::string summary;
};

struct Plan {
  std::vector<mkfleet::v1::Action> actions;
  // Things the plan does not do, by kernel, for conditions ("Morph is not supported yet").
  std::map<std::string, std::string> notes;
  // By kernel name: what the plan changes (the most telling change when there are several).
  std::map<std::string, InstanceChange> changes;

  std::string DebugString() const;
  bool operator==(const Plan& o) const;
};

Plan ComputePlan(const std::string& host, const std::vector<DesiredInstance>& desired,
                 const std::vector<mkfleet::v1::ObservedInstance>& observed, int64_t host_version = 0);
// The same, on the agent's reports where they are (PlanFleet: no copy of every instance
// every pass).
Plan ComputePlanFor(const std::string& host, const std::vector<DesiredInstance>& desired,
                    const std::vector<const mkfleet::v1::ObservedInstance*>& observed, int64_t host_version = 0);

// "create", "re-create", ...: the kind's word for people.
const char* ChangeName(InstanceChange::Kind kind);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_DIFFER_H_
