#include "reconciler/election.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/testing/cut_store.h"

namespace mkfleet::reconciler {
namespace {

using ::testing::ElementsAre;

class ElectionTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = ::testing::TempDir() + "/election-" +
                       ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    store_ = *OpenSqliteStore(path, clock_);
    for (const char* name : {"a", "b", "c"}) {
      views_.push_back(std::make_unique<CutStore>(*store_));
      ElectionOptions o;
      o.name = name;
      o.address = std::string(name) + ":7100";
      o.ttl = absl::Seconds(5);
      o.log = nullptr;
      o.on_elected = [this, name] { log_.push_back(absl::StrCat(absl::FormatDuration(clock_.Monotonic()), " ", name, " elected")); };
      o.on_lost = [this, name] { log_.push_back(absl::StrCat(absl::FormatDuration(clock_.Monotonic()), " ", name, " lost")); };
      members_.push_back(std::make_unique<Election>(*views_.back(), clock_, o));
    }
  }
  void StepAll() {
    for (size_t i = 0; i < members_.size(); ++i) {
      if (alive_[i]) members_[i]->Step();
    }
  }
  // `d` of rounds of 1 s (ttl/5) for every live member.
  void Run(absl::Duration d) {
    for (absl::Duration t; t < d; t += absl::Seconds(1)) {
      clock_.Advance(absl::Seconds(1));
      StepAll();
    }
  }
  int Leaders() {
    int n = 0;
    for (size_t i = 0; i < members_.size(); ++i) n += alive_[i] && members_[i]->IsLeader();
    return n;
  }

  SimulatedClock clock_;
  std::vector<std::string> log_;  // before the members: they log as they stop
  std::unique_ptr<Store> store_;
  std::vector<std::unique_ptr<CutStore>> views_;
  std::vector<std::unique_ptr<Election>> members_;
  bool alive_[3] = {true, true, true};
};

TEST_F(ElectionTest, OneLeaderAndEveryMemberRegistered) {
  StepAll();
  EXPECT_TRUE(members_[0]->IsLeader());
  EXPECT_FALSE(members_[1]->IsLeader());
  EXPECT_FALSE(members_[2]->IsLeader());
  Run(absl::Seconds(30));  // renewals keep it
  EXPECT_EQ(Leaders(), 1);
  EXPECT_TRUE(members_[0]->IsLeader());
  EXPECT_EQ(members_[2]->Leader(), "a");
  auto members = members_[2]->Members();
  ASSERT_EQ(members.size(), 3u);
  EXPECT_EQ(members[0].name(), "a");
  EXPECT_TRUE(members[0].leader());
  EXPECT_EQ(members[1].address(), "b:7100");
  EXPECT_FALSE(members[1].leader());
  EXPECT_THAT(log_, ElementsAre("0 a elected"));
}

TEST_F(ElectionTest, AKilledLeaderIsReplacedOnceItsLeaseExpires) {
  StepAll();
  ASSERT_TRUE(members_[0]->IsLeader());
  alive_[0] = false;  // kill -9: no more rounds, no resignation
  Run(absl::Seconds(4));
  EXPECT_EQ(Leaders(), 0);  // its lease still runs
  Run(absl::Seconds(2));
  EXPECT_EQ(Leaders(), 1);
  EXPECT_TRUE(members_[1]->IsLeader());
  EXPECT_EQ(members_[2]->Leader(), "b");
  Run(absl::Seconds(1));
  EXPECT_EQ(members_[2]->Members().size(), 2u);  // a's registration went with its lease
  EXPECT_THAT(log_, ElementsAre("0 a elected", "5s b elected"));
}

TEST_F(ElectionTest, APartitionedLeaderStepsDownBeforeItsLeaseCanExpire) {
  StepAll();
  ASSERT_TRUE(members_[0]->IsLeader());
  Run(absl::Seconds(3));
  views_[0]->cut = true;  // a's last renewal was at 3s: its lease runs to 8s
  Run(absl::Seconds(10));
  // a stepped down at 3s + ttl - ttl/5 = 7s; b could only win once the lease expired at 8s.
  EXPECT_THAT(log_, ElementsAre("0 a elected", "7s a lost", "8s b elected"));
  EXPECT_EQ(Leaders(), 1);
  // Back in touch: a finds its lease gone, registers again as a follower.
  views_[0]->cut = false;
  Run(absl::Seconds(3));
  EXPECT_TRUE(members_[1]->IsLeader());
  EXPECT_FALSE(members_[0]->IsLeader());
  EXPECT_EQ(members_[1]->Members().size(), 3u);
}

TEST_F(ElectionTest, ACutOffFollowerIsNoValidMemberBeforeItsLeaseCanExpire) {
  EXPECT_FALSE(members_[1]->MemberValid()) << "not registered yet";
  StepAll();
  EXPECT_TRUE(members_[1]->MemberValid());
  Run(absl::Seconds(3));
  views_[1]->cut = true;  // b renews once a round (1 s): its last renewal was at 3 s
  Run(absl::Seconds(3));
  EXPECT_TRUE(members_[1]->MemberValid()) << "at 6 s, within 3 s + ttl - ttl/5";
  Run(absl::Seconds(1));
  EXPECT_FALSE(members_[1]->MemberValid()) << "at 7 s its lease may expire any moment (8 s)";
  EXPECT_EQ(members_[0]->Members().size(), 3u) << "its registration still stands";
  Run(absl::Seconds(2));
  EXPECT_EQ(members_[0]->Members().size(), 2u) << "gone with its lease";
  views_[1]->cut = false;
  Run(absl::Seconds(3));  // finds the lease gone (invalid meanwhile), registers again, a reads it
  EXPECT_TRUE(members_[1]->MemberValid());
  EXPECT_EQ(members_[0]->Members().size(), 3u);
}

TEST_F(ElectionTest, AStoppedLeaderResignsAtOnce) {
  StepAll();
  ASSERT_TRUE(members_[0]->IsLeader());
  members_[0]->Stop();
  alive_[0] = false;
  StepAll();  // no wait for the lease
  EXPECT_TRUE(members_[1]->IsLeader());
  EXPECT_THAT(log_, ElementsAre("0 a elected", "0 b elected"));  // Stop does not call on_lost
  EXPECT_FALSE(members_[0]->IsLeader());
  EXPECT_EQ(members_[2]->Members().size(), 2u);
}

TEST_F(ElectionTest, AMemberThatDoesNotCampaignNeverLeads) {
  ElectionOptions o;
  o.name = "solo";
  o.campaign = false;
  o.log = nullptr;
  Election e(*store_, clock_, o);
  e.Step();
  clock_.Advance(absl::Seconds(10));
  e.Step();
  EXPECT_FALSE(e.IsLeader());
  EXPECT_EQ(e.Members().size(), 1u);
}

}  // namespace
}  // namespace mkfleet::reconciler
