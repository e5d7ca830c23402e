#include "planner/topology.h"

#include <algorithm>
#include <iterator>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "proto/deterministic.h"

namespace mkfleet::planner {

mkfleet::v1::DeviceClass ClassOf(uint32_t class_id) {
  switch (class_id >> 8) {
    case 0x01:
      return mkfleet::v1::DEVICE_CLASS_STORAGE;
    case 0x02:
      return mkfleet::v1::DEVICE_CLASS_NETWORK;
    case 0x03:
      return mkfleet::v1::DEVICE_CLASS_GPU;
    case 0x12:
      return mkfleet::v1::DEVICE_CLASS_ACCELERATOR;
    case 0x0b:
      return class_id == 0x0b40 ? mkfleet::v1::DEVICE_CLASS_ACCELERATOR
                                : mkfleet::v1::DEVICE_CLASS_UNSPECIFIED;
    default:
      return mkfleet::v1::DEVICE_CLASS_UNSPECIFIED;
  }
}

void Topology::Finish() {
  std::sort(cores.begin(), cores.end(),
            [](const Core& a, const Core& b) { return a.pus.front() < b.pus.front(); });
  core_of_pu.clear();
  numa_by_os.clear();
  smt_width = 1;
  for (uint32_t c = 0; c < cores.size(); ++c) {
    smt_width = std::max<uint32_t>(smt_width, cores[c].pus.size());
    for (uint32_t pu : cores[c].pus) core_of_pu.set(pu, c);
    numa[cores[c].numa].has_cpus = true;
  }
  for (uint32_t n = 0; n < numa.size(); ++n) numa_by_os[numa[n].os_index] = n;
  l3_groups.assign(numa.size(), {});
  for (uint32_t c = 0; c < cores.size(); ++c) {
    auto& groups = l3_groups[cores[c].numa];
    auto it = std::find_if(groups.begin(), groups.end(), [&](const auto& g) { return g.first == cores[c].l3; });
    if (it == groups.end()) {
      groups.push_back({cores[c].l3, {}});
      it = groups.end() - 1;
    }
    it->second.push_back(c);
  }
}

size_t Topology::pu_count() const {
  size_t n = 0;
  for (const Core& c : cores) n += c.pus.size();
  return n;
}

int Topology::FindPci(absl::string_view key) const {
  for (size_t i = 0; i < pci.size(); ++i) {
    if (pci[i].bdf == key) return static_cast<int>(i);
    for (const std::string& name : pci[i].names) {
      if (name == key) return static_cast<int>(i);
    }
  }
  return -1;
}

std::string Topology::Summary() const {
  return absl::StrCat(packages, packages == 1 ? " package, " : " packages, ", numa.size(),
                      " NUMA nodes, ", cores.size(), " cores, ", pu_count(), " CPUs, ",
                      pci.size(), " PCI functions");
}

mkfleet::v1::TopologyInfo Topology::ToProto() const {
  mkfleet::v1::TopologyInfo info;
  for (const NumaNode& n : numa) {
    auto* p = info.add_numa_nodes();
    p->set_node(n.os_index);
    p->set_memory_bytes(n.memory_bytes);
    p->mutable_distances()->Assign(n.distances.begin(), n.distances.end());
  }
  for (uint32_t i = 0; i < cores.size(); ++i) {
    auto* p = info.add_cores();
    p->set_core(i);
    p->set_numa_node(numa[cores[i].numa].os_index);
    p->set_l3(cores[i].l3);
    p->set_package(cores[i].package);
    p->mutable_pus()->Assign(cores[i].pus.begin(), cores[i].pus.end());
  }
  for (const PciFunction& f : pci) {
    auto* p = info.add_pci();
    p->set_bdf(f.bdf);
    p->set_class_id(f.class_id);
    p->set_vendor_id(f.vendor_id);
    p->set_device_id(f.device_id);
    p->set_numa_node(f.numa < 0 ? -1 : static_cast<int32_t>(numa[f.numa].os_index));
    for (const auto& n : f.names) p->add_names(n);
    for (const auto& v : f.vf_bdfs) p->add_vf_bdfs(v);
    p->set_nvme_namespaces(f.nvme_namespaces);
  }
  for (const auto& [logical, physical] : physical_ids) (*info.mutable_physical_ids())[logical] = physical;
  if (!l3.empty()) info.set_l3_ways(l3.front().ways);
  for (const L3Domain& d : l3) info.add_l3_bytes(d.bytes);
  return info;
}

absl::StatusOr<Topology> TopologyFromProto(const mkfleet::v1::TopologyInfo& info) {
  auto invalid = [](auto&&... parts) { return absl::InvalidArgumentError(absl::StrCat("topology.", parts...)); };
  Topology t;
  absl::flat_hash_map<uint32_t, uint32_t> node_index;
  for (int i = 0; i < info.numa_nodes_size(); ++i) {
    const auto& n = info.numa_nodes(i);
    if (!node_index.emplace(n.node(), i).second) return invalid("numa_nodes[", i, "].node: node ", n.node(), " twice");
    if (n.distances_size() != 0 && n.distances_size() != info.numa_nodes_size()) {
      return invalid("numa_nodes[", i, "].distances: ", n.distances_size(), " values for ", info.numa_nodes_size(),
                     " nodes");
    }
    NumaNode node;
    node.os_index = n.node();
    node.memory_bytes = n.memory_bytes();
    node.distances.assign(n.distances().begin(), n.distances().end());
    t.numa.push_back(std::move(node));
  }
  absl::flat_hash_map<uint32_t, uint32_t> pu_core;
  uint32_t l3_count = info.l3_bytes_size();
  for (int i = 0; i < info.cores_size(); ++i) {
    const auto& c = info.cores(i);
    auto it = node_index.find(c.numa_node());
    if (it == node_index.end()) return invalid("cores[", i, "].numa_node: no NUMA node ", c.numa_node());
    if (c.pus_size() == 0) return invalid("cores[", i, "].pus: empty");
    Core core;
    core.package = c.package();
    core.numa = it->second;
    core.l3 = c.l3();
    for (uint32_t pu : c.pus()) {
      if (!pu_core.emplace(pu, i).second) return invalid("cores[", i, "].pus: CPU ", pu, " is also in another core");
      core.pus.push_back(pu);
    }
    std::sort(core.pus.begin(), core.pus.end());
    t.packages = std::max(t.packages, c.package() + 1);
    if (info.l3_bytes_size() == 0) l3_count = std::max(l3_count, c.l3() + 1);
    if (c.l3() >= l3_count) return invalid("cores[", i, "].l3: no L3 domain ", c.l3());
    t.cores.push_back(std::move(core));
  }
  t.l3.resize(l3_count);
  for (uint32_t i = 0; i < l3_count; ++i) {
    t.l3[i].ways = info.l3_ways();
    if (i < static_cast<uint32_t>(info.l3_bytes_size())) t.l3[i].bytes = info.l3_bytes(i);
  }
  for (int i = 0; i < info.pci_size(); ++i) {
    const auto& p = info.pci(i);
    PciFunction f;
    f.bdf = p.bdf();
    f.class_id = p.class_id();
    f.vendor_id = p.vendor_id();
    f.device_id = p.device_id();
    if (p.numa_node() >= 0) {
      auto it = node_index.find(static_cast<uint32_t>(p.numa_node()));
      if (it == node_index.end()) return invalid("pci[", i, "].numa_node: no NUMA node ", p.numa_node());
      f.numa = static_cast<int>(it->second);
    }
    f.names.assign(p.names().begin(), p.names().end());
    f.vf_bdfs.assign(p.vf_bdfs().begin(), p.vf_bdfs().end());
    f.nvme_namespaces = p.nvme_namespaces();
    t.pci.push_back(std::move(f));
  }
  for (const auto& [logical, physical] : info.physical_ids()) {
    if (!pu_core.contains(logical)) return invalid("physical_ids: CPU ", logical, " is in no core");
    t.physical_ids[logical] = physical;
  }
  t.Finish();
  return t;
}

absl::StatusOr<std::shared_ptr<const Topology>> SharedTopologyFromProto(const mkfleet::v1::TopologyInfo& info) {
  // Keyed by the reported bytes: equal bytes parse to equal topologies (a topology that
  // serializes differently is only not shared).
  static absl::Mutex mu(absl::kConstInit);
  static auto* known = new absl::flat_hash_map<std::string, std::weak_ptr<const Topology>>();
  std::string key = DeterministicBytes(info);  // (physical_ids is a map)
  {
    absl::MutexLock lock(&mu);
    auto it = known->find(key);
    if (it != known->end()) {
      if (std::shared_ptr<const Topology> t = it->second.lock()) return t;
    }
  }
  absl::StatusOr<Topology> parsed = TopologyFromProto(info);
  if (!parsed.ok()) return parsed.status();
  auto shared = std::make_shared<const Topology>(*std::move(parsed));
  absl::MutexLock lock(&mu);
  // Entries whose topology no host holds any more go as new ones come (bounded by the
  // distinct topologies in use).
  if (known->size() >= 64) {
    for (auto it = known->begin(); it != known->end();) {
      auto next = std::next(it);
      if (it->second.expired()) known->erase(it);
      it = next;
    }
  }
  (*known)[std::move(key)] = shared;
  return std::shared_ptr<const Topology>(shared);
}

}  // namespace mkfleet::planner
