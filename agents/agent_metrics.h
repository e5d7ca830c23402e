// The agent's Prometheus metrics (common/metrics.h), recorded by its watchdog; each call
// does nothing while metrics are off.
//
//   mkfleet_agent_failovers_total              standbys that took over a failed kernel
//   mkfleet_agent_takeover_failures_total      takeovers that could not move the devices
//   mkfleet_agent_handover_gap_seconds         histogram: failure seen -> standby holds the devices
//   mkfleet_agent_restarts_total               failed kernels started again
//   mkfleet_agent_restart_latency_seconds      histogram: failure seen -> started again (with backoff)
#ifndef MKFLEET_AGENTS_AGENT_METRICS_H_
#define MKFLEET_AGENTS_AGENT_METRICS_H_

#include "absl/time/time.h"

namespace mkfleet::agents::metrics {

void Failover(absl::Duration gap);
void TakeoverFailed();
void Restarted(absl::Duration latency);

}  // namespace mkfleet::agents::metrics

#endif  // MKFLEET_AGENTS_AGENT_METRICS_H_
