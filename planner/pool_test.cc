#include "planner/pool.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/testing/test_topologies.h"

namespace mkfleet::planner {
namespace {

using ::testing::ElementsAre;

mkfleet::v1::Pool Reserved(uint32_t cores, uint64_t memory) {
  mkfleet::v1::Pool p;
  p.mutable_host_reserved()->set_cores(cores);
  p.mutable_host_reserved()->set_memory(memory);
  return p;
}

TEST(PoolTest, HostReservedKeepsCoresOfNodeZeroIncludingCpu0) {
  auto t = XmlTopology("32em64t-2n8c2t-pci-normalio.xml");
  auto pool = DerivePool("a", *t, Reserved(2, 4ull << 30));
  ASSERT_TRUE(pool.ok()) << pool.status();
  // Cores {0,16} and {1,17} stay with the host.
  EXPECT_EQ(pool->cpus.size(), 28u);
  EXPECT_EQ(pool->cpus.front(), 2u);
  EXPECT_FALSE(std::count(pool->cpus.begin(), pool->cpus.end(), 16u));
  EXPECT_FALSE(std::count(pool->cpus.begin(), pool->cpus.end(), 17u));
  // 4Gi reserved from node 0, rounded down to 128Mi blocks.
  EXPECT_EQ(pool->memory.at(0), (34330173440ull - (4ull << 30)) / kMemoryBlock * kMemoryBlock);
  EXPECT_EQ(pool->memory.at(1), 34359738368ull);
  // Ascending, as Pool promises (the cores' sibling threads are numbered N and N+16).
  EXPECT_TRUE(std::is_sorted(pool->cpus.begin(), pool->cpus.end()));
}

TEST(PoolTest, ExplicitPool) {
  auto t = XmlTopology("32em64t-2n8c2t-pci-normalio.xml");
  mkfleet::v1::Pool spec;
  for (uint32_t c : {8, 9, 24, 25}) spec.mutable_cpus()->add_ids(c);
  auto* m = spec.add_memory();
  m->set_node(1);
  m->set_size(8ull << 30);
  spec.add_devices("eth0");
  spec.add_devices("0000:83:00.0");
  auto pool = DerivePool("a", *t, spec);
  ASSERT_TRUE(pool.ok()) << pool.status();
  EXPECT_THAT(pool->cpus, ElementsAre(8, 9, 24, 25));
  EXPECT_EQ(pool->memory.at(1), 8ull << 30);
  ASSERT_EQ(pool->devices.size(), 2u);
  EXPECT_EQ(t->pci[pool->devices[0]].bdf, "0000:81:00.0");  // eth0, resolved
}

TEST(PoolTest, Errors) {
  auto t = XmlTopology("32em64t-2n8c2t-pci-normalio.xml");
  mkfleet::v1::Pool spec;
  spec.mutable_cpus()->add_ids(40);
  EXPECT_EQ(DerivePool("a", *t, spec).status().message(),
            "Host/a: spec.pool.cpus: CPU 40 is not an online CPU of this host (it has 0-31)");
  spec.mutable_cpus()->set_ids(0, 16);
  EXPECT_EQ(DerivePool("a", *t, spec).status().message(),
            "Host/a: spec.pool.cpus: CPU 16 shares a core with CPU 0, which stays with the host");
  spec.mutable_cpus()->set_ids(0, 8);
  auto* m = spec.add_memory();
  m->set_node(5);
  m->set_size(1ull << 30);
  EXPECT_EQ(DerivePool("a", *t, spec).status().message(),
            "Host/a: spec.pool.memory[0].node: NUMA node 5 does not exist (nodes: 0,1)");
  m->set_node(0);
  m->set_size(64ull << 30);
  EXPECT_EQ(DerivePool("a", *t, spec).status().message(),
            "Host/a: spec.pool.memory[0].size: 64Gi is more than NUMA node 0 has (31.97Gi)");
  m->set_size(1ull << 30);
  spec.add_devices("eth9");
  EXPECT_EQ(DerivePool("a", *t, spec).status().message(),
            "Host/a: spec.pool.devices[0]: no PCI function or device named \"eth9\" on this host");
  EXPECT_EQ(DerivePool("a", *t, Reserved(9, 0)).status().message(),
            "Host/a: spec.pool.hostReserved.cores: NUMA node 0 has only 8 cores");
  EXPECT_EQ(DerivePool("a", *t, Reserved(1, 128ull << 30)).status().message(),
            "Host/a: spec.pool.hostReserved.memory: the host has only 63.97Gi of memory");
}

TEST(PoolTest, LeavesTheHostSomething) {
  auto t = SyntheticTopology("pack:1 numa:1 core:1 pu:2");
  EXPECT_EQ(DerivePool("a", *t, Reserved(1, 0)).status().message(),
            "Host/a: spec.pool.hostReserved.cores: leaves no CPU for the pool");
}

}  // namespace
}  // namespace mkfleet::planner
