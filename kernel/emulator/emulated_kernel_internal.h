// Private to kernel/emulator/: what the parts of EmulatedKernel share (emulated_kernel.cc,
// _overlay.cc, _state.cc, _proc.cc): the transaction journal and undo, and small helpers.
#ifndef MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_INTERNAL_H_
#define MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_INTERNAL_H_

#include <algorithm>
#include <cerrno>
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/errno_status.h"

namespace mkfleet::kernel {

// The inverse of a transaction: fragments to apply, last first, to roll it back.
struct EmulatedKernel::Undo {
  std::vector<Fragment> inverse;
};

struct EmulatedKernel::Journal {
  bool pool_saved = false;
  std::vector<uint64_t> pool_cpus;
  std::vector<Region> pool_memory;
  std::vector<PoolDevice> pool_devices;
  std::map<std::string, std::optional<Instance>> instances;  // the original, or absent

  void SavePool(const State& s) {
    if (pool_saved) return;
    pool_saved = true;
    pool_cpus = s.pool_cpus;
    pool_memory = s.pool_memory;
    pool_devices = s.pool_devices;
  }
  void SaveInstance(const State& s, const std::string& name) {
    if (instances.count(name)) return;
    auto it = s.instances.find(name);
    instances[name] = it == s.instances.end() ? std::nullopt : std::optional<Instance>(it->second);
  }
  void Restore(State& s) {
    if (pool_saved) {
      s.pool_cpus = std::move(pool_cpus);
      s.pool_memory = std::move(pool_memory);
      s.pool_devices = std::move(pool_devices);
    }
    for (auto& [name, original] : instances) {
      if (original) {
        s.instances[name] = std::move(*original);
      } else {
        s.instances.erase(name);
      }
    }
  }
};


namespace emulator_internal {

inline constexpr uint64_t kBlock = 128ull << 20;
inline constexpr uint64_t kPage = 4096;

inline bool Contains(const std::vector<uint64_t>& v, uint64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }
inline absl::Status Busy(absl::string_view what, absl::string_view detail) { return ErrnoStatus(EBUSY, what, detail); }
inline absl::Status Inval(absl::string_view what, absl::string_view detail) { return ErrnoStatus(EINVAL, what, detail); }
inline bool Overlaps(uint64_t a, uint64_t asz, uint64_t b, uint64_t bsz) { return a < b + bsz && b < a + asz; }

}  // namespace emulator_internal

// The emulator's files use them unqualified (only they include this header).
using emulator_internal::Busy;
using emulator_internal::Contains;
using emulator_internal::Inval;
using emulator_internal::kBlock;
using emulator_internal::kPage;
using emulator_internal::Overlaps;

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_INTERNAL_H_
