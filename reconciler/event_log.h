// EventLog: the controller's events (object, reason, message, time), kept in the store
// under /events/<sequence> with a bounded history: past `max_events` the oldest go.
// Thread-safety: safe to call concurrently.
#ifndef MKFLEET_RECONCILER_EVENT_LOG_H_
#define MKFLEET_RECONCILER_EVENT_LOG_H_

#include <cstdint>
#include <deque>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/state.pb.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

inline constexpr char kEventPrefix[] = "/events/";
inline constexpr char kAgentSeqPrefix[] = "/agentseq/";

class EventLog {
 public:
  // Reads the stored events' keys to continue their sequence.
  static absl::StatusOr<std::unique_ptr<EventLog>> Open(Store& store, Clock& clock, size_t max_events = 2000);

  // Stamps `event` with the time and stores it.
  absl::Status Record(mkfleet::v1::Event event);
  // Stores `events` in one transaction; those with a time keep it (an agent's). Events
  // with a `seq` (an agent's) also advance LastAgentSeq(event.host) durably.
  absl::Status RecordAll(std::vector<mkfleet::v1::Event> events);
  // The highest agent event seq stored for `host` (0 if none), so a restarted controller
  // forwards only newer ones.
  int64_t LastAgentSeq(const std::string& host);
  // Stored events in order, those of `kind`/`name` only when given.
  absl::StatusOr<std::vector<mkfleet::v1::Event>> List(const std::string& kind = "", const std::string& name = "");

 private:
  EventLog(Store& store, Clock& clock, size_t max_events) : store_(store), clock_(clock), max_(max_events) {}
  Store& store_;
  Clock& clock_;
  const size_t max_;
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<std::string> keys_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int64_t> agent_seq_ ABSL_GUARDED_BY(mu_);
};

// True when `event` is about kind/name (empty matches all).
bool EventMatches(const mkfleet::v1::Event& event, const std::string& kind, const std::string& name);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_EVENT_LOG_H_
