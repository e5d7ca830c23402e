// FleetWatchdog: one watchdog for the many agents of a process that serves N emulated hosts
// (mkagent --hosts N), instead of one thread per agent polling its kernel. Every `period` it
// offers each agent a pass (Agent::TickIfDue), which runs only when something may have
// changed: a batch or a morph ran, the emulated kernel's generation moved, or a probe, a
// restart or a timed kernel change (a boot finishing) is due. An idle host then costs a
// mutex and two compares per period. `threads` threads share the agents (agent i goes to
// thread i % threads), so that one host's slow pass does not hold up all the others.
#ifndef MKFLEET_AGENTS_FLEET_WATCHDOG_H_
#define MKFLEET_AGENTS_FLEET_WATCHDOG_H_

#include <atomic>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "agents/agent.h"

namespace mkfleet::agents {

class FleetWatchdog {
 public:
  FleetWatchdog(std::vector<Agent*> agents, absl::Duration period, int threads);
  ~FleetWatchdog();
  void Start();
  void Stop();
  // Passes run so far (all agents), for tests and --bench figures.
  uint64_t passes() const { return passes_.load(std::memory_order_relaxed); }

 private:
  const std::vector<Agent*> agents_;
  const absl::Duration period_;
  const int threads_;
  absl::Notification stop_;
  std::atomic<uint64_t> passes_{0};
  std::vector<std::thread> workers_;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_FLEET_WATCHDOG_H_
