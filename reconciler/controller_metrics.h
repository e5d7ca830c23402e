// The controller's Prometheus metrics (common/metrics.h), recorded where they happen; each
// call does nothing while metrics are off.
//
//   mkfleet_reconcile_pass_duration_seconds{kind}  histogram: whole | local passes
//   mkfleet_placement_duration_seconds             histogram: a whole pass's planning
//   mkfleet_actions_sent_total{type}               actions sent to agents, by type
//   mkfleet_actions_done_total{type}               ... that the agent ran (or had run)
//   mkfleet_actions_failed_total{type}             ... that failed there
//   mkfleet_workqueue_retries_total                hosts queued again after a failure
//   mkfleet_workqueue_depth                        gauge: hosts waiting (scraped)
//   mkfleet_hosts{state}                           gauge: connected | disconnected (scraped)
//   mkfleet_instances{phase}                       gauge: KernelInstances by their status's phase
//                                                  (Running, Pending, Failed, ...; scraped)
//   mkfleet_morphs{phase}                          gauge: instances whose status shows a live
//                                                  update, by its phase (Preparing ... RolledBack)
//   mkfleet_rollout_members{rollout}               gauge: a rollout's members ("InstanceSet/web",
//   mkfleet_rollout_members_updated{rollout}         "RolloutPolicy/p"), and those at its target
//   mkfleet_rollout_phase{rollout,phase}           gauge: 1 for its phase (Progressing, Paused, ...)
//   mkfleet_rollout_target_revision{rollout}       gauge: the revision it rolls out
#ifndef MKFLEET_RECONCILER_CONTROLLER_METRICS_H_
#define MKFLEET_RECONCILER_CONTROLLER_METRICS_H_

#include "absl/status/statusor.h"
#include <functional>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "absl/time/time.h"
#include "mkfleet/v1/agent.pb.h"
#include "prometheus/collectable.h"

namespace mkfleet::reconciler::metrics {

// An action's type as the metrics label it: its operation's field name ("create",
// "load", "start", "halt", "cpu_add", ...).
std::string ActionType(const mkfleet::v1::Action& action);

void PassDone(const char* kind, absl::Duration total);
void Placement(absl::Duration planning);
void ActionsSent(const mkfleet::v1::ActionBatch& batch);
// Each action of `batch` counted once, done or failed: an action without a result (the
// agent stops at a failure) and every action of a call that failed count as failed.
void ActionResults(const mkfleet::v1::ActionBatch& batch, const absl::StatusOr<mkfleet::v1::ExecuteResponse>& response);
void QueueRetry();

// A rollout as the last whole pass left it.
struct RolloutGauge {
  std::string phase;
  int64_t revision = 0;  // the target
  int64_t members = 0;
  int64_t updated = 0;  // members at the target revision
};

// What a scrape reads from the running controller.
struct Sources {
  std::function<size_t()> queue_depth;
  std::function<std::pair<int, int>()> hosts;  // (all, connected)
  std::function<std::map<std::string, int64_t>()> phases;
  std::function<std::map<std::string, int64_t>()> morphs;
  std::function<std::map<std::string, RolloutGauge>()> rollouts;
};
class ControllerCollector final : public prometheus::Collectable {
 public:
  explicit ControllerCollector(Sources sources) : sources_(std::move(sources)) {}
  std::vector<prometheus::MetricFamily> Collect() const override;

 private:
  Sources sources_;
};

}  // namespace mkfleet::reconciler::metrics

#endif  // MKFLEET_RECONCILER_CONTROLLER_METRICS_H_
