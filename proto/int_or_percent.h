// A count or a percentage (mkfleet.v1.IntOrPercent) resolved against a total, as rollouts and
// drains read their budgets: the percentage of `total` rounded up, at least `min`; `fallback`
// when unset. Shared by the planner (drain) and the controller's rollouts.
#ifndef MKFLEET_PROTO_INT_OR_PERCENT_H_
#define MKFLEET_PROTO_INT_OR_PERCENT_H_

#include <algorithm>
#include <cstdint>

#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet {

inline uint32_t ResolveIntOrPercent(const mkfleet::v1::IntOrPercent& v, uint32_t total, uint32_t fallback,
                                    uint32_t min) {
  uint32_t n = fallback;
  if (v.value_case() == mkfleet::v1::IntOrPercent::kCount) n = v.count();
  if (v.value_case() == mkfleet::v1::IntOrPercent::kPercent) {
    n = static_cast<uint32_t>((static_cast<uint64_t>(total) * v.percent() + 99) / 100);
  }
  return std::max(n, min);
}

}  // namespace mkfleet

#endif  // MKFLEET_PROTO_INT_OR_PERCENT_H_
