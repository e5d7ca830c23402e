// The Placer's memory per NUMA node (placer.h).
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

bool Placer::PickMemory(Take* take, std::string* why) {
  const bool interleave = r_.memory_policy() == v1::MEMORY_INTERLEAVE;
  const uint64_t need_blocks = r_.memory() / kMemoryBlock;
  const size_t numa = t_.numa.size();
  std::vector<uint32_t> cpus_on(numa, 0);
  for (uint32_t pu : take->cpus) ++cpus_on[t_.cores[t_.core_of_pu.at(pu)].numa];
  std::vector<uint32_t> nodes;  // candidate nodes, in preference order
  if (interleave) {
    for (uint32_t n : allowed_) {
      if (h_.MemFree(n) > 0 || cpus_on[n]) nodes.push_back(n);
    }
  } else {
    for (uint32_t n = 0; n < numa; ++n) {
      if (cpus_on[n]) nodes.push_back(n);
    }
    // Memory-only nodes named in numaNodes may hold memory too.
    if (r_.numa_nodes_size() > 0) {
      for (uint32_t n : allowed_) {
        if (!t_.numa[n].has_cpus) nodes.push_back(n);
      }
    }
  }
  std::vector<uint64_t> blocks(numa, 0);
  uint64_t got = 0;
  auto room = [&](uint32_t n) { return h_.MemFree(n) / kMemoryBlock - blocks[n]; };
  auto give = [&](uint32_t n, uint64_t want) {
    uint64_t g = std::min(want, room(n));
    blocks[n] += g;
    got += g;
  };
  // A resized instance keeps its memory where it is.
  if (prev_ != nullptr) {
    for (const auto& m : prev_->memory()) {
      auto it = t_.numa_by_os.find(m.node());
      if (it == t_.numa_by_os.end() || !std::count(nodes.begin(), nodes.end(), it->second)) continue;
      give(it->second, std::min<uint64_t>(m.bytes() / kMemoryBlock, need_blocks - got));
    }
  }
  // Target shares: by CPUs per node (Local, Bind) or even (Interleave); then fill up.
  uint64_t rest = need_blocks - got;
  if (rest > 0) {
    uint64_t weight_total = 0;
    size_t last = 0;
    for (size_t i = 0; i < nodes.size(); ++i) {
      uint64_t w = interleave ? 1 : cpus_on[nodes[i]];
      weight_total += w;
      if (w > 0) last = i;
    }
    uint64_t assigned = 0;
    for (size_t i = 0; i < nodes.size() && weight_total > 0; ++i) {
      uint64_t w = interleave ? 1 : cpus_on[nodes[i]];
      if (w == 0) continue;
      uint64_t target = i == last ? rest - assigned : rest * w / weight_total;
      give(nodes[i], target);
      assigned += target;
    }
    for (uint32_t n : nodes) {
      if (got >= need_blocks) break;
      give(n, need_blocks - got);
    }
  }
  if (got < need_blocks) {
    if (explain_) {
      std::vector<std::string> free;
      for (uint32_t n : nodes) {
        free.push_back(absl::StrCat("node", t_.numa[n].os_index, "=", manifests::FormatBytes(h_.MemFree(n))));
      }
      *why = absl::StrCat("needs ", manifests::FormatBytes(r_.memory()), " of memory on NUMA node",
                          nodes.size() == 1 ? " " : "s ", NodeList(t_, nodes), "; free memory: ",
                          free.empty() ? "none" : absl::StrJoin(free, ", "));
    }
    return false;
  }
  for (uint32_t n = 0; n < numa; ++n) {
    if (blocks[n] > 0) take->memory.emplace_back(n, blocks[n] * kMemoryBlock);
  }
  return true;
}

}  // namespace mkfleet::planner::internal
