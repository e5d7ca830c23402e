#include "agents/agent.h"

#include "agents/testing/agent_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::Contains;
using ::testing::HasSubstr;

class AgentTest : public ::testing::Test {
 protected:
  AgentTest() {
    probe_ = NewEmulatorProbe(*host_.emu);
    AgentOptions o;
    o.host = "exec";
    o.state_dir = (host_.dir / "agent").string();
    o.max_restarts = 2;
    agent_ = std::make_unique<Agent>(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
  }

  // Creates, loads and starts `name` on `cpus`, with `device` if given.
  void Boot(const std::string& name, std::vector<uint32_t> cpus, const std::string& device = "") {
    v1::ExecuteResponse response = agent_->Execute(BootBatch(name, cpus, host_.vmlinux, device));
    for (const auto& r : response.results()) ASSERT_EQ(r.code(), 0) << r.message();
  }

  void Policy(const std::string& name, v1::FailoverPolicy policy, const std::string& standby = "") {
    v1::SetPolicyRequest req;
    v1::LocalPolicy* p = req.add_policies();
    p->set_instance(name);
    p->mutable_failover()->set_policy(policy);
    p->mutable_failover()->mutable_heartbeat()->set_interval(50);
    p->mutable_failover()->mutable_heartbeat()->set_misses(3);
    p->set_standby_instance(standby);
    ASSERT_TRUE(agent_->SetPolicy(req).ok());
  }

  std::vector<std::string> Reasons(const std::string& name) {
    std::vector<std::string> out;
    for (const auto& e : agent_->Events()) {
      if (e.name() == name) out.push_back(e.reason());
    }
    return out;
  }

  void TickFor(absl::Duration d, absl::Duration step = absl::Milliseconds(10)) {
    for (absl::Duration t; t < d; t += step) {
      agent_->Tick();
      host_.clock.Advance(step);
    }
  }

  TestHost host_{"agent"};
  std::unique_ptr<LivenessProbe> probe_;
  std::unique_ptr<Agent> agent_;
};

TEST_F(AgentTest, PanicIsRestartedAfterBackoff) {
  Boot("web-1", {2, 18});
  Policy("web-1", v1::FAILOVER_RESTART);
  agent_->Tick();
  ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
  agent_->Tick();
  EXPECT_THAT(Reasons("web-1"), Contains("Crashed"));
  EXPECT_THAT(Reasons("web-1"), Contains("RestartScheduled"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_LOADED);
  TickFor(absl::Milliseconds(120));
  EXPECT_THAT(Reasons("web-1"), Contains("Restarted"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(agent_->Snapshot().instances(0).status().restart_count(), 1u);
}

TEST_F(AgentTest, HangIsForceHaltedAndRestarted) {
  Boot("web-1", {2, 18});
  Policy("web-1", v1::FAILOVER_RESTART);
  agent_->Tick();
  ASSERT_TRUE(host_.emu->InjectHang("web-1").ok());
  TickFor(absl::Milliseconds(160));  // three 50 ms heartbeats missed
  EXPECT_THAT(Reasons("web-1"), Contains("Hung"));
  EXPECT_THAT(Reasons("web-1"), Contains("ForceHalted"));
  TickFor(absl::Milliseconds(120));
  EXPECT_THAT(Reasons("web-1"), Contains("Restarted"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_TRUE(host_.emu->Probe("web-1"));
  EXPECT_EQ(host_.emu->counters().force_halts, 1);
}

TEST_F(AgentTest, CrashLoopGivesUpWithBackoff) {
  Boot("web-1", {2, 18});
  Policy("web-1", v1::FAILOVER_RESTART);
  agent_->Tick();
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
    TickFor(absl::Milliseconds(500));
  }
  EXPECT_THAT(Reasons("web-1"), Contains("CrashLoop"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_LOADED);  // left down
  EXPECT_EQ(host_.emu->counters().starts, 1 + 2);                    // boot + 2 restarts
  v1::HostState s = agent_->Snapshot();
  ASSERT_EQ(s.instances(0).status().conditions_size(), 1);
  EXPECT_EQ(s.instances(0).status().conditions(0).reason(), "CrashLoop");
}

TEST_F(AgentTest, StandbyTakesOverTheDevices) {
  Boot("web-1", {2, 18}, "0000:04:00.0");
  Boot("web-1-standby", {3, 19});
  Policy("web-1", v1::FAILOVER_STANDBY, "web-1-standby");
  agent_->Tick();
  ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
  agent_->Tick();
  EXPECT_THAT(Reasons("web-1"), Contains("StandbyTakeover"));
  // In the kernel: the standby holds the device, the failed one has none.
  auto obs = host_.hk->Observe();
  for (const auto& in : obs->instances) {
    if (in.name == "web-1-standby") {
      ASSERT_EQ(in.resources.devices.size(), 1u);
      EXPECT_EQ(in.resources.devices[0].pci_id, "0000:04:00.0");
    } else {
      EXPECT_TRUE(in.resources.devices.empty());
    }
  }
  agent_->Tick();
  EXPECT_THAT(Reasons("web-1"), Contains("Restarted"));  // back as the new standby
  v1::HostState s = agent_->Snapshot();
  for (const auto& in : s.instances()) {
    EXPECT_EQ(in.status().role(), in.name() == "web-1" ? "standby" : "primary") << in.name();
  }
  // A crash of the new primary moves the devices back.
  ASSERT_TRUE(host_.emu->InjectPanic("web-1-standby").ok());
  agent_->Tick();
  EXPECT_THAT(Reasons("web-1-standby"), Contains("StandbyTakeover"));
  auto again = host_.hk->Observe();
  ASSERT_TRUE(again.ok());
  for (const auto& in : again->instances) {
    if (in.name == "web-1") {
      EXPECT_EQ(in.resources.devices.size(), 1u);
    }
  }
}

TEST_F(AgentTest, WatchGivesChangesWithIncreasingVersions) {
  v1::HostState first = agent_->Snapshot();
  EXPECT_TRUE(first.snapshot());
  EXPECT_EQ(first.instances_size(), 0);
  Boot("web-1", {2, 18});
  agent_->Tick();  // the watchdog's pass rebuilds the state
  v1::HostState changes;
  ASSERT_TRUE(agent_->WaitForChange(first.resource_version(), absl::ZeroDuration(), &changes));
  EXPECT_GT(changes.resource_version(), first.resource_version());
  ASSERT_EQ(changes.instances_size(), 1);
  EXPECT_EQ(changes.instances(0).status().kernel_state(), v1::KERNEL_STATE_ACTIVE);
  // Nothing new: times out.
  v1::HostState none;
  EXPECT_FALSE(agent_->WaitForChange(changes.resource_version(), absl::Milliseconds(1), &none));
}

TEST_F(AgentTest, PoliciesPersistAndBadOnesAreRejected) {
  Policy("web-1", v1::FAILOVER_RESTART);
  v1::SetPolicyRequest bad;
  bad.add_policies()->mutable_failover()->set_policy(v1::FAILOVER_STANDBY);
  bad.mutable_policies(0)->set_instance("x");
  EXPECT_EQ(agent_->SetPolicy(bad).message(), "policy for x: Standby needs standby_instance");
  EXPECT_TRUE(std::filesystem::exists(host_.dir / "agent" / "policies.pb"));
}

TEST_F(AgentTest, AdoptsWhatAlreadyRuns) {
  Boot("web-1", {2, 18});
  AgentOptions o;
  o.host = "exec";
  Agent second(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
  std::vector<std::string> adopted;
  for (const auto& e : second.Events()) adopted.push_back(e.reason());
  EXPECT_THAT(adopted, Contains("Adopted"));
  EXPECT_EQ(second.Snapshot().instances(0).status().kernel_state(), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(host_.emu->counters().starts, 1);  // not disturbed
}

}  // namespace
}  // namespace mkfleet::agents
