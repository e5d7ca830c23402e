#include "kernel/emulator/first_fit.h"

#include <algorithm>

namespace mkfleet::kernel {

std::optional<std::vector<MemRange>> FirstFit(std::vector<MemRange> chunks, std::vector<MemRange> used,
                                              uint64_t bytes, std::optional<uint32_t> numa, uint64_t block) {
  auto align = [block](uint64_t x) { return (x + block - 1) / block * block; };
  uint64_t left = align(bytes);
  std::sort(chunks.begin(), chunks.end(), [](const MemRange& a, const MemRange& b) { return a.base < b.base; });
  std::sort(used.begin(), used.end(), [](const MemRange& a, const MemRange& b) { return a.base < b.base; });
  std::vector<MemRange> out;
  for (const MemRange& c : chunks) {
    if (left == 0) break;
    if (numa && c.numa != *numa) continue;
    const uint64_t end = c.base + c.size;
    uint64_t cursor = align(c.base);
    auto take = [&](uint64_t gap_end) {
      while (left > 0 && cursor + block <= gap_end) {
        uint64_t n = std::min(left, (gap_end - cursor) / block * block);
        if (!out.empty() && out.back().base + out.back().size == cursor) {
          out.back().size += n;
        } else {
          out.push_back({cursor, n, c.numa});
        }
        cursor += n;
        left -= n;
      }
    };
    for (const MemRange& u : used) {
      if (left == 0) break;
      const uint64_t u_end = u.base + u.size;
      if (u_end <= cursor) continue;  // behind us (or before the chunk)
      if (u.base >= end) break;       // past the chunk
      take(std::min(u.base, end));
      cursor = std::max(cursor, align(u_end));
    }
    take(end);
  }
  if (left > 0) return std::nullopt;
  return out;
}

}  // namespace mkfleet::kernel
