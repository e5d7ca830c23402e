#include "agents/fleet_watchdog.h"

#include <atomic>
#include <thread>

#include "agents/agent.h"
#include "agents/testing/agent_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::Contains;

// An agent whose passes are offered by TickIfDue, over an emulated kernel that tracks its
// changes (as mkagent --hosts N sets it up).
// Counts the probes it passes on.
class CountingProbe final : public LivenessProbe {
 public:
  explicit CountingProbe(std::unique_ptr<LivenessProbe> inner) : inner_(std::move(inner)) {}
  bool Probe(const std::string& instance, uint32_t id) override {
    ++probes;
    return inner_->Probe(instance, id);
  }
  std::atomic<int> probes{0};

 private:
  std::unique_ptr<LivenessProbe> inner_;
};

class TrackedAgent {
 public:
  // `probe_follows_kernel`: as mkagent sets it on an emulator that runs no guest.
  explicit TrackedAgent(const std::string& name, absl::Duration boot = absl::ZeroDuration(),
                        bool probe_follows_kernel = false)
      : host(name, boot) {
    auto counting = std::make_unique<CountingProbe>(NewEmulatorProbe(*host.emu));
    counter = counting.get();
    probe = std::move(counting);
    AgentOptions o;
    o.host = name;
    o.state_dir = (host.dir / "agent").string();
    kernel::EmulatedKernel* emu = host.emu.get();
    emu->TrackChanges(o);
    if (probe_follows_kernel) o.probe_follows_kernel = [] { return true; };
    agent = std::make_unique<Agent>(o, *host.hk, host.topology, *host.journal, *probe, host.clock);
  }
  std::vector<std::string> Reasons(const std::string& name) {
    std::vector<std::string> out;
    for (const auto& e : agent->Events()) {
      if (e.name() == name) out.push_back(e.reason());
    }
    return out;
  }
  // Boots web-1 with failover Restart and this heartbeat, then runs every pass due.
  void BootWithRestartPolicy(uint64_t heartbeat_ms, uint32_t misses) {
    ASSERT_TRUE(agent->Execute(BootBatch("web-1", {2, 18}, host.vmlinux)).ok());
    v1::SetPolicyRequest req;
    v1::LocalPolicy* p = req.add_policies();
    p->set_instance("web-1");
    p->mutable_failover()->set_policy(v1::FAILOVER_RESTART);
    p->mutable_failover()->mutable_heartbeat()->set_interval(heartbeat_ms);
    p->mutable_failover()->mutable_heartbeat()->set_misses(misses);
    ASSERT_TRUE(agent->SetPolicy(req).ok());
    while (agent->TickIfDue()) {
    }
  }
  // Hangs web-1, then offers a pass every 10 ms, `passes` times.
  void HangAndOffer(int passes) {
    ASSERT_TRUE(host.emu->InjectHang("web-1").ok());
    for (int i = 0; i < passes; ++i) {
      host.clock.Advance(absl::Milliseconds(10));
      agent->TickIfDue();
    }
  }
  v1::KernelState Observed(const std::string& name) {
    v1::HostState state = agent->Snapshot();
    for (const auto& in : state.instances()) {
      if (in.name() == name) return in.status().kernel_state();
    }
    return v1::KERNEL_STATE_UNKNOWN;
  }

  TestHost host;
  std::unique_ptr<LivenessProbe> probe;
  CountingProbe* counter = nullptr;
  std::unique_ptr<Agent> agent;
};

TEST(TickIfDueTest, AnIdleHostIsNotObservedAgain) {
  TrackedAgent t("idle");
  EXPECT_TRUE(t.agent->TickIfDue());  // the first pass always runs
  for (int i = 0; i < 50; ++i) {
    t.host.clock.Advance(absl::Milliseconds(10));
    EXPECT_FALSE(t.agent->TickIfDue()) << "pass " << i;
  }
}

TEST(TickIfDueTest, ABatchBringsAPassThatShowsItsResult) {
  TrackedAgent t("batch");
  ASSERT_TRUE(t.agent->TickIfDue());
  auto r = t.agent->Execute(BootBatch("web-1", {2, 18}, t.host.vmlinux));
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(t.agent->TickIfDue());
  EXPECT_EQ(t.Observed("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_FALSE(t.agent->TickIfDue());
}

TEST(TickIfDueTest, ABootEndingByItselfIsSeenWhenItIsDue) {
  TrackedAgent t("boot", absl::Milliseconds(300));
  ASSERT_TRUE(t.agent->TickIfDue());
  ASSERT_TRUE(t.agent->Execute(BootBatch("web-1", {2, 18}, t.host.vmlinux)).ok());
  while (t.agent->TickIfDue()) {
  }
  // A boot that is not waited for (as the watchdog's restarts): the pass its start brings
  // sees it booting; the next comes when the boot ends.
  ASSERT_TRUE(t.host.hk->Halt("web-1", /*force=*/true).ok());
  ASSERT_TRUE(t.host.hk->Start("web-1", /*wait=*/false).ok());
  EXPECT_TRUE(t.agent->TickIfDue());
  EXPECT_NE(t.Observed("web-1"), v1::KERNEL_STATE_ACTIVE);
  t.host.clock.Advance(absl::Milliseconds(100));
  EXPECT_FALSE(t.agent->TickIfDue()) << "nothing is due before the boot ends";
  t.host.clock.Advance(absl::Milliseconds(200));
  EXPECT_TRUE(t.agent->TickIfDue()) << "the boot's end is a timed change";
  EXPECT_EQ(t.Observed("web-1"), v1::KERNEL_STATE_ACTIVE);
}

TEST(TickIfDueTest, ACrashIsSeenAtTheNextOfferAndRestartedWhenTheBackoffEnds) {
  TrackedAgent t("crash");
  t.BootWithRestartPolicy(1000, 0);
  ASSERT_TRUE(t.host.emu->InjectPanic("web-1").ok());
  EXPECT_TRUE(t.agent->TickIfDue()) << "the kernel's generation moved";
  EXPECT_THAT(t.Reasons("web-1"), Contains("Crashed"));
  while (t.agent->TickIfDue()) {
  }
  t.host.clock.Advance(absl::Milliseconds(100));  // the restart backoff
  EXPECT_TRUE(t.agent->TickIfDue()) << "the restart is due";
  EXPECT_THAT(t.Reasons("web-1"), Contains("Restarted"));
}

TEST(TickIfDueTest, AHungInstanceIsProbedAtItsHeartbeat) {
  TrackedAgent t("hang");
  t.BootWithRestartPolicy(50, 2);
  // A hang changes nothing a read shows; only the probes find it.
  t.HangAndOffer(20);
  EXPECT_THAT(t.Reasons("web-1"), Contains("Hung"));
  EXPECT_THAT(t.Reasons("web-1"), Contains("ForceHalted"));
}

TEST(TickIfDueTest, AnInstanceThatAnsweredIsProbedAgainOnlyAfterItsKernelChanged) {
  // Where the probe's answer follows the kernel's tracked state (the emulator without
  // guests), a probe of an unchanged kernel can only answer as the last one did: a running
  // instance with a failover policy costs nothing between changes, and a hang (a change) is
  // still found at its heartbeat.
  TrackedAgent t("follows", absl::ZeroDuration(), /*probe_follows_kernel=*/true);
  t.BootWithRestartPolicy(50, 2);
  t.host.clock.Advance(absl::Milliseconds(60));
  t.agent->TickIfDue();  // the first probe after the policy came
  const int probed = t.counter->probes.load();
  EXPECT_GE(probed, 1);
  for (int i = 0; i < 20; ++i) {
    t.host.clock.Advance(absl::Milliseconds(50));
    EXPECT_FALSE(t.agent->TickIfDue()) << "pass " << i << ": nothing changed";
  }
  EXPECT_EQ(t.counter->probes.load(), probed);
  t.HangAndOffer(20);
  EXPECT_THAT(t.Reasons("web-1"), Contains("Hung"));
  EXPECT_THAT(t.Reasons("web-1"), Contains("ForceHalted"));
}

TEST(TickIfDueTest, AChangeBeforeTheNextHeartbeatStillBringsTheProbe) {
  // A change that comes before an instance's next heartbeat brings a pass in which that
  // instance is not due yet: it must be probed at its heartbeat all the same, not only at
  // the change after.
  TrackedAgent t("later", absl::ZeroDuration(), /*probe_follows_kernel=*/true);
  t.BootWithRestartPolicy(50, 2);  // probed at once
  const int probed = t.counter->probes.load();
  ASSERT_GE(probed, 1);
  ASSERT_TRUE(t.host.emu->InjectHang("web-1").ok());
  t.host.clock.Advance(absl::Milliseconds(10));
  EXPECT_TRUE(t.agent->TickIfDue()) << "the hang moved the generation";
  EXPECT_EQ(t.counter->probes.load(), probed) << "the heartbeat is not due yet";
  for (int i = 0; i < 30; ++i) {
    t.host.clock.Advance(absl::Milliseconds(10));
    t.agent->TickIfDue();
  }
  EXPECT_THAT(t.Reasons("web-1"), Contains("Hung"));
}

TEST(TickIfDueTest, WithoutTheHintEveryHeartbeatProbes) {
  TrackedAgent t("plain");
  t.BootWithRestartPolicy(50, 2);
  const int before = t.counter->probes.load();
  for (int i = 0; i < 10; ++i) {
    t.host.clock.Advance(absl::Milliseconds(50));
    EXPECT_TRUE(t.agent->TickIfDue()) << "pass " << i;
  }
  EXPECT_GE(t.counter->probes.load() - before, 10);
}

// The watchdog's wiring as mkagent sets it: woken by the agent and by its emulated kernel.
FleetWatchdog::Wire WireAgentsAndKernels(const std::vector<std::unique_ptr<TrackedAgent>>& hosts) {
  return [&hosts](size_t i, std::atomic<bool>* flag) {
    hosts[i]->agent->SetWakeFlag(flag);
    hosts[i]->host.emu->SetWakeFlag(flag);
  };
}

template <typename Done>
bool WaitFor(Done done) {
  for (int i = 0; i < 2000 && !done(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return done();
}

// The hosts' clocks stand still: an agent is passed only when woken (a batch, a change of
// its kernel) or at its time (below).
TEST(FleetWatchdogTest, OneThreadServesEveryAgentAndPassesOnlyThoseWoken) {
  std::vector<std::unique_ptr<TrackedAgent>> hosts;
  std::vector<Agent*> agents;
  for (int i = 0; i < 3; ++i) {
    hosts.push_back(std::make_unique<TrackedAgent>("fw" + std::to_string(i)));
    agents.push_back(hosts.back()->agent.get());
  }
  FleetWatchdog dog(agents, absl::Milliseconds(2), 1, WireAgentsAndKernels(hosts), hosts[0]->host.clock);
  dog.Start();
  ASSERT_TRUE(WaitFor([&] { return dog.passes() >= 3; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  uint64_t idle = dog.passes();
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  EXPECT_EQ(dog.passes(), idle) << "no pass while nothing changes";
  // A batch wakes its agent.
  ASSERT_TRUE(hosts[2]->agent->Execute(BootBatch("web-1", {2, 18}, hosts[2]->host.vmlinux)).ok());
  ASSERT_TRUE(WaitFor([&] { return hosts[2]->Observed("web-1") == v1::KERNEL_STATE_ACTIVE; }));
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // a pass after the batch's own
  // A change the agent did not make (a panic) wakes it through its kernel.
  ASSERT_TRUE(hosts[2]->host.emu->InjectPanic("web-1").ok());
  auto crashed = [&] {
    auto r = hosts[2]->Reasons("web-1");
    return std::find(r.begin(), r.end(), "Crashed") != r.end();
  };
  EXPECT_TRUE(WaitFor(crashed));
  EXPECT_THAT(hosts[2]->Reasons("web-1"), Contains("Crashed"));
  dog.Stop();
}

// A change that comes by itself (a boot ending) wakes nothing: the agent is passed when it
// is due, by the agent's NextDue after its last pass.
TEST(FleetWatchdogTest, ABootEndingByItselfIsSeenWhenItIsDue) {
  std::vector<std::unique_ptr<TrackedAgent>> hosts;
  hosts.push_back(std::make_unique<TrackedAgent>("fwboot", absl::Milliseconds(300)));
  TrackedAgent& t = *hosts[0];
  ASSERT_TRUE(t.agent->Execute(BootBatch("web-1", {2, 18}, t.host.vmlinux)).ok());
  FleetWatchdog dog({t.agent.get()}, absl::Milliseconds(2), 1, WireAgentsAndKernels(hosts), t.host.clock);
  dog.Start();
  ASSERT_TRUE(WaitFor([&] { return t.Observed("web-1") == v1::KERNEL_STATE_ACTIVE; }));
  ASSERT_TRUE(t.host.hk->Halt("web-1", /*force=*/true).ok());
  ASSERT_TRUE(t.host.hk->Start("web-1", /*wait=*/false).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_NE(t.Observed("web-1"), v1::KERNEL_STATE_ACTIVE) << "booting";
  const uint64_t before = dog.passes();
  t.host.clock.Advance(absl::Milliseconds(100));
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(dog.passes(), before) << "nothing is due before the boot ends";
  t.host.clock.Advance(absl::Milliseconds(200));
  EXPECT_TRUE(WaitFor([&] { return t.Observed("web-1") == v1::KERNEL_STATE_ACTIVE; }))
      << "the boot's end is a timed change";
  dog.Stop();
}

}  // namespace
}  // namespace mkfleet::agents
