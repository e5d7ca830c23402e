#include "kernel/emulator/machine.h"

namespace mkfleet::kernel {

EmulatorOptions MachineFromTopology(const planner::Topology& t) {
  EmulatorOptions o;
  for (const planner::Core& c : t.cores) {
    for (uint32_t pu : c.pus) {
      auto it = t.physical_ids.find(pu);
      o.cpus.push_back(it != t.physical_ids.end() ? it->second : pu);
    }
  }
  uint64_t base = 0;
  for (const planner::NumaNode& n : t.numa) {
    // hwloc exports without memory sizes get 16Gi per node.
    uint64_t size = n.memory_bytes > 0 ? n.memory_bytes : (16ull << 30);
    o.memory.push_back({n.os_index, base, size});
    base += (size + (1ull << 30) - 1) / (1ull << 30) * (1ull << 30);
  }
  for (const planner::PciFunction& f : t.pci) {
    o.pci_devices.push_back(f.bdf);
    for (const std::string& vf : f.vf_bdfs) o.pci_devices.push_back(vf);
  }
  if (!t.l3.empty()) o.llc_ways = t.l3.front().ways;
  return o;
}

}  // namespace mkfleet::kernel
