// The emulated kernel runs the real mkguest for instances that ask for it: started on boot,
// killed (its whole session) on halt, force-halt and panic, frozen while hung, adopted by a
// restarted emulator; and kernel images marked to panic or hang.
#include "kernel/emulator/guests.h"

#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <fstream>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/errno_status.h"
#include "kmp/connection.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::kernel {
namespace {

using ::testing::HasSubstr;

constexpr uint64_t kGi = 1ull << 30;

bool Alive(pid_t pid) { return pid > 0 && kill(pid, 0) == 0; }

class GuestsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/mkguests.XXXXXX";
    dir_ = mkdtemp(tmpl);
    mkdir((dir_ + "/hooks").c_str(), 0700);
    mkdir((dir_ + "/hooks/p1").c_str(), 0700);
    // The start hook launches a "workload" in the guest's session: it must die with it.
    WriteFile(dir_ + "/hooks/p1/start", "#!/bin/sh\nsleep 1000 </dev/null >/dev/null 2>&1 &\necho $! > \"" + dir_ +
                                            "/workload.$MKGUEST_INSTANCE_ID\"\n",
              0700);
    WriteFile(dir_ + "/vmlinux", std::string("\x7f" "ELF", 4) + "a kernel", 0600);
    WriteFile(dir_ + "/panics", std::string("\x7f" "ELF", 4) + "...mkfleet-emulator:panic-after-ms=0...", 0600);
    WriteFile(dir_ + "/hangs", std::string("\x7f" "ELF", 4) + "...mkfleet-emulator:hang-on-boot...", 0600);
    emu_ = NewEmulator();
    PoolState p;
    p.cpus = {2, 3, 4, 5};
    p.memory = {{0, 8 * kGi, 0}};
    ASSERT_TRUE(emu_->Write("device_tree", *EncodeBaseline(p, Dialect::kV1)).ok());
  }
  void TearDown() override {
    emu_.reset();
    // The guests end once the state file is gone (--exit-with); kill what is left anyway.
    std::system(("rm -rf " + dir_).c_str());
  }
  std::unique_ptr<EmulatedKernel> NewEmulator() {
    EmulatorOptions o;
    for (uint64_t c = 0; c < 8; ++c) o.cpus.push_back(c);
    o.memory = {{0, 0, 32 * kGi}};
    o.state_file = dir_ + "/state";
    o.guests.binary = "guest/mkguest";
    o.guests.socket_dir = dir_ + "/vsock";
    o.guests.hooks_root = dir_ + "/hooks";
    o.guests.exit_with = o.state_file;
    return std::make_unique<EmulatedKernel>(o);
  }
  static void WriteFile(const std::string& path, const std::string& data, mode_t mode) {
    std::ofstream(path) << data;
    chmod(path.c_str(), mode);
  }
  // Creates instance `name` (id `id`) and loads `image` with `cmdline`.
  absl::Status CreateAndLoad(const std::string& name, uint32_t id, uint64_t cpu, const std::string& image,
                             const std::string& cmdline) {
    Fragment f;
    f.target_path = "/instances";
    f.create_name = name;
    f.create_id = id;
    f.create_resources.memory_bytes = kGi;
    f.create_resources.cpus = {cpu};
    absl::Status s = emu_->Write("overlays/new", *EncodeOverlay({{f}}, Dialect::kV1));
    if (!s.ok()) return s;
    int fd = open((dir_ + "/" + image).c_str(), O_RDONLY);
    s = emu_->KexecFileLoad(fd, -1, cmdline, kKexecMultikernel | kKexecFileNoInitramfs | (uint64_t{id} << 5));
    close(fd);
    return s;
  }
  // A heartbeat to instance `id`'s guest: the id it answers with.
  absl::StatusOr<uint32_t> Heartbeat(uint32_t id, absl::Duration timeout = absl::Seconds(5)) {
    absl::StatusOr<std::unique_ptr<kmp::Connection>> conn = absl::UnavailableError("not dialled");
    absl::Time deadline = absl::Now() + timeout;
    while (absl::Now() < deadline) {  // the guest needs a moment to listen
      conn = kmp::DialUnix(VsockPath(dir_ + "/vsock", id, kGuestPort), absl::Milliseconds(200));
      if (conn.ok()) break;
      absl::SleepFor(absl::Milliseconds(10));
    }
    if (!conn.ok()) return conn.status();
    mkfleet::v1::KmpHeartbeat hb;
    auto rsp = (*conn)->Call(kmp::MsgType::kHeartbeatReq, hb, absl::Milliseconds(300));
    if (!rsp.ok()) return rsp.status();
    if (!hb.ParseFromString(rsp->payload)) return absl::DataLossError("bad heartbeat");
    return hb.instance_id();
  }
  pid_t WorkloadOf(uint32_t id) {
    for (int i = 0; i < 500; ++i) {
      std::ifstream in(dir_ + "/workload." + std::to_string(id));
      pid_t pid = 0;
      if (in >> pid) return pid;
      absl::SleepFor(absl::Milliseconds(10));
    }
    return 0;
  }

  std::string dir_;
  std::unique_ptr<EmulatedKernel> emu_;
};

TEST_F(GuestsTest, GuestRunsWhileActiveAndItsSessionDiesWithTheInstance) {
  ASSERT_TRUE(CreateAndLoad("a", 7, 2, "vmlinux", "console=mktty0 mkfleet.guest=p1").ok());
  EXPECT_EQ(emu_->GuestPid("a"), 0);  // loaded, not booted: no guest yet
  EXPECT_FALSE(emu_->RunsGuests());
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 7).ok());
  pid_t guest = emu_->GuestPid("a");
  ASSERT_GT(guest, 0);
  // The probes look for a guest's socket only while one runs.
  EXPECT_TRUE(emu_->RunsGuests());
  EXPECT_EQ(*Heartbeat(7), 7u);
  pid_t workload = WorkloadOf(7);
  ASSERT_TRUE(Alive(workload));

  // Hung: the session is stopped, the heartbeat goes unanswered.
  ASSERT_TRUE(emu_->InjectHang("a").ok());
  EXPECT_FALSE(Heartbeat(7, absl::Milliseconds(500)).ok());
  // Force-halt: guest and workload gone, no socket answers.
  ASSERT_TRUE(emu_->Reboot(kRebootForceHalt, 7).ok());
  EXPECT_EQ(emu_->GuestPid("a"), 0);
  EXPECT_FALSE(emu_->RunsGuests());
  EXPECT_FALSE(Alive(guest));
  for (int i = 0; i < 100 && Alive(workload); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_FALSE(Alive(workload));
  EXPECT_EQ(*emu_->StopsOf("a"), 1);

  // Booted again: a new guest; a panic kills it and counts.
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 7).ok());
  pid_t second = emu_->GuestPid("a");
  ASSERT_GT(second, 0);
  EXPECT_EQ(*Heartbeat(7), 7u);
  ASSERT_TRUE(emu_->InjectPanic("a").ok());
  EXPECT_FALSE(Alive(second));
  EXPECT_EQ(*emu_->StopsOf("a"), 2);
  EXPECT_EQ(emu_->counters().panics, 1);
  // A graceful halt too.
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 7).ok());
  pid_t third = emu_->GuestPid("a");
  ASSERT_TRUE(emu_->Reboot(kRebootHalt, 7).ok());
  EXPECT_FALSE(Alive(third));
  EXPECT_EQ(*emu_->StopsOf("a"), 3);
}

TEST_F(GuestsTest, AnInstanceThatDoesNotAskRunsNoGuest) {
  ASSERT_TRUE(CreateAndLoad("b", 8, 3, "vmlinux", "console=mktty0").ok());
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 8).ok());
  EXPECT_EQ(emu_->GuestPid("b"), 0);
  EXPECT_FALSE(emu_->RunsGuests());
  EXPECT_FALSE(Heartbeat(8, absl::Milliseconds(200)).ok());
}

TEST_F(GuestsTest, AProfileThatIsNotALabelIsRefusedAtLoad) {
  absl::Status s = CreateAndLoad("c", 9, 4, "vmlinux", "mkfleet.guest=../../etc");
  EXPECT_EQ(ErrnoOf(s), EINVAL);
  EXPECT_THAT(s.message(), HasSubstr("a guest profile is a DNS label"));
}

TEST_F(GuestsTest, ARestartedEmulatorAdoptsTheRunningGuest) {
  ASSERT_TRUE(CreateAndLoad("a", 7, 2, "vmlinux", "mkfleet.guest=p1").ok());
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 7).ok());
  pid_t guest = emu_->GuestPid("a");
  ASSERT_GT(guest, 0);
  emu_ = NewEmulator();  // the agent restarts; the kernel (and its guest) ran on
  EXPECT_TRUE(emu_->RunsGuests()) << "an adopted guest counts";
  EXPECT_EQ(emu_->GuestPid("a"), guest);
  EXPECT_TRUE(Alive(guest));
  EXPECT_EQ(*Heartbeat(7), 7u);
  ASSERT_TRUE(emu_->Reboot(kRebootForceHalt, 7).ok());
  for (int i = 0; i < 200 && Alive(guest); ++i) absl::SleepFor(absl::Milliseconds(10));
  EXPECT_FALSE(Alive(guest));
}

// A guest is recognised from the moment Start returns: an agent that restarts right after a
// boot adopts it, not a second guest beside it. posix_spawn returns once the child's exec
// released the parent's memory, before the kernel has set up the new program's arguments, so
// /proc/<pid>/cmdline can still be empty then (busy CPUs widen that window).
TEST_F(GuestsTest, AGuestIsItsInstancesFromTheMomentItStarts) {
  GuestOptions o;
  o.binary = "guest/mkguest";
  o.socket_dir = dir_ + "/vsock";
  o.hooks_root = dir_ + "/hooks";
  o.exit_with = dir_ + "/vmlinux";
  GuestProcesses guests(o);
  std::atomic<bool> stop{false};
  std::vector<std::thread> busy;
  for (int i = 0; i < 2; ++i) {
    busy.emplace_back([&stop] {
      volatile uint64_t x = 0;
      while (!stop.load(std::memory_order_relaxed)) x = x + 1;
    });
  }
  int missed = 0;
  for (int i = 0; i < 100; ++i) {
    auto started = guests.Start(20, "p1");
    ASSERT_TRUE(started.ok()) << started.status();
    pid_t pid = started->pid;
    ASSERT_GT(started->start_time, 0u);
    missed += !guests.IsGuest(pid, started->start_time, 20);
    EXPECT_FALSE(guests.IsGuest(pid, started->start_time, 21)) << "another instance's guest";
    EXPECT_FALSE(guests.IsGuest(pid, started->start_time + 1, 20)) << "a later process with that pid";
    GuestProcesses::Kill(pid);
    EXPECT_FALSE(guests.IsGuest(pid, started->start_time, 20)) << "a guest that is gone";
  }
  stop = true;
  for (std::thread& t : busy) t.join();
  EXPECT_EQ(missed, 0) << "guests not recognised right after their start";
}

TEST_F(GuestsTest, MarkedImagesPanicOrHangOnBoot) {
  ASSERT_TRUE(CreateAndLoad("p", 10, 4, "panics", "mkfleet.guest=p1").ok());
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 10).ok());
  // It came up, then crashed: an unrequested active -> loaded, seen on the next read.
  EXPECT_EQ(*emu_->Read("instances/p/status"), "active\n");
  EXPECT_EQ(*emu_->Read("instances/p/status"), "loaded\n");
  EXPECT_EQ(emu_->counters().panics, 1);
  EXPECT_EQ(emu_->GuestPid("p"), 0);

  ASSERT_TRUE(CreateAndLoad("h", 11, 5, "hangs", "mkfleet.guest=p1").ok());
  ASSERT_TRUE(emu_->Reboot(kRebootStart, 11).ok());
  EXPECT_EQ(*emu_->Read("instances/h/status"), "active\n");
  EXPECT_FALSE(emu_->Probe("h"));
  EXPECT_FALSE(Heartbeat(11, absl::Milliseconds(500)).ok());
}

}  // namespace
}  // namespace mkfleet::kernel
