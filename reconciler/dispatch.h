// Dispatcher: sends one host its part of a pass: the plan's actions in one fenced batch,
// then the watchdog's local policies when they changed. It keeps what that needs between
// passes: the controller's epoch (raised in the store once per controller run) and a
// sequence per host (the fence), the policies last sent per host, and a backoff per
// instance whose action failed (that action waits, doubling from `base` to `max`; the
// host's other instances go on, and so does a new plan for the instance).
// Thread-safety: Send may be called for different hosts concurrently.
#ifndef MKFLEET_RECONCILER_DISPATCH_H_
#define MKFLEET_RECONCILER_DISPATCH_H_

#include <atomic>
#include <functional>
#include <map>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/host_connection.h"
#include "reconciler/statuses.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

// The watchdog's local policies for the instances `fleet` places on `host` (KernelInstances
// and set members), the complete set so that deleted instances' policies go: failover
// (Standby names the kernel that backs it) and restart. No fence.
mkfleet::v1::SetPolicyRequest PoliciesFor(const std::string& host, const FleetPlan& fleet);

class Dispatcher {
 public:
  struct Options {
    absl::Duration backoff_base = absl::Milliseconds(5);
    absl::Duration backoff_max = absl::Seconds(1000);
    // Called when `host` should get another pass after `delay` (an instance's backoff).
    std::function<void(const std::string& host, absl::Duration delay)> retry_after;
    // Asked right before each call to `host`'s agent; false: nothing is sent (a
    // controller that is no longer the leader, or a sharded member that no longer owns the
    // host, must not act). Null: always.
    std::function<bool(const std::string& host)> may_send;
  };
  Dispatcher(Store& store, Clock& clock, Options options);

  // Sends `host` its plan (less what backs off) and, when they changed, its policies
  // (PoliciesFor).
  HostOutcome Send(const std::string& host, HostConnection& link, const Plan& plan, const FleetPlan& fleet);
  // The same with the policies given (a sharded member sends what its leader published).
  HostOutcome Send(const std::string& host, HostConnection& link, const Plan& plan,
                   const mkfleet::v1::SetPolicyRequest& policies);
  // The next call raises the epoch in the store again (a sharded member whose hosts
  // changed: batches of the members that had them before are refused from then on).
  void NewEpoch();
  // Forgets what is kept for `host` (deleted), except its fence sequence, which only rises.
  void Forget(const std::string& host);
  int64_t actions_sent() const { return actions_sent_.load(); }

 private:
  struct Backoff {
    int failures = 0;
    absl::Duration next;  // Monotonic() when its failed action may be sent again
    std::string why;
    std::string failed_id;  // the action that failed: a plan without it is a new intent
  };
  // The fence for the next call to `host`.
  mkfleet::v1::Fence NextFence(const std::string& host);
  int64_t Epoch() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void SendPolicies(const std::string& host, HostConnection& link, mkfleet::v1::SetPolicyRequest policies,
                    HostOutcome* out);

  Store& store_;
  Clock& clock_;
  const Options options_;
  absl::Mutex mu_;
  int64_t epoch_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int64_t> sequence_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::string> policies_sent_ ABSL_GUARDED_BY(mu_);  // serialized
  std::map<std::string, Backoff> backoff_ ABSL_GUARDED_BY(mu_);           // "host/kernel" ->
  std::atomic<int64_t> actions_sent_{0};
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_DISPATCH_H_
