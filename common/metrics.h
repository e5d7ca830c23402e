// Prometheus metrics (prometheus-cpp): the process's registry, its /metrics endpoint, and
// the gRPC request metrics every server of the process records once metrics are on.
//
// Off unless a daemon is given --metrics-listen: Enabled() is then false, the families are
// never built and the hot paths pay one relaxed atomic load. Names follow Prometheus's
// conventions: `mkfleet_` prefix, base units (`_seconds`, `_bytes`), `_total` for counters.
#ifndef MKFLEET_COMMON_METRICS_H_
#define MKFLEET_COMMON_METRICS_H_

#include <atomic>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "prometheus/counter.h"
#include "prometheus/gauge.h"
#include "prometheus/histogram.h"
#include "prometheus/registry.h"

namespace prometheus {
class Exposer;
}

namespace mkfleet::metrics {

// Whether this process records metrics (Serve was called).
bool Enabled();

// The process's registry: every mkfleet metric registers here.
prometheus::Registry& Registry();

// Latency buckets, in seconds: 0.25 ms to ~65 s, doubling.
const prometheus::Histogram::BucketBoundaries& LatencyBuckets();

// Serves the registry (and what else is registered on the endpoint) at http://LISTEN/metrics.
// LISTEN is HOST:PORT (port 0 picks a free one); plaintext, so loopback only: a non-loopback
// address is refused with the reason, naming `flag`. Turns Enabled() on and adds the gRPC
// request metrics to every server started after it.
class Endpoint {
 public:
  static absl::StatusOr<std::unique_ptr<Endpoint>> Serve(const std::string& listen, const std::string& flag);
  ~Endpoint();
  int port() const { return port_; }
  // Adds a collectable scraped with the registry (it must outlive the endpoint).
  void Add(std::weak_ptr<prometheus::Collectable> collectable);

 private:
  Endpoint() = default;
  std::unique_ptr<prometheus::Exposer> exposer_;
  int port_ = 0;
};

// For tests: records into the registry without an endpoint.
void EnableForTest();
// For tests: the registry's `name` as a scrape would show it, summed over its series (those
// whose first label has the value `label_value`, if given): a counter's or gauge's value,
// a histogram's sample count; 0 when absent.
double CollectedForTest(const std::string& name, const std::string& label_value = "");

}  // namespace mkfleet::metrics

#endif  // MKFLEET_COMMON_METRICS_H_
