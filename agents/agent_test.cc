#include "agents/agent.h"

#include <thread>

#include "agents/testing/agent_fixture.h"
#include "common/metrics.h"
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
    v1::ExecuteResponse response = *agent_->Execute(BootBatch(name, cpus, host_.vmlinux, device));
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

using mkfleet::metrics::CollectedForTest;

TEST_F(AgentTest, FailoversAndRestartsAreCountedOncePerFailure) {
  mkfleet::metrics::EnableForTest();
  Boot("web-1", {2, 18}, "0000:04:00.0");
  Boot("web-1-standby", {3, 19});
  Boot("db-1", {4, 20});
  Policy("web-1", v1::FAILOVER_STANDBY, "web-1-standby");
  Policy("db-1", v1::FAILOVER_RESTART);
  agent_->Tick();
  const double failovers = CollectedForTest("mkfleet_agent_failovers_total");
  const double gaps = CollectedForTest("mkfleet_agent_handover_gap_seconds");
  const double restarts = CollectedForTest("mkfleet_agent_restarts_total");
  const double latencies = CollectedForTest("mkfleet_agent_restart_latency_seconds");
  // One panic of a primary: one takeover, and the failed kernel back as the standby.
  ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
  TickFor(absl::Milliseconds(50));
  EXPECT_EQ(CollectedForTest("mkfleet_agent_failovers_total"), failovers + 1);
  EXPECT_EQ(CollectedForTest("mkfleet_agent_handover_gap_seconds"), gaps + 1);
  EXPECT_EQ(CollectedForTest("mkfleet_agent_restarts_total"), restarts + 1);
  // One panic of a kernel restarted in place: one restart, after its backoff.
  ASSERT_TRUE(host_.emu->InjectPanic("db-1").ok());
  TickFor(absl::Milliseconds(300));
  EXPECT_THAT(Reasons("db-1"), Contains("Restarted"));
  EXPECT_EQ(CollectedForTest("mkfleet_agent_failovers_total"), failovers + 1);
  EXPECT_EQ(CollectedForTest("mkfleet_agent_restarts_total"), restarts + 2);
  EXPECT_EQ(CollectedForTest("mkfleet_agent_restart_latency_seconds"), latencies + 2);
  EXPECT_EQ(CollectedForTest("mkfleet_agent_takeover_failures_total"), 0);
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

// Defect (step 7): a corrupt policies.pb was silently replaced by no policies, and a policy
// that could not be written (full disk) was reported as set.
TEST_F(AgentTest, PolicyFileErrorsAreReportedNotHidden) {
  Policy("web-1", v1::FAILOVER_RESTART);
  std::ofstream(host_.dir / "agent" / "policies.pb", std::ios::binary | std::ios::trunc) << "\xff\xff\xff garbage";
  AgentOptions o;
  o.host = "exec";
  o.state_dir = (host_.dir / "agent").string();
  Agent reread(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
  EXPECT_EQ(reread.load_status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(reread.load_status().message(), HasSubstr("policies.pb"));
  EXPECT_TRUE(agent_->load_status().ok());

  // A state "directory" that is a file: every write fails, and SetPolicy says so.
  std::ofstream(host_.dir / "not-a-dir") << "x";
  o.state_dir = (host_.dir / "not-a-dir").string();
  Agent unwritable(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
  v1::SetPolicyRequest req;
  req.add_policies()->set_instance("web-1");
  absl::Status s = unwritable.SetPolicy(req);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(s.message(), HasSubstr("policies.pb"));
}

// Defect (step 7): 6.3 MB of events exceeded gRPC's 4 MiB message limit, so every
// controller that connected marked the host Unreachable. Event messages are cut to 1 KiB:
// the kept events always fit a Watch snapshot.
TEST_F(AgentTest, EventsAlwaysFitOneWatchMessage) {
  for (int i = 0; i < 400; ++i) {
    v1::ActionBatch b;
    v1::Action* a = b.add_actions();
    a->set_id("load-" + std::to_string(i));
    a->set_instance("absent");
    a->mutable_load()->mutable_kernel()->set_image("/" + std::string(4000, 'p'));
    ASSERT_TRUE(agent_->Execute(b).ok());
  }
  v1::HostState snapshot = agent_->Snapshot();
  EXPECT_GT(snapshot.events_size(), 200);
  for (const auto& e : snapshot.events()) EXPECT_LE(e.message().size(), Agent::kMaxEventMessage + 3);
  EXPECT_LT(snapshot.ByteSizeLong(), 1u << 20);
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

TEST_F(AgentTest, InstancesCarryTheirVersionOwnerAndMemoryPerNode) {
  v1::ActionBatch b = BootBatch("web-1", {2, 18}, host_.vmlinux);
  b.mutable_actions(0)->mutable_create()->set_owner("KernelInstance/web-1");
  auto* m = b.mutable_actions(0)->mutable_create()->mutable_placement()->add_memory();
  m->set_node(1);
  m->set_bytes(256ull << 20);
  ASSERT_TRUE(agent_->Execute(b).ok());
  agent_->Tick();
  v1::HostState s = agent_->Snapshot();
  ASSERT_EQ(s.instances_size(), 1);
  const v1::ObservedInstance& in = s.instances(0);
  EXPECT_EQ(in.owner(), "KernelInstance/web-1");
  EXPECT_GT(in.version(), 0);
  EXPECT_LE(in.version(), s.resource_version());
  // Memory per node, not collapsed onto the first (defect: spread memory was reported on
  // node 0 only).
  std::map<uint32_t, uint64_t> mem;
  for (const auto& nb : in.status().placement().memory()) mem[nb.node()] += nb.bytes();
  EXPECT_EQ(mem[0], 512ull << 20);
  EXPECT_EQ(mem[1], 256ull << 20);
  // What a hot-remove could give back: the region on node 1, not the first (the image's).
  EXPECT_TRUE(in.reports_removable_memory());
  ASSERT_EQ(in.removable_memory_size(), 1);
  EXPECT_EQ(in.removable_memory(0).node(), 1u);
  EXPECT_EQ(in.removable_memory(0).bytes(), 256ull << 20);
  // Nothing changed: the version stays; a change moves it.
  agent_->Tick();
  EXPECT_EQ(agent_->Snapshot().instances(0).version(), in.version());
  ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
  agent_->Tick();
  EXPECT_GT(agent_->Snapshot().instances(0).version(), in.version());
}

TEST_F(AgentTest, AWatcherFromAnEarlierRunGetsASnapshot) {
  // Found by the fleet simulation (seed 1821): the agent died right after a remove reached
  // the kernel; its next run never knew that kernel, so a watcher resuming from the first
  // run's version got only what changed, not the removal, and kept the kernel in its view
  // (the controller sent the same delete for ever).
  Boot("web-1", {2, 18});
  Boot("web-2", {3, 19});
  agent_->Tick();
  const int64_t before = agent_->Snapshot().resource_version();
  ASSERT_TRUE(host_.hk->Halt("web-1", false).ok());
  ASSERT_TRUE(host_.hk->Unload("web-1").ok());
  ASSERT_TRUE(host_.hk->Remove("web-1").ok());
  agent_.reset();
  host_.clock.Advance(absl::Seconds(1));
  AgentOptions o;
  o.host = "exec";
  Agent second(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
  v1::HostState changes;
  ASSERT_TRUE(second.WaitForChange(before, absl::ZeroDuration(), &changes));
  EXPECT_TRUE(changes.snapshot()) << "a version from an earlier run resumed as if current";
  ASSERT_EQ(changes.instances_size(), 1);
  EXPECT_EQ(changes.instances(0).name(), "web-2");
}

TEST_F(AgentTest, RemovalsAreRememberedBoundedAndOldWatchersGetASnapshot) {
  int64_t start = agent_->Snapshot().resource_version();
  v1::ActionBatch boot = BootBatch("web-1", {2, 18}, host_.vmlinux);
  // More create/remove cycles than the agent remembers removals for would take long; the
  // bound is checked by a watcher from before every removal getting a snapshot instead.
  ASSERT_TRUE(agent_->Execute(boot).ok());
  agent_->Tick();
  v1::ActionBatch del;
  for (const char* step : {"halt", "unload", "remove"}) {
    v1::Action* a = del.add_actions();
    a->set_id(std::string("d-") + step);
    a->set_instance("web-1");
    if (std::string(step) == "halt") a->mutable_halt();
    if (std::string(step) == "unload") a->mutable_unload();
    if (std::string(step) == "remove") a->mutable_remove();
  }
  ASSERT_TRUE(agent_->Execute(del).ok());
  agent_->Tick();
  v1::HostState changes;
  ASSERT_TRUE(agent_->WaitForChange(start, absl::ZeroDuration(), &changes));
  EXPECT_FALSE(changes.snapshot());
  ASSERT_EQ(changes.removed_size(), 1);
  EXPECT_EQ(changes.removed(0), "web-1");
  EXPECT_EQ(Agent::kMaxRemovals, 4096u);
}

// A slow call on one instance (a halt that takes 5 s) must not hold up crash detection of
// the others. Real time: the watchdog runs on its own thread, as in mkagent.
TEST(AgentWatchdogTest, CrashDetectionDoesNotWaitForASlowHalt) {
  TestHost host("watchdog");
  kernel::EmulatorOptions o = kernel::MachineFromTopology(*host.topology);
  o.clock = &Clock::Real();
  auto emu = std::make_unique<kernel::EmulatedKernel>(o);
  kernel::HostKernelOptions ho;
  ho.host = "w";
  ho.state_dir = (host.dir / "real-state").string();
  ho.clock = &Clock::Real();
  ho.images.dirs = {host.dir.string()};
  kernel::HostKernel hk(*emu, *emu, ho);
  kernel::PoolState pool;
  for (size_t i = 2; i < o.cpus.size(); ++i) pool.cpus.push_back(o.cpus[i]);
  for (const auto& m : o.memory) pool.memory.push_back({0, 8ull << 30, m.numa});
  ASSERT_TRUE(hk.SetPool(pool).ok());
  auto probe = NewEmulatorProbe(*emu);
  AgentOptions ao;
  ao.host = "w";
  ao.poll_interval = absl::Milliseconds(10);
  Agent agent(ao, hk, host.topology, *host.journal, *probe, Clock::Real());
  ASSERT_TRUE(agent.Execute(BootBatch("slow", {2, 18}, host.vmlinux)).ok());
  ASSERT_TRUE(agent.Execute(BootBatch("other", {3, 19}, host.vmlinux)).ok());
  v1::SetPolicyRequest policy;
  policy.add_policies()->set_instance("other");
  ASSERT_TRUE(agent.SetPolicy(policy).ok());
  agent.Start();
  ASSERT_TRUE(emu->SetHaltBehavior("slow", absl::Seconds(5), false).ok());
  absl::Time begun = absl::Now();
  std::thread halter([&] {
    v1::ActionBatch halt;
    v1::Action* a = halt.add_actions();
    a->set_id("slow-halt");
    a->set_instance("slow");
    a->mutable_halt();
    agent.Execute(halt).IgnoreError();
  });
  absl::SleepFor(absl::Milliseconds(100));
  ASSERT_TRUE(emu->InjectPanic("other").ok());
  bool seen = false;
  absl::Duration took;
  while (absl::Now() - begun < absl::Seconds(8)) {
    for (const auto& e : agent.Events()) seen |= e.name() == "other" && e.reason() == "Crashed";
    if (seen) {
      took = absl::Now() - begun;
      break;
    }
    absl::SleepFor(absl::Milliseconds(5));
  }
  halter.join();
  agent.Stop();
  ASSERT_TRUE(seen);
  // Well before the 5 s halt is over.
  EXPECT_LT(took, absl::Seconds(3)) << took;
}

}  // namespace
}  // namespace mkfleet::agents
