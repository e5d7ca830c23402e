// The emulated kernel on its own: the ABI's errno paths for raw overlay writes, pool
// rules, and the machine built from a topology.
#include "kernel/emulator/emulated_kernel.h"

#include <cerrno>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/emulator/machine.h"
#include "kernel/errno_status.h"
#include "planner/topology_source.h"

namespace mkfleet::kernel {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kGi = 1ull << 30;

class EmulatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    EmulatorOptions o;
    for (uint64_t c = 0; c < 16; ++c) o.cpus.push_back(c);
    o.memory = {{0, 0, 32 * kGi}};
    o.pci_devices = {"0000:04:00.0"};
    emu_ = std::make_unique<EmulatedKernel>(o);
  }
  absl::Status Baseline() {
    PoolState p;
    p.cpus = {4, 5, 6, 7};
    p.memory = {{0, 8 * kGi, 0}};
    p.devices = {{"nic0", "0000:04:00.0", 0, 0}};
    return emu_->Write("device_tree", *EncodeBaseline(p, Dialect::kV1));
  }
  absl::Status Apply(const Fragment& f) { return emu_->Write("overlays/new", *EncodeOverlay({{f}}, Dialect::kV1)); }
  Fragment Create(const std::string& name, std::vector<uint64_t> cpus) {
    Fragment f;
    f.target_path = "/instances";
    f.create_name = name;
    f.create_resources.memory_bytes = kGi;
    f.create_resources.cpus = std::move(cpus);
    return f;
  }
  std::unique_ptr<EmulatedKernel> emu_;
};

TEST_F(EmulatorTest, PoolOverlayNeedsABaseline) {
  Fragment f;
  f.target_path = "/resources";
  f.cpu_add = {{8, 0, 0}};
  absl::Status s = Apply(f);
  EXPECT_EQ(ErrnoOf(s), EPERM);
  EXPECT_EQ(s.message(), "/resources: EPERM (no pool baseline was written)");
  // The failed transaction still made its directory, with status failed.
  EXPECT_EQ(*emu_->Read("overlays/tx_1/status"), "failed\n");
}

TEST_F(EmulatorTest, BaselineRules) {
  PoolState p;
  p.cpus = {0, 4};
  absl::Status s = emu_->Write("device_tree", *EncodeBaseline(p, Dialect::kV1));
  EXPECT_EQ(s.message(), "write device_tree: EINVAL (CPU 0 stays with the host)");
  ASSERT_TRUE(Baseline().ok());
  ASSERT_TRUE(Apply(Create("a", {4})).ok());
  EXPECT_EQ(ErrnoOf(Baseline()), EINVAL);  // not while an instance exists
  EXPECT_EQ(ErrnoOf(emu_->Write("device_tree", "garbage")), EINVAL);
  EXPECT_EQ(ErrnoOf(emu_->Write("instances/a/status", "x")), EACCES);
}

TEST_F(EmulatorTest, InstanceCreateErrnos) {
  ASSERT_TRUE(Baseline().ok());
  ASSERT_TRUE(Apply(Create("a", {4, 5})).ok());
  EXPECT_EQ(Apply(Create("a", {6})).message(), "instance-create: EEXIST (a exists)");
  EXPECT_EQ(Apply(Create("b", {5})).message(), "instance-create: EBUSY (CPU 5 is lent to a)");
  EXPECT_EQ(Apply(Create("b", {9})).message(), "instance-create: EBUSY (CPU 9 is not in the pool)");
  Fragment big = Create("b", {6});
  big.create_resources.memory_bytes = 9 * kGi;
  EXPECT_EQ(Apply(big).message(), "instance-create: EBUSY (not enough free pool memory)");
  Fragment odd = Create("b", {6});
  odd.create_resources.memory_bytes = 1000;
  EXPECT_EQ(ErrnoOf(Apply(odd)), EINVAL);
  Fragment v = Create("b", {6});
  v.create_resources.virtio = {{"net0", 1, 9, 256}};
  EXPECT_EQ(Apply(v).message(), "instance-create: EINVAL (virtio net0: queues must be 1..8)");
  Fragment llc = Create("b", {6});
  llc.create_resources.llc_way_mask = 0x10000;
  EXPECT_EQ(ErrnoOf(Apply(llc)), EINVAL);
  // The older dialect's shapes are refused by this (newest) kernel.
  Fragment legacy = Create("b", {6});
  legacy.create_resources.memory_base = 0x1000;
  EXPECT_EQ(emu_->Write("overlays/new", *EncodeOverlay({{legacy}}, Dialect::kLegacy)).message(),
            "instance-create: EINVAL (memory-base: this kernel allocates instance memory itself)");
  legacy.create_resources.devices = {{"0000:04:00.0", ""}};
  EXPECT_EQ(emu_->Write("overlays/new", *EncodeOverlay({{legacy}}, Dialect::kLegacy)).message(),
            "instance-create: EINVAL (device-names: assign devices with device-add)");
  Fragment bad_id = Create("b", {6});
  bad_id.create_id = 600;
  EXPECT_EQ(Apply(bad_id).message(), "instance-create: EINVAL (id must be 1..511)");
}

TEST_F(EmulatorTest, UnknownInstanceAndOperation) {
  ASSERT_TRUE(Baseline().ok());
  Fragment f;
  f.target_path = "/instances/ghost";
  f.cpu_add = {{4, 0, 0}};
  EXPECT_EQ(ErrnoOf(Apply(f)), ENOENT);
  Fragment r;
  r.target_path = "/instances";
  r.remove_name = "ghost";
  EXPECT_EQ(Apply(r).message(), "instance-remove: ENOENT (no instance ghost)");
  EXPECT_EQ(ErrnoOf(emu_->Read("instances/ghost/status").status()), ENOENT);
  EXPECT_EQ(ErrnoOf(emu_->Reboot(kRebootStart, 99)), ENOENT);
}

TEST_F(EmulatorTest, PoolChangesRespectLentResources) {
  ASSERT_TRUE(Baseline().ok());
  ASSERT_TRUE(Apply(Create("a", {4})).ok());
  Fragment f;
  f.target_path = "/resources";
  f.cpu_remove = {{4, 0, 0}};
  EXPECT_EQ(Apply(f).message(), "cpu-remove: EBUSY (CPU 4 is lent to a)");
  f.cpu_remove = {{5, 0, 0}};
  f.cpu_add = {{8, 0, 0}};
  ASSERT_TRUE(Apply(f).ok());
  auto pool = DecodePool(*emu_->Read("device_tree"));
  ASSERT_TRUE(pool.ok());
  EXPECT_THAT(pool->cpus, ::testing::UnorderedElementsAre(4, 6, 7, 8));
  EXPECT_THAT(pool->cpus_available, ::testing::UnorderedElementsAre(6, 7, 8));
}

TEST_F(EmulatorTest, LoadNeedsAnElfAndStartsTakeTheirGuards) {
  ASSERT_TRUE(Baseline().ok());
  ASSERT_TRUE(Apply(Create("a", {4})).ok());
  FILE* f = tmpfile();
  fputs("not an elf", f);
  fflush(f);
  EXPECT_EQ(ErrnoOf(emu_->KexecFileLoad(fileno(f), -1, "", KexecFlags(1, false, false))), ENOEXEC);
  fclose(f);
  EXPECT_EQ(emu_->Reboot(kRebootStart, 1).message(), "start: EINVAL (the instance is ready)");
  EXPECT_EQ(ErrnoOf(emu_->Reboot(0x1234, 1)), EINVAL);
}

TEST(MachineTest, FromTopology) {
  planner::TopologyOptions options;
  options.vfs_per_network_function = 2;
  auto t = planner::NewSyntheticTopologySource("pack:2 numa:1(memory=8GiB) core:2 pu:2", options)->Load();
  ASSERT_TRUE(t.ok());
  EmulatorOptions o = MachineFromTopology(*t);
  EXPECT_EQ(o.cpus.size(), 8u);
  ASSERT_EQ(o.memory.size(), 2u);
  EXPECT_EQ(o.memory[1].base, 8 * kGi);
  EXPECT_EQ(o.memory[1].numa, 1u);
  EXPECT_EQ(o.cpus[1], t->physical_ids.at(t->cores[0].pus[1]));
}

}  // namespace
}  // namespace mkfleet::kernel

namespace mkfleet::kernel {
namespace {

TEST(EmulatorPersistenceTest, StateOutlivesTheProcessObject) {
  std::string file = ::testing::TempDir() + "/emu.state";
  std::remove(file.c_str());
  EmulatorOptions o;
  for (uint64_t c = 0; c < 8; ++c) o.cpus.push_back(c);
  o.memory = {{0, 0, 16 * kGi}};
  o.state_file = file;
  {
    EmulatedKernel emu(o);
    PoolState p;
    p.cpus = {4, 5};
    p.memory = {{0, 4 * kGi, 0}};
    ASSERT_TRUE(emu.Write("device_tree", *EncodeBaseline(p, Dialect::kV1)).ok());
    Fragment f;
    f.target_path = "/instances";
    f.create_name = "a";
    f.create_id = 3;
    f.create_resources.memory_bytes = kGi;
    f.create_resources.cpus = {5};
    ASSERT_TRUE(emu.Write("overlays/new", *EncodeOverlay({{f}}, Dialect::kV1)).ok());
  }
  EmulatedKernel again(o);
  ASSERT_TRUE(again.load_status().ok()) << again.load_status();
  EXPECT_EQ(*again.Read("instances/a/id"), "3\n");
  EXPECT_EQ(*again.Read("instances/a/status"), "ready\n");
  EXPECT_EQ(again.counters().creates, 1);
  auto res = DecodeInstance(*again.Read("instances/a/device_tree"));
  ASSERT_TRUE(res.ok());
  EXPECT_EQ(res->cpus, std::vector<uint64_t>{5});
  // New transactions keep counting from where the old kernel was.
  EXPECT_TRUE(again.List("overlays")->size() == 1);  // only "new": old tx dirs are gone
  std::remove(file.c_str());
}

}  // namespace
}  // namespace mkfleet::kernel
