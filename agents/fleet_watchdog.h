// FleetWatchdog: one watchdog for the many agents of a process that serves N emulated hosts
// (mkagent --hosts N), instead of one thread per agent polling its kernel. Every `period` it
// passes the agents that need it (Agent::TickIfDue): those whose wake flag was set (a batch
// or a morph ran, new policies came, the emulated kernel changed: both set it, see
// WakeFlag) and those whose time is due (a probe, a restart, a timed kernel change: the
// agent's NextDue after its last pass). An idle host then costs a byte and a time compared
// per period, in arrays the period walks in order (not a look into each agent: at 10,000
// hosts that walk was a fifth of the harness's CPU). `threads` threads share the agents
// (agent i goes to thread i % threads), so that one host's slow pass does not hold up all
// the others.
#ifndef MKFLEET_AGENTS_FLEET_WATCHDOG_H_
#define MKFLEET_AGENTS_FLEET_WATCHDOG_H_

#include <atomic>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/synchronization/notification.h"
#include "absl/time/time.h"
#include "agents/agent.h"
#include "common/clock.h"

namespace mkfleet::agents {

class FleetWatchdog {
 public:
  // `wire(i, flag)` gives agent i's wake flag to what may set it (the agent and its emulated
  // kernel: Agent::SetWakeFlag, EmulatedKernel::SetWakeFlag), and is called with null once
  // the watchdog has stopped (they must outlive that). Null: the agents only. `clock`: the
  // agents' (their NextDue is on its Monotonic()).
  using Wire = std::function<void(size_t i, std::atomic<bool>* flag)>;
  FleetWatchdog(std::vector<Agent*> agents, absl::Duration period, int threads, Wire wire = nullptr,
                Clock& clock = Clock::Real());
  ~FleetWatchdog();
  void Start();
  void Stop();
  // Passes run so far (all agents), for tests and --bench figures.
  uint64_t passes() const { return passes_.load(std::memory_order_relaxed); }

 private:
  const std::vector<Agent*> agents_;
  const absl::Duration period_;
  const int threads_;
  const Wire wire_;
  Clock& clock_;
  const std::unique_ptr<std::atomic<bool>[]> wake_;
  absl::Notification stop_;
  bool unwired_ = false;
  std::atomic<uint64_t> passes_{0};
  std::vector<std::thread> workers_;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_FLEET_WATCHDOG_H_
