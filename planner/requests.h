// Request expansion: KernelInstances into InstanceRequests (BuildRequests, placement.h),
// selectors matched against labels (Matches) and shown in messages (SelectorText).
#ifndef MKFLEET_PLANNER_REQUESTS_H_
#define MKFLEET_PLANNER_REQUESTS_H_

#include <string>

#include "planner/placement.h"

namespace mkfleet::planner::internal {

// "{rack=r1,zone=a}" (sorted), "{}" for an empty selector.
std::string SelectorText(const mkfleet::v1::LabelSelector& s);

}  // namespace mkfleet::planner::internal

#endif  // MKFLEET_PLANNER_REQUESTS_H_
