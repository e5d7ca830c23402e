// The Placer's L3 cache ways (placer.h).
#include "planner/placer.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner::internal {

bool Placer::PickWays(Take* take, std::string* why) {
  if (!r_.has_llc_ways()) return true;
  uint32_t w = r_.llc_ways();
  std::vector<uint32_t> l3s = h_.L3sOf(take->cpus);
  uint64_t used = 0;
  // The kernel's way mask is a u32 (kernel-abi.md section 3): no more than 32 ways count.
  uint32_t ways = kMaxLlcWays;
  for (uint32_t l3 : l3s) {
    used |= h_.WaysUsed(l3);
    ways = std::min(ways, t_.l3[l3].ways);
  }
  if (w > ways) {
    if (explain_) *why = absl::StrFormat("needs %d cache ways; the L3 has %d", w, ways);
    return false;
  }
  const uint64_t want = LowBits(w);
  // A resized instance keeps its mask when it still fits.
  if (prev_ != nullptr && prev_->has_llc_mask() && __builtin_popcountll(prev_->llc_mask()) == static_cast<int>(w) &&
      (prev_->llc_mask() & used) == 0 && (prev_->llc_mask() & ~LowBits(ways)) == 0) {
    take->llc_mask = prev_->llc_mask();
    return true;
  }
  for (uint32_t start = 0; start + w <= ways; ++start) {
    uint64_t mask = want << start;
    if ((mask & used) == 0) {
      take->llc_mask = static_cast<int64_t>(mask);
      return true;
    }
  }
  std::vector<uint32_t> ids(l3s.begin(), l3s.end());
  if (explain_) *why = absl::StrFormat("needs %d contiguous free cache ways in L3 domain %s (%d ways, in use 0x%x)", w,
                         absl::StrJoin(ids, ","), ways, used);
  return false;
}

}  // namespace mkfleet::planner::internal
