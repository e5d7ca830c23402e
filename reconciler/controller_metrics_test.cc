#include "reconciler/controller_metrics.h"

#include "common/metrics.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler::metrics {
namespace {

namespace v1 = mkfleet::v1;
using mkfleet::metrics::CollectedForTest;

v1::ActionBatch Batch() {
  v1::ActionBatch batch;
  v1::Action* create = batch.add_actions();
  create->set_id("a1");
  create->mutable_create();
  v1::Action* start = batch.add_actions();
  start->set_id("a2");
  start->mutable_start();
  v1::Action* start2 = batch.add_actions();
  start2->set_id("a3");
  start2->mutable_start();
  return batch;
}

// Every action sent is counted once as done or failed: also when the agent ran only some
// (it stops at the first failure) or the call failed as a whole (the sent-minus-finished
// difference would otherwise stay for ever, and look like actions in flight).
TEST(ControllerMetricsTest, EveryActionSentEndsDoneOrFailed) {
  mkfleet::metrics::EnableForTest();
  const double sent = CollectedForTest("mkfleet_actions_sent_total");
  const double done = CollectedForTest("mkfleet_actions_done_total");
  const double failed = CollectedForTest("mkfleet_actions_failed_total");
  const double failed_start = CollectedForTest("mkfleet_actions_failed_total", "start");
  v1::ActionBatch batch = Batch();
  ActionsSent(batch);
  v1::ExecuteResponse response;
  response.add_results()->set_id("a1");  // done
  v1::ActionResult* bad = response.add_results();
  bad->set_id("a2");
  bad->set_code(9);
  ActionResults(batch, response);  // a3 never ran
  EXPECT_EQ(CollectedForTest("mkfleet_actions_sent_total") - sent, 3);
  EXPECT_EQ(CollectedForTest("mkfleet_actions_done_total") - done, 1);
  EXPECT_EQ(CollectedForTest("mkfleet_actions_failed_total") - failed, 2);
  EXPECT_EQ(CollectedForTest("mkfleet_actions_failed_total", "start") - failed_start, 2);
  ActionsSent(batch);
  ActionResults(batch, absl::UnavailableError("host node-a: not connected"));
  EXPECT_EQ(CollectedForTest("mkfleet_actions_sent_total") - sent, 6);
  EXPECT_EQ(CollectedForTest("mkfleet_actions_done_total") - done + CollectedForTest("mkfleet_actions_failed_total") - failed,
            6);
}

}  // namespace
}  // namespace mkfleet::reconciler::metrics
