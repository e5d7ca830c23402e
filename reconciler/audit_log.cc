#include "reconciler/audit_log.h"

#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

std::string KeyOf(uint64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%020llu", static_cast<unsigned long long>(seq));
  return absl::StrCat(kAuditPrefix, buf);
}

}  // namespace

absl::StatusOr<std::unique_ptr<AuditLog>> AuditLog::Open(Store& store, Clock& clock, AuditOptions options) {
  std::unique_ptr<AuditLog> log(new AuditLog(store, clock, options));
  auto kvs = store.List(kAuditPrefix);
  if (!kvs.ok()) return kvs.status();
  absl::MutexLock lock(&log->mu_);
  for (const KeyValue& kv : *kvs) {
    v1::AuditRecord r;
    uint64_t seq = 0;
    if (!r.ParseFromString(kv.value) || !absl::SimpleAtoi(kv.key.substr(sizeof(kAuditPrefix) - 1), &seq)) {
      return absl::DataLossError(absl::StrCat("store: audit record ", kv.key, " is corrupt"));
    }
    log->stored_.emplace_back(kv.key, r.time_unix_ms());
    log->next_ = std::max(log->next_, seq + 1);
  }
  return log;
}

absl::Status AuditLog::Record(v1::AuditRecord record) {
  absl::MutexLock lock(&mu_);
  int64_t now = absl::ToUnixMillis(clock_.Now());
  record.set_time_unix_ms(now);
  std::string key = KeyOf(next_);
  std::vector<Op> ops = {{Op::Type::kPut, key, record.SerializeAsString(), 0}};
  // Evict the oldest past the bound, never one younger than `retain`.
  const int64_t keep_after = now - absl::ToInt64Milliseconds(options_.retain);
  size_t evict = 0;
  while (stored_.size() + 1 - evict > options_.max_records && evict < stored_.size() &&
         stored_[evict].second < keep_after) {
    ops.push_back({Op::Type::kDelete, stored_[evict].first, "", 0});
    ++evict;
  }
  auto rev = store_.Txn({}, ops);
  if (!rev.ok()) return rev.status();
  ++next_;
  stored_.erase(stored_.begin(), stored_.begin() + evict);
  stored_.emplace_back(std::move(key), now);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::AuditRecord>> AuditLog::List(int64_t since_unix_ms, size_t limit) {
  auto kvs = store_.List(kAuditPrefix);
  if (!kvs.ok()) return kvs.status();
  std::vector<v1::AuditRecord> out;
  for (const KeyValue& kv : *kvs) {
    v1::AuditRecord r;
    if (!r.ParseFromString(kv.value)) return absl::DataLossError(absl::StrCat("store: ", kv.key, " is corrupt"));
    if (r.time_unix_ms() >= since_unix_ms) out.push_back(std::move(r));
  }
  if (limit > 0 && out.size() > limit) out.erase(out.begin(), out.end() - limit);
  return out;
}

}  // namespace mkfleet::reconciler
