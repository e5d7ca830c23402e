#include "reconciler/work_queue.h"

#include <algorithm>
#include <cmath>

namespace mkfleet::reconciler {

WorkQueue::WorkQueue(Clock& clock, WorkQueueOptions options)
    : clock_(clock), options_(options), tokens_(options.burst), refilled_(clock.Now()) {}

void WorkQueue::Enqueue(const std::string& key) {
  if (processing_.count(key)) {
    dirty_.insert(key);
    return;
  }
  if (queued_.insert(key).second) ready_.push_back(key);
}

void WorkQueue::Add(const std::string& key) {
  absl::MutexLock lock(&mu_);
  if (!shutdown_) Enqueue(key);
}

void WorkQueue::AddAfter(const std::string& key, absl::Duration delay) {
  absl::MutexLock lock(&mu_);
  if (shutdown_) return;
  if (delay <= absl::ZeroDuration()) {
    Enqueue(key);
    return;
  }
  delayed_.emplace(clock_.Now() + delay, key);
}

void WorkQueue::AddRateLimited(const std::string& key) {
  absl::Duration delay;
  {
    absl::MutexLock lock(&mu_);
    int n = failures_[key]++;
    double factor = std::ldexp(1.0, std::min(n, 60));
    delay = std::min(options_.base_delay * factor, options_.max_delay);
  }
  AddAfter(key, delay);
}

void WorkQueue::Forget(const std::string& key) {
  absl::MutexLock lock(&mu_);
  failures_.erase(key);
}

int WorkQueue::Failures(const std::string& key) {
  absl::MutexLock lock(&mu_);
  auto it = failures_.find(key);
  return it == failures_.end() ? 0 : it->second;
}

void WorkQueue::PromoteDue() {
  absl::Time now = clock_.Now();
  while (!delayed_.empty() && delayed_.begin()->first <= now) {
    Enqueue(delayed_.begin()->second);
    delayed_.erase(delayed_.begin());
  }
}

bool WorkQueue::TakeToken() {
  absl::Time now = clock_.Now();
  tokens_ = std::min<double>(options_.burst, tokens_ + absl::ToDoubleSeconds(now - refilled_) * options_.qps);
  refilled_ = now;
  if (tokens_ < 1) return false;
  tokens_ -= 1;
  return true;
}

bool WorkQueue::Get(std::string* key, absl::Duration timeout) {
  absl::MutexLock lock(&mu_);
  absl::Time deadline = absl::Now() + timeout;
  while (!shutdown_) {
    PromoteDue();
    if (!ready_.empty() && TakeToken()) {
      *key = ready_.front();
      ready_.pop_front();
      queued_.erase(*key);
      processing_.insert(*key);
      return true;
    }
    absl::Time now = absl::Now();
    if (now >= deadline) return false;
    if (!ready_.empty()) {
      // Work is waiting for a token: look again shortly, without the lock.
      mu_.Unlock();
      absl::SleepFor(std::min(deadline - now, absl::Milliseconds(1)));
      mu_.Lock();
      continue;
    }
    // Wake for new work, or soon to look at delayed keys again.
    auto has_work = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return shutdown_ || !ready_.empty(); };
    mu_.AwaitWithDeadline(absl::Condition(&has_work), std::min(deadline, now + absl::Milliseconds(5)));
  }
  return false;
}

void WorkQueue::Done(const std::string& key) {
  absl::MutexLock lock(&mu_);
  processing_.erase(key);
  if (dirty_.erase(key)) Enqueue(key);
}

void WorkQueue::ShutDown() {
  absl::MutexLock lock(&mu_);
  shutdown_ = true;
}

absl::Duration WorkQueue::NextDue() {
  absl::MutexLock lock(&mu_);
  PromoteDue();
  if (!ready_.empty()) return absl::ZeroDuration();
  if (delayed_.empty()) return absl::InfiniteDuration();
  return std::max(absl::ZeroDuration(), delayed_.begin()->first - clock_.Now());
}

size_t WorkQueue::Len() {
  absl::MutexLock lock(&mu_);
  return ready_.size() + delayed_.size();
}

}  // namespace mkfleet::reconciler
