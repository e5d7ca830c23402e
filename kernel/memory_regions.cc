#include "kernel/memory_regions.h"

namespace mkfleet::kernel {

std::optional<std::vector<size_t>> PickWholeRegions(const std::vector<uint64_t>& sizes, uint64_t bytes) {
  std::vector<size_t> out;
  uint64_t got = 0;
  for (size_t i = 0; i < sizes.size() && got < bytes; ++i) {
    if (sizes[i] > bytes - got) continue;
    out.push_back(i);
    got += sizes[i];
  }
  if (got != bytes) return std::nullopt;
  return out;
}

}  // namespace mkfleet::kernel
