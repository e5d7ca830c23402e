#include "planner/pool.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner {
namespace {

absl::Status Bad(absl::string_view host, absl::string_view field, absl::string_view message) {
  return absl::InvalidArgumentError(absl::StrCat("Host/", host, ": spec.pool.", field, ": ", message));
}

std::string AllCpus(const Topology& t) {
  std::vector<uint32_t> all;
  for (const Core& c : t.cores) all.insert(all.end(), c.pus.begin(), c.pus.end());
  return manifests::FormatCpuList(all);
}

uint64_t RoundDownToBlock(uint64_t bytes) { return bytes / kMemoryBlock * kMemoryBlock; }

}  // namespace

absl::StatusOr<Pool> DerivePool(absl::string_view host, const Topology& t, const mkfleet::v1::Pool& spec) {
  Pool pool;
  uint32_t cpu0_core = t.core_of_pu.contains(0) ? t.core_of_pu.at(0) : 0;
  if (spec.has_host_reserved()) {
    const auto& hr = spec.host_reserved();
    // Cores the host keeps: the core of CPU 0 first, then the next cores of NUMA node 0.
    std::set<uint32_t> kept = {cpu0_core};
    uint32_t home = t.cores[cpu0_core].numa;
    for (uint32_t c = 0; c < t.cores.size() && kept.size() < std::max<uint32_t>(1, hr.cores()); ++c) {
      if (t.cores[c].numa == home) kept.insert(c);
    }
    if (kept.size() < hr.cores()) {
      return Bad(host, "hostReserved.cores",
                 absl::StrCat("NUMA node ", t.numa[home].os_index, " has only ", kept.size(), " cores"));
    }
    for (uint32_t c = 0; c < t.cores.size(); ++c) {
      if (!kept.count(c)) pool.cpus.insert(pool.cpus.end(), t.cores[c].pus.begin(), t.cores[c].pus.end());
    }
    // Pool::cpus is ascending (cores are listed by first PU, their siblings come later).
    std::sort(pool.cpus.begin(), pool.cpus.end());
    if (pool.cpus.empty()) return Bad(host, "hostReserved.cores", "leaves no CPU for the pool");
    uint64_t reserve = hr.memory();
    for (uint32_t n = 0; n < t.numa.size(); ++n) {
      uint64_t take = std::min(reserve, t.numa[n].memory_bytes);
      reserve -= take;
      uint64_t pooled = RoundDownToBlock(t.numa[n].memory_bytes - take);
      if (pooled > 0) pool.memory[n] = pooled;
    }
    if (reserve > 0) {
      return Bad(host, "hostReserved.memory",
                 absl::StrCat("the host has only ", manifests::FormatBytesApprox(hr.memory() - reserve),
                              " of memory"));
    }
  } else {
    for (uint32_t cpu : spec.cpus().ids()) {
      if (!t.core_of_pu.contains(cpu)) {
        return Bad(host, "cpus",
                   absl::StrCat("CPU ", cpu, " is not an online CPU of this host (it has ", AllCpus(t), ")"));
      }
      if (t.core_of_pu.at(cpu) == cpu0_core) {
        return Bad(host, "cpus",
                   absl::StrCat("CPU ", cpu, " shares a core with CPU 0, which stays with the host"));
      }
      pool.cpus.push_back(cpu);
    }
    std::sort(pool.cpus.begin(), pool.cpus.end());
    uint64_t total = 0, pooled_total = 0;
    for (const NumaNode& n : t.numa) total += n.memory_bytes;
    for (int i = 0; i < spec.memory_size(); ++i) {
      const auto& m = spec.memory(i);
      auto it = t.numa_by_os.find(m.node());
      std::string field = absl::StrCat("memory[", i, "]");
      if (it == t.numa_by_os.end()) {
        std::vector<uint32_t> nodes;
        for (const NumaNode& n : t.numa) nodes.push_back(n.os_index);
        return Bad(host, field + ".node",
                   absl::StrCat("NUMA node ", m.node(), " does not exist (nodes: ", absl::StrJoin(nodes, ","), ")"));
      }
      if (m.size() > t.numa[it->second].memory_bytes) {
        return Bad(host, field + ".size",
                   absl::StrCat(manifests::FormatBytes(m.size()), " is more than NUMA node ", m.node(),
                                " has (", manifests::FormatBytesApprox(t.numa[it->second].memory_bytes), ")"));
      }
      pool.memory[it->second] = m.size();
      pooled_total += m.size();
    }
    if (pooled_total >= total) return Bad(host, "memory", "leaves the host no memory");
  }
  std::set<int> devices;
  for (int i = 0; i < spec.devices_size(); ++i) {
    int idx = t.FindPci(spec.devices(i));
    if (idx < 0) {
      return Bad(host, absl::StrCat("devices[", i, "]"),
                 absl::StrCat("no PCI function or device named \"", spec.devices(i), "\" on this host"));
    }
    devices.insert(idx);
  }
  pool.devices.assign(devices.begin(), devices.end());
  return pool;
}

}  // namespace mkfleet::planner
