#include "reconciler/controller_metrics.h"

#include <map>

#include "common/metrics.h"

namespace mkfleet::reconciler::metrics {
namespace {

namespace v1 = mkfleet::v1;
using mkfleet::metrics::Enabled;
using mkfleet::metrics::LatencyBuckets;
using mkfleet::metrics::Registry;

struct Families {
  prometheus::Family<prometheus::Histogram>& passes = prometheus::BuildHistogram()
                                                          .Name("mkfleet_reconcile_pass_duration_seconds")
                                                          .Help("Reconcile passes: whole (the fleet planned) or local "
                                                                "(only pinned instances' hosts).")
                                                          .Register(Registry());
  prometheus::Histogram& placement = prometheus::BuildHistogram()
                                         .Name("mkfleet_placement_duration_seconds")
                                         .Help("Time a whole pass spent planning the fleet's placements.")
                                         .Register(Registry())
                                         .Add({}, LatencyBuckets());
  prometheus::Family<prometheus::Counter>& sent = prometheus::BuildCounter()
                                                      .Name("mkfleet_actions_sent_total")
                                                      .Help("Actions sent to agents, by type.")
                                                      .Register(Registry());
  prometheus::Family<prometheus::Counter>& done = prometheus::BuildCounter()
                                                      .Name("mkfleet_actions_done_total")
                                                      .Help("Actions an agent ran (or had run: replayed), by type.")
                                                      .Register(Registry());
  prometheus::Family<prometheus::Counter>& failed = prometheus::BuildCounter()
                                                        .Name("mkfleet_actions_failed_total")
                                                        .Help("Actions that failed on their agent, by type.")
                                                        .Register(Registry());
  prometheus::Counter& retries = prometheus::BuildCounter()
                                     .Name("mkfleet_workqueue_retries_total")
                                     .Help("Hosts queued again, after their backoff, because their pass failed.")
                                     .Register(Registry())
                                     .Add({});
};

Families& F() {
  static auto* f = new Families();
  return *f;
}

double Seconds(absl::Duration d) { return absl::ToDoubleSeconds(d); }

}  // namespace

std::string ActionType(const v1::Action& action) {
  const auto* field = v1::Action::descriptor()->FindFieldByNumber(action.op_case());
  return field == nullptr ? "none" : field->name();
}

void PassDone(const char* kind, absl::Duration total) {
  if (!Enabled()) return;
  F().passes.Add({{"kind", kind}}, LatencyBuckets()).Observe(Seconds(total));
}

void Placement(absl::Duration planning) {
  if (!Enabled()) return;
  F().placement.Observe(Seconds(planning));
}

void ActionsSent(const v1::ActionBatch& batch) {
  if (!Enabled()) return;
  std::map<std::string, int> by_type;
  for (const v1::Action& a : batch.actions()) ++by_type[ActionType(a)];
  for (const auto& [type, n] : by_type) F().sent.Add({{"type", type}}).Increment(n);
}

void ActionResults(const v1::ActionBatch& batch, const absl::StatusOr<v1::ExecuteResponse>& response) {
  if (!Enabled()) return;
  std::map<std::string, std::string> type_of;
  for (const v1::Action& a : batch.actions()) type_of[a.id()] = ActionType(a);
  if (response.ok()) {
    for (const v1::ActionResult& r : response->results()) {
      auto t = type_of.find(r.id());
      if (t == type_of.end()) continue;  // not one of this batch's
      (r.code() == 0 ? F().done : F().failed).Add({{"type", t->second}}).Increment();
      type_of.erase(t);
    }
  }
  // Not run: the call failed, or the agent stopped before them.
  for (const auto& [id, type] : type_of) F().failed.Add({{"type", type}}).Increment();
}

void QueueRetry() {
  if (!Enabled()) return;
  F().retries.Increment();
}

std::vector<prometheus::MetricFamily> ControllerCollector::Collect() const {
  auto gauge = [](double v, std::vector<prometheus::ClientMetric::Label> labels = {}) {
    prometheus::ClientMetric m;
    m.label = std::move(labels);
    m.gauge.value = v;
    return m;
  };
  std::vector<prometheus::MetricFamily> out;
  if (sources_.queue_depth) {
    out.push_back({"mkfleet_workqueue_depth", "Hosts waiting in the reconcile queue (ready or backing off).",
                   prometheus::MetricType::Gauge, {gauge(static_cast<double>(sources_.queue_depth()))}});
  }
  if (sources_.hosts) {
    auto [all, connected] = sources_.hosts();
    out.push_back({"mkfleet_hosts", "Hosts the controller drives, by whether their agent's stream is up.",
                   prometheus::MetricType::Gauge,
                   {gauge(connected, {{"state", "connected"}}), gauge(all - connected, {{"state", "disconnected"}})}});
  }
  // A gauge per phase.
  auto by_phase = [&](const char* name, const char* help, const std::map<std::string, int64_t>& counts) {
    prometheus::MetricFamily f{name, help, prometheus::MetricType::Gauge, {}};
    for (const auto& [phase, n] : counts) f.metric.push_back(gauge(static_cast<double>(n), {{"phase", phase}}));
    out.push_back(std::move(f));
  };
  if (sources_.phases) {
    by_phase("mkfleet_instances", "KernelInstances (set members too) by the phase of their status.", sources_.phases());
  }
  if (sources_.morphs) {
    by_phase("mkfleet_morphs", "Instances whose status shows a live update (morph), by its phase.", sources_.morphs());
  }
  if (sources_.rollouts) {
    prometheus::MetricFamily members{"mkfleet_rollout_members", "A rollout's members (an InstanceSet's or a RolloutPolicy's).",
                                     prometheus::MetricType::Gauge, {}};
    prometheus::MetricFamily updated{"mkfleet_rollout_members_updated",
                                     "A rollout's members that run its target revision.", prometheus::MetricType::Gauge, {}};
    prometheus::MetricFamily phase{"mkfleet_rollout_phase", "1 for a rollout's phase (Complete, Progressing, Paused, ...).",
                                   prometheus::MetricType::Gauge, {}};
    prometheus::MetricFamily revision{"mkfleet_rollout_target_revision", "The revision a rollout rolls out.",
                                      prometheus::MetricType::Gauge, {}};
    for (const auto& [rollout, g] : sources_.rollouts()) {
      revision.metric.push_back(gauge(static_cast<double>(g.revision), {{"rollout", rollout}}));
      members.metric.push_back(gauge(static_cast<double>(g.members), {{"rollout", rollout}}));
      updated.metric.push_back(gauge(static_cast<double>(g.updated), {{"rollout", rollout}}));
      phase.metric.push_back(gauge(1, {{"phase", g.phase.empty() ? "Unknown" : g.phase}, {"rollout", rollout}}));
    }
    out.push_back(std::move(members));
    out.push_back(std::move(updated));
    out.push_back(std::move(phase));
    out.push_back(std::move(revision));
  }
  return out;
}

}  // namespace mkfleet::reconciler::metrics
