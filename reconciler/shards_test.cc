#include "reconciler/shards.h"

#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

std::map<std::string, int> Count(const std::vector<std::string>& owner) {
  std::map<std::string, int> n;
  for (const std::string& o : owner) ++n[o];
  return n;
}

TEST(AssignShardsTest, EveryShardHasOneLiveOwnerWhateverTheOrderOfTheMembers) {
  auto a = AssignShards({"ctl-a", "ctl-b", "ctl-c"}, 256);
  auto b = AssignShards({"ctl-c", "ctl-a", "ctl-b"}, 256);
  EXPECT_EQ(a, b);
  for (const std::string& o : a) EXPECT_THAT(o, ::testing::AnyOf("ctl-a", "ctl-b", "ctl-c"));
  // Consistent hashing with 64 points per member: no member gets under half or over twice
  // its fair share of 256 shards.
  for (const auto& [member, n] : Count(a)) {
    EXPECT_GT(n, 256 / 3 / 2) << member;
    EXPECT_LT(n, 256 / 3 * 2) << member;
  }
  EXPECT_EQ(Count(a).size(), 3u);
  EXPECT_THAT(AssignShards({}, 4), ::testing::ElementsAre("", "", "", ""));
}

TEST(AssignShardsTest, OnlyTheShardsOfAMemberThatLeavesOrJoinsMove) {
  const auto three = AssignShards({"a", "b", "c"}, 512);
  const auto two = AssignShards({"a", "c"}, 512);
  int moved = 0;
  for (int s = 0; s < 512; ++s) {
    if (three[s] != "b") {
      EXPECT_EQ(two[s], three[s]) << "shard " << s << " moved though its owner stayed";
    } else {
      ++moved;
    }
  }
  EXPECT_GT(moved, 0);
  // A fourth member takes shards only for itself.
  const auto four = AssignShards({"a", "b", "c", "d"}, 512);
  for (int s = 0; s < 512; ++s) {
    if (four[s] != "d") {
      EXPECT_EQ(four[s], three[s]) << "shard " << s;
    }
  }
}

TEST(ShardOfTest, StableAndSpreadOverTheShards) {
  // The same host, the same shard (a restarted controller must agree with the others).
  EXPECT_EQ(ShardOf("node-0001", 64), ShardOf("node-0001", 64));
  EXPECT_EQ(ShardOf("node-a", 1), 0);
  std::map<int, int> per_shard;
  for (int i = 0; i < 6400; ++i) ++per_shard[ShardOf(absl::StrCat("node-", i), 64)];
  EXPECT_EQ(per_shard.size(), 64u);
  for (const auto& [shard, n] : per_shard) {
    EXPECT_GT(n, 50) << shard;
    EXPECT_LT(n, 150) << shard;
  }
}

TEST(ShardMapTest, HostsOfADeadMemberAreUsedAtOnceThoseOfALiveOneAfterTheHandover) {
  SimulatedClock clock;
  bool valid = true;
  ShardMap a("a", 64, clock, absl::Seconds(1), [&] { return valid; });
  EXPECT_FALSE(a.Owns("node-1")) << "no member list yet: nothing is owned";
  EXPECT_TRUE(a.SetMembers({"a", "b"}));
  std::vector<std::string> of_a, of_b;
  for (int i = 0; i < 200; ++i) {
    std::string h = absl::StrCat("node-", i);
    (a.OwnerOf(h) == "a" ? of_a : of_b).push_back(h);
    EXPECT_FALSE(a.Owns(h)) << h << ": a's first list; b may have had it";
  }
  clock.Advance(absl::Seconds(1));
  for (int i = 0; i < 200; ++i) {
    std::string h = absl::StrCat("node-", i);
    EXPECT_EQ(a.Owns(h), a.OwnerOf(h) == "a") << h << " after the handover";
  }
  ShardMap alone("a", 64, clock, absl::Seconds(1));
  alone.SetMembers({"a"});
  EXPECT_TRUE(alone.Owns("node-1")) << "alone on its first list: nobody to hand over from";
  ASSERT_FALSE(of_b.empty());
  // b dies (its lease expired): its hosts are a's at once.
  EXPECT_TRUE(a.SetMembers({"a"}));
  for (const std::string& h : of_b) EXPECT_TRUE(a.Owns(h)) << h;
  // b is back: the hosts it takes, a gives up at once.
  EXPECT_TRUE(a.SetMembers({"a", "b"}));
  for (const std::string& h : of_b) EXPECT_FALSE(a.Owns(h)) << h;
  EXPECT_FALSE(a.SetMembers({"b", "a"})) << "the same list in another order changes nothing";

  // b's view: a's hosts taken while a is alive wait for the handover.
  ShardMap b("b", 64, clock, absl::Seconds(1));
  b.SetMembers({"b"});
  b.SetMembers({"a", "b"});
  b.SetMembers({"b"});  // a died
  for (const std::string& h : of_a) EXPECT_TRUE(b.Owns(h)) << h;
  EXPECT_THAT(b.members(), ::testing::ElementsAre("b"));

  // Taken from a live member: used only after the handover.
  ShardMap d("d", 64, clock, absl::Seconds(1));
  d.SetMembers({"a", "b"});
  EXPECT_TRUE(d.SetMembers({"a", "b", "d"}));
  std::vector<std::string> of_d;
  for (int i = 0; i < 200; ++i) {
    std::string h = absl::StrCat("node-", i);
    if (d.Assigned(h)) of_d.push_back(h);
  }
  ASSERT_FALSE(of_d.empty());
  for (const std::string& h : of_d) EXPECT_FALSE(d.Owns(h)) << h << " before the handover";
  clock.Advance(absl::Seconds(1));
  for (const std::string& h : of_d) EXPECT_TRUE(d.Owns(h)) << h << " after the handover";

  // A member whose registration lapsed (a new lease of its own): the others may have taken
  // its shards meanwhile; it takes them back after the handover.
  ShardMap e("a", 64, clock, absl::Seconds(1));
  e.SetMembers({"a", "b"}, 7);
  clock.Advance(absl::Seconds(1));
  ASSERT_FALSE(of_a.empty());
  EXPECT_TRUE(e.Owns(of_a[0]));
  EXPECT_FALSE(e.SetMembers({"a", "b"}, 7));
  EXPECT_TRUE(e.Owns(of_a[0]));
  EXPECT_TRUE(e.SetMembers({"a", "b"}, 9));
  for (const std::string& h : of_a) EXPECT_FALSE(e.Owns(h)) << h << " right after a's registration lapsed";
  clock.Advance(absl::Seconds(1));
  for (const std::string& h : of_a) EXPECT_TRUE(e.Owns(h)) << h;

  // A member whose registration lapsed owns nothing until it is valid again.
  valid = false;
  for (const std::string& h : of_a) EXPECT_FALSE(a.Owns(h)) << h;
  valid = true;
  for (const std::string& h : of_a) EXPECT_TRUE(a.Owns(h)) << h;
}

TEST(ShardMapTest, TheElectionsListGivesTheNamesAndThisMembersLease) {
  SimulatedClock clock;
  auto member = [](const std::string& name, int64_t lease) {
    v1::ControllerMember m;
    m.set_name(name);
    m.set_lease(lease);
    return m;
  };
  ShardMap a("a", 64, clock, absl::Seconds(1));
  EXPECT_TRUE(a.SetMembersFrom({member("a", 7), member("b", 8)}));
  EXPECT_THAT(a.members(), ::testing::ElementsAre("a", "b"));
  clock.Advance(absl::Seconds(1));
  std::string mine;
  for (int i = 0; i < 100 && mine.empty(); ++i) {
    if (a.Owns(absl::StrCat("node-", i))) mine = absl::StrCat("node-", i);
  }
  ASSERT_FALSE(mine.empty());
  EXPECT_FALSE(a.SetMembersFrom({member("a", 7), member("b", 9)})) << "b's new lease moves nothing of a's";
  EXPECT_TRUE(a.Owns(mine));
  EXPECT_TRUE(a.SetMembersFrom({member("a", 11), member("b", 9)})) << "a's own lease changed: it lapsed";
  EXPECT_FALSE(a.Owns(mine));
}

}  // namespace
}  // namespace mkfleet::reconciler
