#include "common/metrics.h"

#include <chrono>
#include <exception>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_server.h"
#include "prometheus/exposer.h"

namespace mkfleet::metrics {
namespace {

std::atomic<bool> enabled{false};

// Host part of HOST:PORT or [HOST]:PORT.
std::string HostOf(const std::string& listen) {
  if (!listen.empty() && listen[0] == '[') return listen.substr(1, listen.find(']') - 1);
  return listen.substr(0, listen.rfind(':'));
}

bool IsLoopback(const std::string& host) {
  return host == "localhost" || host == "::1" || absl::StartsWith(host, "127.");
}

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
    handled_.Add({{"service", service}, {"method", method}, {"code", CodeName(code)}}).Increment();
    seconds_.Add({{"service", service}, {"method", method}}, LatencyBuckets()).Observe(seconds);
  }

  static const char* CodeName(grpc::StatusCode code) {
    static const char* const kNames[] = {"OK",          "CANCELLED",          "UNKNOWN",           "INVALID_ARGUMENT",
                                         "DEADLINE_EXCEEDED", "NOT_FOUND",     "ALREADY_EXISTS",    "PERMISSION_DENIED",
                                         "RESOURCE_EXHAUSTED", "FAILED_PRECONDITION", "ABORTED",  "OUT_OF_RANGE",
                                         "UNIMPLEMENTED", "INTERNAL",         "UNAVAILABLE",       "DATA_LOSS",
                                         "UNAUTHENTICATED"};
    int i = static_cast<int>(code);
    return i >= 0 && i < static_cast<int>(sizeof(kNames) / sizeof(kNames[0])) ? kNames[i] : "UNKNOWN";
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

prometheus::Histogram::BucketBoundaries LatencyBuckets() {
  prometheus::Histogram::BucketBoundaries b;
  for (double s = 0.00025; s < 70; s *= 2) b.push_back(s);
  return b;
}

absl::StatusOr<std::unique_ptr<Endpoint>> Endpoint::Serve(const std::string& listen, const std::string& flag) {
  if (listen.find(':') == std::string::npos) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen, ": expected HOST:PORT (e.g. 127.0.0.1:9464)"));
  }
  if (!IsLoopback(HostOf(listen))) {
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

}  // namespace mkfleet::metrics
