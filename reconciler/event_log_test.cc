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
    auto web = *log->List("KernelInstance", "web-1");
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

}  // namespace
}  // namespace mkfleet::reconciler
