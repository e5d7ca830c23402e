#include "planner/placement_codec.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner::internal {

v1::Placement ToPlacement(const HostState& h, const InstanceRequest& req, const Take& take) {
  const Topology& t = h.topology();
  v1::Placement p;
  p.set_host(h.info().name);
  std::set<uint32_t> nodes;
  for (uint32_t cpu : take.cpus) {
    p.add_cpus(cpu);
    auto it = t.physical_ids.find(cpu);
    p.add_physical_cpus(it != t.physical_ids.end() ? it->second : cpu);
    nodes.insert(t.numa[t.cores[t.core_of_pu.at(cpu)].numa].os_index);
  }
  p.set_boot_cpu(take.cpus.front());
  for (uint32_t n : nodes) p.add_numa_nodes(n);
  std::map<uint32_t, uint64_t> by_os;
  for (const auto& [n, bytes] : take.memory) by_os[t.numa[n].os_index] = bytes;
  for (const auto& [os, bytes] : by_os) {
    auto* m = p.add_memory();
    m->set_node(os);
    m->set_bytes(bytes);
  }
  for (const Take::Dev& d : take.devices) {
    auto* pd = p.add_devices();
    pd->set_name(d.name);
    const PciFunction& f = t.pci[d.pci];
    if (d.vf >= 0) {
      pd->set_pci(f.vf_bdfs[d.vf]);
      pd->set_vf(d.vf);
    } else {
      pd->set_pci(f.bdf);
      if (d.ns >= 0) pd->set_namespace_(d.ns + 1);  // NVMe namespace ids start at 1
    }
  }
  for (const auto& v : req.resources.virtio()) {
    auto* pv = p.add_virtio();
    pv->set_type(v.type() == v1::VIRTIO_NET ? "net" : v.type() == v1::VIRTIO_BLK ? "blk"
                 : v.type() == v1::VIRTIO_CONSOLE ? "console" : "vsock");
    pv->set_uplink(v.uplink());
    pv->set_queues(v.queues() == 0 ? 1 : v.queues());
  }
  if (take.llc_mask >= 0) p.set_llc_mask(static_cast<uint32_t>(take.llc_mask));
  p.set_instance_id(req.id);
  return p;
}

// Rebuilds a Take from a current placement when it is still valid on `h` and still what
// `req` asks for; returns false otherwise (the instance is then placed again).
bool StillValid(const HostState& h, const InstanceRequest& req, const v1::Placement& p, Take* take) {
  const Topology& t = h.topology();
  const v1::Resources& r = req.resources;
  if (p.cpus_size() == 0) return false;
  bool whole = r.smt() == v1::SMT_WHOLE_CORE;
  if (r.cpu_request_case() == v1::Resources::kCpuSet) {
    std::set<uint32_t> a(r.cpu_set().ids().begin(), r.cpu_set().ids().end());
    std::set<uint32_t> b(p.cpus().begin(), p.cpus().end());
    if (a != b) return false;
  } else if (static_cast<uint32_t>(p.cpus_size()) != r.cpus()) {
    return false;
  }
  std::set<uint32_t> cores, nodes;
  std::set<uint32_t> allowed;
  for (uint32_t os : r.numa_nodes()) {
    auto it = t.numa_by_os.find(os);
    if (it == t.numa_by_os.end()) return false;
    allowed.insert(it->second);
  }
  // A running instance keeps its CPUs even when a core it holds whole has since got
  // another tenant on a sibling thread (a kernel started by hand, a pool that changed):
  // that core is then held as shared, and the instance is not moved for it.
  std::set<uint32_t> shared;
  for (uint32_t cpu : p.cpus()) {
    if (!t.core_of_pu.contains(cpu) || !h.InPool(cpu) || h.OwnerOf(cpu) >= 0) return false;
    uint32_t core = t.core_of_pu.at(cpu);
    if (!h.PuFreeForAny(cpu)) return false;
    if (whole && !h.WholeCoreFree(core)) shared.insert(core);
    cores.insert(core);
    nodes.insert(t.cores[core].numa);
    take->cpus.push_back(cpu);
  }
  for (uint32_t c : shared) cores.erase(c);
  if (!allowed.empty()) {
    for (uint32_t n : nodes) {
      if (!allowed.count(n)) return false;
    }
  }
  if (r.placement() == v1::PLACEMENT_SINGLE_NUMA && nodes.size() != 1) return false;
  if (whole) take->whole_cores.assign(cores.begin(), cores.end());
  uint64_t total = 0;
  for (const auto& m : p.memory()) {
    auto it = t.numa_by_os.find(m.node());
    if (it == t.numa_by_os.end() || h.MemFree(it->second) < m.bytes() || m.bytes() % kMemoryBlock) return false;
    for (const auto& [n, b] : take->memory) {
      if (n == it->second) return false;  // a node listed twice
    }
    take->memory.emplace_back(it->second, m.bytes());
    total += m.bytes();
  }
  if (total != r.memory()) return false;
  // Devices: every request satisfied by the placed entries of its name.
  for (const auto& d : r.devices()) {
    int want = d.share_case() == v1::DeviceRequest::kVfs ? d.vfs()
               : d.share_case() == v1::DeviceRequest::kNamespaces ? d.namespaces() : 1;
    int have = 0;
    for (const auto& pd : p.devices()) {
      if (pd.name() != d.name()) continue;
      // Find the function (the PF for a VF).
      int pci = -1;
      int vf = -1;
      for (int f : h.info().pool.devices) {
        if (t.pci[f].bdf == pd.pci()) pci = f;
        for (size_t v = 0; v < t.pci[f].vf_bdfs.size(); ++v) {
          if (t.pci[f].vf_bdfs[v] == pd.pci()) {
            pci = f;
            vf = v;
          }
        }
      }
      const DeviceState* s = h.Device(pci);
      if (s == nullptr || s->whole_owner >= 0) return false;
      bool wants_vf = d.share_case() == v1::DeviceRequest::kVfs;
      bool wants_ns = d.share_case() == v1::DeviceRequest::kNamespaces;
      if (wants_vf != (vf >= 0) || wants_ns != pd.has_namespace_()) return false;
      if (d.source_case() == v1::DeviceRequest::kPci && t.pci[pci].bdf != d.pci()) return false;
      if (d.source_case() == v1::DeviceRequest::kSelect &&
          ClassOf(t.pci[pci].class_id) != d.select().device_class()) {
        return false;
      }
      int ns = wants_ns ? static_cast<int>(pd.namespace_()) - 1 : -1;
      if (vf >= 0 && s->vf_owner[vf] >= 0) return false;
      if (ns >= 0 && (ns >= static_cast<int>(s->ns_owner.size()) || s->ns_owner[ns] >= 0)) return false;
      if (!wants_vf && !wants_ns && !s->Untouched()) return false;
      take->devices.push_back({d.name(), pci, vf, ns});
      ++have;
    }
    if (have != want) return false;
  }
  if (p.devices_size() != static_cast<int>(take->devices.size())) return false;
  if (r.has_llc_ways() != p.has_llc_mask()) return false;
  if (p.has_llc_mask()) {
    if (__builtin_popcount(p.llc_mask()) != static_cast<int>(r.llc_ways())) return false;
    for (uint32_t l3 : h.L3sOf(take->cpus)) {
      if (h.WaysUsed(l3) & p.llc_mask()) return false;
    }
    take->llc_mask = p.llc_mask();
  }
  return true;
}


}  // namespace mkfleet::planner::internal
