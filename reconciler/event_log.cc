#include "reconciler/event_log.h"

#include <cstdio>
#include <set>

#include "absl/strings/numbers.h"

namespace mkfleet::reconciler {
namespace {

std::string Key(uint64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%020llu", kEventPrefix, static_cast<unsigned long long>(seq));
  return buf;
}

}  // namespace

bool EventMatches(const mkfleet::v1::Event& event, const EventFilter& f) {
  return (f.kind.empty() || event.kind() == f.kind) && (f.name.empty() || event.name() == f.name) &&
         (f.type.empty() || event.type() == f.type) && event.time_unix_ms() >= f.since_unix_ms;
}

EventLog::FoldKey EventLog::KeyOf(const mkfleet::v1::Event& e) {
  return {e.kind(), e.name(), e.type(), e.reason(), e.message()};
}

absl::StatusOr<std::unique_ptr<EventLog>> EventLog::Open(Store& store, Clock& clock, size_t max_events) {
  std::unique_ptr<EventLog> log(new EventLog(store, clock, max_events));
  auto kvs = store.List(kEventPrefix);
  if (!kvs.ok()) return kvs.status();
  absl::MutexLock lock(&log->mu_);
  for (const KeyValue& kv : *kvs) {
    uint64_t seq = 0;
    if (absl::SimpleAtoi(kv.key.substr(sizeof(kEventPrefix) - 1), &seq)) log->next_ = std::max(log->next_, seq + 1);
    mkfleet::v1::Event e;
    if (!e.ParseFromString(kv.value)) continue;
    log->last_time_ = std::max(log->last_time_, e.time_unix_ms());
    log->by_fold_[KeyOf(e)] = kv.key;
    log->stored_[kv.key] = std::move(e);
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
  // Worked on copies, committed only when the store took the transaction.
  std::map<std::string, mkfleet::v1::Event> stored = stored_;
  std::map<FoldKey, std::string> by_fold = by_fold_;
  std::map<std::string, int64_t> seqs;
  std::map<std::string, std::string> puts;  // key -> value
  std::set<std::string> deletes;
  uint64_t next = next_;
  int64_t last_time = last_time_;
  for (mkfleet::v1::Event& e : events) {
    if (e.seq() > 0 && e.seq() > std::max(agent_seq_[e.host()], seqs[e.host()])) seqs[e.host()] = e.seq();
    // In time order: never before the last one recorded.
    int64_t t = e.time_unix_ms() == 0 ? now : e.time_unix_ms();
    last_time = std::max(last_time, t);
    e.set_time_unix_ms(last_time);
    e.set_count(1);
    e.set_first_unix_ms(last_time);
    auto folded = by_fold.find(KeyOf(e));
    if (folded != by_fold.end()) {
      auto old = stored.find(folded->second);
      if (old != stored.end()) {
        e.set_count(old->second.count() + 1);
        e.set_first_unix_ms(old->second.first_unix_ms() ? old->second.first_unix_ms() : old->second.time_unix_ms());
        if (puts.erase(old->first) == 0) deletes.insert(old->first);
        stored.erase(old);
      }
    }
    std::string key = Key(next++);
    by_fold[KeyOf(e)] = key;
    puts[key] = e.SerializeAsString();
    stored[key] = std::move(e);
  }
  // The bound: the oldest go.
  while (stored.size() > max_) {
    auto oldest = stored.begin();
    if (puts.erase(oldest->first) == 0) deletes.insert(oldest->first);
    auto f = by_fold.find(KeyOf(oldest->second));
    if (f != by_fold.end() && f->second == oldest->first) by_fold.erase(f);
    stored.erase(oldest);
  }
  std::vector<Op> ops;
  for (const std::string& key : deletes) ops.push_back({Op::Type::kDelete, key, "", 0});
  for (auto& [key, value] : puts) ops.push_back({Op::Type::kPut, key, std::move(value), 0});
  for (const auto& [host, seq] : seqs) ops.push_back({Op::Type::kPut, kAgentSeqPrefix + host, std::to_string(seq), 0});
  auto rev = store_.Txn({}, ops);
  if (!rev.ok()) return rev.status();
  stored_ = std::move(stored);
  by_fold_ = std::move(by_fold);
  next_ = next;
  last_time_ = last_time;
  for (const auto& [host, seq] : seqs) agent_seq_[host] = seq;
  return absl::OkStatus();
}

int64_t EventLog::LastAgentSeq(const std::string& host) {
  absl::MutexLock lock(&mu_);
  auto it = agent_seq_.find(host);
  return it == agent_seq_.end() ? 0 : it->second;
}

absl::Status EventLog::ForgetHost(const std::string& host) {
  absl::MutexLock lock(&mu_);
  if (!agent_seq_.erase(host)) return absl::OkStatus();
  auto rev = store_.Txn({}, {{Op::Type::kDelete, kAgentSeqPrefix + host, "", 0}});
  return rev.status();
}

absl::StatusOr<std::vector<mkfleet::v1::Event>> EventLog::List(const EventFilter& filter) {
  absl::MutexLock lock(&mu_);
  std::vector<mkfleet::v1::Event> out;
  for (const auto& [key, e] : stored_) {
    if (EventMatches(e, filter)) out.push_back(e);
  }
  return out;
}

}  // namespace mkfleet::reconciler
