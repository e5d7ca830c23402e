// The contract suite: the driver against a multikernel kernel. It always runs on the
// emulated kernel; on a multikernel host, MKFLEET_REAL_KERNEL=1 selects the real one (not
// available on this machine: those cases are skipped, saying so).
#include "kernel/host_kernel.h"
#include "kernel/image_files.h"

#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "absl/strings/str_join.h"

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/errno_status.h"
#include "kernel/proc_parsers.h"

namespace mkfleet::kernel {
namespace {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;

constexpr uint64_t kGi = 1ull << 30;

EmulatorOptions Machine(Dialect d = Dialect::kV1) {
  EmulatorOptions o;
  for (uint64_t c = 0; c < 32; ++c) o.cpus.push_back(c);
  o.memory = {{0, 0, 64 * kGi}, {1, 64 * kGi, 64 * kGi}};
  o.pci_devices = {"0000:04:00.0", "0000:04:00.1", "0000:81:00.0"};
  o.dialect = d;
  return o;
}

PoolState Pool(Dialect d = Dialect::kV1) {
  PoolState p;
  for (uint64_t c = 4; c < 32; ++c) p.cpus.push_back(c);
  if (d == Dialect::kV1) {
    p.memory = {{0, 16 * kGi, 0}, {0, 16 * kGi, 1}};
  } else {
    p.memory = {{32 * kGi, 16 * kGi, 0}};
  }
  p.devices = {{"nic0", "0000:04:00.1", 0x8086, 0x10c9}, {"nic1", "0000:81:00.0", 0x8086, 0x1521}};
  return p;
}

InstanceResources Web() {
  InstanceResources r;
  r.memory_bytes = 2 * kGi;
  r.cpus = {8, 9, 24, 25};
  r.pool_cpus = {8, 9, 10, 11, 24, 25, 26, 27};
  r.numa_nodes = {0};
  r.devices = {{"0000:04:00.1", "vfio-pci"}};
  return r;
}

class ContractTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (GetParam() == "real") {
      if (getenv("MKFLEET_REAL_KERNEL") == nullptr) {
        GTEST_SKIP() << "real multikernel kernel not available here (set MKFLEET_REAL_KERNEL=1 on a multikernel host)";
      }
      GTEST_SKIP() << "real-kernel runs need a host with /sys/fs/multikernel and a spare pool; not wired in this suite yet";
    }
    dir_ = fs::path(::testing::TempDir()) / ("hk-" + std::to_string(getpid()) + "-" +
                                             ::testing::UnitTest::GetInstance()->current_test_info()->name());
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    vmlinux_ = (dir_ / "vmlinux").string();
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF\x02\x01\x01", 7) << std::string(4096, 'k');
    EmulatorOptions o = Machine();
    o.clock = &clock_;
    emu_ = std::make_unique<EmulatedKernel>(o);
    hk_ = NewDriver();
    ASSERT_TRUE(hk_->SetPool(Pool()).ok());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<HostKernel> NewDriver() {
    HostKernelOptions ho;
    ho.host = "node-a";
    ho.lock_path = (dir_ / "kernel.lock").string();
    ho.kerf_lock_path = (dir_ / "kerf.lock").string();
    ho.state_dir = (dir_ / "state").string();
    ho.clock = &clock_;
    ho.images.dirs = {dir_.string()};
    ho.require_digest = require_digest_;
    // The emulator's change tracking, as mkagent gives it: the suite holds for the driver
    // that answers unchanged observations from its last read.
    emu_->TrackChanges(ho);
    return std::make_unique<HostKernel>(*emu_, *emu_, ho);
  }

  KernelImage Image() { return {vmlinux_, "", "console=mktty0 quiet", "", ""}; }

  // Up to active.
  void Run(const std::string& name = "web-1") {
    ASSERT_TRUE(hk_->Create(name, 7, Web()).ok());
    ASSERT_TRUE(hk_->Load(name, Image()).ok());
    ASSERT_TRUE(hk_->Start(name).ok());
  }

  v1::KernelState State(const std::string& name = "web-1") { return *hk_->StateOf(name); }

  fs::path dir_;
  std::string vmlinux_;
  bool require_digest_ = false;
  SimulatedClock clock_;
  std::unique_ptr<EmulatedKernel> emu_;
  std::unique_ptr<HostKernel> hk_;
};

INSTANTIATE_TEST_SUITE_P(Backends, ContractTest, ::testing::Values("emulated", "real"),
                         [](const auto& info) { return info.param; });

TEST_P(ContractTest, WholeLifecycle) {
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_READY);
  ASSERT_TRUE(hk_->Load("web-1", Image()).ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_LOADED);
  ASSERT_TRUE(hk_->Start("web-1").ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_ACTIVE);
  auto obs = hk_->Observe();
  ASSERT_TRUE(obs.ok()) << obs.status();
  ASSERT_EQ(obs->instances.size(), 1u);
  const InstanceInfo& web = obs->instances[0];
  EXPECT_EQ(web.id, 7u);
  EXPECT_THAT(web.resources.cpus, ElementsAre(8, 9, 24, 25));
  EXPECT_EQ(web.provenance.cmdline(), "console=mktty0 quiet");
  EXPECT_EQ(web.provenance.kernel_sha256().size(), 64u);
  EXPECT_THAT(obs->pool.cpus_available, ::testing::Not(::testing::Contains(8)));
  // Halted, it can start again without a reload.
  ASSERT_TRUE(hk_->Halt("web-1", false).ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_LOADED);
  ASSERT_TRUE(hk_->Start("web-1").ok());
  ASSERT_TRUE(hk_->Halt("web-1", true).ok());
  ASSERT_TRUE(hk_->Unload("web-1").ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_READY);
  ASSERT_TRUE(hk_->Remove("web-1").ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_ABSENT);
  auto c = emu_->counters();
  EXPECT_EQ(c.creates, 1);
  EXPECT_EQ(c.loads, 1);
  EXPECT_EQ(c.starts, 2);
  EXPECT_EQ(c.halts, 1);
  EXPECT_EQ(c.force_halts, 1);
  EXPECT_EQ(c.unloads, 1);
  EXPECT_EQ(c.removes, 1);
}

TEST_P(ContractTest, EveryActionIsIdempotent) {
  Run();
  auto before = emu_->counters();
  EXPECT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  EXPECT_TRUE(hk_->Load("web-1", Image()).ok());
  EXPECT_TRUE(hk_->Start("web-1").ok());
  EXPECT_TRUE(hk_->AddCpus("web-1", {{8, 0, 0}}).ok());
  EXPECT_TRUE(hk_->RemoveCpus("web-1", {{30, 0, 0}}).ok());
  EXPECT_TRUE(hk_->AddDevices("web-1", {{"0000:04:00.1", "", "vfio-pci", 0}}).ok());
  auto after = emu_->counters();
  EXPECT_EQ(after.overlays, before.overlays);
  EXPECT_EQ(after.loads, before.loads);
  EXPECT_EQ(after.starts, before.starts);
  ASSERT_TRUE(hk_->Halt("web-1", false).ok());
  ASSERT_TRUE(hk_->Halt("web-1", false).ok());
  ASSERT_TRUE(hk_->Unload("web-1").ok());
  ASSERT_TRUE(hk_->Unload("web-1").ok());
  ASSERT_TRUE(hk_->Remove("web-1").ok());
  ASSERT_TRUE(hk_->Remove("web-1").ok());
  EXPECT_EQ(emu_->counters().halts, before.halts + 1);
  EXPECT_EQ(emu_->counters().unloads, 1);
  EXPECT_EQ(emu_->counters().removes, 1);
}

TEST_P(ContractTest, GuardsFailBeforeTouchingTheKernel) {
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  auto before = emu_->counters();
  absl::Status s = hk_->Start("web-1");
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(s.message(), "host node-a: start web-1: the instance is ready; start needs it loaded");
  EXPECT_EQ(hk_->Halt("web-1", false).message(), "host node-a: halt web-1: the instance is ready; halt needs it active");
  EXPECT_EQ(hk_->Unload("web-1").code(), absl::StatusCode::kOk);  // nothing loaded: already unloaded
  EXPECT_EQ(hk_->Halt("web-1", true).message(),
            "host node-a: force-halt web-1: the instance is ready; force-halt needs it active or loaded or failed");
  EXPECT_EQ(hk_->Start("nope").message(), "host node-a: start nope: the instance is absent; start needs it loaded");
  EXPECT_EQ(hk_->AddCpus("nope", {{10, 0, 0}}).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hk_->Load("web-1", Image()).ok());
  EXPECT_EQ(hk_->Remove("web-1").message(),
            "host node-a: remove web-1: the instance is loaded; remove needs it ready or empty");
  EXPECT_EQ(hk_->RemoveCpus("web-1", {{8, 0, 0}}).message(),
            "host node-a: cpu-remove web-1: CPU 8 is its boot CPU, which cannot be removed");
  auto after = emu_->counters();
  EXPECT_EQ(after.overlays, before.overlays);
  EXPECT_EQ(after.starts, 0);
  EXPECT_EQ(after.halts + after.force_halts, 0);
}

TEST_P(ContractTest, KernelErrnosBecomeClearStatusesAndFailedTxAreRemoved) {
  InstanceResources bad = Web();
  bad.cpus = {2, 8};  // CPU 2 stays with the host
  absl::Status s = hk_->Create("web-1", 7, bad);
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "host node-a: create web-1: EBUSY (CPU 2 is not in the pool)");
  EXPECT_EQ(ErrnoOf(s), EBUSY);
  // The failed transaction directory is gone.
  EXPECT_THAT(*emu_->List("overlays"), ElementsAre("new"));
  Run();
  InstanceResources other = Web();
  other.cpus = {12, 13};
  other.devices.clear();
  EXPECT_EQ(hk_->Create("db-1", 7, other).message(), "host node-a: create db-1: EBUSY (id 7 is used by web-1)");
  emu_->SetBusy("10", true);
  EXPECT_EQ(hk_->AddCpus("web-1", {{10, 0, 0}}).message(), "host node-a: cpu-add 10 to web-1: EBUSY (10 is busy)");
  emu_->SetBusy("10", false);
  emu_->FailNextOverlay(EINVAL);
  s = hk_->AddCpus("web-1", {{10, 0, 0}});
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "host node-a: cpu-add 10 to web-1: EINVAL (injected failure)");
  // A CPU the running kernel did not enumerate at boot.
  EXPECT_EQ(hk_->AddCpus("web-1", {{20, 0, 0}}).message(),
            "host node-a: cpu-add 20 to web-1: EINVAL (CPU 20 was not enumerated at boot (not in pool-cpus))");
  EXPECT_EQ(hk_->AddDevices("web-1", {{"0000:04:00.0", "", "vfio-pci", 0}}).message(),
            "host node-a: device-add to web-1: EBUSY (0000:04:00.0 is not in the pool)");
  EXPECT_EQ(hk_->AddMemory("web-1", {{0x1000, 4096, 0}}).message(),
            "host node-a: memory-add web-1: 0x1000+0x1000: memory added to a running instance must be 128Mi aligned and sized");
  EXPECT_THAT(*emu_->List("overlays"), ::testing::Not(::testing::Contains("tx_3")));
  EXPECT_GE(emu_->counters().failed_overlays, 4);
}

TEST_P(ContractTest, HotplugOfEachResource) {
  Run();
  ASSERT_TRUE(hk_->AddCpus("web-1", {{10, 0, 0}, {26, 0, 0}}).ok());
  ASSERT_TRUE(hk_->RemoveCpus("web-1", {{25, 0, 0}}).ok());
  auto obs = hk_->Observe();
  EXPECT_THAT(obs->instances[0].resources.cpus, ElementsAre(8, 9, 24, 10, 26));
  // Memory: a free, aligned block of the pool on node 0.
  PoolState pool = obs->pool;
  uint64_t base = pool.memory[0].base + 8 * kGi;
  ASSERT_TRUE(hk_->AddMemory("web-1", {{base, 128ull << 20, 0}}).ok());
  EXPECT_EQ(hk_->Observe()->instances[0].resources.memory_bytes, 2 * kGi + (128ull << 20));
  // Only the region added after boot can come back (the first holds the image).
  EXPECT_THAT(hk_->Observe()->instances[0].removable_by_node[0], ElementsAre(128ull << 20));
  auto give = hk_->MemoryToRelease("web-1", 0, 128ull << 20);
  ASSERT_TRUE(give.ok()) << give.status();
  ASSERT_EQ(give->size(), 1u);
  EXPECT_EQ((*give)[0].base, base);
  EXPECT_EQ(hk_->MemoryToRelease("web-1", 0, 256ull << 20).status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(hk_->RemoveMemory("web-1", {{base, 128ull << 20, 0}}).ok());
  EXPECT_EQ(hk_->Observe()->instances[0].resources.memory_bytes, 2 * kGi);
  EXPECT_THAT(hk_->Observe()->instances[0].removable_by_node[0], ElementsAre());
  ASSERT_TRUE(hk_->AddDevices("web-1", {{"0000:81:00.0", "", "vfio-pci", 0}}).ok());
  ASSERT_TRUE(hk_->RemoveDevices("web-1", {{"0000:04:00.1", "", "vfio-pci", 0}}).ok());
  EXPECT_EQ(hk_->Observe()->instances[0].resources.devices.size(), 1u);
  auto c = emu_->counters();
  EXPECT_EQ(c.cpu_adds, 2);
  EXPECT_EQ(c.cpu_removes, 1);
  EXPECT_EQ(c.memory_adds, 1);
  EXPECT_EQ(c.memory_removes, 1);
  EXPECT_EQ(c.device_adds, 1);
  EXPECT_EQ(c.device_removes, 1);
}

TEST_P(ContractTest, LoadedImageMemoryCannotBeRemoved) {
  Run();
  auto regions = ParseIomem(*emu_->ReadProc("iomem"));
  ASSERT_TRUE(regions.ok());
  PoolRegions pr = FindPoolRegions(*regions);
  ASSERT_FALSE(pr.instances.empty());
  const IomemRegion& first = pr.instances[0].region;
  absl::Status s = hk_->RemoveMemory("web-1", {{first.start, first.size(), 0}});
  EXPECT_EQ(s.message(), "host node-a: memory-remove from web-1: EBUSY (the range holds the loaded kernel image)");
  auto kimage = ParseKimage(*emu_->ReadProc("kimage"));
  ASSERT_TRUE(kimage.ok());
  ASSERT_EQ(kimage->size(), 1u);
  EXPECT_EQ((*kimage)[0].id, 7u);
  EXPECT_EQ((*kimage)[0].cmdline, "console=mktty0 quiet");
}

TEST_P(ContractTest, MoveDevicesInOneTransaction) {
  Run();
  InstanceResources standby;
  standby.memory_bytes = 512ull << 20;
  standby.cpus = {12, 28};
  standby.numa_nodes = {0};
  ASSERT_TRUE(hk_->Create("web-1-standby", std::nullopt, standby).ok());
  ASSERT_TRUE(hk_->Load("web-1-standby", Image()).ok());
  ASSERT_TRUE(hk_->Start("web-1-standby").ok());
  int overlays = emu_->counters().overlays;
  ASSERT_TRUE(emu_->InjectPanic("web-1").ok());
  ASSERT_TRUE(hk_->MoveDevices("web-1", "web-1-standby", {{"0000:04:00.1", "", "vfio-pci", 0}}).ok());
  EXPECT_EQ(emu_->counters().overlays, overlays + 1);
  auto obs = hk_->Observe();
  for (const auto& in : obs->instances) {
    if (in.name == "web-1") {
      EXPECT_TRUE(in.resources.devices.empty());
    }
    if (in.name == "web-1-standby") {
      EXPECT_EQ(in.resources.devices.at(0).pci_id, "0000:04:00.1");
    }
  }
}

TEST_P(ContractTest, RollbackByRmdir) {
  Run();
  ASSERT_TRUE(hk_->AddCpus("web-1", {{10, 0, 0}}).ok());
  auto txs = *emu_->List("overlays");
  std::string last = txs.back();
  ASSERT_TRUE(emu_->Rmdir("overlays/" + last).ok());
  EXPECT_THAT(hk_->Observe()->instances[0].resources.cpus, ElementsAre(8, 9, 24, 25));
  EXPECT_EQ(emu_->counters().rollbacks, 1);
  EXPECT_EQ(emu_->Rmdir("overlays/tx_999").code(), absl::StatusCode::kNotFound);
}

TEST_P(ContractTest, CrashAndHangDetection) {
  Run();
  EXPECT_TRUE(emu_->Probe("web-1"));
  ASSERT_TRUE(emu_->InjectPanic("web-1").ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_LOADED);  // unrequested active -> loaded: a crash
  EXPECT_FALSE(emu_->Probe("web-1"));
  ASSERT_TRUE(hk_->Start("web-1").ok());
  ASSERT_TRUE(emu_->InjectHang("web-1").ok());
  EXPECT_EQ(State(), v1::KERNEL_STATE_ACTIVE);  // a hang stays active ...
  EXPECT_FALSE(emu_->Probe("web-1"));           // ... but the probe fails
  const uint64_t before = emu_->Generation();
  absl::Status s = hk_->Halt("web-1", false);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded);
  EXPECT_THAT(s.message(), HasSubstr("ETIMEDOUT"));
  EXPECT_EQ(State(), v1::KERNEL_STATE_FAILED);
  // The halt that timed out changed the kernel: its change tracking says so, and an
  // observation shows it (sim seed 30103: an agent kept publishing it active, and the
  // controller kept sending a delete that expected it active).
  EXPECT_GT(emu_->Generation(), before);
  auto seen = hk_->ObserveShared();
  ASSERT_TRUE(seen.ok()) << seen.status();
  bool failed = false;
  for (const auto& in : (*seen)->instances) failed |= in.name == "web-1" && in.state == v1::KERNEL_STATE_FAILED;
  EXPECT_TRUE(failed);
  ASSERT_TRUE(hk_->Halt("web-1", true).ok());  // a forced halt rescues it
  EXPECT_EQ(State(), v1::KERNEL_STATE_LOADED);
}

TEST_P(ContractTest, BootAndHaltTakeTimeOnTheInjectedClock) {
  EmulatorOptions o = Machine();
  o.clock = &clock_;
  o.boot_time = absl::Milliseconds(300);
  o.halt_time = absl::Milliseconds(100);
  emu_ = std::make_unique<EmulatedKernel>(o);
  hk_ = NewDriver();
  ASSERT_TRUE(hk_->SetPool(Pool()).ok());
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  ASSERT_TRUE(hk_->Load("web-1", Image()).ok());
  absl::Duration t0 = clock_.Monotonic();
  ASSERT_TRUE(hk_->Start("web-1").ok());
  EXPECT_GE(clock_.Monotonic() - t0, absl::Milliseconds(300));
  EXPECT_LT(clock_.Monotonic() - t0, absl::Milliseconds(400));
  ASSERT_TRUE(emu_->SetHaltBehavior("web-1", absl::Milliseconds(50), false).ok());
  t0 = clock_.Monotonic();
  ASSERT_TRUE(hk_->Halt("web-1", false).ok());
  EXPECT_GE(clock_.Monotonic() - t0, absl::Milliseconds(150));
  ASSERT_TRUE(hk_->Start("web-1").ok());
  ASSERT_TRUE(emu_->SetHaltBehavior("web-1", absl::ZeroDuration(), true).ok());
  EXPECT_THAT(hk_->Halt("web-1", false).message(), HasSubstr("the instance failed"));
}

TEST_P(ContractTest, ImagesAreCheckedAndPinned) {
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  std::string bz = (dir_ / "bzImage").string();
  std::string data(0x300, '\0');
  data.replace(0x202, 4, "HdrS");
  std::ofstream(bz, std::ios::binary) << data;
  KernelImage image = Image();
  image.kernel_path = bz;
  EXPECT_THAT(hk_->Load("web-1", image).message(), HasSubstr("is a bzImage; the multikernel loader takes an ELF vmlinux"));
  image = Image();
  image.sha256 = std::string(64, '0');
  EXPECT_THAT(hk_->Load("web-1", image).message(), HasSubstr("the spec pins 0000"));
  EXPECT_EQ(emu_->counters().loads, 0);
  image.sha256 = OpenImageFile(ImageDirs{{dir_.string()}}, vmlinux_, "kernel image", clock_)->sha256();
  EXPECT_TRUE(hk_->Load("web-1", image).ok());
}

// Defect (step 7): `load` of /dev/zero wedged the agent for good; `initrd: /etc/shadow` was
// read and its sha256 published; missing and existing files gave different errors. Kernel
// files now come only from the image directories, as regular files, hashed from the
// descriptor that is loaded.
TEST_P(ContractTest, KernelFilesOnlyFromTheImageDirectories) {
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  for (const std::string& path : {std::string("/dev/zero"), std::string("/etc/shadow"), std::string("/etc/none")}) {
    KernelImage image = Image();
    image.kernel_path = path;
    absl::Status s = hk_->Load("web-1", image);
    EXPECT_EQ(s.code(), absl::StatusCode::kPermissionDenied) << path;
    EXPECT_THAT(s.message(), HasSubstr("not an allowed file"));
    EXPECT_EQ(hk_->CheckImage("web-1", image).code(), absl::StatusCode::kPermissionDenied);
    image = Image();
    image.initrd_path = path;
    EXPECT_EQ(hk_->Load("web-1", image).code(), absl::StatusCode::kPermissionDenied) << path;
  }
  EXPECT_EQ(emu_->counters().loads, 0);
  EXPECT_TRUE(hk_->Observe().ok()) << "the driver keeps serving";
  // An initrd from the image directory is loaded and its digest recorded.
  std::string initrd = (dir_ / "initrd").string();
  std::ofstream(initrd, std::ios::binary) << "initramfs";
  KernelImage image = Image();
  image.initrd_path = initrd;
  ASSERT_TRUE(hk_->Load("web-1", image).ok());
  auto obs = hk_->Observe();
  ASSERT_TRUE(obs.ok());
  ASSERT_EQ(obs->instances.size(), 1u);
  EXPECT_EQ(obs->instances[0].provenance.initrd_sha256().size(), 64u);
}

TEST_P(ContractTest, RequireDigestRefusesAnUnpinnedKernel) {
  require_digest_ = true;
  hk_ = NewDriver();
  ASSERT_TRUE(hk_->Create("web-1", 7, Web()).ok());
  absl::Status s = hk_->Load("web-1", Image());
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(s.message(), HasSubstr("kernel.sha256"));
  KernelImage pinned = Image();
  pinned.sha256 = std::string(64, 'a');
  EXPECT_THAT(hk_->Load("web-1", pinned).message(), HasSubstr("the spec pins aaaa"));
  EXPECT_EQ(emu_->counters().loads, 0);
}

TEST_P(ContractTest, PoolChangesOnlyWithoutInstances) {
  Run();
  EXPECT_THAT(hk_->SetPool(Pool()).message(), HasSubstr("1 instances exist"));
}

TEST(LegacyDialectTest, FirstFitMemoryFromIomem) {
  SimulatedClock clock;
  EmulatorOptions o = Machine(Dialect::kLegacy);
  o.clock = &clock;
  EmulatedKernel emu(o);
  HostKernelOptions ho;
  ho.host = "old";
  ho.clock = &clock;
  HostKernel hk(emu, emu, ho);
  ASSERT_TRUE(hk.SetPool(Pool(Dialect::kLegacy)).ok());
  EXPECT_EQ(*hk.ProbeDialect(), Dialect::kLegacy);
  InstanceResources a = Web();
  a.devices.clear();
  ASSERT_TRUE(hk.Create("a", std::nullopt, a).ok()) << hk.Create("a", std::nullopt, a);
  InstanceResources b = a;
  b.cpus = {12, 13};
  ASSERT_TRUE(hk.Create("b", std::nullopt, b).ok());
  auto obs = hk.Observe();
  ASSERT_EQ(obs->instances.size(), 2u);
  EXPECT_EQ(obs->instances[0].resources.memory_base, 32 * kGi);
  EXPECT_EQ(obs->instances[1].resources.memory_base, 34 * kGi);  // first fit after a
}

TEST(ConcurrencyTest, TwoWritersNeverConfuseTheirTransactions) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(::testing::TempDir()) / "hk-concurrency";
  fs::remove_all(dir);
  fs::create_directories(dir);
  EmulatedKernel emu(Machine());
  HostKernelOptions ho;
  ho.lock_path = (dir / "kernel.lock").string();
  ho.kerf_lock_path = (dir / "kerf.lock").string();
  HostKernel one(emu, emu, ho), two(emu, emu, ho);
  ASSERT_TRUE(one.SetPool(Pool()).ok());
  InstanceResources a = Web(), b = Web();
  a.devices.clear();
  b.devices.clear();
  b.cpus = {12, 13};
  ASSERT_TRUE(one.Create("a", 1, a).ok());
  ASSERT_TRUE(two.Create("b", 2, b).ok());
  std::atomic<int> failures{0};
  auto churn = [&](HostKernel& hk, const std::string& name, uint64_t cpu) {
    for (int i = 0; i < 200; ++i) {
      if (!hk.AddCpus(name, {{cpu, 0, 0}}).ok()) ++failures;
      if (!hk.RemoveCpus(name, {{cpu, 0, 0}}).ok()) ++failures;
    }
  };
  std::thread t1(churn, std::ref(one), "a", 10);
  std::thread t2(churn, std::ref(two), "b", 14);
  t1.join();
  t2.join();
  EXPECT_EQ(failures.load(), 0);
  auto c = emu.counters();
  EXPECT_EQ(c.cpu_adds, 400);
  EXPECT_EQ(c.cpu_removes, 400);
  EXPECT_FALSE(fs::exists(ho.kerf_lock_path));  // released
  fs::remove_all(dir);
}

TEST(ConcurrencyTest, KerfLockOfAKilledAgentIsTakenOverButALiveOneIsNot) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(::testing::TempDir()) / "hk-stale-lock";
  fs::remove_all(dir);
  fs::create_directories(dir);
  EmulatedKernel emu(Machine());
  HostKernelOptions ho;
  ho.kerf_lock_path = (dir / "kerf.lock").string();
  ho.lock_timeout = absl::Milliseconds(300);
  HostKernel hk(emu, emu, ho);
  // Left by a process that has exited (as after SIGKILL inside a transaction).
  pid_t child = fork();
  if (child == 0) _exit(0);
  waitpid(child, nullptr, 0);
  std::ofstream(ho.kerf_lock_path) << child << "\n";
  ASSERT_TRUE(hk.SetPool(Pool()).ok());
  EXPECT_FALSE(fs::exists(ho.kerf_lock_path));
  // Held by a live process (this one's parent), or without a pid (kerf's own): waited for.
  std::ofstream(ho.kerf_lock_path) << getppid() << "\n";
  absl::Status s = hk.Create("a", 1, Web());
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
  std::ofstream(ho.kerf_lock_path, std::ios::trunc).close();
  EXPECT_EQ(hk.Create("a", 1, Web()).code(), absl::StatusCode::kUnavailable);
  fs::remove(ho.kerf_lock_path);
  EXPECT_TRUE(hk.Create("a", 1, Web()).ok());
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mkfleet::kernel

namespace mkfleet::kernel {
namespace {

TEST_P(ContractTest, MoreGuards) {
  Run();
  EXPECT_EQ(hk_->Unload("web-1").message(), "host node-a: unload web-1: the instance is active; unload needs it loaded");
  InstanceResources other = Web();
  other.cpus = {12};
  EXPECT_EQ(hk_->Create("web-1", 7, other).message(),
            "host node-a: create web-1: an instance of that name exists with other resources");
  EXPECT_EQ(hk_->Create("x", 600, other).message(), "host node-a: create x: id must be 1..511");
  std::string other_kernel = (dir_ / "vmlinux2").string();
  std::ofstream(other_kernel, std::ios::binary) << "\x7f" "ELF other";
  KernelImage image = Image();
  image.kernel_path = other_kernel;
  EXPECT_EQ(hk_->Load("web-1", image).message(), "host node-a: load web-1: another kernel is loaded; unload it first");
  EXPECT_EQ(hk_->MoveDevices("web-1", "ghost", {{"0000:04:00.1", "", "vfio-pci", 0}}).message(),
            "host node-a: move devices to ghost: the instance is absent; move devices to needs it ready or loaded or active");
}

// A KernelFs that lets another writer, one that ignores the locks, slip an overlay in
// right after each of ours.
class InterleavingFs final : public KernelFs {
 public:
  InterleavingFs(KernelFs& inner, std::string foreign) : inner_(inner), foreign_(std::move(foreign)) {}
  absl::StatusOr<std::string> Read(absl::string_view path) override { return inner_.Read(path); }
  absl::Status Write(absl::string_view path, absl::string_view blob) override {
    absl::Status s = inner_.Write(path, blob);
    if (path == "overlays/new") inner_.Write(path, foreign_).IgnoreError();
    return s;
  }
  absl::StatusOr<std::vector<std::string>> List(absl::string_view dir) override { return inner_.List(dir); }
  absl::Status Rmdir(absl::string_view path) override { return inner_.Rmdir(path); }
  absl::StatusOr<std::string> ReadProc(absl::string_view name) override { return inner_.ReadProc(name); }

 private:
  KernelFs& inner_;
  std::string foreign_;
};

TEST_P(ContractTest, ALockIgnoringWriterDoesNotConfuseOurTransactions) {
  Run();
  // The foreign overlay fails (unknown instance); ours succeeds. A driver that took "the
  // highest tx" would read the foreign tx, see it failed, and remove it as ours.
  Fragment foreign;
  foreign.target_path = "/instances/ghost";
  foreign.cpu_add = {{11, 0, 0}};
  InterleavingFs fs(*emu_, *EncodeOverlay({{foreign}}, Dialect::kV1));
  HostKernelOptions ho;
  ho.host = "node-a";
  ho.clock = &clock_;
  HostKernel hk(fs, *emu_, ho);
  ASSERT_TRUE(hk.AddCpus("web-1", {{10, 0, 0}}).ok());
  ASSERT_TRUE(hk.AddCpus("web-1", {{26, 0, 0}}).ok());
  EXPECT_THAT(hk.Observe()->instances[0].resources.cpus, ElementsAre(8, 9, 24, 25, 10, 26));
  // Our applied transactions are still there; the foreign failed ones were not ours to remove.
  int failed = 0, applied = 0;
  std::vector<std::string> entries = *emu_->List("overlays");
  for (const std::string& e : entries) {
    if (e == "new") continue;
    auto read = emu_->Read("overlays/" + e + "/status");
    ASSERT_TRUE(read.ok()) << e << ": " << read.status();
    std::string st = *read;
    failed += st == "failed\n";
    applied += st == "applied\n";
  }
  EXPECT_EQ(failed, 2);
  EXPECT_GE(applied, 2);
}

}  // namespace
}  // namespace mkfleet::kernel

namespace mkfleet::kernel {
namespace {

TEST(PoolChangeTest, BaselineWhenEmptyThenOnlyFreeResourcesMove) {
  EmulatedKernel emu(Machine());
  HostKernel hk(emu, emu, HostKernelOptions{});
  ASSERT_TRUE(hk.SetPool(Pool()).ok());
  std::map<uint64_t, uint32_t> numa;
  for (uint64_t c = 0; c < 32; ++c) numa[c] = c < 16 ? 0 : 1;
  // No instance: the target becomes the baseline, memory shrinking included.
  PoolState smaller = Pool();
  smaller.cpus.erase(smaller.cpus.begin());  // CPU 4 goes
  smaller.memory = {{0, 8 * kGi, 0}, {0, 16 * kGi, 1}};
  std::vector<std::string> kept;
  ASSERT_TRUE(hk.ChangePool(smaller, numa, &kept).ok());
  EXPECT_TRUE(kept.empty());
  auto obs = hk.Observe();
  ASSERT_TRUE(obs.ok());
  EXPECT_EQ(obs->pool.cpus.front(), 5u);
  EXPECT_EQ(emu.counters().pool_changes, 2);  // baseline writes (SetPool, then this), no transaction
  EXPECT_EQ(emu.counters().overlays, 0);
  // Unchanged: nothing happens.
  ASSERT_TRUE(hk.ChangePool(smaller, numa, &kept).ok());
  EXPECT_EQ(emu.counters().overlays, 0);

  // With an instance: free CPUs and devices move, lent ones stay, memory only grows.
  ASSERT_TRUE(hk.Create("web", 1, Web()).ok());
  PoolState target = smaller;
  target.cpus.erase(std::remove_if(target.cpus.begin(), target.cpus.end(),
                                   [](uint64_t c) { return c == 8 || c == 12; }),  // 8 is lent, 12 free
                    target.cpus.end());
  target.cpus.push_back(4);                             // back in
  target.memory = {{0, 12 * kGi, 0}, {0, 8 * kGi, 1}};  // node 0 grows, node 1 would shrink
  target.devices = {};                                  // 0000:04:00.1 is lent, 0000:81:00.0 free
  kept.clear();
  ASSERT_TRUE(hk.ChangePool(target, numa, &kept).ok());
  EXPECT_EQ(kept.size(), 3u) << absl::StrJoin(kept, "\n");
  obs = hk.Observe();
  ASSERT_TRUE(obs.ok());
  std::set<uint64_t> cpus(obs->pool.cpus.begin(), obs->pool.cpus.end());
  EXPECT_TRUE(cpus.count(4));
  EXPECT_TRUE(cpus.count(8));    // lent: stays
  EXPECT_FALSE(cpus.count(12));  // free: gone
  std::set<std::string> devices;
  for (const auto& d : obs->pool.devices) devices.insert(d.pci_id);
  EXPECT_EQ(devices, std::set<std::string>{"0000:04:00.1"});
  uint64_t node0 = 0, node1 = 0;
  for (const auto& m : obs->pool.memory) (m.numa == 0 ? node0 : node1) += m.size;
  EXPECT_EQ(node0, 12 * kGi);
  EXPECT_EQ(node1, 16 * kGi);
  EXPECT_EQ(emu.counters().overlays, 2);  // the create and one pool transaction
}

}  // namespace
}  // namespace mkfleet::kernel

namespace mkfleet::kernel {
namespace {

// A simulated clock that runs `hook` after every sleep: another thread's read (the agent's
// watchdog) between two polls of a wait.
class HookClock final : public Clock {
 public:
  absl::Time Now() override { return inner_.Now(); }
  absl::Duration Monotonic() override { return inner_.Monotonic(); }
  void SleepFor(absl::Duration d) override {
    inner_.Advance(d);
    if (hook) hook();
  }
  std::function<void()> hook;

 private:
  SimulatedClock inner_;
};

// Defect (found by rollout_process_test): a start waited its whole start_timeout (60 s) for
// a kernel that booted and crashed at once when another reader (the watchdog) saw it active
// first: the wait only saw loaded, before and after the boot. The agent's batch outlived
// the controller's call deadline, and the rollout to a kernel panicking on boot stalled.
TEST(HostKernelStartTest, AKernelThatCrashesRightAfterBootFailsTheStartAtOnce) {
  fs::path dir = fs::path(::testing::TempDir()) / ("start-crash-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string image = (dir / "vmlinux-panics").string();
  std::ofstream(image, std::ios::binary) << std::string("\x7f" "ELF", 4) << "mkfleet-emulator:panic-after-ms=0";
  HookClock clock;
  EmulatorOptions o;
  o.cpus = {0, 1, 2, 3};
  o.memory = {{0, 0, 8ull << 30}};
  o.clock = &clock;
  o.boot_time = absl::Milliseconds(300);
  EmulatedKernel emu(o);
  HostKernelOptions ho;
  ho.host = "node-a";
  ho.lock_path = (dir / "kernel.lock").string();
  ho.kerf_lock_path = (dir / "kerf.lock").string();
  ho.state_dir = (dir / "state").string();
  ho.clock = &clock;
  ho.images.dirs = {dir.string()};
  HostKernel hk(emu, emu, ho);
  PoolState pool;
  pool.cpus = {1, 2, 3};
  pool.memory = {{0, 4ull << 30, 0}};
  ASSERT_TRUE(hk.SetPool(pool).ok());
  InstanceResources r;
  r.cpus = {1};
  r.memory_bytes = 512ull << 20;
  r.numa_nodes = {0};
  ASSERT_TRUE(hk.Create("web-1", 7, r).ok());
  ASSERT_TRUE(hk.Load("web-1", {image, "", "console=mktty0", "", ""}).ok());
  clock.hook = [&] { (void)hk.Observe(); };  // the watchdog reads between the wait's polls
  absl::Duration t0 = clock.Monotonic();
  absl::Status s = hk.Start("web-1", /*wait=*/true);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("stopped right after it booted"));
  EXPECT_LT(clock.Monotonic() - t0, absl::Seconds(2)) << "waited for the start timeout";
  clock.hook = nullptr;
  fs::remove_all(dir);
}

// With the emulator's change tracking, an observation at rest reads nothing; any change (the
// kernel's, a timed one such as a boot finishing, a record of ours) reads again, and what
// the driver answers is always what a read would say.
TEST(ObservationTest, AtRestAnObservationReadsNothingAndEveryChangeReadsAgain) {
  fs::path dir = fs::path(::testing::TempDir()) / ("observe-" + std::to_string(getpid()));
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string image = (dir / "vmlinux").string();
  std::ofstream(image, std::ios::binary) << std::string("\x7f" "ELF", 4) << "a kernel";
  SimulatedClock clock;
  EmulatorOptions o = Machine();
  o.clock = &clock;
  o.boot_time = absl::Milliseconds(300);
  EmulatedKernel emu(o);
  HostKernelOptions ho;
  ho.host = "node-a";
  ho.state_dir = (dir / "state").string();
  ho.clock = &clock;
  ho.images.dirs = {dir.string()};
  emu.TrackChanges(ho);
  HostKernel hk(emu, emu, ho);
  // Another driver reading every time: what the cached one says must equal it.
  HostKernelOptions plain = ho;
  plain.kernel_generation = nullptr;
  plain.kernel_next_change = nullptr;
  plain.cache_records = false;  // a second reader of the records hk writes
  HostKernel reader(emu, emu, plain);
  auto same = [&] {
    auto a = hk.Observe();
    auto b = reader.Observe();
    if (!a.ok() || !b.ok()) return std::string("observe failed");
    std::string out;
    if (a->instances.size() != b->instances.size()) return std::string("instance count differs");
    for (size_t i = 0; i < a->instances.size(); ++i) {
      const InstanceInfo& x = a->instances[i];
      const InstanceInfo& y = b->instances[i];
      if (x.name != y.name || x.state != y.state || x.owner != y.owner || x.resources.cpus != y.resources.cpus ||
          x.provenance.SerializeAsString() != y.provenance.SerializeAsString() || x.memory_by_node != y.memory_by_node) {
        out += x.name + " differs; ";
      }
    }
    if (a->pool.cpus != b->pool.cpus) out += "pool differs";
    return out;
  };
  ASSERT_TRUE(hk.SetPool(Pool()).ok());
  ASSERT_TRUE(hk.Create("web-1", 7, Web(), "owner-a").ok());
  ASSERT_TRUE(hk.Load("web-1", {image, "", "console=mktty0", "", ""}).ok());
  EXPECT_EQ(same(), "");
  uint64_t reads = hk.observe_reads();
  EXPECT_EQ(same(), "");
  EXPECT_EQ(same(), "");
  EXPECT_EQ(hk.observe_reads(), reads) << "nothing changed: nothing read";

  // A boot: asked now, active after the boot time (a timed change, no call in between).
  ASSERT_TRUE(hk.Start("web-1", /*wait=*/false).ok());
  EXPECT_EQ(same(), "");
  EXPECT_EQ(hk.Observe()->instances[0].state, v1::KERNEL_STATE_LOADED);
  clock.Advance(absl::Milliseconds(400));
  EXPECT_EQ(hk.Observe()->instances[0].state, v1::KERNEL_STATE_ACTIVE) << "the boot finished without a call";
  EXPECT_EQ(same(), "");
  reads = hk.observe_reads();
  clock.Advance(absl::Seconds(10));
  EXPECT_EQ(same(), "");
  EXPECT_EQ(hk.observe_reads(), reads) << "at rest";

  // A change made beside this driver (a panic inside the instance).
  ASSERT_TRUE(emu.InjectPanic("web-1").ok());
  EXPECT_EQ(hk.Observe()->instances[0].state, v1::KERNEL_STATE_LOADED);
  EXPECT_EQ(same(), "");

  // A record of ours: the owner.
  ASSERT_TRUE(hk.SetOwner("web-1", "owner-b").ok());
  EXPECT_EQ(hk.Observe()->instances[0].owner, "owner-b");
  EXPECT_EQ(same(), "");
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mkfleet::kernel
