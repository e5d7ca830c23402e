#include "reconciler/watch_hub.h"

#include <algorithm>

#include "absl/strings/match.h"

namespace mkfleet::reconciler {

WatchHub::WatchHub(Store& store, WatchHubOptions options) : store_(store), options_(std::move(options)) {
  auto rev = store_.Revision();
  int64_t start = rev.ok() ? *rev : 0;
  {
    absl::MutexLock lock(&mu_);
    floor_ = revision_ = start;
  }
  thread_ = std::thread([this] { Run(); });
}

WatchHub::~WatchHub() { Stop(); }

void WatchHub::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stop_ && !thread_.joinable()) return;
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
  Notify();
}

void WatchHub::Subscribe(std::weak_ptr<Listener> listener) {
  absl::MutexLock lock(&mu_);
  listeners_.push_back(std::move(listener));
}

void WatchHub::Notify() {
  std::vector<std::shared_ptr<Listener>> live;
  {
    absl::MutexLock lock(&mu_);
    std::vector<std::weak_ptr<Listener>> kept;
    for (auto& w : listeners_) {
      if (auto l = w.lock()) {
        live.push_back(std::move(l));
        kept.push_back(w);
      }
    }
    listeners_ = std::move(kept);
  }
  for (auto& l : live) l->OnChanges();
}

void WatchHub::Run() {
  int64_t seen;
  {
    absl::MutexLock lock(&mu_);
    seen = revision_;
  }
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
    }
    auto next = store_.WaitForRevision(seen, absl::Milliseconds(200));
    if (!next.ok() || *next <= seen) continue;
    std::vector<Event> fresh;
    bool gap = false;
    for (const std::string& prefix : options_.prefixes) {
      auto events = store_.EventsSince(seen, prefix);
      if (events.status().code() == absl::StatusCode::kOutOfRange) {
        gap = true;  // compacted past us: streams behind this point start again
        break;
      }
      if (!events.ok()) break;
      for (Event& e : *events) {
        if (e.revision > *next) continue;
        if (options_.keys_only) std::string().swap(e.value);
        fresh.push_back(std::move(e));
      }
    }
    std::sort(fresh.begin(), fresh.end(), [](const Event& a, const Event& b) { return a.revision < b.revision; });
    absl::ReleasableMutexLock lock(&mu_);
    if (gap) {
      changes_.clear();
      bytes_ = 0;
      floor_ = *next;
    } else {
      for (Event& e : fresh) {
        bytes_ += e.key.size() + e.value.size();
        changes_.push_back(std::move(e));
      }
      while (!changes_.empty() && (changes_.size() > options_.max_changes || bytes_ > options_.max_bytes)) {
        floor_ = changes_.front().revision;
        bytes_ -= changes_.front().key.size() + changes_.front().value.size();
        changes_.pop_front();
      }
    }
    revision_ = seen = *next;
    lock.Release();
    Notify();
  }
}

absl::StatusOr<std::vector<Event>> WatchHub::Next(int64_t after, const std::string& prefix, absl::Duration timeout,
                                                   int64_t* seen) {
  absl::MutexLock lock(&mu_);
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stop_ || revision_ > after; };
  mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
  if (stop_) return absl::UnavailableError("the controller is stopping");
  *seen = std::max(after, revision_);
  std::vector<Event> out;
  if (revision_ <= after) return out;
  if (after < floor_) {
    return absl::OutOfRangeError("the changes after this revision are no longer kept; start again from a snapshot");
  }
  auto first = std::upper_bound(changes_.begin(), changes_.end(), after,
                                [](int64_t r, const Event& e) { return r < e.revision; });
  for (auto it = first; it != changes_.end(); ++it) {
    if (absl::StartsWith(it->key, prefix)) out.push_back(*it);
  }
  return out;
}

}  // namespace mkfleet::reconciler
