#include "reconciler/work_queue.h"

#include <thread>

#include "common/testing/simulated_clock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

constexpr absl::Duration kNow = absl::ZeroDuration();

TEST(WorkQueueTest, DuplicatesMergeAndOrderIsKept) {
  SimulatedClock clock;
  WorkQueue q(clock);
  q.Add("b");
  q.Add("a");
  q.Add("b");
  EXPECT_EQ(q.Len(), 2u);
  std::string k;
  ASSERT_TRUE(q.Get(&k, kNow));
  EXPECT_EQ(k, "b");
  ASSERT_TRUE(q.Get(&k, kNow));
  EXPECT_EQ(k, "a");
  EXPECT_FALSE(q.Get(&k, kNow));
}

TEST(WorkQueueTest, AKeyIsNeverGivenToTwoWorkers) {
  SimulatedClock clock;
  WorkQueue q(clock);
  q.Add("h");
  std::string k;
  ASSERT_TRUE(q.Get(&k, kNow));
  q.Add("h");  // changed while being reconciled
  EXPECT_FALSE(q.Get(&k, kNow));  // not while the first worker has it
  q.Done("h");
  ASSERT_TRUE(q.Get(&k, kNow));  // then once more
  EXPECT_EQ(k, "h");
  q.Done("h");
  EXPECT_FALSE(q.Get(&k, kNow));
}

TEST(WorkQueueTest, BackoffDoublesPerFailureUntilForgotten) {
  SimulatedClock clock;
  WorkQueueOptions o;
  o.base_delay = absl::Milliseconds(5);
  o.max_delay = absl::Milliseconds(30);
  WorkQueue q(clock, o);
  std::string k;
  absl::Duration expected[] = {absl::Milliseconds(5), absl::Milliseconds(10), absl::Milliseconds(20),
                               absl::Milliseconds(30), absl::Milliseconds(30)};
  for (absl::Duration d : expected) {
    q.AddRateLimited("h");
    clock.Advance(d - absl::Milliseconds(1));
    EXPECT_FALSE(q.Get(&k, kNow)) << d;
    clock.Advance(absl::Milliseconds(1));
    ASSERT_TRUE(q.Get(&k, kNow)) << d;
    q.Done("h");
  }
  EXPECT_EQ(q.Failures("h"), 5);
  q.Forget("h");
  EXPECT_EQ(q.Failures("h"), 0);
  q.AddRateLimited("h");
  clock.Advance(absl::Milliseconds(5));
  EXPECT_TRUE(q.Get(&k, kNow));
}

TEST(WorkQueueTest, GlobalRateLimit) {
  SimulatedClock clock;
  WorkQueueOptions o;
  o.qps = 10;
  o.burst = 2;
  WorkQueue q(clock, o);
  for (const char* k : {"a", "b", "c", "d"}) q.Add(k);
  std::string k;
  EXPECT_TRUE(q.Get(&k, kNow));
  EXPECT_TRUE(q.Get(&k, kNow));
  EXPECT_FALSE(q.Get(&k, kNow));  // burst spent
  clock.Advance(absl::Milliseconds(100));  // one token at 10 qps
  EXPECT_TRUE(q.Get(&k, kNow));
  EXPECT_EQ(k, "c");
  EXPECT_FALSE(q.Get(&k, kNow));
}

TEST(WorkQueueTest, ShutDownWakesWaiters) {
  SimulatedClock clock;
  WorkQueue q(clock);
  std::thread waiter([&] {
    std::string k;
    EXPECT_FALSE(q.Get(&k, absl::Seconds(30)));
  });
  absl::SleepFor(absl::Milliseconds(20));
  q.ShutDown();
  waiter.join();
}

TEST(WorkQueueTest, WaitingGetSeesNewWork) {
  SimulatedClock clock;
  WorkQueue q(clock);
  std::thread adder([&] {
    absl::SleepFor(absl::Milliseconds(20));
    q.Add("late");
  });
  std::string k;
  EXPECT_TRUE(q.Get(&k, absl::Seconds(10)));
  EXPECT_EQ(k, "late");
  adder.join();
}

}  // namespace
}  // namespace mkfleet::reconciler
