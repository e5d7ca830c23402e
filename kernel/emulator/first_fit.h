// The emulated kernel's memory placement for a new instance (v1 dialect): first fit in the
// pool's chunks, in address order, aligned to `block`, around the regions instances hold,
// split over several chunks when one does not suffice, adjacent pieces merged. A pure
// function on values: no emulator state. Thread-safe.
#ifndef MKFLEET_KERNEL_EMULATOR_FIRST_FIT_H_
#define MKFLEET_KERNEL_EMULATOR_FIRST_FIT_H_

#include <cstdint>
#include <optional>
#include <vector>

namespace mkfleet::kernel {

struct MemRange {
  uint64_t base = 0;
  uint64_t size = 0;
  uint32_t numa = 0;
  bool operator==(const MemRange& o) const { return base == o.base && size == o.size && numa == o.numa; }
};

// `bytes` (rounded up to `block`) from `chunks` (the pool) outside `used` (what instances
// hold), only in chunks of node `numa` when given. nullopt when it does not fit.
std::optional<std::vector<MemRange>> FirstFit(std::vector<MemRange> chunks, std::vector<MemRange> used,
                                              uint64_t bytes, std::optional<uint32_t> numa, uint64_t block);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_EMULATOR_FIRST_FIT_H_
