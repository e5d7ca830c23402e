// WorkQueue: the reconciler's keyed queue, as controller-runtime has it. A key (a host)
// is queued once however often it is added; a key being processed is never handed to a
// second worker (added again meanwhile, it is queued once more when Done). Failed keys
// come back after a per-key exponential backoff (base * 2^failures, capped); a global
// token bucket limits how many keys are handed out per second.
// Thread-safety: all methods are safe to call concurrently.
#ifndef MKFLEET_RECONCILER_WORK_QUEUE_H_
#define MKFLEET_RECONCILER_WORK_QUEUE_H_

#include <deque>
#include <map>
#include <set>
#include <string>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace mkfleet::reconciler {

struct WorkQueueOptions {
  absl::Duration base_delay = absl::Milliseconds(5);
  absl::Duration max_delay = absl::Seconds(1000);
  double qps = 100;  // global rate limit
  int burst = 100;
};

class WorkQueue {
 public:
  WorkQueue(Clock& clock, WorkQueueOptions options = {});

  void Add(const std::string& key);
  void AddAfter(const std::string& key, absl::Duration delay);
  // After a failure: back again after this key's backoff, which doubles each time.
  void AddRateLimited(const std::string& key);
  // After a success: the key's backoff starts over.
  void Forget(const std::string& key);
  int Failures(const std::string& key);

  // The next ready key, waiting up to `timeout` (real time) for one. False on timeout or
  // after ShutDown.
  bool Get(std::string* key, absl::Duration timeout);
  // The worker is done with `key`.
  void Done(const std::string& key);
  void ShutDown();
  // Keys ready or waiting.
  size_t Len();
  // How long until a key is ready: zero if one is, InfiniteDuration if none waits.
  absl::Duration NextDue();

 private:
  void PromoteDue() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool TakeToken() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Enqueue(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Clock& clock_;
  const WorkQueueOptions options_;
  absl::Mutex mu_;
  std::deque<std::string> ready_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> queued_ ABSL_GUARDED_BY(mu_);      // in ready_
  std::set<std::string> processing_ ABSL_GUARDED_BY(mu_);
  std::set<std::string> dirty_ ABSL_GUARDED_BY(mu_);       // added while processing
  std::multimap<absl::Time, std::string> delayed_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, int> failures_ ABSL_GUARDED_BY(mu_);
  double tokens_ ABSL_GUARDED_BY(mu_);
  absl::Time refilled_ ABSL_GUARDED_BY(mu_);
  bool shutdown_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_WORK_QUEUE_H_
