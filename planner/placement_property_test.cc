// Randomized property test of Place(): thousands of random requests on random small
// synthetic topologies (seeded, bounded). Checks that nothing is given twice, that every
// placement satisfies its policy, and that nothing a brute-force search can fit is
// reported unschedulable.
#include <algorithm>
#include <iostream>
#include <map>
#include <random>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "gtest/gtest.h"
#include "planner/placement.h"
#include "planner/testing/test_topologies.h"

namespace mkfleet::planner {
namespace {

namespace v1 = mkfleet::v1;

struct Scenario {
  std::shared_ptr<const Topology> topology;
  HostInfo host;
  std::vector<InstanceRequest> requests;
};

Scenario RandomScenario(std::mt19937& rng) {
  auto pick = [&](int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(rng); };
  std::string desc = absl::StrCat("pack:", pick(1, 2), " numa:", pick(1, 2), "(memory=", pick(1, 4),
                                  "GiB) l3:", pick(1, 2), " core:", pick(2, 4), " pu:", pick(1, 2));
  Topology t = *SyntheticTopology(desc);
  // Devices hwloc synthetic strings cannot describe: NICs with VFs, NVMe with namespaces.
  for (int i = 0; i < pick(0, 3); ++i) {
    PciFunction f;
    f.bdf = absl::StrFormat("0000:%02x:00.0", 0x10 + i);
    bool nvme = pick(0, 2) == 0;
    f.class_id = nvme ? 0x0108 : 0x0200;
    f.numa = pick(0, t.numa.size() - 1);
    if (nvme) {
      f.nvme_namespaces = pick(0, 3);
    } else {
      for (int v = 0; v < pick(0, 4); ++v) f.vf_bdfs.push_back(absl::StrFormat("0000:%02x:10.%d", 0x10 + i, v));
    }
    t.pci.push_back(f);
  }
  Scenario s;
  s.topology = std::make_shared<const Topology>(t);
  s.host = WholeHost("h", s.topology, 0);
  int n = pick(3, 16);
  for (int i = 0; i < n; ++i) {
    InstanceRequest r = Request(absl::StrCat("i", i), "h", pick(1, 6), 128 * pick(1, 12));
    v1::Resources& res = r.resources;
    res.set_smt(pick(0, 2) == 0 ? v1::SMT_ANY : v1::SMT_WHOLE_CORE);
    res.set_placement(static_cast<v1::PlacementPolicy>(pick(0, 2)));  // Compact, Spread, SingleNuma
    if (pick(0, 3) == 0) res.set_memory_policy(v1::MEMORY_INTERLEAVE);
    if (pick(0, 4) == 0) res.add_numa_nodes(s.topology->numa[pick(0, s.topology->numa.size() - 1)].os_index);
    if (!t.pci.empty() && pick(0, 2) == 0) {
      auto* d = res.add_devices();
      d->set_name("d");
      bool storage = pick(0, 1) == 0;
      d->mutable_select()->set_device_class(storage ? v1::DEVICE_CLASS_STORAGE : v1::DEVICE_CLASS_NETWORK);
      d->mutable_select()->set_numa_local(pick(0, 1) == 0);
      int share = pick(0, 2);
      if (share == 1) d->set_vfs(pick(1, 2));
      if (share == 2) d->set_namespaces(pick(1, 2));
      if (pick(0, 2) == 0) {
        res.set_placement(v1::PLACEMENT_NEAR_DEVICES);
        d->mutable_select()->set_numa_local(true);
      }
    }
    if (pick(0, 5) == 0) res.set_llc_ways(pick(1, 4));
    s.requests.push_back(r);
  }
  return s;
}

// What is left after the placements.
struct FreeState {
  std::set<uint32_t> used_cpus;
  std::set<uint32_t> whole_held_cores;  // cores held whole by an instance
  std::set<uint32_t> any_used_cores;    // cores with CPUs of smt: Any instances
  std::map<uint32_t, uint64_t> mem_used;  // os node -> bytes
  std::map<std::string, int> whole_fn;    // function BDF -> holders
  std::set<std::string> vf_used;
  std::map<std::string, std::set<uint32_t>> ns_used;
};

class PropertyChecker {
 public:
  PropertyChecker(const Scenario& s, const PlacementResult& r) : s_(s), r_(r), t_(*s.topology) {}

  void CheckInvariants() {
    std::set<uint32_t> pool(s_.host.pool.cpus.begin(), s_.host.pool.cpus.end());
    std::map<uint32_t, std::string> core_owner;  // whole cores
    std::map<uint32_t, uint64_t> l3_masks;
    for (const InstanceRequest& req : s_.requests) {
      auto it = r_.placements.find(req.name);
      if (it == r_.placements.end()) continue;
      const v1::Placement& p = it->second;
      const v1::Resources& res = req.resources;
      SCOPED_TRACE(req.name + ": " + p.ShortDebugString());
      ASSERT_EQ(p.cpus_size(), static_cast<int>(res.cpus()));
      EXPECT_EQ(p.cpus(0), p.boot_cpu());
      EXPECT_TRUE(std::is_sorted(p.cpus().begin() + 1, p.cpus().end()));
      std::set<uint32_t> nodes;
      for (uint32_t c : p.cpus()) {
        EXPECT_TRUE(pool.count(c)) << "CPU " << c << " not in the pool";
        EXPECT_TRUE(free_.used_cpus.insert(c).second) << "CPU " << c << " given twice";
        uint32_t core = t_.core_of_pu.at(c);
        nodes.insert(t_.numa[t_.cores[core].numa].os_index);
        if (res.smt() == v1::SMT_WHOLE_CORE) {
          auto [o, ok] = core_owner.emplace(core, req.name);
          EXPECT_TRUE(ok || o->second == req.name) << "whole core shared";
          free_.whole_held_cores.insert(core);
        } else {
          free_.any_used_cores.insert(core);
        }
      }
      EXPECT_EQ(std::set<uint32_t>(p.numa_nodes().begin(), p.numa_nodes().end()), nodes);
      if (res.placement() == v1::PLACEMENT_SINGLE_NUMA) {
        EXPECT_EQ(nodes.size(), 1u);
      }
      if (res.numa_nodes_size() > 0) {
        for (uint32_t n : nodes) EXPECT_TRUE(std::count(res.numa_nodes().begin(), res.numa_nodes().end(), n));
      }
      uint64_t total = 0;
      for (const auto& m : p.memory()) {
        EXPECT_EQ(m.bytes() % kMemoryBlock, 0u);
        total += m.bytes();
        free_.mem_used[m.node()] += m.bytes();
        if (res.memory_policy() != v1::MEMORY_INTERLEAVE) {
          EXPECT_TRUE(nodes.count(m.node())) << "memory off the CPU nodes";
        }
        if (res.numa_nodes_size() > 0) {
          EXPECT_TRUE(std::count(res.numa_nodes().begin(), res.numa_nodes().end(), m.node()));
        }
      }
      EXPECT_EQ(total, res.memory());
      for (const auto& d : p.devices()) {
        if (d.has_vf()) {
          EXPECT_TRUE(free_.vf_used.insert(d.pci()).second) << "VF given twice";
        } else if (d.has_namespace_()) {
          EXPECT_TRUE(free_.ns_used[d.pci()].insert(d.namespace_()).second) << "namespace given twice";
        } else {
          EXPECT_EQ(++free_.whole_fn[d.pci()], 1) << "function given twice";
        }
        if (res.devices(0).select().numa_local()) {
          int fn = t_.FindPci(d.pci());
          if (fn < 0) {  // a VF: find its function
            for (size_t k = 0; k < t_.pci.size(); ++k) {
              if (std::count(t_.pci[k].vf_bdfs.begin(), t_.pci[k].vf_bdfs.end(), d.pci())) fn = k;
            }
          }
          ASSERT_GE(fn, 0);
          EXPECT_TRUE(nodes.count(t_.numa[t_.pci[fn].numa].os_index)) << "device not NUMA-local";
        }
      }
      EXPECT_EQ(p.has_llc_mask(), res.has_llc_ways());
      if (p.has_llc_mask()) {
        uint32_t m = p.llc_mask();
        EXPECT_EQ(__builtin_popcount(m), static_cast<int>(res.llc_ways()));
        EXPECT_EQ(m >> __builtin_ctz(m), (1u << res.llc_ways()) - 1) << "mask not contiguous";
        std::set<uint32_t> l3s;
        for (uint32_t c : p.cpus()) l3s.insert(t_.cores[t_.core_of_pu.at(c)].l3);
        for (uint32_t l3 : l3s) {
          EXPECT_EQ(l3_masks[l3] & m, 0u) << "cache ways overlap";
          l3_masks[l3] |= m;
        }
      }
    }
    // No smt: Any CPU sits in a core held whole by an instance.
    for (uint32_t core : free_.any_used_cores) EXPECT_FALSE(free_.whole_held_cores.count(core)) << "core " << core;
    // Whole functions and their VFs/namespaces never mix.
    for (const auto& [bdf, n] : free_.whole_fn) {
      int fn = t_.FindPci(bdf);
      for (const auto& vf : t_.pci[fn].vf_bdfs) EXPECT_FALSE(free_.vf_used.count(vf));
      EXPECT_FALSE(free_.ns_used.count(bdf));
    }
    for (const auto& [os, bytes] : free_.mem_used) {
      EXPECT_LE(bytes, s_.host.pool.memory.at(t_.numa_by_os.at(os)));
    }
  }

  // Brute force: can `req` fit in what is left?
  bool Fits(const InstanceRequest& req) const {
    const v1::Resources& res = req.resources;
    if (res.has_llc_ways()) return false;  // way masks depend on the exact cores: not checked
    bool whole = res.smt() == v1::SMT_WHOLE_CORE;
    std::set<uint32_t> pool(s_.host.pool.cpus.begin(), s_.host.pool.cpus.end());
    std::vector<uint32_t> allowed;
    for (uint32_t n = 0; n < t_.numa.size(); ++n) {
      if (res.numa_nodes_size() == 0 || std::count(res.numa_nodes().begin(), res.numa_nodes().end(), t_.numa[n].os_index)) {
        allowed.push_back(n);
      }
    }
    std::map<uint32_t, uint32_t> cap;  // per numa index
    uint32_t width = 1;
    for (uint32_t c = 0; c < t_.cores.size(); ++c) {
      const Core& core = t_.cores[c];
      width = std::max<uint32_t>(width, core.pus.size());
      if (whole) {
        bool free = !free_.whole_held_cores.count(c) && !free_.any_used_cores.count(c);
        for (uint32_t pu : core.pus) free = free && pool.count(pu) && !free_.used_cpus.count(pu);
        cap[core.numa] += free;
      } else if (!free_.whole_held_cores.count(c)) {
        for (uint32_t pu : core.pus) cap[core.numa] += pool.count(pu) && !free_.used_cpus.count(pu);
      }
    }
    uint32_t units = whole ? (res.cpus() + width - 1) / width : res.cpus();
    auto mem_free = [&](uint32_t n) {
      auto it = s_.host.pool.memory.find(n);
      uint64_t pooled = it == s_.host.pool.memory.end() ? 0 : it->second;
      auto u = free_.mem_used.find(t_.numa[n].os_index);
      return (pooled - (u == free_.mem_used.end() ? 0 : u->second)) / kMemoryBlock;
    };
    // Device candidates: functions that can serve the (single) device request.
    std::vector<int> serving;
    if (res.devices_size() > 0) {
      const auto& d = res.devices(0);
      for (int p : s_.host.pool.devices) {
        const PciFunction& f = t_.pci[p];
        if (ClassOf(f.class_id) != d.select().device_class()) continue;
        if (free_.whole_fn.count(f.bdf)) continue;
        int vfs_free = 0;
        for (const auto& vf : f.vf_bdfs) vfs_free += !free_.vf_used.count(vf);
        int ns_free = f.nvme_namespaces - (free_.ns_used.count(f.bdf) ? free_.ns_used.at(f.bdf).size() : 0);
        bool untouched = vfs_free == static_cast<int>(f.vf_bdfs.size()) && ns_free == static_cast<int>(f.nvme_namespaces);
        bool ok = d.share_case() == v1::DeviceRequest::kVfs ? vfs_free >= static_cast<int>(d.vfs())
                  : d.share_case() == v1::DeviceRequest::kNamespaces ? ns_free >= static_cast<int>(d.namespaces())
                                                                     : untouched;
        if (ok) serving.push_back(p);
      }
      if (serving.empty()) return false;
    }
    std::vector<uint32_t> cpu_nodes;
    for (uint32_t n : allowed) {
      if (t_.numa[n].has_cpus) cpu_nodes.push_back(n);
    }
    if (res.placement() == v1::PLACEMENT_NEAR_DEVICES) {
      std::set<uint32_t> dn;
      for (int p : serving) dn.insert(t_.pci[p].numa);
      std::vector<uint32_t> keep;
      for (uint32_t n : cpu_nodes) {
        if (dn.count(n)) keep.push_back(n);
      }
      cpu_nodes = keep;
    }
    for (uint32_t mask = 1; mask < (1u << cpu_nodes.size()); ++mask) {
      std::vector<uint32_t> set;
      for (uint32_t i = 0; i < cpu_nodes.size(); ++i) {
        if (mask & (1u << i)) set.push_back(cpu_nodes[i]);
      }
      if (res.placement() == v1::PLACEMENT_SINGLE_NUMA && set.size() != 1) continue;
      if (set.size() > units) continue;
      uint32_t sum = 0;
      bool each = true;
      for (uint32_t n : set) {
        sum += cap[n];
        each = each && cap[n] > 0;
      }
      if (!each || sum < units) continue;
      uint64_t mem = 0;
      if (res.memory_policy() == v1::MEMORY_INTERLEAVE) {
        for (uint32_t n : allowed) mem += mem_free(n);
      } else {
        for (uint32_t n : set) mem += mem_free(n);
      }
      if (mem < res.memory() / kMemoryBlock) continue;
      if (res.devices_size() > 0 && res.devices(0).select().numa_local()) {
        bool local = std::any_of(serving.begin(), serving.end(), [&](int p) {
          return std::count(set.begin(), set.end(), static_cast<uint32_t>(t_.pci[p].numa)) > 0;
        });
        if (!local) continue;
      }
      return true;
    }
    return false;
  }

 private:
  const Scenario& s_;
  const PlacementResult& r_;
  const Topology& t_;
  FreeState free_;
};

TEST(PlacementPropertyTest, RandomRequestsOnRandomTopologies) {
  std::mt19937 rng(20261127);
  int requests = 0, placed = 0, checked_unschedulable = 0;
  for (int round = 0; round < 400; ++round) {
    Scenario s = RandomScenario(rng);
    PlacementResult r = Place({s.host}, s.requests, {});
    SCOPED_TRACE(absl::StrCat("round ", round, " on ", s.topology->Summary()));
    requests += s.requests.size();
    placed += r.placements.size();
    ASSERT_EQ(r.placements.size() + r.unschedulable.size(), s.requests.size());
    PropertyChecker checker(s, r);
    checker.CheckInvariants();
    if (::testing::Test::HasFailure()) return;
    for (const Unschedulable& u : r.unschedulable) {
      auto it = std::find_if(s.requests.begin(), s.requests.end(), [&](const auto& q) { return q.name == u.name; });
      ++checked_unschedulable;
      EXPECT_FALSE(checker.Fits(*it)) << u.name << " was reported unschedulable (" << u.reason
                                      << ") but fits: " << it->resources.ShortDebugString();
    }
    if (::testing::Test::HasFailure()) return;
    // Determinism: the same input gives the same output.
    PlacementResult again = Place({s.host}, s.requests, {});
    for (const auto& [name, p] : r.placements) ASSERT_EQ(p.DebugString(), again.placements.at(name).DebugString());
  }
  std::cout << requests << " requests, " << placed << " placed, " << checked_unschedulable
            << " unschedulable checked against brute force\n";
  // The generator must exercise both outcomes.
  EXPECT_GT(requests, 2000);
  EXPECT_GT(placed, requests / 4);
  EXPECT_GT(checked_unschedulable, 100);
}

}  // namespace
}  // namespace mkfleet::planner
