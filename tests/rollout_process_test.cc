// Rollouts with real processes: six mkagents (emulated kernels) in three zones, one
// mkcontroller, mkapply. A kernel change of an InstanceSet (perHost 1: six members) goes
// canary first, then zone by zone, never more than maxUnavailable members down (sampled
// from the agents throughout); a kernel that panics on boot is caught at the canary and
// rolled back with only the canary touched; pause, resume, undo and history through
// mkapply; a controller SIGKILLed mid-wave finishes with every member updated exactly once.
#include <signal.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

const std::vector<std::string> kHosts = {"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"};

// Hosts in zone order (z0: a, b; z1: c, d; z2: e, f) as the rollout must visit them.
void ExpectZoneByZone(const std::vector<std::string>& order) {
  auto zone = [](const std::string& h) { return (h[5] - 'a') / 2; };
  for (size_t i = 1; i < order.size(); ++i) EXPECT_LE(zone(order[i - 1]), zone(order[i])) << order[i];
}

class RolloutProcessTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    std::ofstream(dir_ / "vmlinux-2", std::ios::binary) << std::string("\x7f" "ELF", 4) << "the new kernel";
    std::ofstream(dir_ / "vmlinux-3", std::ios::binary) << std::string("\x7f" "ELF", 4) << "the newer kernel";
    std::ofstream(dir_ / "vmlinux-panics", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                             << "mkfleet-emulator:panic-after-ms=0";
    for (const std::string& h : kHosts) StartAgent(h, "100ms");
    StartController();
    std::string hosts;
    for (size_t i = 0; i < kHosts.size(); ++i) {
      hosts += "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " + kHosts[i] + "\n  labels: {zone: z" +
               std::to_string(i / 2) + "}\nspec:\n  agent: 127.0.0.1:" + std::to_string(agents_[kHosts[i]].port) +
               "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n---\n";
    }
    hosts_yaml_ = hosts;
  }

  // `morph`: update.strategy Morph, each member running mkguest (profile wl, no hooks).
  std::string SetYaml(const std::string& image, const std::string& rollout, bool morph = false) {
    return hosts_yaml_ +
           "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: edge}\nspec:\n  perHost: 1\n"
           "  template:\n    spec:\n      kernel: {image: " +
           image + ", cmdline: \"console=mktty0" + (morph ? " mkfleet.guest=wl" : "") +
           "\"}\n      resources: {cpus: 2, memory: 512Mi}\n" +
           (morph ? "      update: {strategy: Morph, morph: {timeout: 20s}}\n" : "") + "  rollout: " + rollout + "\n";
  }
  int Apply(const std::string& yaml, const std::string& message = "") {
    std::string out;
    std::vector<std::string> args = {"apply", "-f", Write("set-" + std::to_string(++applies_) + ".yaml", yaml)};
    if (!message.empty()) args.insert(args.end(), {"--message", message});
    int rc = Mkapply(args, &out);
    EXPECT_EQ(rc, 0) << out;
    return rc;
  }
  v1::InstanceSetStatus SetStatus() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetRequest req;
    req.set_kind("InstanceSet");
    req.set_name("edge");
    v1::GetResponse r;
    if (!stub_->Get(&ctx, req, &r).ok() || r.objects_size() != 1) return {};
    return r.objects(0).instance_set().status();
  }
  // The rollout to `revision` is complete and the set Ready.
  bool Done(uint32_t revision) {
    v1::InstanceSetStatus st = SetStatus();
    return st.update_revision() == revision && st.rollout().phase() == "Complete" && SetReady();
  }
  bool SetReady() {
    v1::InstanceSetStatus st = SetStatus();
    for (const v1::Condition& c : st.conditions()) {
      if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
    }
    return false;
  }
  std::map<std::string, std::string> Running(bool* complete = nullptr) { return RunningImages(kHosts, complete); }
  void StartFleet(const std::string& rollout) {
    ASSERT_EQ(Apply(SetYaml(vmlinux_, rollout), "first"), 0);
    ASSERT_TRUE(Eventually([&] { return SetReady(); }, 30)) << controller_->Log();
  }

  Sampled SampleUntil(const std::string& image, const std::function<bool()>& done,
                      std::chrono::seconds timeout = std::chrono::seconds(60)) {
    return ProcessFleetTest::SampleUntil(kHosts, image, done, timeout);
  }

  // Starts a zone-by-zone rollout, SIGKILLs the controller (on a control plane: the
  // leader) once the second zone has begun, starts it again (another member leads), and
  // checks the rollout finishes within its budget with every member updated exactly once.
  void KillMidWaveAndFinish() {
    const std::string rollout = "{waves: {by: zone}, maxUnavailable: 1, minReady: 500ms}";
    StartFleet(rollout);
    const int leader = leader_index_;
    ASSERT_EQ(Apply(SetYaml((dir_ / "vmlinux-2").string(), rollout)), 0);
    ASSERT_TRUE(Eventually([&] {
      auto r = Running();
      return r.count("node-c") && r["node-c"] == "vmlinux-2";
    }, 60)) << controller_->Log();
    controller_->Kill(SIGKILL);
    StartController();
    if (ha_) EXPECT_NE(leader_index_, leader);
    Sampled s = SampleUntil("vmlinux-2", [&] { return Done(2); });
    EXPECT_LE(s.max_down, 1);
    // Every agent read (a snapshot read can miss its 5 s deadline on a loaded machine: the
    // scripts/test run of the twelfth session saw 5 of 6 once, every host started twice).
    std::map<std::string, std::string> running;
    EXPECT_TRUE(Eventually([&] {
      bool complete = false;
      running = Running(&complete);
      return complete && running.size() == 6u;
    }, 30)) << ::testing::PrintToString(running);
    for (const auto& [h, k] : running) EXPECT_EQ(k, "vmlinux-2") << h;
    for (const std::string& h : kHosts) EXPECT_EQ(StopAndCount(h).starts, 2) << h << " updated more than once";
  }

  std::string hosts_yaml_;
  int applies_ = 0;
};

TEST_F(RolloutProcessTest, AThreeWaveReplaceRolloutStaysInItsBudgetAndGoesZoneByZone) {
  const std::string rollout = "{canary: 1, waves: {by: zone}, maxUnavailable: 1, healthTimeout: 20s}";
  StartFleet(rollout);
  ASSERT_EQ(Apply(SetYaml((dir_ / "vmlinux-2").string(), rollout), "kernel 2 for the edge"), 0);
  Sampled s = SampleUntil("vmlinux-2", [&] { return Done(2); });
  EXPECT_LE(s.max_down, 1) << "maxUnavailable 1 exceeded\n" << s.worst << [&] {
    std::string all;
    for (const v1::Event& e : ControllerEvents()) all += e.name() + " " + e.reason() + " " + e.message() + "\n";
    return all;
  }();
  ASSERT_EQ(s.order.size(), 6u) << controller_->Log();
  ExpectZoneByZone(s.order);  // the canary first, in z0
  v1::InstanceSetStatus st = SetStatus();
  EXPECT_EQ(st.current_revision(), 2u);
  EXPECT_EQ(st.update_revision(), 2u);
  EXPECT_EQ(st.updated_replicas(), 6u);
  std::string out;
  EXPECT_EQ(Mkapply({"rollout", "status", "set/edge", "--watch"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Complete"));
  EXPECT_EQ(Mkapply({"rollout", "history", "set/edge"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("kernel 2 for the edge"));
  EXPECT_THAT(out, ::testing::HasSubstr("first"));
  EXPECT_EQ(Mkapply({"get", "sets"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("edge +6 +2 +6 +6 +Complete"));
  EXPECT_EQ(Mkapply({"describe", "set", "edge"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Rollout:      Complete: revision 2 everywhere"));
  EXPECT_THAT(out, ::testing::HasSubstr("z2: 2/2 updated, 2 ready, 0 failed"));
  bool started = false, complete = false, waves = false;
  std::vector<v1::Event> events = ControllerEvents();
  for (const v1::Event& e : events) {
    started |= e.reason() == "RolloutStarted";
    complete |= e.reason() == "RolloutComplete";
    waves |= e.reason() == "WaveStarted";
  }
  EXPECT_TRUE(started && complete && waves);
  // Each member was replaced exactly once: two boots per host.
  for (const std::string& h : kHosts) EXPECT_EQ(StopAndCount(h).starts, 2) << h;
}

TEST_F(RolloutProcessTest, AKernelThatPanicsIsCaughtAtTheCanaryAndRolledBack) {
  // minReady: a kernel that panics right after its boot is Ready for a moment.
  const std::string rollout = "{canary: 1, waves: {by: zone}, maxUnavailable: 2, minReady: 2s, healthTimeout: 3s}";
  StartFleet(rollout);
  ASSERT_EQ(Apply(SetYaml((dir_ / "vmlinux-panics").string(), rollout), "a bad kernel"), 0);
  std::string out;
  EXPECT_EQ(Mkapply({"rollout", "status", "set/edge", "--watch", "--timeout", "60s"}, &out), 1) << out;
  ASSERT_TRUE(Eventually([&] { return SetStatus().rollout().phase() == "RolledBack"; }, 30))
      << SetStatus().DebugString() << controller_->Log();
  ASSERT_TRUE(Eventually([&] { return Running().size() == 6; }));
  std::map<std::string, std::string> running = Running();
  for (const auto& [h, k] : running) EXPECT_EQ(k, "vmlinux") << h;
  v1::InstanceSetStatus st = SetStatus();
  EXPECT_EQ(st.current_revision(), 1u);
  EXPECT_EQ(st.update_revision(), 2u);
  bool failed_condition = false;
  for (const v1::Condition& c : st.conditions()) failed_condition |= c.reason() == "RolloutFailed";
  EXPECT_TRUE(failed_condition);
  // Held: nothing tries the bad kernel again.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(SetStatus().rollout().phase(), "RolledBack");
  // Undo: the good template again (revision 3), nothing to move.
  EXPECT_EQ(Mkapply({"rollout", "undo", "set/edge"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("revision 1"));
  ASSERT_TRUE(Eventually([&] { return SetStatus().update_revision() == 3 && SetReady(); }, 30))
      << controller_->Log();
  // Only the canary's host booted the bad kernel: one host three boots (first, bad, back), the
  // others one.
  int touched = 0;
  std::string counts;
  for (const std::string& h : kHosts) {
    kernel::EmulatedKernel::Counters c = StopAndCount(h);
    touched += c.starts > 1;
    counts += h + ": starts " + std::to_string(c.starts) + ", panics " + std::to_string(c.panics) + ", creates " +
              std::to_string(c.creates) + ", loads " + std::to_string(c.loads) + "\n";
    if (c.starts == 1) {
      EXPECT_EQ(c.panics, 0) << h;
    }
  }
  EXPECT_EQ(touched, 1) << counts << controller_->Log();
}

TEST_F(RolloutProcessTest, PauseAfterCanaryResumeAndPauseThroughMkapply) {
  const std::string rollout = "{canary: 1, pauseAfterCanary: true, maxUnavailable: 1}";
  StartFleet(rollout);
  ASSERT_EQ(Apply(SetYaml((dir_ / "vmlinux-2").string(), rollout)), 0);
  std::string out;
  EXPECT_EQ(Mkapply({"rollout", "status", "set/edge", "--watch", "--timeout", "60s"}, &out), 3) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("canary"));
  int moved = 0;
  std::map<std::string, std::string> running = Running();
  for (const auto& [h, k] : running) moved += k == "vmlinux-2";
  EXPECT_EQ(moved, 1);
  EXPECT_EQ(Mkapply({"rollout", "resume", "set/edge"}, &out), 0) << out;
  // Pause again at once: it stops before every member moved.
  ASSERT_TRUE(Eventually([&] {
    int n = 0;
    std::map<std::string, std::string> r = Running();
    for (const auto& [h, k] : r) n += k == "vmlinux-2";
    return n >= 2;
  }));
  EXPECT_EQ(Mkapply({"rollout", "pause", "set/edge"}, &out), 0) << out;
  std::this_thread::sleep_for(std::chrono::seconds(2));
  int paused_at = 0;
  running = Running();
  for (const auto& [h, k] : running) paused_at += k == "vmlinux-2";
  std::this_thread::sleep_for(std::chrono::seconds(2));
  int later = 0;
  running = Running();
  for (const auto& [h, k] : running) later += k == "vmlinux-2";
  EXPECT_EQ(later, paused_at) << "moved while paused";
  EXPECT_LT(later, 6);
  EXPECT_EQ(Mkapply({"rollout", "resume", "set/edge"}, &out), 0) << out;
  EXPECT_EQ(Mkapply({"rollout", "status", "set/edge", "--watch", "--timeout", "60s"}, &out), 0) << out;
  // Bad usage: exit 2.
  EXPECT_EQ(Mkapply({"rollout", "status", "instance/edge"}, &out), 2) << out;
  EXPECT_EQ(Mkapply({"rollout", "undo", "set/edge", "--to-revision", "9"}, &out), 1) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("no revision 9"));
}

TEST_F(RolloutProcessTest, DrainMovesASetsMembersElsewhereWithinItsBudget) {
  // Four replicas on node-a and node-b only (the others cordoned while they are placed).
  std::string out;
  ASSERT_EQ(Apply(hosts_yaml_), 0);
  ASSERT_EQ(Mkapply({"cordon", "-l", "zone!=z0"}, &out), 0) << out;
  const std::string set = "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: edge}\nspec:\n  replicas: 4\n"
                          "  template:\n    spec:\n      kernel: {image: " + vmlinux_ +
                          "}\n      resources: {cpus: 2, memory: 512Mi}\n  rollout: {maxUnavailable: 1}\n";
  ASSERT_EQ(Apply(set), 0);
  ASSERT_TRUE(Eventually([&] { return SetReady(); }, 30)) << controller_->Log();
  ASSERT_EQ(Mkapply({"uncordon", "-l", "zone!=z0"}, &out), 0) << out;
  {
    bool complete = false;
    ASSERT_EQ(Running(&complete).size(), 2u);
  }
  // Drain node-a while every agent's changes are watched: its two members are replaced
  // elsewhere, never more than one of the four down at once (maxUnavailable 1).
  std::atomic<bool> finished{false};
  int rc = -1;
  std::string drained;
  std::thread drain([&] {
    rc = Mkapply({"drain", "node-a", "--wait", "--timeout", "60s"}, &drained);
    finished = true;
  });
  Sampled s = SampleUntil("", [&] { return finished.load() && SetReady(); });
  drain.join();
  ASSERT_EQ(rc, 0) << drained << controller_->Log();
  EXPECT_THAT(drained, ::testing::HasSubstr("Host/node-a: 2 set members to move: edge-node-a-0, edge-node-a-1\n"));
  EXPECT_THAT(drained, ::testing::HasSubstr("drained: node-a\n"));
  EXPECT_GE(s.min_active, 3) << "more than maxUnavailable down\n" << s.fewest;
  std::map<std::string, std::string> running = Running();
  EXPECT_EQ(running.count("node-a"), 0u);
  EXPECT_EQ(running.count("node-b"), 1u);
  ASSERT_TRUE(Eventually([&] { return SetReady(); }, 30));
  EXPECT_EQ(Mkapply({"get", "hosts", "node-a"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("\nnode-a +yes,draining "));
  // Nothing comes back while it drains; uncordoned, nothing moves back either.
  EXPECT_EQ(Mkapply({"uncordon", "node-a"}, &out), 0) << out;
  std::this_thread::sleep_for(std::chrono::seconds(1));
  EXPECT_EQ(Running().count("node-a"), 0u);
}

TEST_F(RolloutProcessTest, AControllerKilledMidWaveFinishesWithEveryMemberUpdatedOnce) { KillMidWaveAndFinish(); }

// The same on a control plane (three `mkcontroller --ha` on etcd): the leader SIGKILLed
// mid-wave, another member takes the rollout over from the store.
class HaRolloutProcessTest : public RolloutProcessTest {
 protected:
  void SetUp() override {
    ha_ = true;
    RolloutProcessTest::SetUp();
  }
};

TEST_F(HaRolloutProcessTest, TheLeaderKilledMidWaveIsReplacedAndEveryMemberIsUpdatedOnce) {
  KillMidWaveAndFinish();
  ExpectNoSplitBrain();
}

TEST_F(RolloutProcessTest, AThreeWaveMorphRolloutNeverStopsAMember) {
  for (const std::string& h : kHosts) fs::create_directories(dir_ / h / "guest-hooks" / "wl");
  const std::string rollout = "{canary: 1, waves: {by: zone}, maxSurge: 2, healthTimeout: 30s}";
  ASSERT_EQ(Apply(SetYaml(vmlinux_, rollout, true), "first"), 0);
  ASSERT_TRUE(Eventually([&] { return SetReady(); }, 30)) << controller_->Log();
  ASSERT_EQ(Apply(SetYaml((dir_ / "vmlinux-2").string(), rollout, true), "kernel 2, live"), 0);
  Sampled s = SampleUntil("vmlinux-2", [&] { return Done(2); }, std::chrono::seconds(90));
  EXPECT_EQ(s.max_down, 0) << "a live update took a member down\n" << s.worst << controller_->Log();
  ASSERT_EQ(s.order.size(), 6u) << controller_->Log();
  ExpectZoneByZone(s.order);
  EXPECT_EQ(SetStatus().updated_replicas(), 6u);
  // No member's kernel stopped: each host's old kernel was halted only after its handover,
  // never crashed or force-halted.
  for (const std::string& h : kHosts) {
    kernel::EmulatedKernel::Counters c = StopAndCount(h);
    EXPECT_EQ(c.starts, 2) << h << ": one live update each";
    EXPECT_EQ(c.force_halts, 0) << h;
    EXPECT_EQ(c.panics, 0) << h;
  }
}

}  // namespace
}  // namespace mkfleet
