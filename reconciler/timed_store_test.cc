#include "reconciler/timed_store.h"

#include <unistd.h>

#include <filesystem>
#include <string>

#include "common/clock.h"
#include "common/metrics.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

using mkfleet::metrics::CollectedForTest;

TEST(TimedStoreTest, EachOperationIsTimedAndItsFailuresCounted) {
  metrics::EnableForTest();
  const std::string path = ::testing::TempDir() + "/timed-" + std::to_string(getpid()) + ".db";
  std::filesystem::remove(path);
  auto inner = OpenSqliteStore(path, Clock::Real());
  ASSERT_TRUE(inner.ok()) << inner.status();
  std::unique_ptr<Store> store = TimedStore(*std::move(inner));
  const char* kSeconds = "mkfleet_store_operation_duration_seconds";
  const char* kErrors = "mkfleet_store_operation_errors_total";
  ASSERT_TRUE(store->Put("/objects/Host/a", "1").ok());
  ASSERT_TRUE(store->Put("/objects/Host/b", "2").ok());
  ASSERT_TRUE(store->Get("/objects/Host/a").ok());
  auto listed = store->List("/objects/Host/");
  ASSERT_TRUE(listed.ok());
  EXPECT_EQ(listed->size(), 2u);  // what the store answers, unchanged
  EXPECT_EQ(CollectedForTest(kSeconds, "put"), 2);
  EXPECT_EQ(CollectedForTest(kSeconds, "get"), 1);
  EXPECT_EQ(CollectedForTest(kSeconds, "list"), 1);
  EXPECT_EQ(CollectedForTest(kErrors, "delete"), 0);
  // A failure: timed, and counted.
  EXPECT_EQ(store->Delete("/objects/Host/none").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CollectedForTest(kSeconds, "delete"), 1);
  EXPECT_EQ(CollectedForTest(kErrors, "delete"), 1);
  // A failed compare is a failed transaction.
  EXPECT_EQ(store->Txn({{"/objects/Host/a", 99}}, {{Op::Type::kPut, "/x", "y", 0}}).status().code(),
            absl::StatusCode::kAborted);
  EXPECT_EQ(CollectedForTest(kErrors, "txn"), 1);
  // Waiting is not an operation.
  ASSERT_TRUE(store->WaitForRevision(0, absl::Milliseconds(1)).ok());
  EXPECT_EQ(CollectedForTest(kSeconds, "revision"), 0);
  store.reset();
  std::filesystem::remove(path);
}

}  // namespace
}  // namespace mkfleet::reconciler
