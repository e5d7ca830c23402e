#include "planner/topology_source.h"

#include <hwloc.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mkfleet::planner {
namespace {

namespace fs = std::filesystem;

enum class Kind { kXml, kSynthetic, kLive };

std::string Bdf(unsigned domain, unsigned bus, unsigned dev, unsigned fn) {
  return absl::StrFormat("%04x:%02x:%02x.%x", domain, bus, dev, fn);
}

bool IsNvmeNamespaceName(absl::string_view name) {
  // nvme<ctrl>n<ns>
  if (!absl::ConsumePrefix(&name, "nvme")) return false;
  size_t n = name.find('n');
  if (n == 0 || n == absl::string_view::npos) return false;
  uint32_t a, b;
  return absl::SimpleAtoi(name.substr(0, n), &a) && absl::SimpleAtoi(name.substr(n + 1), &b);
}

// Closes the hwloc topology on every path.
struct HwlocHandle {
  hwloc_topology_t t = nullptr;
  ~HwlocHandle() {
    if (t != nullptr) hwloc_topology_destroy(t);
  }
};

// Index into topo.numa of the first node (lowest os_index) whose cpuset holds `pu`.
int NumaOfPu(hwloc_topology_t t, const Topology& topo, unsigned pu) {
  for (uint32_t n = 0; n < topo.numa.size(); ++n) {
    hwloc_obj_t node = hwloc_get_numanode_obj_by_os_index(t, topo.numa[n].os_index);
    if (node != nullptr && hwloc_bitmap_isset(node->cpuset, pu)) return static_cast<int>(n);
  }
  return topo.numa.empty() ? -1 : 0;
}

void AddSyntheticVfs(uint32_t count, Topology* topo) {
  if (count == 0) return;
  std::set<std::string> taken;
  for (const PciFunction& f : topo->pci) taken.insert(f.bdf);
  for (PciFunction& f : topo->pci) {
    if (ClassOf(f.class_id) != mkfleet::v1::DEVICE_CLASS_NETWORK) continue;
    unsigned domain, bus, dev, fn;
    if (sscanf(f.bdf.c_str(), "%x:%x:%x.%x", &domain, &bus, &dev, &fn) != 4) continue;
    // Like real SR-IOV: VF i at the PF's routing id + offset + i (offset 0x80, stride 1).
    unsigned rid = (bus << 8) | (dev << 3) | fn;
    for (uint32_t i = 0; i < count; ++i) {
      unsigned vf = rid + 0x80 + i + 0x100 * fn;
      if (vf > 0xffff) break;
      std::string bdf = Bdf(domain, vf >> 8, (vf >> 3) & 0x1f, vf & 7);
      if (!taken.insert(bdf).second) continue;
      f.vf_bdfs.push_back(bdf);
    }
  }
}

absl::StatusOr<Topology> Convert(hwloc_topology_t t, Kind kind, const TopologyOptions& options) {
  Topology topo;
  // NUMA nodes, by os_index.
  int nodes = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_NUMANODE);
  std::vector<hwloc_obj_t> node_objs;
  for (int i = 0; i < nodes; ++i) node_objs.push_back(hwloc_get_obj_by_type(t, HWLOC_OBJ_NUMANODE, i));
  std::sort(node_objs.begin(), node_objs.end(),
            [](hwloc_obj_t a, hwloc_obj_t b) { return a->os_index < b->os_index; });
  for (hwloc_obj_t o : node_objs) {
    NumaNode n;
    n.os_index = o->os_index;
    n.memory_bytes = o->attr->numanode.local_memory;
    topo.numa.push_back(n);
  }
  if (topo.numa.empty()) {
    NumaNode n;
    n.memory_bytes = hwloc_get_root_obj(t)->total_memory;
    topo.numa.push_back(n);
  }
  // Distances (latency) between NUMA nodes, when the source has them.
  unsigned nr = 1;
  hwloc_distances_s* dist = nullptr;
  if (hwloc_distances_get_by_type(t, HWLOC_OBJ_NUMANODE, &nr, &dist, HWLOC_DISTANCES_KIND_MEANS_LATENCY,
                                  0) == 0 &&
      nr == 1) {
    std::map<unsigned, uint32_t> index_of;
    for (uint32_t n = 0; n < topo.numa.size(); ++n) index_of[topo.numa[n].os_index] = n;
    if (dist->nbobjs == topo.numa.size()) {
      for (auto& n : topo.numa) n.distances.assign(topo.numa.size(), 0);
      for (unsigned i = 0; i < dist->nbobjs; ++i) {
        for (unsigned j = 0; j < dist->nbobjs; ++j) {
          topo.numa[index_of[dist->objs[i]->os_index]].distances[index_of[dist->objs[j]->os_index]] =
              static_cast<uint32_t>(dist->values[i * dist->nbobjs + j]);
        }
      }
    }
    hwloc_distances_release(t, dist);
  }
  // Packages.
  topo.packages = std::max(1, hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_PACKAGE));
  // L3 domains; without an L3 level, each package is one domain.
  int l3s = hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_L3CACHE);
  for (int i = 0; i < l3s; ++i) {
    hwloc_obj_t o = hwloc_get_obj_by_type(t, HWLOC_OBJ_L3CACHE, i);
    L3Domain d;
    d.ways = o->attr->cache.associativity > 0 ? o->attr->cache.associativity : options.default_llc_ways;
    d.bytes = o->attr->cache.size;
    topo.l3.push_back(d);
  }
  if (topo.l3.empty()) topo.l3.assign(topo.packages, L3Domain{options.default_llc_ways, 0});

  // Cores with their online, allowed PUs; without a core level, each PU is a core.
  hwloc_const_cpuset_t allowed = hwloc_topology_get_allowed_cpuset(t);
  hwloc_const_cpuset_t online = hwloc_topology_get_topology_cpuset(t);
  hwloc_obj_type_t core_type =
      hwloc_get_nbobjs_by_type(t, HWLOC_OBJ_CORE) > 0 ? HWLOC_OBJ_CORE : HWLOC_OBJ_PU;
  std::map<uint32_t, uint32_t> cores_in_package;
  for (int i = 0; i < hwloc_get_nbobjs_by_type(t, core_type); ++i) {
    hwloc_obj_t o = hwloc_get_obj_by_type(t, core_type, i);
    Core core;
    unsigned pu;
    hwloc_bitmap_foreach_begin(pu, o->cpuset) {
      if (hwloc_bitmap_isset(allowed, pu) && hwloc_bitmap_isset(online, pu)) core.pus.push_back(pu);
    }
    hwloc_bitmap_foreach_end();
    if (core.pus.empty()) continue;
    hwloc_obj_t pkg = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_PACKAGE, o);
    core.package = pkg != nullptr ? pkg->logical_index : 0;
    hwloc_obj_t l3 = hwloc_get_ancestor_obj_by_type(t, HWLOC_OBJ_L3CACHE, o);
    core.l3 = l3 != nullptr ? l3->logical_index : std::min<uint32_t>(core.package, topo.l3.size() - 1);
    int numa = NumaOfPu(t, topo, core.pus.front());
    core.numa = numa < 0 ? 0 : numa;
    // Deterministic APIC-like ids for sources that have none: package, core, thread.
    uint32_t c = cores_in_package[core.package]++;
    for (uint32_t k = 0; k < core.pus.size(); ++k) {
      topo.physical_ids[core.pus[k]] = (uint64_t{core.package} << 10) | (c << 2) | k;
    }
    topo.cores.push_back(std::move(core));
  }
  if (topo.cores.empty()) return absl::InvalidArgumentError("topology has no usable CPU");

  // PCI functions.
  for (hwloc_obj_t o = hwloc_get_next_pcidev(t, nullptr); o != nullptr; o = hwloc_get_next_pcidev(t, o)) {
    const auto& a = o->attr->pcidev;
    PciFunction f;
    f.bdf = Bdf(a.domain, a.bus, a.dev, a.func);
    f.class_id = a.class_id;
    f.vendor_id = a.vendor_id;
    f.device_id = a.device_id;
    hwloc_obj_t anchor = hwloc_get_non_io_ancestor_obj(t, o);
    if (anchor != nullptr && anchor->nodeset != nullptr && hwloc_bitmap_weight(anchor->nodeset) >= 1 &&
        (hwloc_bitmap_weight(anchor->nodeset) == 1 || topo.numa.size() == 1)) {
      auto it = std::find_if(topo.numa.begin(), topo.numa.end(), [&](const NumaNode& n) {
        return hwloc_bitmap_isset(anchor->nodeset, n.os_index);
      });
      if (it != topo.numa.end()) f.numa = static_cast<int>(it - topo.numa.begin());
    }
    for (hwloc_obj_t c = o->io_first_child; c != nullptr; c = c->next_sibling) {
      if (c->type != HWLOC_OBJ_OS_DEVICE || c->name == nullptr) continue;
      f.names.push_back(c->name);
      if (IsNvmeNamespaceName(c->name)) ++f.nvme_namespaces;
    }
    if (kind == Kind::kLive) {
      std::error_code ec;
      for (const auto& e : fs::directory_iterator("/sys/bus/pci/devices/" + f.bdf, ec)) {
        if (absl::StartsWith(e.path().filename().string(), "virtfn")) {
          f.vf_bdfs.push_back(fs::read_symlink(e.path(), ec).filename().string());
        }
      }
      std::sort(f.vf_bdfs.begin(), f.vf_bdfs.end());
    }
    topo.pci.push_back(std::move(f));
  }
  // A VF listed as its own function is not also a whole function of the pool.
  if (kind != Kind::kLive) AddSyntheticVfs(options.vfs_per_network_function, &topo);
  topo.Finish();
  return topo;
}

class HwlocTopologySource final : public TopologySource {
 public:
  HwlocTopologySource(Kind kind, std::string arg, TopologyOptions options)
      : kind_(kind), arg_(std::move(arg)), options_(options) {}

  absl::StatusOr<Topology> Load() override {
    HwlocHandle h;
    if (hwloc_topology_init(&h.t) != 0) return absl::InternalError("hwloc_topology_init failed");
    int rc = 0;
    if (kind_ == Kind::kXml) {
      std::error_code ec;
      if (!fs::is_regular_file(arg_, ec)) {
        return absl::NotFoundError(absl::StrCat("topology file ", arg_, ": no such file"));
      }
      rc = hwloc_topology_set_xml(h.t, arg_.c_str());
    } else if (kind_ == Kind::kSynthetic) {
      rc = hwloc_topology_set_synthetic(h.t, arg_.c_str());
    }
    if (rc != 0) {
      return absl::InvalidArgumentError(absl::StrCat("topology ", Describe(), ": hwloc cannot read it"));
    }
    hwloc_topology_set_io_types_filter(h.t, HWLOC_TYPE_FILTER_KEEP_IMPORTANT);
    if (hwloc_topology_load(h.t) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("topology ", Describe(), ": hwloc failed to load it"));
    }
    auto topo = Convert(h.t, kind_, options_);
    if (!topo.ok()) {
      return absl::InvalidArgumentError(absl::StrCat("topology ", Describe(), ": ", topo.status().message()));
    }
    if (kind_ == Kind::kLive) {
      std::ifstream in("/proc/cpuinfo");
      std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
      auto ids = ParseCpuInfoApicIds(text);
      if (ids.ok()) {
        for (const auto& [logical, apic] : *ids) {
          if (topo->core_of_pu.contains(logical)) topo->physical_ids[logical] = apic;
        }
      }
    }
    return topo;
  }

  std::string Describe() const override {
    switch (kind_) {
      case Kind::kXml:
        return arg_;
      case Kind::kSynthetic:
        return absl::StrCat("synthetic:", arg_);
      default:
        return "live";
    }
  }

 private:
  Kind kind_;
  std::string arg_;
  TopologyOptions options_;
};

}  // namespace

std::unique_ptr<TopologySource> NewXmlTopologySource(std::string path, TopologyOptions options) {
  return std::make_unique<HwlocTopologySource>(Kind::kXml, std::move(path), options);
}

std::unique_ptr<TopologySource> NewSyntheticTopologySource(std::string description,
                                                           TopologyOptions options) {
  return std::make_unique<HwlocTopologySource>(Kind::kSynthetic, std::move(description), options);
}

std::unique_ptr<TopologySource> NewLiveTopologySource(TopologyOptions options) {
  return std::make_unique<HwlocTopologySource>(Kind::kLive, "", options);
}

std::unique_ptr<TopologySource> TopologySourceFromSpec(absl::string_view spec, absl::string_view base_dir,
                                                       TopologyOptions options) {
  if (spec == "live") return NewLiveTopologySource(options);
  if (absl::ConsumePrefix(&spec, "synthetic:")) return NewSyntheticTopologySource(std::string(spec), options);
  fs::path p{std::string(spec)};
  if (p.is_relative() && !base_dir.empty()) p = fs::path(std::string(base_dir)) / p;
  return NewXmlTopologySource(p.lexically_normal().string(), options);
}

absl::StatusOr<absl::flat_hash_map<uint32_t, uint64_t>> ParseCpuInfoApicIds(absl::string_view text) {
  absl::flat_hash_map<uint32_t, uint64_t> ids;
  int line_no = 0;
  bool have_cpu = false;
  uint32_t cpu = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++line_no;
    size_t colon = line.find(':');
    if (colon == absl::string_view::npos) continue;
    absl::string_view key = absl::StripAsciiWhitespace(line.substr(0, colon));
    absl::string_view value = absl::StripAsciiWhitespace(line.substr(colon + 1));
    if (key == "processor") {
      if (!absl::SimpleAtoi(value, &cpu)) {
        return absl::InvalidArgumentError(
            absl::StrCat("/proc/cpuinfo line ", line_no, ": bad processor number \"", value, "\""));
      }
      if (ids.contains(cpu)) {
        return absl::InvalidArgumentError(
            absl::StrCat("/proc/cpuinfo line ", line_no, ": processor ", cpu, " listed twice"));
      }
      ids[cpu] = cpu;
      have_cpu = true;
    } else if (key == "apicid" && have_cpu) {
      uint64_t apic;
      if (!absl::SimpleAtoi(value, &apic)) {
        return absl::InvalidArgumentError(
            absl::StrCat("/proc/cpuinfo line ", line_no, ": bad apicid \"", value, "\""));
      }
      ids[cpu] = apic;
    }
  }
  if (ids.empty()) return absl::InvalidArgumentError("/proc/cpuinfo lists no processor");
  return ids;
}

}  // namespace mkfleet::planner
