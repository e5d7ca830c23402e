#include "reconciler/event_log.h"

#include <cstdio>

#include "absl/strings/numbers.h"

namespace mkfleet::reconciler {
namespace {

std::string Key(uint64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%020llu", kEventPrefix, static_cast<unsigned long long>(seq));
  return buf;
}

}  // namespace

bool EventMatches(const mkfleet::v1::Event& event, const std::string& kind, const std::string& name) {
  return (kind.empty() || event.kind() == kind) && (name.empty() || event.name() == name);
}

absl::StatusOr<std::unique_ptr<EventLog>> EventLog::Open(Store& store, Clock& clock, size_t max_events) {
  std::unique_ptr<EventLog> log(new EventLog(store, clock, max_events));
  auto kvs = store.List(kEventPrefix);
  if (!kvs.ok()) return kvs.status();
  absl::MutexLock lock(&log->mu_);
  for (const KeyValue& kv : *kvs) {
    uint64_t seq = 0;
    if (absl::SimpleAtoi(kv.key.substr(sizeof(kEventPrefix) - 1), &seq)) log->next_ = std::max(log->next_, seq + 1);
    log->keys_.push_back(kv.key);
  }
  return log;
}

absl::Status EventLog::Record(mkfleet::v1::Event event) {
  event.set_time_unix_ms(absl::ToUnixMillis(clock_.Now()));
  absl::MutexLock lock(&mu_);
  std::string key = Key(next_++);
  std::vector<Op> ops = {{Op::Type::kPut, key, event.SerializeAsString(), 0}};
  size_t drop = keys_.size() + 1 > max_ ? keys_.size() + 1 - max_ : 0;
  for (size_t i = 0; i < drop; ++i) ops.push_back({Op::Type::kDelete, keys_[i], "", 0});
  auto rev = store_.Txn({}, ops);
  if (!rev.ok()) return rev.status();
  keys_.erase(keys_.begin(), keys_.begin() + drop);
  keys_.push_back(key);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<mkfleet::v1::Event>> EventLog::List(const std::string& kind, const std::string& name) {
  auto kvs = store_.List(kEventPrefix);
  if (!kvs.ok()) return kvs.status();
  std::vector<mkfleet::v1::Event> out;
  for (const KeyValue& kv : *kvs) {
    mkfleet::v1::Event e;
    if (e.ParseFromString(kv.value) && EventMatches(e, kind, name)) out.push_back(std::move(e));
  }
  return out;
}

}  // namespace mkfleet::reconciler
