#include "kernel/device_tree.h"

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <functional>
#include <iterator>
#include <sstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

using ::testing::ElementsAre;

PoolState SamplePool() {
  PoolState p;
  p.cpus = {4, 5, 6, 7};
  p.memory = {{0, 8ull << 30, 0}, {0, 8ull << 30, 1}};
  p.devices = {{"nic0", "0000:04:00.1", 0x8086, 0x10c9}};
  return p;
}

InstanceResources SampleInstance() {
  InstanceResources r;
  r.memory_bytes = 2ull << 30;
  r.cpus = {9, 8, 32, 33};  // boot CPU first
  r.pool_cpus = {8, 9, 10, 11, 32, 33, 34, 35};
  r.numa_nodes = {0};
  r.devices = {{"0000:04:00.1", "vfio-pci"}};
  r.virtio = {{"net0", 1, 2, 256}};
  r.llc_way_mask = 0xf0;
  return r;
}

Overlay CreateOverlay() {
  Fragment f;
  f.target_path = "/instances";
  f.create_name = "web-1";
  f.create_id = 7;
  f.create_resources = SampleInstance();
  return {{f}};
}

Overlay HotplugOverlay() {
  // Every instance operation at once, written out of order: the encoder orders them.
  Fragment f;
  f.target_path = "/instances/web-1";
  f.device_add = {{"0000:81:00.0", "", "vfio-pci", 0}};
  f.cpu_add = {{34, 0, 0}, {35, 0, 0}};
  f.memory_add = {{0x240000000ull, 128ull << 20, 0}};
  f.cpu_remove = {{33, 0, 0}};
  f.memory_remove = {{0x200000000ull, 128ull << 20, 0}};
  f.device_remove = {{"0000:04:00.1", "", "vfio-pci", 0}};
  return {{f}};
}

Overlay PoolOverlay() {
  Fragment f;
  f.target_path = "/resources";
  f.cpu_add = {{12, 1, 0}};
  f.memory_add = {{0, 1ull << 30, 1}};
  f.device_add = {{"0000:81:00.0", "nic1", "", 0}};
  f.cpu_remove = {{4, 0, 0}};
  f.memory_remove = {{0, 512ull << 20, 0}};
  f.device_remove = {{"0000:04:00.1", "nic0", "", 0}};
  return {{f}};
}

Overlay RemoveOverlay() {
  Fragment f;
  f.target_path = "/instances";
  f.remove_name = "web-1";
  return {{f}};
}

// dtc's text for a blob.
std::string Dts(const std::string& blob) {
  std::string in = ::testing::TempDir() + "/blob.dtb";
  std::ofstream(in, std::ios::binary) << blob;
  std::string cmd = "dtc -q -I dtb -O dts " + in;
  FILE* p = popen(cmd.c_str(), "r");
  std::string out;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  EXPECT_EQ(pclose(p), 0) << cmd;
  return out;
}

// Compares with kernel/testdata/NAME.dts. MKFLEET_GOLDEN_OUT=DIR rewrites the files instead
// (run the test binary from the workspace root, then review the diff).
void ExpectGolden(const std::string& name, const absl::StatusOr<std::string>& blob) {
  ASSERT_TRUE(blob.ok()) << blob.status();
  std::string dts = Dts(*blob);
  if (const char* out = getenv("MKFLEET_GOLDEN_OUT")) {
    std::ofstream(std::string(out) + "/" + name + ".dts") << dts;
    return;
  }
  std::ifstream f("kernel/testdata/" + name + ".dts");
  ASSERT_TRUE(f.good()) << "missing golden file kernel/testdata/" << name << ".dts";
  std::string want((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  EXPECT_EQ(dts, want) << name;
}

TEST(DeviceTreeGoldenTest, BaselineBothDialects) {
  ExpectGolden("baseline_v1", EncodeBaseline(SamplePool(), Dialect::kV1));
  PoolState legacy = SamplePool();
  legacy.memory = {{0x100000000ull, 16ull << 30, 0}};
  ExpectGolden("baseline_legacy", EncodeBaseline(legacy, Dialect::kLegacy));
}

TEST(DeviceTreeGoldenTest, PoolReadBack) {
  PoolState p = SamplePool();
  p.cpus_available = {6, 7};
  p.memory[0].base = 0x100000000ull;
  p.memory[1].base = 0x900000000ull;
  ExpectGolden("pool_readback_v1", EncodePoolReadBack(p, Dialect::kV1));
}

TEST(DeviceTreeGoldenTest, EveryOverlayKind) {
  ExpectGolden("overlay_create_v1", EncodeOverlay(CreateOverlay(), Dialect::kV1));
  ExpectGolden("overlay_hotplug_v1", EncodeOverlay(HotplugOverlay(), Dialect::kV1));
  ExpectGolden("overlay_pool_v1", EncodeOverlay(PoolOverlay(), Dialect::kV1));
  ExpectGolden("overlay_remove_v1", EncodeOverlay(RemoveOverlay(), Dialect::kV1));
  Overlay legacy = CreateOverlay();
  legacy.fragments[0].create_resources.memory_base = 0x180000000ull;
  ExpectGolden("overlay_create_legacy", EncodeOverlay(legacy, Dialect::kLegacy));
  ExpectGolden("overlay_hotplug_legacy", EncodeOverlay(HotplugOverlay(), Dialect::kLegacy));
  ExpectGolden("overlay_remove_legacy", EncodeOverlay(RemoveOverlay(), Dialect::kLegacy));
  PoolState p = SamplePool();
  p.memory = {{0x100000000ull, 16ull << 30, 0}};
  p.cpus_available = {5};
  ExpectGolden("pool_readback_legacy", EncodePoolReadBack(p, Dialect::kLegacy));
}

TEST(DeviceTreeTest, OverlaysRoundTrip) {
  for (const Overlay& o : {CreateOverlay(), HotplugOverlay(), PoolOverlay(), RemoveOverlay()}) {
    auto blob = EncodeOverlay(o, Dialect::kV1);
    ASSERT_TRUE(blob.ok());
    auto back = DecodeOverlay(*blob);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->fragments.size(), 1u);
    const Fragment& a = o.fragments[0];
    const Fragment& b = back->fragments[0];
    EXPECT_EQ(a.target_path, b.target_path);
    EXPECT_EQ(a.create_name, b.create_name);
    EXPECT_EQ(a.create_id, b.create_id);
    EXPECT_EQ(a.remove_name, b.remove_name);
    EXPECT_EQ(a.cpu_add.size(), b.cpu_add.size());
    EXPECT_EQ(a.memory_remove.size(), b.memory_remove.size());
    EXPECT_EQ(a.device_add.size(), b.device_add.size());
  }
  auto back = DecodeOverlay(*EncodeOverlay(CreateOverlay(), Dialect::kV1));
  const InstanceResources& r = back->fragments[0].create_resources;
  EXPECT_THAT(r.cpus, ElementsAre(9, 8, 32, 33));
  EXPECT_EQ(r.memory_bytes, 2ull << 30);
  EXPECT_EQ(r.llc_way_mask, 0xf0u);
  ASSERT_EQ(r.virtio.size(), 1u);
  EXPECT_EQ(r.virtio[0].queues, 2u);
  EXPECT_EQ(r.devices[0].driver, "vfio-pci");
  auto hot = DecodeOverlay(*EncodeOverlay(HotplugOverlay(), Dialect::kV1));
  EXPECT_EQ(hot->fragments[0].memory_add[0].base, 0x240000000ull);
  EXPECT_EQ(hot->fragments[0].cpu_add[1].physical_id, 35u);
}

TEST(DeviceTreeTest, PoolDecodesBothDialects) {
  Dialect d;
  auto v1 = DecodePool(*EncodeBaseline(SamplePool(), Dialect::kV1), &d);
  ASSERT_TRUE(v1.ok()) << v1.status();
  EXPECT_EQ(d, Dialect::kV1);
  EXPECT_EQ(v1->memory.size(), 2u);
  EXPECT_EQ(v1->devices[0].pci_id, "0000:04:00.1");
  PoolState legacy = SamplePool();
  legacy.memory = {{0x100000000ull, 16ull << 30, 0}};
  auto lg = DecodePool(*EncodeBaseline(legacy, Dialect::kLegacy), &d);
  ASSERT_TRUE(lg.ok()) << lg.status();
  EXPECT_EQ(d, Dialect::kLegacy);
  EXPECT_EQ(lg->memory[0].base, 0x100000000ull);
  EXPECT_EQ(EncodeBaseline(SamplePool(), Dialect::kLegacy).status().message(),
            "the legacy dialect takes one contiguous pool memory range");
}

TEST(DeviceTreeTest, InstanceRoundTripAndErrors) {
  auto back = DecodeInstance(*EncodeInstance(SampleInstance(), Dialect::kV1));
  ASSERT_TRUE(back.ok());
  EXPECT_THAT(back->pool_cpus, ElementsAre(8, 9, 10, 11, 32, 33, 34, 35));
  DtNode root;
  root.Add("resources").SetU32("memory-bytes", 5);
  EXPECT_EQ(DecodeInstance(*ToDtb(root)).status().message(),
            "resources: property memory-bytes: size 4 is not a multiple of 8");
  DtNode bad;
  bad.Add("fragment@0").SetString("target-path", "/instances");
  EXPECT_EQ(DecodeOverlay(*ToDtb(bad)).status().message(), "fragment@0: no __overlay__ node");
  DtNode unknown;
  DtNode& f = unknown.Add("fragment@0");
  f.SetString("target-path", "/instances/x");
  f.Add("__overlay__").Add("cpu-steal");
  EXPECT_EQ(DecodeOverlay(*ToDtb(unknown)).status().message(), "fragment@0: unknown operation cpu-steal");
}

}  // namespace
}  // namespace mkfleet::kernel
