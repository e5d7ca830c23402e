#include "reconciler/timed_store.h"

#include <chrono>
#include <utility>

#include "common/metrics.h"

namespace mkfleet::reconciler {
namespace {

// One operation's histogram and error counter, looked up once.
struct OpMetrics {
  prometheus::Histogram* seconds;
  prometheus::Counter* errors;
};

OpMetrics For(const char* op) {
  static auto& seconds = prometheus::BuildHistogram()
                             .Name("mkfleet_store_operation_duration_seconds")
                             .Help("Store operations (SQLite or etcd), by operation.")
                             .Register(metrics::Registry());
  static auto& errors = prometheus::BuildCounter()
                            .Name("mkfleet_store_operation_errors_total")
                            .Help("Store operations that failed, by operation.")
                            .Register(metrics::Registry());
  return {&seconds.Add({{"op", op}}, metrics::LatencyBuckets()), &errors.Add({{"op", op}})};
}

class Timed final : public Store {
  // (Defined before their callers: their return types are deduced.)
  static bool Ok(const absl::Status& s) { return s.ok(); }
  template <typename T>
  static bool Ok(const absl::StatusOr<T>& s) {
    return s.ok();
  }
  template <typename F>
  static auto Time(const OpMetrics& m, F&& f) {
    const auto start = std::chrono::steady_clock::now();
    auto result = f();
    m.seconds->Observe(std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count());
    if (!Ok(result)) m.errors->Increment();
    return result;
  }

 public:
  explicit Timed(std::unique_ptr<Store> inner) : inner_(std::move(inner)) {}

  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) override {
    return Time(get_, [&] { return inner_->Get(key); });
  }
  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) override {
    return Time(list_, [&] { return inner_->List(prefix); });
  }
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease) override {
    return Time(put_, [&] { return inner_->Put(key, value, lease); });
  }
  absl::StatusOr<int64_t> Delete(const std::string& key) override {
    return Time(delete_, [&] { return inner_->Delete(key); });
  }
  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops) override {
    return Time(txn_, [&] { return inner_->Txn(compares, ops); });
  }
  absl::StatusOr<int64_t> Revision() override {
    return Time(revision_, [&] { return inner_->Revision(); });
  }
  absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) override {
    return Time(events_, [&] { return inner_->EventsSince(after, prefix); });
  }
  absl::StatusOr<int64_t> WaitForRevision(int64_t after, absl::Duration timeout) override {
    return inner_->WaitForRevision(after, timeout);
  }
  absl::Status Compact(int64_t revision) override {
    return Time(compact_, [&] { return inner_->Compact(revision); });
  }
  absl::StatusOr<int64_t> SizeBytes() override {
    return Time(size_, [&] { return inner_->SizeBytes(); });
  }
  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    return Time(lease_, [&] { return inner_->GrantLease(ttl); });
  }
  absl::Status KeepAlive(int64_t lease) override {
    return Time(lease_, [&] { return inner_->KeepAlive(lease); });
  }
  absl::Status RevokeLease(int64_t lease) override {
    return Time(lease_, [&] { return inner_->RevokeLease(lease); });
  }
  absl::StatusOr<int> ExpireLeases() override {
    return Time(lease_, [&] { return inner_->ExpireLeases(); });
  }

 private:
  std::unique_ptr<Store> inner_;
  const OpMetrics get_ = For("get"), list_ = For("list"), put_ = For("put"), delete_ = For("delete"),
                  txn_ = For("txn"), revision_ = For("revision"), events_ = For("events"),
                  compact_ = For("compact"), size_ = For("size"), lease_ = For("lease");
};

}  // namespace

std::unique_ptr<Store> TimedStore(std::unique_ptr<Store> inner) { return std::make_unique<Timed>(std::move(inner)); }

}  // namespace mkfleet::reconciler
