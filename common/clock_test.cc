#include "common/clock.h"

#include "common/status_macros.h"
#include "common/testing/simulated_clock.h"
#include "gtest/gtest.h"

namespace mkfleet {
namespace {

TEST(SimulatedClockTest, MovesOnlyWhenAdvanced) {
  SimulatedClock clock;
  absl::Time t0 = clock.Now();
  EXPECT_EQ(clock.Now(), t0);
  clock.Advance(absl::Milliseconds(250));
  EXPECT_EQ(clock.Now() - t0, absl::Milliseconds(250));
  clock.SleepFor(absl::Seconds(1));
  EXPECT_EQ(clock.Monotonic(), absl::Milliseconds(1250));
}

TEST(RealClockTest, MonotonicNeverGoesBack) {
  absl::Duration a = Clock::Real().Monotonic();
  absl::Duration b = Clock::Real().Monotonic();
  EXPECT_LE(a, b);
}

absl::StatusOr<int> Half(int x) {
  if (x % 2 != 0) return absl::InvalidArgumentError("odd");
  return x / 2;
}

absl::Status Quarter(int x, int* out) {
  MK_ASSIGN_OR_RETURN(int h, Half(x));
  MK_ASSIGN_OR_RETURN(*out, Half(h));
  return absl::OkStatus();
}

TEST(StatusMacrosTest, PropagateFirstError) {
  int out = 0;
  EXPECT_TRUE(Quarter(8, &out).ok());
  EXPECT_EQ(out, 2);
  absl::Status s = Quarter(6, &out);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(Annotate(s, "host node-a").message(), "host node-a: odd");
  EXPECT_TRUE(Annotate(absl::OkStatus(), "x").ok());
}

}  // namespace
}  // namespace mkfleet
