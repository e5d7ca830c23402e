// Faults with real processes (mkagent, mkcontroller, mkapply, mkfault) on loopback: the
// controller or an agent SIGKILLed in the middle of work and restarted, an agent out of
// reach while the others converge, a bad manifest set, and a kernel answering EBUSY. Each
// test checks the final state and that no kernel operation ran twice: the emulated
// kernel's counters (kept in its state file) are read once the agent has stopped.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "planner/topology_source.h"
#include "tests/fleet_fixture.h"
#include "tests/fleet_util.h"
#include "tests/process_util.h"

namespace mkfleet {
namespace {

using ::testing::HasSubstr;


using FaultProcessTest = ProcessFleetTest;

TEST_F(FaultProcessTest, ControllerKilledMidApplyResumesAndRunsNothingTwice) {
  StartAgent("node-a", "400ms");
  StartController();
  ApplyThreeAndWaitForTheFirst();
  controller_->Kill(SIGKILL);
  EXPECT_LT(OnAgent("node-a").size() + 0u, 4u);
  StartController();
  ExpectThreeRunningOnceEach();
}

TEST_F(FaultProcessTest, AgentKilledMidBatchConvergesAndRunsNothingTwice) {
  StartAgent("node-a", "400ms");
  StartController();
  ApplyThreeAndWaitForTheFirst();
  agents_["node-a"].process->Kill(SIGKILL);
  StartAgent("node-a", "400ms");
  ExpectThreeRunningOnceEach();
}

TEST_F(FaultProcessTest, UnreachableAgentLeavesOthersConvergingAndConvergesWhenBack) {
  StartAgent("node-a", "0ms");
  StartAgent("node-b", "0ms");
  StartController();
  std::string out;
  std::string hosts = HostYaml("node-a") + HostYaml("node-b");
  ASSERT_EQ(Mkapply({"apply", "-f", Write("hosts.yaml", hosts)}, &out), 0) << out;
  // node-b goes away after it connected once.
  ASSERT_TRUE(Eventually([&] {
    grpc::ClientContext ctx;
    v1::StatsResponse s;
    return stub_->Stats(&ctx, v1::StatsRequest(), &s).ok() && s.hosts_connected() == 2;
  }));
  agents_["node-b"].process->Kill(SIGKILL);
  ASSERT_EQ(Mkapply({"apply", "-f",
                     Write("fleet.yaml", hosts + InstanceYaml("a-1", "node-a") + InstanceYaml("b-1", "node-b"))},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  EXPECT_NE(Status("b-1").phase(), "Running");
  ASSERT_TRUE(Eventually([&] {
    return Mkapply({"get", "hosts"}, &out) == 0 && out.find("node-b  no") != std::string::npos;
  }));
  StartAgent("node-b", "0ms");
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1", "b-1"}); })) << controller_->Log();
  ExpectNoRepeatedActions();
  EXPECT_EQ(StopAndCount("node-a").creates, 1);
  EXPECT_EQ(StopAndCount("node-b").creates, 1);
}

TEST_F(FaultProcessTest, BadManifestSetStoresNothingAndRunsNothing) {
  StartAgent("node-a", "0ms");
  StartController();
  fs::create_directories(dir_ / "set");
  Write("set/good.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a"));
  Write("set/bad.yaml", InstanceYaml("a-2", "node-a") + "apiVersion: mkfleet.io/v1\nkind: KernelInstance\n"
                                                        "metadata: {name: Bad_Name}\nspec: {host: node-a}\n");
  std::string out;
  EXPECT_EQ(Mkapply({"apply", "-f", (dir_ / "set").string()}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("bad.yaml"));
  EXPECT_THAT(out, HasSubstr("nothing was changed"));
  EXPECT_EQ(Mkapply({"get", "instances"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("no KernelInstance objects"));
  EXPECT_EQ(Mkapply({"get", "hosts"}, &out), 0);
  EXPECT_THAT(out, HasSubstr("no Host objects"));
  // Nothing to wait for: the check is that nothing happens within a resync period.
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  grpc::ClientContext ctx;
  v1::StatsResponse stats;
  ASSERT_TRUE(stub_->Stats(&ctx, v1::StatsRequest(), &stats).ok());
  EXPECT_EQ(stats.actions_sent(), 0);
  EXPECT_TRUE(OnAgent("node-a").empty());
  kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
  EXPECT_EQ(c.overlays + c.failed_overlays, 0);
}

TEST_F(FaultProcessTest, BusyKernelIsDegradedRetriedWithBackoffThenConverges) {
  StartAgent("node-a", "0ms");
  StartController();
  // The instance takes exactly CPUs 4-5; the kernel answers EBUSY for CPU 4 (physical id).
  auto topology = planner::NewSyntheticTopologySource(kTopology, planner::TopologyOptions{})->Load();
  ASSERT_TRUE(topology.ok());
  std::string busy = std::to_string(topology->physical_ids.at(4));
  std::string out;
  ASSERT_EQ(Mkfault("node-a", {"busy", "--resource", busy}, &out), 0) << out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("fleet.yaml", HostYaml("node-a") +
                                                            InstanceYaml("a-1", "node-a", "cpuSet: \"4-5\""))},
                    &out),
            0)
      << out;
  // Degraded, with the kernel's reason.
  ASSERT_TRUE(Eventually([&] {
    v1::InstanceStatus st = Status("a-1");
    for (const auto& c : st.conditions()) {
      if (c.type() == "Degraded" && c.status() == v1::CONDITION_TRUE) return true;
    }
    return false;
  })) << controller_->Log();
  v1::InstanceStatus degraded = Status("a-1");
  bool ebusy = false;
  for (const auto& c : degraded.conditions()) ebusy |= c.message().find("EBUSY") != std::string::npos;
  EXPECT_TRUE(ebusy) << degraded.DebugString();
  // Retried with backoff: over 3 s, a handful of attempts (not hundreds).
  std::this_thread::sleep_for(std::chrono::seconds(3));
  int failures = 0;
  for (const v1::Event& e : ControllerEvents()) {
    // Repeats are folded into one event with a count.
    if (e.reason() == "ActionFailed" && e.message().rfind("create-create", 0) == 0) failures += std::max(1, e.count());
  }
  // Backoff from 5 ms doubling: about 10 attempts in the first 5 s, not one per pass.
  EXPECT_GE(failures, 2);
  EXPECT_LE(failures, 16);
  // The resource frees up: the next retry converges.
  ASSERT_EQ(Mkfault("node-a", {"unbusy", "--resource", busy}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); }, 60)) << controller_->Log();
  kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
  EXPECT_EQ(c.creates, 1);
  EXPECT_EQ(c.starts, 1);
  EXPECT_GE(c.failed_overlays, 2);
}

}  // namespace
}  // namespace mkfleet
