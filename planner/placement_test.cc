#include "planner/placement.h"

#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/testing/test_topologies.h"

namespace mkfleet::planner {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
namespace v1 = mkfleet::v1;

std::vector<uint32_t> Cpus(const v1::Placement& p) { return {p.cpus().begin(), p.cpus().end()}; }

// Asserts no CPU is given twice and no whole core is shared, over all placements.
void ExpectNoOverlap(const PlacementResult& r, const Topology& t) {
  std::set<uint32_t> cpus;
  std::map<uint32_t, std::string> core_owner;
  for (const auto& [name, p] : r.placements) {
    for (uint32_t c : p.cpus()) {
      EXPECT_TRUE(cpus.insert(c).second) << "CPU " << c << " given twice";
      uint32_t core = t.core_of_pu.at(c);
      auto [it, inserted] = core_owner.emplace(core, name);
      EXPECT_TRUE(inserted || it->second == name) << "core of CPU " << c << " shared by " << it->second << " and " << name;
    }
  }
}

class PlacementTest : public ::testing::Test {
 protected:
  // 2 sockets x 1 NUMA node x 8 cores x 2 threads; siblings N and N+16; NIC on node 1,
  // GPUs on both nodes, SAS and SATA on node 0.
  std::shared_ptr<const Topology> t32_ = XmlTopology("32em64t-2n8c2t-pci-normalio.xml");
  HostInfo a_ = WholeHost("a", t32_);

  PlacementResult PlaceOn(std::vector<InstanceRequest> reqs, const std::map<std::string, v1::Placement>& cur = {}) {
    return Place({a_}, reqs, cur);
  }
};

TEST_F(PlacementTest, WholeCoresBothThreadsBootCpuFirst) {
  PlacementResult r = PlaceOn({Request("x", "a", 4)});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  const v1::Placement& p = r.placements.at("x");
  EXPECT_EQ(p.host(), "a");
  // Two whole cores: CPUs 1,17 and 2,18 (the core of CPUs 0,16 stays with the host).
  EXPECT_THAT(Cpus(p), ElementsAre(1, 2, 17, 18));
  EXPECT_EQ(p.boot_cpu(), 1u);
  EXPECT_THAT(p.numa_nodes(), ElementsAre(0));
  ASSERT_EQ(p.physical_cpus_size(), 4);
  EXPECT_EQ(p.physical_cpus(0), t32_->physical_ids.at(1));
  EXPECT_EQ(p.physical_cpus(2), t32_->physical_ids.at(17));
}

TEST_F(PlacementTest, OddCpuCountStillHoldsWholeCores) {
  PlacementResult r = PlaceOn({Request("x", "a", 3), Request("y", "a", 3)});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_EQ(r.placements.at("x").cpus_size(), 3);
  ExpectNoOverlap(r, *t32_);
}

TEST_F(PlacementTest, SmtAnyTakesSingleCpusButNeverFromWholeCores) {
  InstanceRequest any = Request("any", "a", 3);
  any.resources.set_smt(v1::SMT_ANY);
  PlacementResult r = PlaceOn({Request("whole", "a", 2), any});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  std::set<uint32_t> whole_cores;
  for (uint32_t c : r.placements.at("whole").cpus()) whole_cores.insert(t32_->core_of_pu.at(c));
  for (uint32_t c : r.placements.at("any").cpus()) EXPECT_FALSE(whole_cores.count(t32_->core_of_pu.at(c)));
  EXPECT_EQ(r.placements.at("any").cpus_size(), 3);
}

TEST_F(PlacementTest, CompactStaysOnOneNode) {
  // Best fit: 6 cores go to node 0 (7 free), leaving node 1 whole.
  PlacementResult r = PlaceOn({Request("x", "a", 12)});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("x").numa_nodes(), ElementsAre(0));
  // 8 cores only fit on node 1.
  r = PlaceOn({Request("x", "a", 16)});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("x").numa_nodes(), ElementsAre(1));
}

TEST_F(PlacementTest, CompactSpillsOverWhenOneNodeIsTooSmall) {
  PlacementResult r = PlaceOn({Request("x", "a", 20)});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("x").numa_nodes(), ElementsAre(0, 1));
  EXPECT_EQ(r.placements.at("x").cpus_size(), 20);
}

TEST_F(PlacementTest, SingleNumaExplainsFreeCoresPerNode) {
  InstanceRequest x = Request("x", "a", 20);
  x.resources.set_placement(v1::PLACEMENT_SINGLE_NUMA);
  PlacementResult r = PlaceOn({x});
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason,
            "a: needs 10 whole cores on one NUMA node; free whole cores: node0=7, node1=8");
}

TEST_F(PlacementTest, SpreadUsesEveryNode) {
  InstanceRequest x = Request("x", "a", 8, 2048);
  x.resources.set_placement(v1::PLACEMENT_SPREAD);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  const v1::Placement& p = r.placements.at("x");
  EXPECT_THAT(p.numa_nodes(), ElementsAre(0, 1));
  // Memory Local follows the CPUs: half on each node.
  ASSERT_EQ(p.memory_size(), 2);
  EXPECT_EQ(p.memory(0).bytes(), 1ull << 30);
  EXPECT_EQ(p.memory(1).bytes(), 1ull << 30);
}

TEST_F(PlacementTest, NumaNodesRestrict) {
  InstanceRequest x = Request("x", "a", 2);
  x.resources.add_numa_nodes(1);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("x").numa_nodes(), ElementsAre(1));
  EXPECT_EQ(r.placements.at("x").memory(0).node(), 1u);
  x.resources.set_cpus(18);
  r = PlaceOn({x});
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason, "a: needs 9 whole cores on NUMA nodes 1; free whole cores: node1=8");
  x.resources.set_numa_nodes(0, 7);
  EXPECT_EQ(PlaceOn({x}).unschedulable[0].reason, "a: numaNodes: node 7 does not exist on a");
}

TEST_F(PlacementTest, NearDevicesFollowsTheNic) {
  InstanceRequest x = Request("x", "a", 4);
  x.resources.set_placement(v1::PLACEMENT_NEAR_DEVICES);
  auto* d = x.resources.add_devices();
  d->set_name("nic0");
  d->mutable_select()->set_device_class(v1::DEVICE_CLASS_NETWORK);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  const v1::Placement& p = r.placements.at("x");
  EXPECT_THAT(p.numa_nodes(), ElementsAre(1));
  ASSERT_EQ(p.devices_size(), 1);
  EXPECT_EQ(p.devices(0).name(), "nic0");
  EXPECT_EQ(t32_->pci[t32_->FindPci(p.devices(0).pci())].numa, 1);
}

TEST_F(PlacementTest, CpuSetExactOrRejectedWithReason) {
  InstanceRequest x = Request("x", "a", 0);
  x.resources.clear_cpus();
  for (uint32_t c : {8, 9, 24, 25}) x.resources.mutable_cpu_set()->add_ids(c);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(Cpus(r.placements.at("x")), ElementsAre(8, 9, 24, 25));

  InstanceRequest split = x;
  split.name = "split";
  split.resources.mutable_cpu_set()->clear_ids();
  for (uint32_t c : {10, 11}) split.resources.mutable_cpu_set()->add_ids(c);
  r = PlaceOn({split});
  EXPECT_EQ(r.unschedulable.at(0).reason,
            "a: cpuSet: splits the core of CPUs 10,26 (smt: WholeCore takes whole cores; add CPU 26 or use smt: Any)");
  InstanceRequest taken = x;
  taken.name = "y";
  r = PlaceOn({x, taken});
  EXPECT_EQ(r.unschedulable.at(0).reason, "a: cpuSet: CPU 8 is in use by x");
  InstanceRequest host_cpu = x;
  host_cpu.resources.mutable_cpu_set()->set_ids(0, 0);
  EXPECT_EQ(PlaceOn({host_cpu}).unschedulable.at(0).reason, "a: cpuSet: CPU 0 is not in the pool of a");
}

TEST_F(PlacementTest, MemoryNeverBeyondThePool) {
  InstanceRequest x = Request("x", "a", 4, 40 << 10);
  x.resources.set_placement(v1::PLACEMENT_SINGLE_NUMA);
  PlacementResult r = PlaceOn({x});
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_THAT(r.unschedulable[0].reason, HasSubstr("needs 40Gi of memory on NUMA node"));
  EXPECT_THAT(r.unschedulable[0].reason, HasSubstr("free memory: node"));
  // Compact may take CPUs on two nodes to reach the memory it needs.
  x.resources.set_placement(v1::PLACEMENT_COMPACT);
  r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("x").numa_nodes(), ElementsAre(0, 1));
  uint64_t total = 0;
  for (const auto& m : r.placements.at("x").memory()) total += m.bytes();
  EXPECT_EQ(total, 40ull << 30);
}

TEST_F(PlacementTest, InterleaveSpreadsMemoryOverAllowedNodes) {
  InstanceRequest x = Request("x", "a", 2, 4096);
  x.resources.set_memory_policy(v1::MEMORY_INTERLEAVE);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  const v1::Placement& p = r.placements.at("x");
  ASSERT_EQ(p.memory_size(), 2);
  EXPECT_EQ(p.memory(0).bytes(), 2ull << 30);
  EXPECT_EQ(p.memory(1).bytes(), 2ull << 30);
}

TEST(PlacementKnlTest, MemoryOnlyNodesOnlyWhenAsked) {
  auto t = XmlTopology("64intel64-fakeKNL-SNC4-hybrid.xml");
  HostInfo h = WholeHost("knl", t);
  // Local memory goes to the CPUs' DDR node, never to MCDRAM.
  PlacementResult r = Place({h}, {Request("x", "knl", 2, 512)}, {});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  for (const auto& m : r.placements.at("x").memory()) EXPECT_LT(m.node(), 4u);
  // numaNodes naming a DDR node and its MCDRAM lets memory use both.
  InstanceRequest y = Request("y", "knl", 2, 2048);
  y.resources.add_numa_nodes(1);
  y.resources.add_numa_nodes(4);
  r = Place({h}, {y}, {});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(r.placements.at("y").numa_nodes(), ElementsAre(1));
  std::set<uint32_t> mem_nodes;
  for (const auto& m : r.placements.at("y").memory()) mem_nodes.insert(m.node());
  EXPECT_TRUE(mem_nodes.count(4) || mem_nodes == std::set<uint32_t>{1});
  // Interleave over the MCDRAM nodes only: CPUs must come from somewhere else.
  InstanceRequest z = Request("z", "knl", 2, 1024);
  z.resources.add_numa_nodes(5);
  EXPECT_EQ(Place({h}, {z}, {}).unschedulable.at(0).reason, "knl: numaNodes 5 have no CPUs");
}

TEST(PlacementOfflineTest, OfflineCpusAreNeverGiven) {
  auto t = XmlTopology("16em64t-4s2c2t-offlines.xml");
  HostInfo h = WholeHost("o", t, 0);
  h.pool.memory[0] = 4ull << 30;  // this export records no memory size
  InstanceRequest x = Request("x", "o", 1, 128);
  x.resources.set_smt(v1::SMT_ANY);
  std::vector<InstanceRequest> reqs;
  for (int i = 0; i < 10; ++i) {
    x.name = "x" + std::to_string(i);
    reqs.push_back(x);
  }
  PlacementResult r = Place({h}, reqs, {});
  std::set<uint32_t> online;
  for (const Core& c : t->cores) online.insert(c.pus.begin(), c.pus.end());
  for (const auto& [n, p] : r.placements) {
    for (uint32_t c : p.cpus()) EXPECT_TRUE(online.count(c)) << c;
  }
  // Every pool CPU is used once, the rest is unschedulable.
  EXPECT_EQ(r.placements.size(), h.pool.cpus.size()) << ::testing::PrintToString(r.unschedulable);
  EXPECT_EQ(r.unschedulable.size(), 10 - h.pool.cpus.size());
}

TEST_F(PlacementTest, WholeFunctionsAreExclusive) {
  auto dev = [](InstanceRequest r, const std::string& pci) {
    auto* d = r.resources.add_devices();
    d->set_name("disk");
    d->set_pci(pci);
    return r;
  };
  PlacementResult r = PlaceOn({dev(Request("x", "a", 2), "0000:04:00.0"), dev(Request("y", "a", 2), "0000:04:00.0")});
  ASSERT_EQ(r.placements.count("x"), 1u);
  EXPECT_EQ(r.placements.at("x").devices(0).pci(), "0000:04:00.0");
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason, "a: device disk: 0000:04:00.0 is in use by x");
  r = PlaceOn({dev(Request("z", "a", 2), "0000:99:00.0")});
  EXPECT_EQ(r.unschedulable[0].reason, "a: device disk: 0000:99:00.0 is not in the pool of a");
}

TEST_F(PlacementTest, GpuByClassNumaLocal) {
  a_.pool.devices = {t32_->FindPci("0000:03:00.0"), t32_->FindPci("0000:83:00.0"), t32_->FindPci("0000:84:00.0")};
  InstanceRequest x = Request("x", "a", 2);
  x.resources.add_numa_nodes(0);
  auto* d = x.resources.add_devices();
  d->set_name("gpu0");
  d->mutable_select()->set_device_class(v1::DEVICE_CLASS_GPU);
  d->mutable_select()->set_numa_local(true);
  PlacementResult r = PlaceOn({x});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_EQ(r.placements.at("x").devices(0).pci(), "0000:03:00.0");  // the node-0 GPU
  // A second one on node 0 finds the GPU taken and the others far away.
  InstanceRequest y = x;
  y.name = "y";
  r = PlaceOn({x, y});
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason,
            "a: device gpu0: no free GPU function on NUMA node 0 (0000:03:00.0 is in use by x; "
            "0000:83:00.0 is on NUMA node 1; 0000:84:00.0 is on NUMA node 1)");
}

TEST(PlacementVfTest, VfsAreSharedButCountedAndBlockTheWholeFunction) {
  TopologyOptions options;
  options.vfs_per_network_function = 2;
  auto t = XmlTopology("32em64t-2n8c2t-pci-normalio.xml", options);
  HostInfo h = WholeHost("a", t);
  h.pool.devices = {t->FindPci("0000:81:00.0")};
  auto vf = [](const std::string& name, uint32_t n) {
    InstanceRequest r = Request(name, "a", 2);
    auto* d = r.resources.add_devices();
    d->set_name("nic");
    d->mutable_select()->set_device_class(v1::DEVICE_CLASS_NETWORK);
    d->mutable_select()->set_numa_local(true);
    d->set_vfs(n);
    r.resources.set_placement(v1::PLACEMENT_NEAR_DEVICES);
    return r;
  };
  InstanceRequest whole = Request("whole", "a", 2);
  auto* d = whole.resources.add_devices();
  d->set_name("nic");
  d->set_pci("0000:81:00.0");
  PlacementResult r = Place({h}, {vf("v1", 1), vf("v2", 1), vf("v3", 1), whole}, {});
  ASSERT_EQ(r.placements.count("v1"), 1u);
  ASSERT_EQ(r.placements.count("v2"), 1u);
  const auto& d1 = r.placements.at("v1").devices(0);
  const auto& d2 = r.placements.at("v2").devices(0);
  EXPECT_TRUE(d1.has_vf());
  EXPECT_NE(d1.pci(), d2.pci());
  EXPECT_EQ(d1.pci(), t->pci[t->FindPci("0000:81:00.0")].vf_bdfs[d1.vf()]);
  EXPECT_THAT(r.placements.at("v1").numa_nodes(), ElementsAre(1));
  ASSERT_EQ(r.unschedulable.size(), 2u);
  EXPECT_EQ(r.unschedulable[0].name, "v3");
  EXPECT_EQ(r.unschedulable[0].reason,
            "a: device nic: no free Network function with 1 free VF (0000:81:00.0 has 0 of 2 VFs free)");
  EXPECT_EQ(r.unschedulable[1].reason, "a: device nic: 0000:81:00.0 has VFs or namespaces in use");
}

TEST(PlacementNvmeTest, NamespacesOfOneController) {
  Topology t = *SyntheticTopology("pack:1 numa:1(memory=16GiB) core:4 pu:2");
  PciFunction nvme;
  nvme.bdf = "0000:05:00.0";
  nvme.class_id = 0x0108;
  nvme.numa = 0;
  nvme.nvme_namespaces = 3;
  t.pci.push_back(nvme);
  HostInfo h = WholeHost("n", std::make_shared<const Topology>(t));
  auto ns = [](const std::string& name, uint32_t n) {
    InstanceRequest r = Request(name, "n", 1);
    r.resources.set_smt(v1::SMT_ANY);
    auto* d = r.resources.add_devices();
    d->set_name("disk");
    d->mutable_select()->set_device_class(v1::DEVICE_CLASS_STORAGE);
    d->set_namespaces(n);
    return r;
  };
  PlacementResult r = Place({h}, {ns("a", 2), ns("b", 1), ns("c", 1)}, {});
  ASSERT_EQ(r.placements.at("a").devices_size(), 2);
  EXPECT_EQ(r.placements.at("a").devices(0).namespace_(), 1u);
  EXPECT_EQ(r.placements.at("a").devices(1).namespace_(), 2u);
  EXPECT_EQ(r.placements.at("b").devices(0).namespace_(), 3u);
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason,
            "n: device disk: no free Storage function with 1 free namespace (0000:05:00.0 has 0 of 3 namespaces free)");
}

TEST_F(PlacementTest, LlcWaysContiguousAndDisjoint) {
  auto ways = [](const std::string& name, uint32_t w) {
    InstanceRequest r = Request(name, "a", 2);
    r.resources.add_numa_nodes(0);
    r.resources.set_llc_ways(w);
    return r;
  };
  uint32_t total = t32_->l3[0].ways;
  PlacementResult r = PlaceOn({ways("w1", 4), ways("w2", 4), ways("w3", total - 7)});
  EXPECT_EQ(r.placements.at("w1").llc_mask(), 0xfu);
  EXPECT_EQ(r.placements.at("w2").llc_mask(), 0xf0u);
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].reason,
            absl::StrFormat("a: needs %d contiguous free cache ways in L3 domain 0 (%d ways, in use 0xff)", total - 7, total));
}

TEST_F(PlacementTest, LlcMasksStayWithinTheKernelsThirtyTwoBits) {
  // An L3 that reports 64 ways: the kernel's llc-way-mask is a u32, so only 32 can be given.
  auto wide = std::make_shared<Topology>(*t32_);
  for (L3Domain& d : wide->l3) d.ways = 64;
  HostInfo h = WholeHost("a", wide);
  auto ways = [](const std::string& name, uint32_t w) {
    InstanceRequest r = Request(name, "a", 2);
    r.resources.add_numa_nodes(0);
    r.resources.set_llc_ways(w);
    return r;
  };
  PlacementResult r = Place({h}, {ways("w1", 32), ways("w2", 32)}, {});
  ASSERT_EQ(r.placements.count("w1"), 1u);
  EXPECT_EQ(r.placements.at("w1").llc_mask(), 0xffffffffu);
  // The second would need bits 32..63, which no u32 mask has.
  EXPECT_EQ(r.placements.count("w2"), 0u);
  for (const auto& [name, p] : r.placements) {
    if (p.has_llc_mask()) {
      EXPECT_NE(p.llc_mask(), 0u) << name;
    }
  }
}

TEST_F(PlacementTest, DeterministicForTheSameInput) {
  std::vector<InstanceRequest> reqs;
  for (int i = 0; i < 10; ++i) reqs.push_back(Request("i" + std::to_string(i), "a", 2 + i % 3));
  PlacementResult a = PlaceOn(reqs);
  std::reverse(reqs.begin(), reqs.end());  // input order does not matter
  PlacementResult b = PlaceOn(reqs);
  ASSERT_EQ(a.placements.size(), b.placements.size());
  for (const auto& [name, p] : a.placements) EXPECT_EQ(p.DebugString(), b.placements.at(name).DebugString());
  ExpectNoOverlap(a, *t32_);
}

class StabilityTest : public ::testing::Test {
 protected:
  std::vector<HostInfo> hosts_;
  std::vector<InstanceRequest> reqs_;
  void SetUp() override {
    auto t = SyntheticTopology("pack:2 numa:2(memory=16GiB) l3:1 core:8 pu:2");
    for (int h = 0; h < 4; ++h) {
      hosts_.push_back(WholeHost("h" + std::to_string(h), t));
      hosts_.back().labels = {{"zone", "z"}};
    }
    for (int i = 0; i < 50; ++i) {
      InstanceRequest r = Request(absl::StrCat("i", i), "", 1 + i % 4, 512 * (1 + i % 3));
      r.selector.mutable_match_labels()->insert({"zone", "z"});
      reqs_.push_back(r);
    }
  }
  void ExpectOthersUnchanged(const PlacementResult& before, const PlacementResult& after, const std::string& changed) {
    for (const auto& [name, p] : before.placements) {
      if (name == changed) continue;
      ASSERT_TRUE(after.placements.count(name)) << name;
      EXPECT_EQ(p.DebugString(), after.placements.at(name).DebugString()) << name << " moved";
    }
  }
};

TEST_F(StabilityTest, ResizingOneMovesNoOther) {
  PlacementResult first = Place(hosts_, reqs_, {});
  ASSERT_THAT(first.unschedulable, IsEmpty());
  ASSERT_EQ(first.placements.size(), 50u);
  reqs_[17].resources.set_cpus(reqs_[17].resources.cpus() + 2);
  reqs_[17].resources.set_memory(reqs_[17].resources.memory() + (1ull << 30));
  PlacementResult second = Place(hosts_, reqs_, first.placements);
  ASSERT_THAT(second.unschedulable, IsEmpty());
  ExpectOthersUnchanged(first, second, "i17");
  // Grown in place: same host, every old CPU kept, memory on the same nodes.
  const auto& before = first.placements.at("i17");
  const auto& after = second.placements.at("i17");
  EXPECT_EQ(before.host(), after.host());
  for (uint32_t c : before.cpus()) EXPECT_TRUE(std::count(after.cpus().begin(), after.cpus().end(), c)) << c;
  EXPECT_EQ(before.boot_cpu(), after.boot_cpu());
  EXPECT_EQ(before.memory(0).node(), after.memory(0).node());
}

TEST_F(StabilityTest, ShrinkingKeepsTheBootCpuAndStaysInPlace) {
  reqs_[5].resources.set_cpus(4);
  PlacementResult first = Place(hosts_, reqs_, {});
  reqs_[5].resources.set_cpus(2);
  PlacementResult second = Place(hosts_, reqs_, first.placements);
  ExpectOthersUnchanged(first, second, "i5");
  const auto& before = first.placements.at("i5");
  const auto& after = second.placements.at("i5");
  EXPECT_EQ(after.cpus_size(), 2);
  EXPECT_EQ(after.boot_cpu(), before.boot_cpu());
  for (uint32_t c : after.cpus()) EXPECT_TRUE(std::count(before.cpus().begin(), before.cpus().end(), c)) << c;
}

TEST_F(StabilityTest, AddingOrRemovingOneMovesNoOther) {
  PlacementResult first = Place(hosts_, reqs_, {});
  reqs_.push_back(Request("new", "h2", 6));
  PlacementResult added = Place(hosts_, reqs_, first.placements);
  ASSERT_THAT(added.unschedulable, IsEmpty());
  ExpectOthersUnchanged(first, added, "new");
  reqs_.erase(reqs_.begin() + 3);
  PlacementResult removed = Place(hosts_, reqs_, added.placements);
  EXPECT_EQ(removed.placements.count("i3"), 0u);
  ExpectOthersUnchanged(added, removed, "i3");
}

TEST_F(StabilityTest, InvalidPlacementIsReplaced) {
  PlacementResult first = Place(hosts_, reqs_, {});
  std::string host = first.placements.at("i0").host();
  hosts_.erase(std::remove_if(hosts_.begin(), hosts_.end(), [&](const HostInfo& h) { return h.name == host; }),
               hosts_.end());
  PlacementResult second = Place(hosts_, reqs_, first.placements);
  EXPECT_NE(second.placements.at("i0").host(), host);
  for (const auto& [name, p] : first.placements) {
    if (p.host() != host) {
      EXPECT_EQ(p.DebugString(), second.placements.at(name).DebugString());
    }
  }
}

TEST(HostChoiceTest, LeastLoadedSkipsCordonedAndExplains) {
  auto t = SyntheticTopology("pack:1 numa:1(memory=16GiB) core:4 pu:2");
  HostInfo a = WholeHost("a", t), b = WholeHost("b", t), c = WholeHost("c", t);
  a.labels = b.labels = c.labels = {{"zone", "z"}};
  c.cordoned = true;
  auto req = [](const std::string& name) {
    InstanceRequest r = Request(name, "", 2, 256);
    r.selector.mutable_match_labels()->insert({"zone", "z"});
    return r;
  };
  PlacementResult r = Place({a, b, c}, {req("x"), req("y"), req("z")}, {});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  // Least loaded first: x and y on different hosts, nothing on the cordoned one.
  EXPECT_NE(r.placements.at("x").host(), r.placements.at("y").host());
  for (const auto& [n, p] : r.placements) EXPECT_NE(p.host(), "c");
  InstanceRequest none = req("w");
  none.selector.mutable_match_labels()->at("zone") = "nowhere";
  EXPECT_EQ(Place({a, b, c}, {none}, {}).unschedulable.at(0).reason,
            "no uncordoned Host matches hostSelector {zone=nowhere}");
  InstanceRequest big = req("big");
  big.resources.set_cpus(8);
  EXPECT_EQ(Place({a, b}, {big}, {}).unschedulable.at(0).reason,
            "no matching host fits (2 tried, 2 with less than 8 CPUs free)");
}

TEST(BuildRequestsTest, StandbyIsPlacedBesideItsPrimary) {
  auto t = SyntheticTopology("pack:1 numa:1(memory=16GiB) core:8 pu:2");
  HostInfo a = WholeHost("a", t), b = WholeHost("b", t);
  a.labels = b.labels = {{"z", "1"}};
  v1::KernelInstance ki;
  ki.mutable_metadata()->set_name("web");
  ki.mutable_spec()->mutable_host_selector()->mutable_match_labels()->insert({"z", "1"});
  ki.mutable_spec()->mutable_resources()->set_cpus(4);
  ki.mutable_spec()->mutable_resources()->set_memory(1ull << 30);
  ki.mutable_spec()->mutable_failover()->set_policy(v1::FAILOVER_STANDBY);
  ki.mutable_spec()->mutable_failover()->mutable_standby()->set_cpus(2);
  ki.mutable_spec()->mutable_failover()->mutable_standby()->set_memory(512ull << 20);
  auto reqs = BuildRequests({ki});
  ASSERT_EQ(reqs.size(), 2u);
  PlacementResult r = Place({a, b}, reqs, {});
  ASSERT_THAT(r.unschedulable, IsEmpty());
  EXPECT_EQ(r.placements.at("web-standby").host(), r.placements.at("web").host());
  EXPECT_EQ(r.placements.at("web-standby").cpus_size(), 2);
}

}  // namespace
}  // namespace mkfleet::planner

namespace mkfleet::planner {
namespace {

TEST(PlacementEngineTest, ReleaseFreesAndFailedResizeKeepsTheOld) {
  auto t = SyntheticTopology("pack:1 numa:1(memory=4GiB) core:4 pu:2");
  PlacementEngine engine({WholeHost("a", t)});
  v1::Placement x, y;
  std::string why;
  ASSERT_TRUE(engine.Place(Request("x", "a", 6), nullptr, &x, &why)) << why;
  EXPECT_FALSE(engine.Place(Request("y", "a", 2), nullptr, &y, &why));
  EXPECT_EQ(why, "a: needs 1 whole cores; free whole cores: node0=0");
  // Growing x beyond the host fails and leaves x as it was.
  v1::Placement bigger;
  EXPECT_FALSE(engine.Place(Request("x", "a", 8), &x, &bigger, &why));
  EXPECT_FALSE(engine.Place(Request("y", "a", 2), nullptr, &y, &why));
  // Shrinking x in place frees a core for y.
  v1::Placement smaller;
  ASSERT_TRUE(engine.Place(Request("x", "a", 4), &x, &smaller, &why)) << why;
  EXPECT_EQ(smaller.boot_cpu(), x.boot_cpu());
  ASSERT_TRUE(engine.Place(Request("y", "a", 2), nullptr, &y, &why)) << why;
  engine.Release("x");
  v1::Placement z;
  ASSERT_TRUE(engine.Place(Request("z", "a", 4), nullptr, &z, &why)) << why;
  EXPECT_EQ(z.cpus(0), x.cpus(0));  // x's cores are free again
}

}  // namespace
}  // namespace mkfleet::planner
