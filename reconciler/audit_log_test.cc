#include "reconciler/audit_log.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

class AuditLogTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/audit.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
    store_ = *OpenSqliteStore(path_, clock_);
  }
  v1::AuditRecord Rec(const std::string& who) {
    v1::AuditRecord r;
    r.set_identity(who);
    r.set_verb("apply");
    return r;
  }
  std::vector<std::string> Who(AuditLog& log) {
    std::vector<std::string> out;
    auto records = log.List();
    EXPECT_TRUE(records.ok()) << records.status();
    for (const auto& r : *records) out.push_back(r.identity());
    return out;
  }

  std::string path_;
  SimulatedClock clock_{absl::FromUnixSeconds(1700000000)};
  std::unique_ptr<Store> store_;
};

TEST_F(AuditLogTest, KeepsRecordsInOrderAcrossRestarts) {
  {
    auto log = *AuditLog::Open(*store_, clock_);
    ASSERT_TRUE(log->Record(Rec("user a")).ok());
    clock_.Advance(absl::Seconds(1));
    ASSERT_TRUE(log->Record(Rec("user b")).ok());
  }
  auto log = *AuditLog::Open(*store_, clock_);
  clock_.Advance(absl::Seconds(1));
  ASSERT_TRUE(log->Record(Rec("user c")).ok());
  EXPECT_THAT(Who(*log), ::testing::ElementsAre("user a", "user b", "user c"));
  auto since = log->List(absl::ToUnixMillis(clock_.Now()));
  ASSERT_EQ(since->size(), 1u);
  EXPECT_EQ((*since)[0].identity(), "user c");
  EXPECT_EQ((*since)[0].time_unix_ms(), absl::ToUnixMillis(clock_.Now()));
  EXPECT_THAT(*log->List(0, 2), ::testing::SizeIs(2));
}

TEST_F(AuditLogTest, BoundedButNeverEvictsTheRetainedWindow) {
  AuditOptions o;
  o.max_records = 3;
  o.retain = absl::Hours(1);
  auto log = *AuditLog::Open(*store_, clock_, o);
  for (const char* who : {"a", "b", "c", "d", "e"}) {
    ASSERT_TRUE(log->Record(Rec(who)).ok());
    clock_.Advance(absl::Minutes(1));
  }
  // All within the hour: all kept, past the bound.
  EXPECT_THAT(Who(*log), ::testing::ElementsAre("a", "b", "c", "d", "e"));
  clock_.Advance(absl::Hours(1));
  ASSERT_TRUE(log->Record(Rec("f")).ok());
  EXPECT_THAT(Who(*log), ::testing::ElementsAre("d", "e", "f"));
  auto reopened = *AuditLog::Open(*store_, clock_, o);
  ASSERT_TRUE(reopened->Record(Rec("g")).ok());
  EXPECT_THAT(Who(*reopened), ::testing::ElementsAre("e", "f", "g"));
}

}  // namespace
}  // namespace mkfleet::reconciler
