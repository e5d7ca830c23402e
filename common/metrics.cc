#include "common/metrics.h"

#include <chrono>
#include <exception>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_server.h"
#include "prometheus/exposer.h"
#include "security/tls.h"

namespace mkfleet::metrics {
namespace {

std::atomic<bool> enabled{false};

// gRPC requests, by service, method and status code; and how long they took.
class RequestMetrics {
 public:
  RequestMetrics()
      : handled_(prometheus::BuildCounter()
                     .Name("mkfleet_grpc_server_handled_total")
                     .Help("gRPC requests this server answered, by service, method and status code.")
                     .Register(Registry())),
        seconds_(prometheus::BuildHistogram()
                     .Name("mkfleet_grpc_server_handling_seconds")
                     .Help("Time from a gRPC request's arrival to its status (a stream: its whole life).")
                     .Register(Registry())) {}

  void Record(const std::string& full_method, grpc::StatusCode code, double seconds) {
    // "/mkfleet.v1.Agent/Execute"
    std::vector<std::string> parts = absl::StrSplit(full_method, '/', absl::SkipEmpty());
    const std::string service = parts.size() == 2 ? parts[0] : "";
    const std::string method = parts.size() == 2 ? parts[1] : full_method;
    // (gRPC's codes are absl's, names included.)
    const std::string code_name = absl::StatusCodeToString(static_cast<absl::StatusCode>(code));
    handled_.Add({{"service", service}, {"method", method}, {"code", code_name}}).Increment();
    seconds_.Add({{"service", service}, {"method", method}}, LatencyBuckets()).Observe(seconds);
  }

 private:
  prometheus::Family<prometheus::Counter>& handled_;
  prometheus::Family<prometheus::Histogram>& seconds_;
};

RequestMetrics& Requests() {
  static auto* r = new RequestMetrics();
  return *r;
}

class RequestInterceptor final : public grpc::experimental::Interceptor {
 public:
  explicit RequestInterceptor(const char* method)
      : method_(method == nullptr ? "" : method), start_(std::chrono::steady_clock::now()) {}
  void Intercept(grpc::experimental::InterceptorBatchMethods* methods) override {
    if (methods->QueryInterceptionHookPoint(grpc::experimental::InterceptionHookPoints::PRE_SEND_STATUS)) {
      const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
      Requests().Record(method_, methods->GetSendStatus().error_code(), seconds);
    }
    methods->Proceed();
  }

 private:
  const std::string method_;
  const std::chrono::steady_clock::time_point start_;
};

class RequestInterceptorFactory final : public grpc::experimental::ServerInterceptorFactoryInterface {
 public:
  grpc::experimental::Interceptor* CreateServerInterceptor(grpc::experimental::ServerRpcInfo* info) override {
    return new RequestInterceptor(info->method());
  }
};

void Enable() {
  if (enabled.exchange(true)) return;
  Requests();  // the families exist from the start (a scrape shows them before any request)
  ServerInterceptorMakers().push_back([] { return std::make_unique<RequestInterceptorFactory>(); });
}

}  // namespace

bool Enabled() { return enabled.load(std::memory_order_relaxed); }

namespace {
// For the whole process (the exposer holds a weak reference to it).
const std::shared_ptr<prometheus::Registry>& RegistryShared() {
  static auto* registry = new std::shared_ptr<prometheus::Registry>(std::make_shared<prometheus::Registry>());
  return *registry;
}
}  // namespace

prometheus::Registry& Registry() { return *RegistryShared(); }

const prometheus::Histogram::BucketBoundaries& LatencyBuckets() {
  static const auto* buckets = [] {
    auto* b = new prometheus::Histogram::BucketBoundaries();
    for (double s = 0.00025; s < 70; s *= 2) b->push_back(s);
    return b;
  }();
  return *buckets;
}

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Serve(const std::string& listen, const std::string& flag) {
  if (listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen, ": expected HOST:PORT (e.g. 127.0.0.1:9464)"));
  }
  if (!security::IsLoopbackAddress(listen)) {
    return absl::FailedPreconditionError(absl::StrCat(flag, " ", listen,
                                                      ": metrics are served in plaintext, so on a loopback address "
                                                      "only (127.0.0.1 or [::1]); scrape through a local proxy"));
  }
  std::unique_ptr<Endpoint> out(new Endpoint());
  try {
    // civetweb wants [::1]:PORT as "[::1]:PORT" and 127.0.0.1:PORT as is; one serving thread.
    out->exposer_ = std::make_unique<prometheus::Exposer>(listen, /*num_threads=*/1);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat(flag, " ", listen, ": cannot listen (", e.what(), ")"));
  }
  std::vector<int> ports = out->exposer_->GetListeningPorts();
  out->port_ = ports.empty() ? 0 : ports.front();
  Enable();
  out->exposer_->RegisterCollectable(RegistryShared());
  return out;
}

Endpoint::~Endpoint() = default;

void Endpoint::Add(std::weak_ptr<prometheus::Collectable> collectable) { exposer_->RegisterCollectable(collectable); }

void EnableForTest() { Enable(); }

double CollectedForTest(const std::string& name, const std::string& label_value) {
  double v = 0;
  for (const prometheus::MetricFamily& f : Registry().Collect()) {
    if (f.name != name) continue;
    for (const prometheus::ClientMetric& m : f.metric) {
      if (!label_value.empty() && (m.label.empty() || m.label[0].value != label_value)) continue;
      v += f.type == prometheus::MetricType::Histogram ? m.histogram.sample_count
           : f.type == prometheus::MetricType::Gauge   ? m.gauge.value
                                                        : m.counter.value;
    }
  }
  return v;
}

}  // namespace mkfleet::metrics
