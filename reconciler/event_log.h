// EventLog: the controller's events (object, type, reason, message, time), kept in the store
// under /events/<sequence> with a bounded history: past `max_events` the oldest go.
//
// Repeats are folded as Kubernetes does: an event with the same object, type, reason and
// message as one still in the history replaces it with `count` + 1, its first time kept and
// its time the latest, moved to the end; so a minute of retries is one line with a count,
// not hundreds. The history is in time order: an event's time is never before the one
// recorded before it (an agent's event that arrives late takes the arrival's turn).
//
// Similar events of many objects are aggregated, as Kubernetes' EventAggregator does: once
// more than kAggregateAfter objects of one kind had an event of the same type and reason
// within kAggregateWindow, the events of further objects fold into one aggregate (name "*",
// the count, the latest object and message), so 10,000 instances turning Ready are one
// line, not a history that evicted everything else. An object already seen in the window
// keeps its own events.
// Thread-safety: safe to call concurrently.
#ifndef MKFLEET_RECONCILER_EVENT_LOG_H_
#define MKFLEET_RECONCILER_EVENT_LOG_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <tuple>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/state.pb.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

inline constexpr char kEventPrefix[] = "/events/";
inline constexpr char kAgentSeqPrefix[] = "/agentseq/";
inline constexpr char kAggregateName[] = "*";
inline constexpr size_t kAggregateAfter = 10;
inline constexpr absl::Duration kAggregateWindow = absl::Minutes(10);

// Which events a listing wants (every field optional).
struct EventFilter {
  std::string kind;
  std::string name;
  std::string type;         // "Normal" or "Warning"
  int64_t since_unix_ms = 0;  // the last occurrence at or after this time
};

// True when `event` passes `filter`.
bool EventMatches(const mkfleet::v1::Event& event, const EventFilter& filter);

class EventLog {
 public:
  // Reads the stored events to continue their sequence and fold repeats.
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(Store& store, Clock& clock, size_t max_events = 2000);

  // Stamps `event` with the time and stores it.
  absl::Status Record(mkfleet::v1::Event event);
  // Stores `events` in one transaction; those with a time keep it (an agent's), unless it
  // is before the last one's. Events with a `seq` (an agent's) also advance
  // LastAgentSeq(event.host) durably.
  absl::Status RecordAll(std::vector<mkfleet::v1::Event> events);
  // The highest agent event seq stored for `host` (0 if none), so a restarted controller
  // forwards only newer ones.
  int64_t LastAgentSeq(const std::string& host);
  // Forgets a deleted host's agent seq (the key and the memory).
  absl::Status ForgetHost(const std::string& host);
  // Stored events in time order that pass `filter`.
  absl::StatusOr<std::vector<mkfleet::v1::Event>> List(const EventFilter& filter = {});

 private:
  using FoldKey = std::tuple<std::string, std::string, std::string, std::string, std::string>;
  static FoldKey KeyOf(const mkfleet::v1::Event& e);
  // Turns `e` (at time `t`) into its aggregate when its kind, type and reason were seen for
  // too many other objects lately.
  void Aggregate(mkfleet::v1::Event& e, int64_t t) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  EventLog(Store& store, Clock& clock, size_t max_events) : store_(store), clock_(clock), max_(max_events) {}
  Store& store_;
  Clock& clock_;
  const size_t max_;
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  int64_t last_time_ ABSL_GUARDED_BY(mu_) = 0;
  // Stored events, oldest first: store key -> the event.
  std::map<std::string, mkfleet::v1::Event> stored_ ABSL_GUARDED_BY(mu_);
  absl::flat_hash_map<FoldKey, std::string> by_fold_ ABSL_GUARDED_BY(mu_);  // -> store key
  std::map<std::string, int64_t> agent_seq_ ABSL_GUARDED_BY(mu_);
  // (kind, type, reason) -> object name -> when last seen, within the window.
  std::map<std::tuple<std::string, std::string, std::string>, std::map<std::string, int64_t>> similar_
      ABSL_GUARDED_BY(mu_);
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_EVENT_LOG_H_
