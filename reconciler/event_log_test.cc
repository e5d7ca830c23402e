#include "reconciler/event_log.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/testing/forwarding_store.h"

namespace mkfleet::reconciler {
namespace {

// A store file under the test's temporary directory, with no file of an earlier run left.
std::string FreshStorePath(const std::string& name) {
  std::string path = ::testing::TempDir() + "/" + name + ".db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  return path;
}

mkfleet::v1::Event Ev(const std::string& name, const std::string& reason) {
  mkfleet::v1::Event e;
  e.set_kind("KernelInstance");
  e.set_name(name);
  e.set_reason(reason);
  return e;
}

// A store whose transactions can be refused, to see that a refused one changes nothing.
class RefusingStore : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  bool refuse = false;
  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops) override {
    if (refuse) return absl::UnavailableError("disk full");
    return ForwardingStore::Txn(compares, ops);
  }
};

TEST(EventLogTest, KeepsOrderBoundsHistoryAndContinuesAfterReopen) {
  std::string path = FreshStorePath("events");
  SimulatedClock clock;
  {
    auto store = *OpenSqliteStore(path, clock);
    auto log = *EventLog::Open(*store, clock, /*max_events=*/3);
    for (int i = 0; i < 5; ++i) {
      ASSERT_TRUE(log->Record(Ev(i % 2 ? "db-1" : "web-1", "R" + std::to_string(i))).ok());
      clock.Advance(absl::Seconds(1));
    }
    auto all = *log->List();
    ASSERT_EQ(all.size(), 3u);  // the two oldest went
    EXPECT_EQ(all[0].reason(), "R2");
    EXPECT_EQ(all[2].reason(), "R4");
    EXPECT_LT(all[0].time_unix_ms(), all[2].time_unix_ms());
    EventFilter only_web;
    only_web.kind = "KernelInstance";
    only_web.name = "web-1";
    auto web = *log->List(only_web);
    ASSERT_EQ(web.size(), 2u);
    EXPECT_EQ(web[1].reason(), "R4");
  }
  auto store = *OpenSqliteStore(path, clock);
  auto log = *EventLog::Open(*store, clock, 3);
  ASSERT_TRUE(log->Record(Ev("web-1", "R5")).ok());
  auto all = *log->List();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].reason(), "R3");
  EXPECT_EQ(all[2].reason(), "R5");
}

TEST(EventLogTest, RepeatsFoldIntoOneWithACountAndTimeOrder) {
  // Defect 8: a minute of retries made 230 events, with times out of order.
  std::string path = FreshStorePath("events-fold");
  SimulatedClock clock;
  auto store = *OpenSqliteStore(path, clock);
  auto log = *EventLog::Open(*store, clock, 100);
  int64_t first = absl::ToUnixMillis(clock.Now());
  for (int i = 0; i < 230; ++i) {
    mkfleet::v1::Event e = Ev("web-1", "ActionFailed");
    e.set_type("Warning");
    e.set_message("create-load: cannot open /var/lib/mkfleet/kernels/vmlinux");
    ASSERT_TRUE(log->Record(e).ok());
    if (i == 100) {
      ASSERT_TRUE(log->Record(Ev("db-1", "Ready")).ok());
    }
    clock.Advance(absl::Milliseconds(250));
  }
  auto all = *log->List();
  ASSERT_EQ(all.size(), 2u);
  EXPECT_EQ(all[0].name(), "db-1");  // the repeated one moved past it: ordered by last time
  EXPECT_EQ(all[1].count(), 230);
  EXPECT_EQ(all[1].first_unix_ms(), first);
  EXPECT_EQ(all[1].time_unix_ms(), first + 229 * 250);
  // An agent's event that arrives late (an older time) does not go back in time.
  mkfleet::v1::Event late = Ev("web-1", "Crashed");
  late.set_time_unix_ms(first);
  late.set_host("h1");
  late.set_seq(7);
  ASSERT_TRUE(log->RecordAll({late}).ok());
  all = *log->List();
  for (size_t i = 1; i < all.size(); ++i) EXPECT_LE(all[i - 1].time_unix_ms(), all[i].time_unix_ms());
  EXPECT_EQ(log->LastAgentSeq("h1"), 7);
  // Filters: type and time.
  EventFilter warnings;
  warnings.type = "Warning";
  EXPECT_EQ(log->List(warnings)->size(), 1u);
  EventFilter recent;
  recent.since_unix_ms = first + 229 * 250;
  EXPECT_EQ(log->List(recent)->size(), 2u);
  // After a restart the fold goes on.
  log.reset();
  auto again = *EventLog::Open(*store, clock, 100);
  mkfleet::v1::Event e = Ev("web-1", "ActionFailed");
  e.set_type("Warning");
  e.set_message("create-load: cannot open /var/lib/mkfleet/kernels/vmlinux");
  ASSERT_TRUE(again->Record(e).ok());
  auto after = *again->List();
  EXPECT_EQ(after.back().count(), 231);
  EXPECT_EQ(after.size(), 3u);
}

TEST(EventLogTest, ARefusedTransactionChangesNothing) {
  // The log is changed in place (copying the whole history per call was the controller's
  // top cost at fleet scale); a transaction the store refuses must still leave it as it was.
  std::string path = FreshStorePath("events-refused");
  SimulatedClock clock;
  auto sqlite = *OpenSqliteStore(path, clock);
  RefusingStore store(*sqlite);
  auto log = *EventLog::Open(store, clock, /*max_events=*/3);
  for (const char* reason : {"A", "B", "C"}) {
    ASSERT_TRUE(log->Record(Ev("web-1", reason)).ok());
    clock.Advance(absl::Seconds(1));
  }
  ASSERT_TRUE(log->Record(Ev("web-1", "A")).ok());  // folded: A moves last with count 2
  auto before = *log->List();
  ASSERT_EQ(before.size(), 3u);
  ASSERT_EQ(before[2].reason(), "A");
  ASSERT_EQ(before[2].count(), 2);
  clock.Advance(absl::Seconds(1));
  store.refuse = true;
  // A fold, two new ones pushing the oldest out, and an agent's seq: all refused.
  mkfleet::v1::Event agent = Ev("db-1", "Crashed");
  agent.set_host("h1");
  agent.set_seq(9);
  EXPECT_FALSE(log->RecordAll({Ev("web-1", "A"), Ev("web-1", "D"), Ev("web-1", "E"), agent}).ok());
  auto after = *log->List();
  ASSERT_EQ(after.size(), before.size());
  for (size_t i = 0; i < after.size(); ++i) {
    EXPECT_EQ(after[i].SerializeAsString(), before[i].SerializeAsString()) << "event " << i;
  }
  EXPECT_EQ(log->LastAgentSeq("h1"), 0);
  // And the log goes on from there: the fold still finds A, the sequence continues.
  store.refuse = false;
  ASSERT_TRUE(log->Record(Ev("web-1", "A")).ok());
  after = *log->List();
  ASSERT_EQ(after.size(), 3u);
  EXPECT_EQ(after[0].reason(), "B");
  EXPECT_EQ(after[2].reason(), "A");
  EXPECT_EQ(after[2].count(), 3);
  // What memory holds is what the store holds.
  auto reopened = *EventLog::Open(*sqlite, clock, 3);
  auto stored = *reopened->List();
  ASSERT_EQ(stored.size(), after.size());
  for (size_t i = 0; i < stored.size(); ++i) EXPECT_EQ(stored[i].SerializeAsString(), after[i].SerializeAsString());
}

TEST(EventLogTest, ABatchLargerThanTheBoundKeepsItsNewestWithTheirCounts) {
  // Only the newest max_events of a batch can stay; the older ones are never stored but
  // still count in their later repeats: the same history as recording them one by one.
  std::string path = FreshStorePath("events-batch");
  SimulatedClock clock;
  auto store = *OpenSqliteStore(path, clock);
  auto log = *EventLog::Open(*store, clock, /*max_events=*/3);
  ASSERT_TRUE(log->Record(Ev("web-1", "A")).ok());
  int64_t first = absl::ToUnixMillis(clock.Now());
  ASSERT_TRUE(log->Record(Ev("web-1", "Z")).ok());
  clock.Advance(absl::Seconds(1));
  // A and B fall before the newest three; A is repeated among them, B is not.
  ASSERT_TRUE(log->RecordAll({Ev("web-1", "A"), Ev("web-1", "B"), Ev("web-1", "C"), Ev("web-1", "A"),
                              Ev("web-1", "D")})
                  .ok());
  auto all = *log->List();
  ASSERT_EQ(all.size(), 3u);
  EXPECT_EQ(all[0].reason(), "C");
  EXPECT_EQ(all[1].reason(), "A");
  EXPECT_EQ(all[1].count(), 3);  // stored once, then twice in the batch
  EXPECT_EQ(all[1].first_unix_ms(), first);
  EXPECT_EQ(all[2].reason(), "D");
  // The store holds exactly that (Z and the first A deleted, B never written).
  auto kvs = *store->List(kEventPrefix);
  ASSERT_EQ(kvs.size(), 3u);
  auto reopened = *EventLog::Open(*store, clock, 3);
  auto stored = *reopened->List();
  ASSERT_EQ(stored.size(), 3u);
  for (size_t i = 0; i < 3; ++i) EXPECT_EQ(stored[i].SerializeAsString(), all[i].SerializeAsString());
  // And the fold goes on from the kept A.
  ASSERT_TRUE(reopened->Record(Ev("web-1", "A")).ok());
  EXPECT_EQ(reopened->List()->back().count(), 4);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

TEST(EventLogTest, TenThousandSimilarEventsAggregateAndEvictNothingElse) {
  SimulatedClock clock;
  auto store = *OpenSqliteStore(FreshStorePath("aggregate"), clock);
  auto log = *EventLog::Open(*store, clock, 2000);
  mkfleet::v1::Event warning = Ev("db-1", "ActionFailed");
  warning.set_type("Warning");
  warning.set_message("create: EBUSY");
  ASSERT_TRUE(log->Record(warning).ok());
  for (int batch = 0; batch < 10; ++batch) {
    std::vector<mkfleet::v1::Event> events;
    for (int i = 0; i < 1000; ++i) {
      mkfleet::v1::Event e = Ev("web-" + std::to_string(batch * 1000 + i), "Ready");
      e.set_type("Normal");
      e.set_message("running what the spec says");
      events.push_back(e);
    }
    ASSERT_TRUE(log->RecordAll(events).ok());
    clock.Advance(absl::Seconds(1));
  }
  auto all = *log->List();
  // The warning, the first ten objects' own events, and one aggregate of the other 9,990.
  ASSERT_EQ(all.size(), 12u);
  EXPECT_EQ(all[0].name(), "db-1");
  EXPECT_EQ(all[1].name(), "web-0");
  const mkfleet::v1::Event& aggregate = all.back();
  EXPECT_EQ(aggregate.name(), "*");
  EXPECT_EQ(aggregate.reason(), "Ready");
  EXPECT_EQ(aggregate.count(), 9990);
  EXPECT_EQ(aggregate.message(),
            "similar events of many KernelInstances; the latest: web-9999: running what the spec says");
  // An object seen in the window keeps its own events; another reason is not aggregated.
  ASSERT_TRUE(log->Record(Ev("web-3", "Ready")).ok());
  ASSERT_TRUE(log->Record(Ev("web-5000", "Deleted")).ok());
  all = *log->List({"KernelInstance", "web-5000"});
  ASSERT_EQ(all.size(), 1u);
  EXPECT_EQ(all[0].reason(), "Deleted");
  // Past the window, objects have their own events again.
  clock.Advance(absl::Minutes(11));
  ASSERT_TRUE(log->Record(Ev("web-7777", "Ready")).ok());
  EXPECT_EQ(log->List({"KernelInstance", "web-7777"})->size(), 1u);
}

}  // namespace
}  // namespace mkfleet::reconciler
