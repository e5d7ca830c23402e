// The reconcile loop's defects found in review (issue: step 6), each reproduced with real
// processes: mkagent, mkcontroller and mkapply on loopback. Each failed on the tree before
// the fix; the emulated kernels' counters show what ran.
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

using ::testing::HasSubstr;

class LoopProcessTest : public ProcessFleetTest {
 protected:
  std::string SetYaml(const std::string& count) {
    return "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata:\n  name: s\nspec:\n  " + count +
           "\n  template:\n    spec:\n      kernel:\n        image: " + vmlinux_ +
           "\n      resources:\n        cpus: 2\n        memory: 256Mi\n---\n";
  }
  // The instance id of `name` on node-a's agent (0 when it runs nothing of that name).
  uint32_t IdOnAgent(const std::string& name) {
    auto on = OnAgent("node-a");
    auto it = on.find(name);
    return it == on.end() ? 0 : it->second.placement().instance_id();
  }
  bool Condition(const v1::InstanceStatus& st, const std::string& type, v1::ConditionStatus status,
                 const std::string& reason) {
    for (const auto& c : st.conditions()) {
      if (c.type() == type && c.status() == status && c.reason() == reason) return true;
    }
    return false;
  }
};

TEST_F(LoopProcessTest, ADeletedNameAppliedAgainRunsAgain) {
  // Defect 1: the agent replayed h1/k1/g1/create-create from its journal (deletes always
  // used g0, a re-created object restarts at generation 1), so nothing was created and
  // create-load failed on every retry.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  std::string file = Write("a.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a"));
  ASSERT_EQ(Mkapply({"apply", "-f", file}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  ASSERT_EQ(Mkapply({"delete", "ki", "a-1"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").empty(); })) << controller_->Log();
  ASSERT_EQ(Mkapply({"apply", "-f", file}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); }, 20)) << Status("a-1").DebugString();
  // ... and a second delete of the new incarnation deletes it too.
  ASSERT_EQ(Mkapply({"delete", "ki", "a-1"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").empty(); }, 20)) << controller_->Log();
  kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
  EXPECT_EQ(c.creates, 2);
  EXPECT_EQ(c.starts, 2);
  EXPECT_EQ(c.removes, 2);
}

TEST_F(LoopProcessTest, ASecondCrashIsStartedAgainAndAMemberScaledDownTwiceGoesTwice) {
  // Defect 1, its other faces: a second phase-start after a second crash in one
  // generation, and a second scale-down of the same member, were replayed as done.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  std::string ki = InstanceYaml("a-1", "node-a") ;
  ki.insert(ki.find("  resources:"), "  failover: {policy: None}\n");
  ASSERT_EQ(Mkapply({"apply", "-f", Write("a.yaml", HostYaml("node-a") + ki + SetYaml("replicas: 2"))}, &out), 0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}) && OnAgent("node-a").size() == 3; })) << controller_->Log();
  // The number of times the agent saw a-1 crash (its events reach the controller).
  auto crashes = [&] {
    int n = 0;
    for (const v1::Event& e : ControllerEvents()) {
      if (e.name() == "a-1" && e.reason() == "Crashed") n += std::max(1, e.count());
    }
    return n;
  };
  for (int crash = 1; crash <= 2; ++crash) {
    ASSERT_EQ(Mkfault("node-a", {"panic", "--instance", "a-1"}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return crashes() == crash; })) << controller_->Log();
    // Policy None: the watchdog leaves it; the controller starts it again, each time.
    ASSERT_TRUE(Eventually([&] { return OnAgent("node-a")["a-1"].kernel_state() == v1::KERNEL_STATE_ACTIVE; }, 20))
        << "crash " << crash << ": " << Status("a-1").DebugString();
  }
  for (int round = 0; round < 2; ++round) {
    ASSERT_EQ(Mkapply({"apply", "-f", Write("s1.yaml", SetYaml("replicas: 1"))}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 2; }, 20)) << "round " << round;
    ASSERT_EQ(Mkapply({"apply", "-f", Write("s2.yaml", SetYaml("replicas: 2"))}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 3; }, 20)) << "round " << round;
  }
  ASSERT_EQ(Mkapply({"apply", "-f", Write("s1.yaml", SetYaml("replicas: 1"))}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 2; }, 20)) << controller_->Log();
}

TEST_F(LoopProcessTest, AResizeThatDoesNotFitKeepsTheInstanceRunning) {
  // Defect 2: from 6 CPUs to more than the host has, the controller halted, unloaded and
  // removed it, then said Unschedulable.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("a.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a", "cpus: 6"))}, &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  uint32_t id = IdOnAgent("a-1");
  // 20 whole cores: the host lends 15.
  std::string big = Write("big.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a", "cpus: 40"));
  EXPECT_EQ(Mkapply({"diff", "-f", big}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("resize of a-1 cannot be met; it keeps running as it is"));
  ASSERT_EQ(Mkapply({"apply", "-f", big}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return Condition(Status("a-1"), "Resized", v1::CONDITION_FALSE, "Infeasible"); }))
      << Status("a-1").DebugString();
  EXPECT_THAT(Status("a-1").DebugString(), HasSubstr("needs 20 whole cores"));
  EXPECT_EQ(Status("a-1").phase(), "Running");
  EXPECT_EQ(IdOnAgent("a-1"), id);
  EXPECT_EQ(OnAgent("node-a")["a-1"].kernel_state(), v1::KERNEL_STATE_ACTIVE);
  kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
  EXPECT_EQ(c.halts, 0);
  EXPECT_EQ(c.removes, 0);
}

TEST_F(LoopProcessTest, AChangeThatNeedsARecreateSaysSoAndIsCarriedOut) {
  // Defect 2: `diff` and `--dry-run` only said "configured" for a change that takes a running
  // kernel down. Moving an instance to another NUMA node is a re-create (a kernel onlines
  // only CPUs of the nodes it was created on): both say so first.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f",
                     Write("a.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a", "cpus: 2\n    numaNodes: [0]"))},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  std::string moved =
      Write("moved.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a", "cpus: 2\n    numaNodes: [1]"));
  EXPECT_EQ(Mkapply({"diff", "-f", moved}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("would re-create a-1 on node-a: its CPUs move onto NUMA node 1")) << out;
  ASSERT_EQ(Mkapply({"apply", "--dry-run", "-f", moved}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("would re-create a-1 on node-a")) << out;
  EXPECT_EQ(OnAgent("node-a")["a-1"].placement().numa_nodes(0), 0u);  // the dry run changed nothing
  ASSERT_EQ(Mkapply({"apply", "-f", moved}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    auto on = OnAgent("node-a");
    return AllRunning({"a-1"}) && on.count("a-1") && on["a-1"].placement().numa_nodes_size() == 1 &&
           on["a-1"].placement().numa_nodes(0) == 1;
  })) << controller_->Log();
  kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
  EXPECT_EQ(c.creates, 2);
  EXPECT_EQ(c.halts, 1);
  EXPECT_EQ(c.removes, 1);
}

TEST_F(LoopProcessTest, DeletingByFileAfterAControllerRestartDeletesTheKernels) {
  // Defect 3: after a controller restart `delete -f` said deleted and sent nothing (the
  // Host went with its instances, and with it the connection).
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  std::string file = Write("a.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a"));
  ASSERT_EQ(Mkapply({"apply", "-f", file}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  controller_->Kill(SIGTERM);
  StartController();
  ASSERT_EQ(Mkapply({"delete", "-f", file}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").empty(); }, 20)) << controller_->Log();
  // The Host goes once its kernels have.
  ASSERT_TRUE(Eventually([&] { return Mkapply({"get", "hosts"}, &out) == 0 && out.find("node-a") == std::string::npos; }))
      << out;
}

TEST_F(LoopProcessTest, DeletingAHostDeletesItsSetMembersFirst) {
  // Defect 3: deleting a Host with set members on it left them running.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("a.yaml", HostYaml("node-a") + SetYaml("perHost: 2"))}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 2 && AllRunning({"s-node-a-0", "s-node-a-1"}); }))
      << controller_->Log();
  ASSERT_EQ(Mkapply({"delete", "host", "node-a"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("terminating"));
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").empty(); }, 20)) << controller_->Log();
  ASSERT_TRUE(Eventually([&] { return Mkapply({"get", "hosts"}, &out) == 0 && out.find("node-a") == std::string::npos; }))
      << out;
}

TEST_F(LoopProcessTest, OneFailingInstanceDoesNotHoldUpItsHost) {
  // Defect 5: every other instance's actions came back "not run: an earlier action of
  // the batch failed", and describe did not say which.
  StartAgent("node-a", "0ms");
  StartController();
  std::string out;
  std::string bad = InstanceYaml("a-1", "node-a");
  bad.replace(bad.find(vmlinux_), vmlinux_.size(), "/nonexistent/vmlinux");
  ASSERT_EQ(Mkapply({"apply", "-f", Write("a.yaml", HostYaml("node-a") + bad + InstanceYaml("a-2", "node-a"))}, &out), 0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-2"}); }, 20)) << Status("a-2").DebugString();
  ASSERT_TRUE(Eventually([&] { return Status("a-1").phase() == "Failed"; })) << Status("a-1").DebugString();
  ASSERT_EQ(Mkapply({"describe", "instance", "a-1"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("/nonexistent/vmlinux"));
  EXPECT_THAT(out, HasSubstr("create-load"));
}

}  // namespace
}  // namespace mkfleet
