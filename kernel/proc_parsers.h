// Parsers for the /proc files the multikernel kernel writes: /proc/iomem (pool and
// instance memory regions) and /proc/kimage (loaded images). Pure; thread-safe.
// (/proc/cpuinfo's logical -> APIC map is planner::ParseCpuInfoApicIds.)
#ifndef MKFLEET_KERNEL_PROC_PARSERS_H_
#define MKFLEET_KERNEL_PROC_PARSERS_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kernel {

struct IomemRegion {
  uint64_t start = 0;
  uint64_t end = 0;  // inclusive, as /proc/iomem prints it
  std::string name;
  int depth = 0;  // nesting (two spaces per level)
  uint64_t size() const { return end - start + 1; }
};

// Every line "start-end : name", with its nesting depth. InvalidArgument names the line.
absl::StatusOr<std::vector<IomemRegion>> ParseIomem(absl::string_view text);

struct PoolRegions {
  std::vector<IomemRegion> pool;  // "Multikernel Memory Pool" regions
  // Children of the pool named mk-instance-<id>-<name>-region-<n>.
  struct InstanceRegion {
    uint32_t id = 0;
    std::string instance;
    uint32_t index = 0;
    IomemRegion region;
  };
  std::vector<InstanceRegion> instances;
  std::vector<IomemRegion> daxfs;  // DAXFS images
};
PoolRegions FindPoolRegions(const std::vector<IomemRegion>& regions);

struct KimageEntry {
  uint32_t id = 0;
  std::string type;
  uint64_t start_address = 0;
  uint32_t segments = 0;
  std::string mode;
  std::string cmdline;
};

// The table "MK_ID Type Start-Address Segments Mode Cmdline" (header optional; cmdline
// may contain spaces). InvalidArgument names the line.
absl::StatusOr<std::vector<KimageEntry>> ParseKimage(absl::string_view text);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_PROC_PARSERS_H_
