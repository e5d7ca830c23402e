// The agent's morph state machine against the emulated kernel running the real mkguest,
// with hooks that keep a workload counter: the old guest increments it, checkpoints it, the
// new one restores it and goes on. Every test ends COMMITTED or ROLLED_BACK with each device
// owned by exactly one kernel, and the old kernel never stopped before the commit.
#include "agents/morph.h"

#include <sys/socket.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <thread>

#include "absl/strings/str_join.h"
#include "agents/action_journal.h"
#include "agents/executor.h"
#include "agents/testing/workload_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "kmp/frame.h"
#include "planner/topology_source.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

constexpr uint64_t kMi = 1ull << 20;

void WriteScript(const std::string& path, const std::string& body) {
  std::ofstream(path) << "#!/bin/sh\nD=\"" << std::filesystem::path(path).parent_path().parent_path().parent_path().string()
                      << "/data\"\nID=$MKGUEST_INSTANCE_ID\n"
                      << body;
  std::filesystem::permissions(path, std::filesystem::perms::owner_all);
}

class MorphTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mkmorph.XXXXXX";
    dir_ = mkdtemp(tmpl);
    std::filesystem::create_directories(dir_ + "/hooks/wl");
    std::filesystem::create_directories(dir_ + "/data");
    vmlinux_ = dir_ + "/vmlinux";
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF", 4) << "new kernel";
    std::ofstream(dir_ + "/old-vmlinux", std::ios::binary) << std::string("\x7f" "ELF", 4) << "old kernel";
    std::ofstream(dir_ + "/panics", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                       << "mkfleet-emulator:panic-after-ms=0";
    std::ofstream(dir_ + "/hangs", std::ios::binary) << std::string("\x7f" "ELF", 4) << "mkfleet-emulator:hang-on-boot";
    // The workload: one step per few ms while this instance serves; each increment logged.
    std::string data = dir_ + "/data";
    std::ofstream(data + "/step") << "#!/bin/sh\nD=\"" << data << "\"\n[ -e \"$D/serving.$1\" ] || exit 0\n"
                                  << "v=$(( $(cat \"$D/counter.$1\") + 1 ))\necho $v > \"$D/counter.$1\"\n"
                                  << "echo \"$1 $v\" >> \"$D/log\"\n";
    std::ofstream(data + "/workload") << "#!/bin/sh\nD=\"" << data << "\"\nwhile [ -d \"$D\" ]; do\n"
                                      << "  flock \"$D/lock\" \"$D/step\" $1\n  sleep 0.003\ndone\n";
    std::filesystem::permissions(data + "/step", std::filesystem::perms::owner_all);
    std::filesystem::permissions(data + "/workload", std::filesystem::perms::owner_all);
    const std::string hooks = dir_ + "/hooks/wl/";
    WriteScript(hooks + "start",
                "if [ ! -e \"$D/first\" ]; then echo $ID > \"$D/first\"; echo 0 > \"$D/counter.$ID\"; "
                "touch \"$D/serving.$ID\"; fi\n\"$D/workload\" $ID </dev/null >/dev/null 2>&1 &\n");
    WriteScript(hooks + "quiesce",
                "[ -e \"$D/fail-quiesce\" ] && { echo 'cannot quiesce' >&2; exit 3; }\n"
                "flock \"$D/lock\" rm -f \"$D/serving.$ID\"\n");
    WriteScript(hooks + "checkpoint",
                "[ -e \"$D/slow-checkpoint\" ] && sleep 5\ncat \"$D/counter.$ID\"\n");
    WriteScript(hooks + "restore", "cat > \"$D/counter.$ID\"\n");
    WriteScript(hooks + "validate",
                "[ -e \"$D/fail-validate\" ] && { echo 'the service did not come up' >&2; exit 1; }\nexit 0\n");
    WriteScript(hooks + "commit", "flock \"$D/lock\" touch \"$D/serving.$ID\"\n");
    WriteScript(hooks + "resume", "flock \"$D/lock\" touch \"$D/serving.$ID\"\n");

    topology_ = std::make_shared<const planner::Topology>(
        *planner::NewSyntheticTopologySource("pack:1 numa:1(memory=16GiB) core:8 pu:2", planner::TopologyOptions{12, 0})
             ->Load());
    kernel::EmulatorOptions o = kernel::MachineFromTopology(*topology_);
    o.pci_devices = {"0000:04:00.0", "0000:04:00.1", "0000:05:00.0"};
    o.state_file = dir_ + "/emulated-kernel.state";
    o.guests.binary = "guest/mkguest";
    o.guests.socket_dir = dir_ + "/vsock";
    o.guests.hooks_root = dir_ + "/hooks";
    o.guests.exit_with = o.state_file;
    o.guests.hook_timeout = absl::Seconds(2);
    o.boot_time = BootTime();
    emu_ = std::make_unique<kernel::EmulatedKernel>(o);
    kernel::HostKernelOptions ho;
    ho.host = "h";
    ho.state_dir = dir_ + "/provenance";
    ho.images.dirs = {dir_};
    emu_->TrackChanges(ho);  // as mkagent does: unchanged observations are not read
    hk_ = std::make_unique<kernel::HostKernel>(*emu_, *emu_, ho);
    kernel::PoolState pool;
    for (size_t i = 2; i < o.cpus.size(); ++i) pool.cpus.push_back(o.cpus[i]);
    pool.memory.push_back({0, 8ull << 30, 0});
    pool.devices = {{"nic0", "0000:04:00.0", 0, 0}, {"nic1", "0000:04:00.1", 0, 0}, {"nvme0", "0000:05:00.0", 0, 0}};
    ASSERT_TRUE(hk_->SetPool(pool).ok());
    journal_ = *ActionJournal::Open(dir_ + "/journal");
    executor_ = std::make_unique<Executor>(*hk_, *journal_, topology_);
    // "web" on CPUs 2-5 (two cores), 1 GiB, two devices, its guest running the workload.
    v1::ActionBatch b;
    auto add = [&](const std::string& id) {
      v1::Action* a = b.add_actions();
      a->set_id(id);
      a->set_instance("web");
      return a;
    };
    *add("c")->mutable_create()->mutable_placement() = Placement({2, 3, 4, 5}, 1024 * kMi, {"0000:04:00.0", "0000:05:00.0"});
    v1::KernelSpec* k = add("l")->mutable_load()->mutable_kernel();
    k->set_image(dir_ + "/old-vmlinux");
    k->set_cmdline("console=mktty0 mkfleet.guest=wl");
    add("s")->mutable_start();
    auto r = executor_->Execute(b);
    ASSERT_TRUE(r.ok());
    for (const auto& res : r->results()) ASSERT_EQ(res.code(), 0) << res.message();
    NewMorpher();
    // The workload runs in the old kernel.
    ASSERT_TRUE(WaitFor([&] { return Counter() >= 5; })) << "the workload never started";
  }
  virtual absl::Duration BootTime() { return absl::ZeroDuration(); }
  void TearDown() override {
    morpher_.reset();
    std::filesystem::remove_all(dir_);
  }

  static v1::Placement Placement(std::vector<uint32_t> cpus, uint64_t bytes, std::vector<std::string> devices = {}) {
    v1::Placement p;
    for (uint32_t c : cpus) p.add_cpus(c);
    p.add_numa_nodes(0);
    auto* m = p.add_memory();
    m->set_node(0);
    m->set_bytes(bytes);
    for (const auto& d : devices) p.add_devices()->set_pci(d);
    return p;
  }

  void NewMorpher(std::function<void(v1::MorphPhase)> on_phase = nullptr) {
    MorphOptions mo;
    mo.dir = dir_ + "/morph";
    mo.call_timeout = absl::Seconds(5);
    mo.heartbeat_wait = absl::Seconds(10);
    mo.on_phase = std::move(on_phase);
    MorphHooks hooks;
    hooks.event = [this](const std::string& name, const std::string& type, const std::string& reason,
                         const std::string& message) {
      absl::MutexLock lock(&events_mu_);
      events_.push_back(absl::StrCat(name, " ", type, " ", reason, ": ", message));
    };
    morpher_ = std::make_unique<Morpher>(
        mo, *hk_, topology_,
        [this](uint32_t id) -> absl::StatusOr<std::unique_ptr<kmp::Connection>> {
          if (id == corrupt_id_) {
            // A "guest" whose every answer is a corrupt frame.
            int sv[2];
            socketpair(AF_UNIX, SOCK_STREAM, 0, sv);
            std::thread([fd = sv[1]] {
              char buf[4096];
              while (read(fd, buf, sizeof buf) > 0) {
                std::string junk(32, '\x5a');
                (void)!send(fd, junk.data(), junk.size(), MSG_NOSIGNAL);
              }
              close(fd);
            }).detach();
            return std::make_unique<kmp::Connection>(sv[0]);
          }
          return kmp::DialUnix(kernel::VsockPath(dir_ + "/vsock", id, kernel::kGuestPort), absl::Milliseconds(200));
        },
        Clock::Real(), hooks);
  }

  v1::MorphStart Start(const std::string& id, const std::string& image = "") {
    v1::MorphStart s;
    s.set_morph_id(id);
    s.set_next("web-next");
    *s.mutable_surge() = Placement({6, 7}, 512 * kMi);
    v1::KernelSpec* k = s.mutable_load()->mutable_kernel();
    k->set_image(image.empty() ? vmlinux_ : image);
    k->set_cmdline("console=mktty0 mkfleet.guest=wl");
    *s.mutable_target() = Placement({2, 3, 4, 5}, 1024 * kMi);
    s.set_timeout_ms(20000);
    s.set_owner("KernelInstance/web");
    s.set_revision("rev-new");
    s.set_previous_revision("rev-old");
    return s;
  }

  template <typename F>
  bool WaitFor(F f, absl::Duration timeout = absl::Seconds(30)) {
    absl::Time end = absl::Now() + timeout;
    while (absl::Now() < end) {
      if (f()) return true;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return false;
  }
  v1::MorphStatus StatusOf(const std::string& name) {
    auto s = morpher_->StatusOf(name);
    return s ? *s : v1::MorphStatus();
  }
  // Waits for the morph to end; its status.
  v1::MorphStatus End() {
    morpher_->Wait();
    auto a = morpher_->StatusOf("web");
    auto b = morpher_->StatusOf("web-next");
    return a ? *a : b ? *b : v1::MorphStatus();
  }
  int64_t Counter() { return agents::testing::LastCount(dir_ + "/data/log"); }
  // No increment lost or repeated; the ids that served, in order.
  std::vector<int64_t> CheckLog() { return agents::testing::CheckWorkloadLog(dir_ + "/data/log"); }
  // Each device is owned by exactly one kernel, or is free in the pool.
  void CheckDeviceOwners(const std::string& owner) {
    auto obs = hk_->Observe();
    ASSERT_TRUE(obs.ok());
    std::map<std::string, std::vector<std::string>> owners;
    for (const auto& in : obs->instances) {
      for (const auto& d : in.resources.devices) owners[d.pci_id].push_back(in.name);
    }
    EXPECT_THAT(owners["0000:04:00.0"], ::testing::ElementsAre(owner));
    EXPECT_THAT(owners["0000:05:00.0"], ::testing::ElementsAre(owner));
    EXPECT_TRUE(owners["0000:04:00.1"].empty());
  }
  std::string Events() {
    absl::MutexLock lock(&events_mu_);
    return absl::StrJoin(events_, "\n");
  }
  void ExpectRolledBack(const v1::MorphStatus& st, const std::string& reason) {
    EXPECT_EQ(st.phase(), v1::MORPH_ROLLED_BACK) << Events();
    EXPECT_THAT(st.reason(), HasSubstr(reason));
    EXPECT_EQ(*hk_->StateOf("web-next"), v1::KERNEL_STATE_ABSENT);
    EXPECT_EQ(*hk_->StateOf("web"), v1::KERNEL_STATE_ACTIVE);
    EXPECT_EQ(*emu_->StopsOf("web"), 0) << "the old kernel stopped";
    CheckDeviceOwners("web");
    // The old guest serves on: the counter moves again.
    int64_t before = Counter();
    EXPECT_TRUE(WaitFor([&] { return Counter() > before + 3; })) << "the workload did not resume";
    std::vector<int64_t> ids = CheckLog();
    EXPECT_EQ(ids.size(), 1u) << "only the old instance ever served";
    EXPECT_THAT(Events(), HasSubstr("MorphRolledBack"));
  }

  std::string dir_, vmlinux_;
  std::shared_ptr<const planner::Topology> topology_;
  std::unique_ptr<kernel::EmulatedKernel> emu_;
  std::unique_ptr<kernel::HostKernel> hk_;
  std::unique_ptr<ActionJournal> journal_;
  std::unique_ptr<Executor> executor_;
  std::unique_ptr<Morpher> morpher_;
  uint32_t corrupt_id_ = 0;
  absl::Mutex events_mu_;
  std::vector<std::string> events_;
};

TEST_F(MorphTest, AutoMorphHandsOverWithoutLosingAnIncrement) {
  int stops_at_commit = -1;
  NewMorpher([&](v1::MorphPhase p) {
    if (p == v1::MORPH_COMMITTING) stops_at_commit = *emu_->StopsOf("web");
  });
  ASSERT_TRUE(morpher_->Start("web", Start("m1")).ok());
  v1::MorphStatus st = End();
  ASSERT_EQ(st.phase(), v1::MORPH_COMMITTED) << st.reason() << "\n" << Events();
  EXPECT_EQ(stops_at_commit, 0) << "the old kernel stopped before the commit";
  // The new kernel serves, with every device, the spec's CPU count and memory.
  EXPECT_EQ(*hk_->StateOf("web"), v1::KERNEL_STATE_ABSENT);
  EXPECT_EQ(*hk_->StateOf("web-next"), v1::KERNEL_STATE_ACTIVE);
  CheckDeviceOwners("web-next");
  auto obs = *hk_->Observe();
  for (const auto& in : obs.instances) {
    if (in.name != "web-next") continue;
    EXPECT_EQ(in.resources.cpus.size(), 4u);
    EXPECT_EQ(in.memory_by_node.at(0), 1024 * kMi);
    EXPECT_EQ(in.resources.cpus[0], topology_->physical_ids.at(6)) << "the boot CPU stays";
  }
  EXPECT_EQ(st.revision(), "rev-new");
  EXPECT_EQ(st.previous_revision(), "rev-old");
  EXPECT_GT(st.state_bytes(), 0u);
  EXPECT_GT(st.handover_gap_us(), 0u);
  // The new guest goes on counting from where the old one stopped.
  int64_t at = Counter();
  ASSERT_TRUE(WaitFor([&] { return Counter() > at + 3; })) << "the new instance does not serve";
  std::vector<int64_t> ids = CheckLog();
  EXPECT_EQ(ids.size(), 2u) << "served by the old, then the new instance";
  // Reported by the serving kernel only.
  EXPECT_FALSE(morpher_->StatusOf("web").has_value());
  EXPECT_THAT(Events(), HasSubstr("MorphCommitted"));
  // The same morph id again changes nothing; a commit after the end is refused.
  EXPECT_TRUE(morpher_->Start("web-next", Start("m1")).ok());
  EXPECT_THAT(morpher_->Commit("web-next").message(), HasSubstr("already Committed"));
}

TEST_F(MorphTest, ManualMorphWaitsAtValidatingForCommit) {
  v1::MorphStart s = Start("m2");
  s.set_manual_commit(true);
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ASSERT_TRUE(WaitFor([&] { return StatusOf("web").phase() == v1::MORPH_VALIDATING && Events().find("AwaitingCommit") != std::string::npos; }));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(StatusOf("web").phase(), v1::MORPH_VALIDATING) << "it must wait for the commit";
  CheckDeviceOwners("web");
  absl::Status committed = morpher_->Commit("web");
  ASSERT_TRUE(committed.ok()) << committed << "\n" << Events();
  v1::MorphStatus st = End();
  EXPECT_EQ(st.phase(), v1::MORPH_COMMITTED) << st.reason();
  CheckDeviceOwners("web-next");
  int64_t at = Counter();
  ASSERT_TRUE(WaitFor([&] { return Counter() > at + 3; })) << "the new instance does not serve";
  EXPECT_EQ(CheckLog().size(), 2u);
}

TEST_F(MorphTest, ManualRollbackAtValidating) {
  v1::MorphStart s = Start("m3");
  s.set_manual_commit(true);
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ASSERT_TRUE(WaitFor([&] { return Events().find("AwaitingCommit") != std::string::npos; }));
  ASSERT_TRUE(morpher_->Rollback("web", "operator said no").ok());
  ExpectRolledBack(End(), "operator said no");
  EXPECT_THAT(morpher_->Commit("web").message(), HasSubstr("rolling back"));
}

TEST_F(MorphTest, NoMorphIsAFailedPrecondition) {
  EXPECT_THAT(morpher_->Commit("web").message(), HasSubstr("no morph of web in progress"));
  EXPECT_EQ(morpher_->Rollback("web", "").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(MorphTest, NewKernelPanickingOnBootRollsBack) {
  ASSERT_TRUE(morpher_->Start("web", Start("m4", dir_ + "/panics")).ok());
  ExpectRolledBack(End(), "crashed");
}

TEST_F(MorphTest, NewKernelPanickingDuringTheMorphRollsBack) {
  std::ofstream(dir_ + "/panics-soon", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                          << "mkfleet-emulator:panic-after-ms=150";
  std::ofstream(dir_ + "/data/slow-checkpoint") << "";  // still transferring when it panics
  ASSERT_TRUE(morpher_->Start("web", Start("m4b", dir_ + "/panics-soon")).ok());
  v1::MorphStatus st = End();
  std::filesystem::remove(dir_ + "/data/slow-checkpoint");
  ExpectRolledBack(st, "crashed");
}

TEST_F(MorphTest, ARollbackEndsOnlyOnceTheNewKernelIsGone) {
  // The new kernel panics, and the kernel refuses to remove it for a while: the morph stays
  // RollingBack (it never says RolledBack with web-next still there) and ends once it could.
  emu_->SetBusy("web-next", true);
  ASSERT_TRUE(morpher_->Start("web", Start("m4c", dir_ + "/panics")).ok());
  ASSERT_TRUE(WaitFor([&] { return StatusOf("web").phase() == v1::MORPH_ROLLING_BACK; }));
  absl::SleepFor(absl::Milliseconds(300));
  EXPECT_EQ(StatusOf("web").phase(), v1::MORPH_ROLLING_BACK) << StatusOf("web").reason();
  EXPECT_NE(*hk_->StateOf("web-next"), v1::KERNEL_STATE_ABSENT);
  emu_->SetBusy("web-next", false);
  ExpectRolledBack(End(), "crashed");
  EXPECT_THAT(Events(), HasSubstr("MorphRollbackRetry"));
}

TEST_F(MorphTest, NewKernelHangingRollsBack) {
  ASSERT_TRUE(morpher_->Start("web", Start("m5", dir_ + "/hangs")).ok());
  ExpectRolledBack(End(), "did not answer");
}

TEST_F(MorphTest, FailingHookRollsBack) {
  std::ofstream(dir_ + "/data/fail-quiesce") << "";
  ASSERT_TRUE(morpher_->Start("web", Start("m6")).ok());
  v1::MorphStatus st = End();
  std::filesystem::remove(dir_ + "/data/fail-quiesce");
  ExpectRolledBack(st, "cannot quiesce");
  EXPECT_EQ(st.failed_in(), v1::MORPH_NEGOTIATING);
}

TEST_F(MorphTest, HookOutlivingItsTimeoutRollsBack) {
  std::ofstream(dir_ + "/data/slow-checkpoint") << "";  // sleeps 5 s; the guest allows 2
  ASSERT_TRUE(morpher_->Start("web", Start("m7")).ok());
  v1::MorphStatus st = End();
  ExpectRolledBack(st, "checkpoint");
  EXPECT_EQ(st.failed_in(), v1::MORPH_TRANSFERRING);
}

TEST_F(MorphTest, MorphOutlivingItsTimeoutRollsBack) {
  std::ofstream(dir_ + "/data/slow-checkpoint") << "";
  v1::MorphStart s = Start("m8");
  s.set_timeout_ms(1000);
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ExpectRolledBack(End(), "");
  // Either the morph's deadline or the guest's hook timeout ended it; both are rollbacks
  // before the commit. The morph deadline alone:
}

TEST_F(MorphTest, MorphDeadlineAloneRollsBack) {
  v1::MorphStart s = Start("m8b");
  s.set_manual_commit(false);
  s.set_timeout_ms(1);  // over before the first exchange
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ExpectRolledBack(End(), "exceeded its timeout");
}

TEST_F(MorphTest, FailedValidationRollsBack) {
  std::ofstream(dir_ + "/data/fail-validate") << "";
  ASSERT_TRUE(morpher_->Start("web", Start("m9")).ok());
  v1::MorphStatus st = End();
  ExpectRolledBack(st, "validation failed: ");
  EXPECT_THAT(st.reason(), HasSubstr("the service did not come up"));
}

TEST_F(MorphTest, CorruptFrameRollsBack) {
  v1::MorphStart s = Start("m10");
  s.set_next_id(42);
  corrupt_id_ = 42;  // the new kernel's "guest" answers with garbage
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ExpectRolledBack(End(), "");
  EXPECT_THAT(Events(), HasSubstr("MorphRolledBack"));
}

TEST_F(MorphTest, OneMorphAtATime) {
  v1::MorphStart s = Start("m11");
  s.set_manual_commit(true);
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  v1::MorphStart again = Start("m12");
  absl::Status second = morpher_->Start("web", again);
  EXPECT_EQ(second.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.message(), HasSubstr("morph m11 of web is"));
  absl::Status rolled = morpher_->Rollback("web", "done");
  ASSERT_TRUE(rolled.ok()) << rolled << "\n" << Events();
  End();
}

// Kernels that boot slowly: a new kernel still booting when the morph's time is up.
class MorphSlowBootTest : public MorphTest {
 protected:
  absl::Duration BootTime() override { return absl::Seconds(5); }
};

TEST_F(MorphSlowBootTest, ANewKernelStillBootingIsRemovedByTheRollback) {
  // Found by the fleet simulation (seed 10): the rollback unloaded a kernel that was still
  // booting, which the kernel refuses until the boot is over (the simulated agent gave up
  // first). It is forced down at once instead: the rollback ends long before the boot would.
  v1::MorphStart s = Start("m30");
  s.set_timeout_ms(300);
  ASSERT_TRUE(morpher_->Start("web", s).ok());
  ASSERT_TRUE(WaitFor([&] { return MorphEnded(StatusOf("web").phase()); }, absl::Seconds(3)))
      << StatusOf("web").ShortDebugString();
  ExpectRolledBack(End(), "did not boot");
}

// A restart of the agent in each phase (a new Morpher on the same journal, as a restarted
// agent makes; the old one's thread is abandoned at that phase): the restarted one ends it
// COMMITTED or ROLLED_BACK with one owner per device.
class MorphRestartTest : public MorphTest, public ::testing::WithParamInterface<v1::MorphPhase> {};

TEST_P(MorphRestartTest, ARestartedAgentEndsTheMorph) {
  std::atomic<bool> hit{false};
  NewMorpher([&](v1::MorphPhase p) {
    if (p == GetParam() && !hit.exchange(true)) {
      // Freeze this run where it is: the "agent" dies here (its thread never goes on).
      while (true) absl::SleepFor(absl::Hours(1));
    }
  });
  ASSERT_TRUE(morpher_->Start("web", Start("m20")).ok());
  ASSERT_TRUE(WaitFor([&] { return hit.load(); }));
  // The dead agent's Morpher is leaked on purpose: its frozen thread never runs again.
  (void)morpher_.release();
  NewMorpher();
  ASSERT_TRUE(morpher_->Resume().ok());
  v1::MorphStatus st = End();
  ASSERT_TRUE(MorphEnded(st.phase())) << st.phase();
  std::string serving = st.phase() == v1::MORPH_COMMITTED ? "web-next" : "web";
  CheckDeviceOwners(serving);
  EXPECT_EQ(*hk_->StateOf(serving), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(*hk_->StateOf(serving == "web" ? "web-next" : "web"), v1::KERNEL_STATE_ABSENT);
  if (st.phase() == v1::MORPH_ROLLED_BACK) {
    EXPECT_EQ(*emu_->StopsOf("web"), 0);
  }
  // Someone serves again, with no increment lost.
  int64_t at = Counter();
  EXPECT_TRUE(WaitFor([&] { return Counter() > at + 3; })) << "nobody serves";
  CheckLog();
}

INSTANTIATE_TEST_SUITE_P(Phases, MorphRestartTest,
                         ::testing::Values(v1::MORPH_PREPARING, v1::MORPH_NEGOTIATING, v1::MORPH_TRANSFERRING,
                                           v1::MORPH_VALIDATING, v1::MORPH_COMMITTING),
                         [](const auto& info) { return std::string(MorphPhaseName(info.param)); });

}  // namespace
}  // namespace mkfleet::agents
