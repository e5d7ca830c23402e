#include "planner/topology_source.h"

#include <filesystem>
#include <set>

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"

namespace mkfleet::planner {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

Topology LoadXml(const std::string& name, TopologyOptions options = {}) {
  auto t = NewXmlTopologySource("testdata/topologies/" + name, options)->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? *t : Topology{};
}

TEST(TopologySourceTest, XmlWithSmtAndPci) {
  Topology t = LoadXml("32em64t-2n8c2t-pci-normalio.xml");
  EXPECT_EQ(t.packages, 2u);
  ASSERT_EQ(t.numa.size(), 2u);
  EXPECT_EQ(t.numa[0].memory_bytes, 34330173440u);
  EXPECT_EQ(t.cores.size(), 16u);
  EXPECT_EQ(t.pu_count(), 32u);
  // Hyperthread siblings are N and N+16 on this machine.
  EXPECT_THAT(t.cores[0].pus, ElementsAre(0, 16));
  EXPECT_EQ(t.cores[t.core_of_pu.at(24)].numa, 1u);
  int nic = t.FindPci("0000:81:00.0");
  ASSERT_GE(nic, 0);
  EXPECT_EQ(ClassOf(t.pci[nic].class_id), v1::DEVICE_CLASS_NETWORK);
  EXPECT_EQ(t.pci[nic].numa, 1);
  EXPECT_EQ(t.FindPci("eth0"), nic);  // by netdev name
  int gpu = t.FindPci("0000:03:00.0");
  ASSERT_GE(gpu, 0);
  EXPECT_EQ(ClassOf(t.pci[gpu].class_id), v1::DEVICE_CLASS_GPU);
  EXPECT_EQ(t.pci[gpu].numa, 0);
  EXPECT_EQ(ClassOf(t.pci[t.FindPci("0000:04:00.0")].class_id), v1::DEVICE_CLASS_STORAGE);
  // Deterministic APIC-like physical ids: distinct for every CPU.
  std::set<uint64_t> ids;
  for (const auto& [cpu, id] : t.physical_ids) ids.insert(id);
  EXPECT_EQ(ids.size(), 32u);
  EXPECT_EQ(t.physical_ids.at(0), 0u);
  EXPECT_EQ(t.physical_ids.at(16), 1u);  // sibling thread of CPU 0
}

TEST(TopologySourceTest, OfflineCpusAreLeftOut) {
  Topology t = LoadXml("16em64t-4s2c2t-offlines.xml");
  EXPECT_EQ(t.pu_count(), 7u);
  for (const Core& c : t.cores) EXPECT_FALSE(c.pus.empty());
}

TEST(TopologySourceTest, MemoryOnlyNumaNodes) {
  Topology t = LoadXml("64intel64-fakeKNL-SNC4-hybrid.xml");
  ASSERT_EQ(t.numa.size(), 8u);
  int with_cpus = 0;
  for (const NumaNode& n : t.numa) with_cpus += n.has_cpus;
  EXPECT_EQ(with_cpus, 4);
  EXPECT_FALSE(t.numa[t.numa_by_os.at(4)].has_cpus);  // MCDRAM
  EXPECT_EQ(t.numa[t.numa_by_os.at(4)].memory_bytes, 2147483648u);
}

TEST(TopologySourceTest, DistancesWhenPresent) {
  Topology t = LoadXml("24em64t-2n6c2t-pci.xml");
  ASSERT_EQ(t.numa.size(), 2u);
  ASSERT_EQ(t.numa[0].distances.size(), 2u);
  EXPECT_LT(t.numa[0].distances[0], t.numa[0].distances[1]);
}

TEST(TopologySourceTest, L3WaysFromAssociativity) {
  Topology t = LoadXml("96em64t-4n4d3ca2co-pci.xml");
  ASSERT_FALSE(t.l3.empty());
  EXPECT_EQ(t.l3[0].ways, 16u);
  EXPECT_EQ(t.cores.size(), 96u);
  EXPECT_EQ(t.numa.size(), 4u);
}

TEST(TopologySourceTest, SyntheticVfsAreDeterministic) {
  TopologyOptions options;
  options.vfs_per_network_function = 4;
  Topology a = LoadXml("32em64t-2n8c2t-pci-normalio.xml", options);
  Topology b = LoadXml("32em64t-2n8c2t-pci-normalio.xml", options);
  int nic = a.FindPci("0000:81:00.0");
  ASSERT_EQ(a.pci[nic].vf_bdfs.size(), 4u);
  EXPECT_EQ(a.pci[nic].vf_bdfs, b.pci[nic].vf_bdfs);
  EXPECT_EQ(a.pci[nic].vf_bdfs[0], "0000:81:10.0");
  EXPECT_TRUE(a.pci[a.FindPci("0000:03:00.0")].vf_bdfs.empty());  // GPUs get none
}

TEST(TopologySourceTest, SyntheticString) {
  auto t = NewSyntheticTopologySource("pack:2 numa:2 l3:1 core:4 pu:2")->Load();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->numa.size(), 4u);
  EXPECT_EQ(t->cores.size(), 16u);
  EXPECT_EQ(t->pu_count(), 32u);
  EXPECT_EQ(t->l3.size(), 4u);
  EXPECT_EQ(t->cores[0].pus.size(), 2u);
  EXPECT_EQ(t->l3[0].ways, 12u);  // the default, synthetic caches have no associativity
}

TEST(TopologySourceTest, SyntheticWithoutCoresOrL3) {
  auto t = NewSyntheticTopologySource("pack:2 pu:3")->Load();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_EQ(t->cores.size(), 6u);  // each PU its own core
  EXPECT_EQ(t->l3.size(), 2u);     // each package one cache domain
}

TEST(TopologySourceTest, Errors) {
  auto missing = NewXmlTopologySource("testdata/topologies/nope.xml")->Load();
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.status().message(), HasSubstr("nope.xml"));
  auto bad = NewSyntheticTopologySource("pack:two")->Load();
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(bad.status().message(), HasSubstr("synthetic:pack:two"));
}

TEST(TopologySourceTest, SpecStrings) {
  EXPECT_EQ(TopologySourceFromSpec("live")->Describe(), "live");
  EXPECT_EQ(TopologySourceFromSpec("synthetic:pack:1 pu:2")->Describe(), "synthetic:pack:1 pu:2");
  EXPECT_EQ(TopologySourceFromSpec("topologies/x.xml", "examples")->Describe(), "examples/topologies/x.xml");
  EXPECT_EQ(TopologySourceFromSpec("/abs/x.xml", "examples")->Describe(), "/abs/x.xml");
}

TEST(TopologySourceTest, LiveSmoke) {
  auto t = NewLiveTopologySource()->Load();
  ASSERT_TRUE(t.ok()) << t.status();
  EXPECT_GE(t->pu_count(), 1u);
  EXPECT_EQ(t->physical_ids.size(), t->pu_count());
}

// Inventory carries topologies as protos; the controller plans against what comes back.
TEST(TopologyProtoTest, RoundTripsEveryTestTopology) {
  int checked = 0;
  for (const auto& entry : std::filesystem::directory_iterator("testdata/topologies")) {
    if (entry.path().extension() != ".xml") continue;
    TopologyOptions options;
    options.vfs_per_network_function = 2;
    Topology t = LoadXml(entry.path().filename().string(), options);
    auto back = TopologyFromProto(t.ToProto());
    ASSERT_TRUE(back.ok()) << entry.path() << ": " << back.status();
    EXPECT_TRUE(google::protobuf::util::MessageDifferencer::Equals(back->ToProto(), t.ToProto())) << entry.path();
    EXPECT_EQ(back->Summary(), t.Summary()) << entry.path();
    EXPECT_EQ(back->smt_width, t.smt_width);
    for (size_t n = 0; n < t.numa.size(); ++n) EXPECT_EQ(back->numa[n].has_cpus, t.numa[n].has_cpus);
    for (size_t i = 0; i < t.l3.size(); ++i) EXPECT_EQ(back->l3[i].bytes, t.l3[i].bytes);
    ++checked;
  }
  EXPECT_GE(checked, 3);
}

// Hosts that report the same topology share one parsed copy; another topology gets its
// own, and a bad one is refused as TopologyFromProto refuses it.
TEST(TopologyProtoTest, EqualTopologiesAreParsedOnceAndShared) {
  auto a = NewSyntheticTopologySource("pack:2 numa:1(memory=8GiB) core:4 pu:2")->Load();
  auto b = NewSyntheticTopologySource("pack:1 numa:2(memory=8GiB) core:2 pu:2")->Load();
  ASSERT_TRUE(a.ok() && b.ok());
  auto a1 = SharedTopologyFromProto(a->ToProto());
  auto a2 = SharedTopologyFromProto(a->ToProto());
  auto b1 = SharedTopologyFromProto(b->ToProto());
  ASSERT_TRUE(a1.ok() && a2.ok() && b1.ok());
  EXPECT_EQ(a1->get(), a2->get());
  EXPECT_NE(a1->get(), b1->get());
  EXPECT_EQ((*a1)->cores.size(), a->cores.size());
  EXPECT_EQ((*b1)->numa.size(), 2u);
  mkfleet::v1::TopologyInfo bad = a->ToProto();
  bad.mutable_cores(0)->clear_pus();
  EXPECT_EQ(SharedTopologyFromProto(bad).status().message(), "topology.cores[0].pus: empty");
}

TEST(TopologyProtoTest, RejectsInconsistentTopologiesNamingTheField) {
  auto synthetic = NewSyntheticTopologySource("pack:1 numa:2(memory=8GiB) core:2 pu:2")->Load();
  ASSERT_TRUE(synthetic.ok());
  mkfleet::v1::TopologyInfo good = synthetic->ToProto();

  mkfleet::v1::TopologyInfo bad = good;
  bad.mutable_cores(1)->set_numa_node(7);
  EXPECT_EQ(TopologyFromProto(bad).status().message(), "topology.cores[1].numa_node: no NUMA node 7");
  bad = good;
  bad.mutable_cores(2)->add_pus(good.cores(0).pus(0));
  EXPECT_THAT(std::string(TopologyFromProto(bad).status().message()),
              HasSubstr("topology.cores[2].pus: CPU " + std::to_string(good.cores(0).pus(0))));
  bad = good;
  bad.mutable_cores(0)->clear_pus();
  EXPECT_EQ(TopologyFromProto(bad).status().message(), "topology.cores[0].pus: empty");
  bad = good;
  bad.add_numa_nodes()->set_node(good.numa_nodes(0).node());
  EXPECT_THAT(std::string(TopologyFromProto(bad).status().message()), HasSubstr("topology.numa_nodes[2].node"));
  bad = good;
  (*bad.mutable_physical_ids())[999] = 1;
  EXPECT_EQ(TopologyFromProto(bad).status().message(), "topology.physical_ids: CPU 999 is in no core");
}

TEST(CpuInfoTest, MapsLogicalToApic) {
  auto ids = ParseCpuInfoApicIds(
      "processor\t: 0\nvendor_id\t: GenuineIntel\napicid\t\t: 0\n\n"
      "processor\t: 1\napicid\t\t: 2\n\nprocessor\t: 2\napicid\t\t: 1\n");
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->at(0), 0u);
  EXPECT_EQ(ids->at(1), 2u);
  EXPECT_EQ(ids->at(2), 1u);
}

TEST(CpuInfoTest, WithoutApicIdsUsesTheCpuNumber) {
  auto ids = ParseCpuInfoApicIds("processor : 0\nBogoMIPS : 50.00\n\nprocessor : 1\n");  // arm64 style
  ASSERT_TRUE(ids.ok());
  EXPECT_EQ(ids->at(1), 1u);
}

TEST(CpuInfoTest, Malformed) {
  EXPECT_EQ(ParseCpuInfoApicIds("processor : x\n").status().message(),
            "/proc/cpuinfo line 1: bad processor number \"x\"");
  EXPECT_EQ(ParseCpuInfoApicIds("processor : 0\napicid : -1\n").status().message(),
            "/proc/cpuinfo line 2: bad apicid \"-1\"");
  EXPECT_EQ(ParseCpuInfoApicIds("processor : 0\nprocessor : 0\n").status().message(),
            "/proc/cpuinfo line 2: processor 0 listed twice");
  EXPECT_EQ(ParseCpuInfoApicIds("").status().message(), "/proc/cpuinfo lists no processor");
}

}  // namespace
}  // namespace mkfleet::planner
