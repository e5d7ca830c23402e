// A highly available control plane with real processes: a three-member etcd, three
// `mkcontroller --ha` (lease 3 s), mkagents that log every request they receive. The
// leader SIGKILLed mid-apply: another takes over within the lease and finishes with every
// kernel operation done once. The leader cut off from etcd (its etcd member stopped):
// it steps down and exits before its lease can expire, another leads, and no agent ever
// receives a request of an older leader after one of a newer (the agents' request logs).
// Followers serve reads and applies and name the leader for what only it does.
#include <signal.h>

#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

class HaProcessTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    ha_ = true;
  }
};

TEST_F(HaProcessTest, TheLeaderKilledMidApplyIsReplacedAndNothingRunsTwice) {
  StartAgent("node-a", "400ms");
  StartController();
  const int first = leader_index_;
  // Every member sees the same control plane.
  v1::ControllersResponse r = Controllers((first + 1) % kMembers);
  EXPECT_EQ(r.mode(), "ha");
  EXPECT_EQ(r.leader(), "c" + std::to_string(first));
  EXPECT_EQ(r.members_size(), 3);
  ApplyThreeAndWaitForTheFirst();
  auto killed = std::chrono::system_clock::now();
  controller_->Kill(SIGKILL);
  StartController();
  EXPECT_NE(leader_index_, first);
  ExpectThreeRunningOnceEach();
  ExpectNoSplitBrain();
  const int64_t failover_ms = FirstRequestAfter(killed);
  std::cout << "failover: " << failover_ms << " ms from SIGKILL to the next request an agent received\n";
  EXPECT_GE(failover_ms, 0);
  EXPECT_LT(failover_ms, 3000 + 2000);  // the lease, and a round to notice
  // mkapply get controllers, from a follower: the new leader and three members.
  std::string out;
  controller_port_ = member_ports_[first];  // the restarted former leader, a follower now
  ASSERT_EQ(Mkapply({"get", "controllers"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("c" + std::to_string(leader_index_)));
  EXPECT_THAT(out, ::testing::ContainsRegex("c" + std::to_string(leader_index_) + " +127.0.0.1:[0-9]+ +leader"));
  EXPECT_THAT(out, ::testing::ContainsRegex("c" + std::to_string(first) + " +127.0.0.1:[0-9]+ +follower"));
}

TEST_F(HaProcessTest, ALeaderCutOffFromEtcdStepsDownBeforeItsLeaseExpires) {
  StartAgent("node-a", "400ms");
  StartController();
  const int first = leader_index_;
  ApplyThreeAndWaitForTheFirst();
  // Cut the leader off: its only etcd member stops answering (the other two keep quorum).
  etcd_->Pause(first);
  // It steps down by itself (lease 3 s, margin 600 ms) and exits for its supervisor.
  ASSERT_TRUE(Eventually([&] { return !controller_->Running(); }, 20)) << controller_->Log();
  EXPECT_THAT(controller_->Log(), ::testing::HasSubstr("steps down as leader"));
  EXPECT_THAT(controller_->Log(), ::testing::HasSubstr("lost the leadership; exiting (status 3)"));
  int leader = -1;
  ASSERT_TRUE(Eventually([&] {
    for (int i = 0; i < kMembers; ++i) {
      if (i == first) continue;
      v1::ControllersResponse r = Controllers(i);
      if (r.leader().size() == 2 && r.leader()[1] - '0' != first) leader = r.leader()[1] - '0';
    }
    return leader >= 0;
  }, 30));
  controller_port_ = member_ports_[leader];
  stub_ = v1::Controller::NewStub(security::TestPki::Channel(
      pki_->admin(), "127.0.0.1:" + std::to_string(controller_port_), security::Identity::Controller()));
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1", "a-2", "a-3"}); }, 30)) << members_[leader]->Log();
  // The new leader acts: a fourth instance.
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("more.yaml", InstanceYaml("a-4", "node-a"))}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-4"}); }, 30)) << members_[leader]->Log();
  etcd_->Resume(first);
  ExpectNoRepeatedActions();
  ExpectNoSplitBrain();
}

TEST_F(HaProcessTest, FollowersServeReadsAndAppliesAndNameTheLeaderForTheRest) {
  StartAgent("node-a", "100ms");
  StartController();
  const int follower = (leader_index_ + 1) % kMembers;
  controller_port_ = member_ports_[follower];
  std::string out;
  // An apply through a follower: the leader reconciles it.
  ASSERT_EQ(Mkapply({"apply", "-f", Write("f.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a"))}, &out), 0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); }, 30)) << controller_->Log();
  ASSERT_EQ(Mkapply({"get", "instances"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("a-1"));
  // A live update verb needs the leader's loop: refused, naming it.
  EXPECT_NE(Mkapply({"morph", "status", "instance", "a-1"}, &out), 0);
  EXPECT_THAT(out, ::testing::HasSubstr("is not the leader: ask c" + std::to_string(leader_index_) + " at 127.0.0.1:" +
                                        std::to_string(member_ports_[leader_index_])));
}

}  // namespace
}  // namespace mkfleet
