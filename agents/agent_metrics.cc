#include "agents/agent_metrics.h"

#include "common/metrics.h"

namespace mkfleet::agents::metrics {
namespace {

using mkfleet::metrics::Enabled;
using mkfleet::metrics::LatencyBuckets;
using mkfleet::metrics::Registry;

struct Families {
  prometheus::Counter& failovers = prometheus::BuildCounter()
                                       .Name("mkfleet_agent_failovers_total")
                                       .Help("Warm standbys that took over a failed kernel's devices.")
                                       .Register(Registry())
                                       .Add({});
  prometheus::Counter& takeover_failures = prometheus::BuildCounter()
                                               .Name("mkfleet_agent_takeover_failures_total")
                                               .Help("Takeovers that could not move the failed kernel's devices.")
                                               .Register(Registry())
                                               .Add({});
  prometheus::Histogram& gap = prometheus::BuildHistogram()
                                   .Name("mkfleet_agent_handover_gap_seconds")
                                   .Help("From a kernel's failure seen by the watchdog to its standby holding the "
                                         "devices.")
                                   .Register(Registry())
                                   .Add({}, LatencyBuckets());
  prometheus::Counter& restarts = prometheus::BuildCounter()
                                      .Name("mkfleet_agent_restarts_total")
                                      .Help("Failed kernels the watchdog started again.")
                                      .Register(Registry())
                                      .Add({});
  prometheus::Histogram& restart_latency = prometheus::BuildHistogram()
                                               .Name("mkfleet_agent_restart_latency_seconds")
                                               .Help("From a kernel's failure seen by the watchdog to its start "
                                                     "again (the restart backoff included).")
                                               .Register(Registry())
                                               .Add({}, LatencyBuckets());
};

Families& F() {
  static auto* f = new Families();
  return *f;
}

bool Measured(absl::Duration d) { return d >= absl::ZeroDuration() && d != absl::InfiniteDuration(); }

}  // namespace

void Failover(absl::Duration gap) {
  if (!Enabled()) return;
  F().failovers.Increment();
  if (Measured(gap)) F().gap.Observe(absl::ToDoubleSeconds(gap));
}

void TakeoverFailed() {
  if (!Enabled()) return;
  F().takeover_failures.Increment();
}

void Restarted(absl::Duration latency) {
  if (!Enabled()) return;
  F().restarts.Increment();
  if (Measured(latency)) F().restart_latency.Observe(absl::ToDoubleSeconds(latency));
}

}  // namespace mkfleet::agents::metrics
