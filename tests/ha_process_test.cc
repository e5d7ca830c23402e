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

// A sharded control plane (--shards 16): eight hosts split over three members, the leader
// plans for all and every member sends to its own; a set placed across shards gets each
// member once. A member killed with SIGKILL: its hosts move to the others once its lease
// expires and get their work; started again, it takes them back. Nothing runs twice, and no
// host ever gets a request of an older epoch after a newer one.
class ShardedProcessTest : public HaProcessTest {
 protected:
  void SetUp() override {
    HaProcessTest::SetUp();
    shards_ = 16;
  }
};

TEST_F(ShardedProcessTest, HostsAreSplitAndAKilledMembersHostsMoveToTheOthers) {
  std::vector<std::string> hosts;
  for (char c = 'a'; c <= 'h'; ++c) hosts.push_back(std::string("node-") + c);
  std::string yaml;
  for (const std::string& h : hosts) StartAgent(h, "100ms");
  for (const std::string& h : hosts) {
    std::string host = HostYaml(h);
    host.insert(host.find("\nspec:"), "\n  labels: {role: edge}");
    yaml += host + InstanceYaml("x-" + h.substr(5) + "-1", h);
  }
  // A set of 4 over all eight hosts: the leader alone places it.
  yaml += "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata:\n  name: web\nspec:\n  hostSelector: {matchLabels: {role: edge}}\n"
          "  replicas: 4\n  template:\n    spec:\n      kernel:\n        image: " + vmlinux_ +
          "\n      resources:\n        cpus: 2\n        memory: 512Mi\n";
  StartController();
  // The leader knows the three members (else it may send everything itself first).
  ASSERT_TRUE(Eventually([&] { return Controllers(leader_index_).members_size() == kMembers; }, 30));
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("fleet.yaml", yaml)}, &out), 0) << out;
  std::vector<std::string> first;
  for (const std::string& h : hosts) first.push_back("x-" + h.substr(5) + "-1");
  ASSERT_TRUE(Eventually([&] { return AllRunning(first); }, 60)) << controller_->Log();

  // Every member sees the same split; every host has one owner.
  v1::ControllersResponse r = Controllers((leader_index_ + 1) % kMembers);
  EXPECT_EQ(r.mode(), "sharded");
  EXPECT_EQ(r.shards(), 16);
  ASSERT_EQ(r.members_size(), 3);
  std::map<std::string, int> owner;  // host -> member index
  for (const v1::ControllerMember& m : r.members()) {
    for (const std::string& h : m.host_names()) EXPECT_TRUE(owner.emplace(h, m.name()[1] - '0').second) << h;
    EXPECT_EQ(m.hosts(), m.host_names_size());
  }
  ASSERT_EQ(owner.size(), hosts.size());
  // The members that own hosts sent to them (not only the leader).
  int victim = -1;
  for (int i = 0; i < kMembers; ++i) {
    int owned = 0;
    for (const auto& [h, o] : owner) owned += o == i;
    if (owned > 0) EXPECT_GT(MemberStats(i).actions_sent(), 0) << "c" << i << " owns " << owned << " hosts";
    if (owned == 0) EXPECT_EQ(MemberStats(i).actions_sent(), 0) << "c" << i << " owns no host";
    if (i != leader_index_ && owned > 0 && victim < 0) victim = i;
  }
  ASSERT_GE(victim, 0) << "no member but the leader owns a host";
  ASSERT_EQ(Mkapply({"get", "controllers"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("16 shards over 3 members"));
  EXPECT_THAT(out, ::testing::ContainsRegex("c" + std::to_string(victim) + " +127.0.0.1:[0-9]+ +member"));
  // The set: exactly 4 members, wherever the leader put them.
  ASSERT_TRUE(Eventually([&] {
    int running = 0;
    for (const std::string& h : hosts) {
      for (const auto& [name, st] : OnAgent(h)) running += name.rfind("web-", 0) == 0 && st.kernel_state() == v1::KERNEL_STATE_ACTIVE;
    }
    return running == 4;
  }, 60)) << controller_->Log();

  // Kill a member that owns hosts; a change for every host right away.
  const auto killed = std::chrono::system_clock::now();
  members_[victim]->Kill(SIGKILL);
  yaml.clear();
  std::vector<std::string> second;
  for (const std::string& h : hosts) {
    second.push_back("x-" + h.substr(5) + "-2");
    yaml += InstanceYaml(second.back(), h);
  }
  ASSERT_EQ(Mkapply({"apply", "-f", Write("more.yaml", yaml)}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning(second); }, 60)) << controller_->Log();
  // Its hosts moved, within the lease (3 s) and a round or two.
  int64_t moved_ms = -1;
  for (const auto& [host, requests] : ReceivedRequests()) {
    if (owner[host] != victim) continue;
    const int64_t t = std::chrono::duration_cast<std::chrono::milliseconds>(killed.time_since_epoch()).count();
    int64_t first_after = -1;
    for (const Request& q : requests) {
      if (q.unix_ms >= t && first_after < 0) first_after = q.unix_ms - t;
    }
    EXPECT_GE(first_after, 0) << host << " got nothing after its owner died";
    moved_ms = std::max(moved_ms, first_after);
  }
  std::cout << "sharded: the killed member's hosts got their first request " << moved_ms << " ms after SIGKILL\n";
  EXPECT_LT(moved_ms, 3000 + 3000);
  r = Controllers(leader_index_);
  EXPECT_EQ(r.members_size(), 2);
  int total = 0;
  for (const v1::ControllerMember& m : r.members()) total += m.hosts();
  EXPECT_EQ(total, static_cast<int>(hosts.size()));
  // It comes back (its supervisor): it takes its shards back a lease after it sees the
  // list, from members that are alive, and sends them the next change.
  StartMember(victim);
  ASSERT_TRUE(Eventually([&] { return Controllers(leader_index_).members_size() == kMembers; }, 30));
  const int64_t before = MemberStats(victim).actions_sent();
  yaml.clear();
  std::vector<std::string> third;
  for (const std::string& h : hosts) {
    third.push_back("x-" + h.substr(5) + "-3");
    yaml += InstanceYaml(third.back(), h, "cpus: 1");
  }
  ASSERT_EQ(Mkapply({"apply", "-f", Write("third.yaml", yaml)}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning(third); }, 60)) << controller_->Log() << members_[victim]->Log();
  EXPECT_GT(MemberStats(victim).actions_sent(), before) << "the member that came back sends to its hosts again";
  ExpectNoRepeatedActions();
  ExpectNoSplitBrain();
  for (const std::string& h : hosts) {
    kernel::EmulatedKernel::Counters c = StopAndCount(h);
    EXPECT_EQ(c.removes, 0) << h;
    EXPECT_EQ(c.creates, c.starts) << h;
  }
}

}  // namespace
}  // namespace mkfleet
