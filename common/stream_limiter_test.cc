#include "common/stream_limiter.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet {
namespace {

using ::testing::HasSubstr;

TEST(StreamLimiterTest, PerClientAndTotalLimitsAndSlotsComeBack) {
  StreamLimiter limiter(2, 3);
  auto a1 = limiter.Acquire("user a");
  auto a2 = limiter.Acquire("user a");
  ASSERT_TRUE(a1.ok() && a2.ok());
  auto a3 = limiter.Acquire("user a");
  EXPECT_EQ(a3.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(a3.status().message(), HasSubstr("user a has 2 open streams, at most 2 per client"));
  auto b1 = limiter.Acquire("user b");
  ASSERT_TRUE(b1.ok());
  EXPECT_THAT(limiter.Acquire("user c").status().message(), HasSubstr("at most 3 in all"));
  EXPECT_EQ(limiter.open(), 3);
  a1->reset();
  EXPECT_TRUE(limiter.Acquire("user a").ok());
  EXPECT_EQ(limiter.open(), 2);  // the token above was dropped at once
}

}  // namespace
}  // namespace mkfleet
