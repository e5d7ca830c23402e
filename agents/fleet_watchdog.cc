#include "agents/fleet_watchdog.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace mkfleet::agents {

FleetWatchdog::FleetWatchdog(std::vector<Agent*> agents, absl::Duration period, int threads, Wire wire,
                             Clock& clock)
    : agents_(std::move(agents)),
      period_(period),
      threads_(std::max(1, threads)),
      wire_(wire ? std::move(wire) : [this](size_t i, std::atomic<bool>* flag) { agents_[i]->SetWakeFlag(flag); }),
      clock_(clock),
      wake_(new std::atomic<bool>[agents_.size()]) {
  for (size_t i = 0; i < agents_.size(); ++i) {
    wake_[i].store(true);  // every agent's first pass
    wire_(i, &wake_[i]);
  }
}

FleetWatchdog::~FleetWatchdog() { Stop(); }

void FleetWatchdog::Start() {
  for (int t = 0; t < threads_; ++t) {
    workers_.emplace_back([this, t] {
      // When each of this thread's agents is next due by time (k-th: agent t + k * threads).
      std::vector<absl::Duration> due;
      for (size_t i = t; i < agents_.size(); i += threads_) due.push_back(absl::ZeroDuration());
      while (!stop_.HasBeenNotified()) {
        absl::Time started = absl::Now();
        const absl::Duration now = clock_.Monotonic();
        uint64_t ran = 0;
        for (size_t i = t, k = 0; i < agents_.size(); i += threads_, ++k) {
          // Cleared before the pass: a wake-up during it brings the next.
          const bool woken = wake_[i].load(std::memory_order_relaxed) && wake_[i].exchange(false);
          if (!woken && now < due[k]) continue;
          if (agents_[i]->TickIfDue()) ++ran;
          due[k] = agents_[i]->NextDue();
        }
        passes_.fetch_add(ran, std::memory_order_relaxed);
        stop_.WaitForNotificationWithDeadline(started + period_);
      }
    });
  }
}

void FleetWatchdog::Stop() {
  if (!stop_.HasBeenNotified()) stop_.Notify();
  for (auto& w : workers_) {
    if (w.joinable()) w.join();
  }
  workers_.clear();
  if (!unwired_) {
    unwired_ = true;
    for (size_t i = 0; i < agents_.size(); ++i) wire_(i, nullptr);
  }
}

}  // namespace mkfleet::agents
