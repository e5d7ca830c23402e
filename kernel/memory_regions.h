// Which memory a hot-remove can give back. A running instance's memory is a list of
// regions (/proc/iomem `mk-instance-<id>-<name>-region-<n>`); memory-remove takes whole
// regions only, and never the first one (it holds the loaded kernel image, kernel-abi.md
// §6). The driver picks the regions with PickWholeRegions, and the planner asks the same
// function whether a shrink can be done in place, so both always agree.
// Thread-safety: pure functions.
#ifndef MKFLEET_KERNEL_MEMORY_REGIONS_H_
#define MKFLEET_KERNEL_MEMORY_REGIONS_H_

#include <cstdint>
#include <optional>
#include <vector>

namespace mkfleet::kernel {

// The indexes into `sizes` (the removable regions, in the order they are given back: the
// last added first) of the regions that add up to exactly `bytes`, taking each region that
// still fits; nullopt when they do not add up.
std::optional<std::vector<size_t>> PickWholeRegions(const std::vector<uint64_t>& sizes, uint64_t bytes);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_MEMORY_REGIONS_H_
