// Reconciler: the controller's loop. It keeps a HostConnection to every stored Host's
// `spec.agent`, and a keyed work queue (one key per host) fed by store changes, host view
// changes and a periodic resync. A worker takes a host, runs PlanFleet over the stored
// objects and the host views, and sends that host's plan to its agent in one batch.
// Failures come back with per-host backoff. Action ids are deterministic per plan step and
// the agent journals them, so re-sending a plan (after a crash or before the host's view
// has caught up) runs nothing twice.
//
// Each pass records the status of the host's KernelInstances (phase, kernel state,
// placement, conditions Scheduled/Ready/Progressing/Degraded, observedGeneration).
// Not yet: events; host and set status; Morph; PoolChange; policies.
// Thread-safety: Start/Stop from one thread; the rest is internal.
#ifndef MKFLEET_RECONCILER_RECONCILER_H_
#define MKFLEET_RECONCILER_RECONCILER_H_

#include <atomic>
#include <map>
#include <set>
#include <vector>
#include <memory>
#include <string>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "reconciler/event_log.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/host_connection.h"
#include "reconciler/objects.h"
#include "reconciler/store.h"
#include "reconciler/work_queue.h"

namespace mkfleet::reconciler {

struct ReconcilerOptions {
  absl::Duration resync = absl::Seconds(30);
  absl::Duration unreachable_after = absl::Seconds(10);
};

class Reconciler {
 public:
  // `events` (may be null) receives an event for every action result, host error and
  // status transition (scheduled or not, ready).
  Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options = {}, EventLog* events = nullptr);
  ~Reconciler();

  void Start();
  void Stop();

  // One pass for `host`: plan the fleet, send this host's actions. Returns why it failed.
  absl::Status ReconcileHost(const std::string& host);

  int64_t actions_sent() const { return actions_sent_.load(); }
  int64_t passes() const { return passes_.load(); }

 private:
  // Opens connections to new hosts (or hosts whose agent address changed), closes those
  // of deleted hosts, and queues every host.
  void SyncConnections();
  // Writes the status of the KernelInstances this host runs or should run (only when it
  // changed, so converged passes write nothing).
  void RecordStatus(const std::string& host, const std::vector<mkfleet::v1::KernelInstance>& instances,
                    const FleetPlan& fleet, const HostView& view, const std::set<std::string>& in_plan,
                    const std::map<std::string, std::string>& failed, const absl::Status& sent);
  void WatchStore();
  void Work();

  void Emit(const std::string& kind, const std::string& name, const std::string& host, bool warning,
            const std::string& reason, const std::string& message);

  Store& store_;
  Objects& objects_;
  EventLog* events_;
  Clock& clock_;
  const ReconcilerOptions options_;
  WorkQueue queue_;

  absl::Mutex mu_;
  std::map<std::string, std::pair<std::string, std::unique_ptr<HostConnection>>> connections_
      ABSL_GUARDED_BY(mu_);  // host -> (agent address, connection)
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;

  // The policies last sent to each host (serialized), so unchanged ones are not re-sent.
  std::map<std::string, std::string> policies_sent_ ABSL_GUARDED_BY(mu_);

  std::atomic<int64_t> actions_sent_{0};
  std::atomic<int64_t> passes_{0};
  std::thread watcher_;
  std::thread worker_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_RECONCILER_H_
