#include "agents/fleet_watchdog.h"

#include <algorithm>

#include "absl/time/clock.h"

namespace mkfleet::agents {

FleetWatchdog::FleetWatchdog(std::vector<Agent*> agents, absl::Duration period, int threads)
    : agents_(std::move(agents)), period_(period), threads_(std::max(1, threads)) {}

FleetWatchdog::~FleetWatchdog() { Stop(); }

void FleetWatchdog::Start() {
  for (int t = 0; t < threads_; ++t) {
    workers_.emplace_back([this, t] {
      while (!stop_.HasBeenNotified()) {
        absl::Time started = absl::Now();
        uint64_t ran = 0;
        for (size_t i = t; i < agents_.size(); i += threads_) {
          if (agents_[i]->TickIfDue()) ++ran;
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
}

}  // namespace mkfleet::agents
