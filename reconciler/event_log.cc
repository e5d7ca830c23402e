#include "reconciler/event_log.h"

#include <cstdio>
#include <optional>
#include <set>
#include <utility>

#include "absl/strings/numbers.h"

namespace mkfleet::reconciler {
namespace {

std::string Key(uint64_t seq) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%s%020llu", kEventPrefix, static_cast<unsigned long long>(seq));
  return buf;
}

// When a stored event first happened (events stored before folding have no first time).
int64_t FirstTime(const mkfleet::v1::Event& e) { return e.first_unix_ms() ? e.first_unix_ms() : e.time_unix_ms(); }

}  // namespace

bool EventMatches(const mkfleet::v1::Event& event, const EventFilter& f) {
  return (f.kind.empty() || event.kind() == f.kind) && (f.name.empty() || event.name() == f.name) &&
         (f.type.empty() || event.type() == f.type) && event.time_unix_ms() >= f.since_unix_ms;
}

EventLog::FoldKey EventLog::KeyOf(const mkfleet::v1::Event& e) {
  // An aggregate's message names its latest object: not part of what it folds by.
  if (e.name() == kAggregateName) return {e.kind(), e.name(), e.type(), e.reason(), ""};
  return {e.kind(), e.name(), e.type(), e.reason(), e.message()};
}

void EventLog::Aggregate(mkfleet::v1::Event& e, int64_t t) {
  if (e.name().empty() || e.name() == kAggregateName) return;
  auto& recent = similar_[{e.kind(), e.type(), e.reason()}];
  for (auto it = recent.begin(); it != recent.end();) {  // older than the window: forgotten
    it = it->second < t - absl::ToInt64Milliseconds(kAggregateWindow) ? recent.erase(it) : std::next(it);
  }
  const bool known = recent.count(e.name()) > 0;
  if (!known && recent.size() >= kAggregateAfter) {
    e.set_message(absl::StrCat("similar events of many ", e.kind(), "s; the latest: ", e.name(), ": ", e.message()));
    e.set_name(kAggregateName);
    return;
  }
  recent[e.name()] = t;
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
  // Changed in place, each change with its undo, so that a transaction the store refuses
  // leaves the memory as it was. (Copying the whole history instead made every call cost
  // the history's size: the controller's top cost with a thousand hosts reporting.)
  std::vector<std::pair<std::string, std::optional<mkfleet::v1::Event>>> undo_stored;
  std::vector<std::pair<FoldKey, std::optional<std::string>>> undo_fold;
  auto erase_stored = [&](std::map<std::string, mkfleet::v1::Event>::iterator it) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    undo_stored.emplace_back(it->first, std::move(it->second));
    stored_.erase(it);
  };
  auto set_fold = [&](FoldKey key, std::optional<std::string> value) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    auto it = by_fold_.find(key);
    std::optional<std::string> before;
    if (it != by_fold_.end()) before = it->second;
    if (value) {
      by_fold_[key] = *value;
    } else if (it != by_fold_.end()) {
      by_fold_.erase(it);
    }
    undo_fold.emplace_back(std::move(key), std::move(before));
  };
  std::map<std::string, int64_t> seqs;
  std::map<std::string, std::string> puts;  // key -> value
  std::set<std::string> deletes;
  uint64_t next = next_;
  int64_t last_time = last_time_;
  // Past the bound only the newest max_ of this batch can stay (every event stored before it
  // goes too): the older ones are only folded into their later repeats (count and first
  // time), never stored, so a pass that reports ten thousand instances holds max_ of them.
  const size_t skip = events.size() > max_ ? events.size() - max_ : 0;
  struct Carried {
    int64_t count;
    int64_t first;
  };
  absl::flat_hash_map<FoldKey, Carried> carried;
  for (size_t i = 0; i < events.size(); ++i) {
    mkfleet::v1::Event& e = events[i];
    if (e.seq() > 0) {
      auto known = agent_seq_.find(e.host());
      int64_t highest = std::max(known == agent_seq_.end() ? 0 : known->second, seqs[e.host()]);
      if (e.seq() > highest) seqs[e.host()] = e.seq();
    }
    // In time order: never before the last one recorded.
    int64_t t = e.time_unix_ms() == 0 ? now : e.time_unix_ms();
    last_time = std::max(last_time, t);
    e.set_time_unix_ms(last_time);
    e.set_count(1);
    e.set_first_unix_ms(last_time);
    Aggregate(e, last_time);
    FoldKey fold = KeyOf(e);
    auto carry = carried.find(fold);
    if (i < skip) {
      if (carry != carried.end()) {
        ++carry->second.count;
        continue;
      }
      Carried start{1, last_time};
      auto folded = by_fold_.find(fold);
      auto old = folded == by_fold_.end() ? stored_.end() : stored_.find(folded->second);
      if (old != stored_.end()) {
        start.count += old->second.count();
        start.first = FirstTime(old->second);
      }
      carried.emplace(std::move(fold), start);
      continue;
    }
    auto folded = by_fold_.find(fold);
    if (carry != carried.end()) {
      // Its stored repeat, if any, is counted in the carry and goes with the bound below.
      e.set_count(carry->second.count + 1);
      e.set_first_unix_ms(carry->second.first);
      carried.erase(carry);
    } else if (folded != by_fold_.end()) {
      auto old = stored_.find(folded->second);
      if (old != stored_.end()) {
        e.set_count(old->second.count() + 1);
        e.set_first_unix_ms(FirstTime(old->second));
        if (puts.erase(old->first) == 0) deletes.insert(old->first);
        erase_stored(old);
      }
    }
    std::string key = Key(next++);
    set_fold(std::move(fold), key);
    puts[key] = e.SerializeAsString();
    undo_stored.emplace_back(key, std::nullopt);
    stored_.emplace(key, std::move(e));
  }
  // The bound: the oldest go.
  while (stored_.size() > max_) {
    auto oldest = stored_.begin();
    if (puts.erase(oldest->first) == 0) deletes.insert(oldest->first);
    FoldKey fold = KeyOf(oldest->second);
    auto f = by_fold_.find(fold);
    if (f != by_fold_.end() && f->second == oldest->first) set_fold(std::move(fold), std::nullopt);
    erase_stored(oldest);
  }
  std::vector<Op> ops;
  for (const std::string& key : deletes) ops.push_back({Op::Type::kDelete, key, "", 0});
  for (auto& [key, value] : puts) ops.push_back({Op::Type::kPut, key, std::move(value), 0});
  for (const auto& [host, seq] : seqs) ops.push_back({Op::Type::kPut, kAgentSeqPrefix + host, std::to_string(seq), 0});
  auto rev = store_.Txn({}, ops);
  if (!rev.ok()) {
    for (auto u = undo_fold.rbegin(); u != undo_fold.rend(); ++u) {
      if (u->second) {
        by_fold_[u->first] = *u->second;
      } else {
        by_fold_.erase(u->first);
      }
    }
    for (auto u = undo_stored.rbegin(); u != undo_stored.rend(); ++u) {
      if (u->second) {
        stored_[u->first] = std::move(*u->second);
      } else {
        stored_.erase(u->first);
      }
    }
    return rev.status();
  }
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
