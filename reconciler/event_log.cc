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
  auto seqs = store.List(kAgentSeqPrefix);
  if (!seqs.ok()) return seqs.status();
  for (const KeyValue& kv : *seqs) {
    int64_t seq = 0;
    if (absl::SimpleAtoi(kv.value, &seq)) log->agent_seq_[kv.key.substr(sizeof(kAgentSeqPrefix) - 1)] = seq;
  }
  return log;
}

absl::Status EventLog::Record(mkfleet::v1::Event event) {
  event.set_time_unix_ms(0);
  std::vector<mkfleet::v1::Event> one;
  one.push_back(std::move(event));
  return RecordAll(std::move(one));
}

absl::Status EventLog::RecordAll(std::vector<mkfleet::v1::Event> events) {
  if (events.empty()) return absl::OkStatus();
  int64_t now = absl::ToUnixMillis(clock_.Now());
  absl::MutexLock lock(&mu_);
  // Past the bound only the newest max_ of this batch are kept.
  size_t skip = events.size() > max_ ? events.size() - max_ : 0;
  std::vector<Op> ops;
  std::vector<std::string> added;
  std::map<std::string, int64_t> seqs;
  uint64_t next = next_;
  for (size_t i = 0; i < events.size(); ++i) {
    mkfleet::v1::Event& e = events[i];
    if (e.seq() > 0 && e.seq() > std::max(agent_seq_[e.host()], seqs[e.host()])) seqs[e.host()] = e.seq();
    if (i < skip) continue;
    if (e.time_unix_ms() == 0) e.set_time_unix_ms(now);
    added.push_back(Key(next++));
    ops.push_back({Op::Type::kPut, added.back(), e.SerializeAsString(), 0});
  }
  size_t total = keys_.size() + added.size();
  size_t drop = total > max_ ? std::min(total - max_, keys_.size()) : 0;
  for (size_t i = 0; i < drop; ++i) ops.push_back({Op::Type::kDelete, keys_[i], "", 0});
  for (const auto& [host, seq] : seqs) ops.push_back({Op::Type::kPut, kAgentSeqPrefix + host, std::to_string(seq), 0});
  auto rev = store_.Txn({}, ops);
  if (!rev.ok()) return rev.status();
  next_ = next;
  keys_.erase(keys_.begin(), keys_.begin() + drop);
  keys_.insert(keys_.end(), added.begin(), added.end());
  for (const auto& [host, seq] : seqs) agent_seq_[host] = seq;
  return absl::OkStatus();
}

int64_t EventLog::LastAgentSeq(const std::string& host) {
  absl::MutexLock lock(&mu_);
  auto it = agent_seq_.find(host);
  return it == agent_seq_.end() ? 0 : it->second;
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
