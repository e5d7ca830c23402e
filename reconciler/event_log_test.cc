#include "reconciler/event_log.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

mkfleet::v1::Event Ev(const std::string& name, const std::string& reason) {
  mkfleet::v1::Event e;
  e.set_kind("KernelInstance");
  e.set_name(name);
  e.set_reason(reason);
  return e;
}

TEST(EventLogTest, KeepsOrderBoundsHistoryAndContinuesAfterReopen) {
  std::string path = ::testing::TempDir() + "/events.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
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
  std::string path = ::testing::TempDir() + "/events-fold.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
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

}  // namespace
}  // namespace mkfleet::reconciler
