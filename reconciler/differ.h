// The differ: a pure function from what one host should run to what it runs, giving the
// ordered actions that close the gap. No I/O, no clock; deterministic.
//
// Order within a plan: releases before acquisitions. Deletions (halt -> unload -> remove)
// and hot-plug removals come first, then creations (create -> load -> start), then
// hot-plug additions; so a device or CPU leaving one instance is free before another
// takes it. Every action names the kernel state it expects, and its id is deterministic
// for the plan step ("<host>/<instance>/g<generation>/<step>"), so re-sending a plan after
// a crash runs nothing twice (the agent's journal replays recorded ids).
#ifndef MKFLEET_RECONCILER_DIFFER_H_
#define MKFLEET_RECONCILER_DIFFER_H_

#include <string>
#include <vector>

#include "mkfleet/v1/agent.pb.h"
#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::reconciler {

struct DesiredInstance {
  std::string name;
  int64_t generation = 0;
  mkfleet::v1::KernelInstanceSpec spec;  // kernel, rootfs, phase, update
  mkfleet::v1::Placement placement;      // from the planner
};

struct Plan {
  std::vector<mkfleet::v1::Action> actions;
  // Things the plan does not do, for conditions ("web-1: Morph is not supported yet").
  std::vector<std::string> notes;

  std::string DebugString() const;
  bool operator==(const Plan& o) const;
};

Plan ComputePlan(const std::string& host, const std::vector<DesiredInstance>& desired,
                 const std::vector<mkfleet::v1::ObservedInstance>& observed);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_DIFFER_H_
