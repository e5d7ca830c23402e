// The placement codec: a Take on a host's ledger as the Placement the agents and statuses
// carry (ToPlacement), and back: whether a current Placement still fits the ledger and its
// request, and what it takes (StillValid). Internal to the planner.
#ifndef MKFLEET_PLANNER_PLACEMENT_CODEC_H_
#define MKFLEET_PLANNER_PLACEMENT_CODEC_H_

#include "planner/host_ledger.h"

namespace mkfleet::planner::internal {

v1::Placement ToPlacement(const HostState& h, const InstanceRequest& req, const Take& take);
// True when `p` is still valid on `h` for `req` (within the pool, free, matching the
// request); `take` receives what it holds.
bool StillValid(const HostState& h, const InstanceRequest& req, const v1::Placement& p, Take* take);

}  // namespace mkfleet::planner::internal

#endif  // MKFLEET_PLANNER_PLACEMENT_CODEC_H_
