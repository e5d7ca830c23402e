// Reconciler: the controller's loop. It keeps a HostConnection to every stored Host's
// `spec.agent`, and a keyed work queue (one key per host) fed by store changes, host view
// changes and a periodic resync. A pass takes every host that is ready in the queue, plans
// the fleet once (PlanFleet over the stored objects and the host views), sends each of
// those hosts its plan in one batch (hosts in parallel) and its local policies, then
// records statuses and events in one store transaction each. Failures come back with
// per-host backoff. Action ids are deterministic per plan step and the agent journals
// them, so re-sending a plan (after a crash or before the host's view has caught up) runs
// nothing twice.
//
// Status: per KernelInstance and per InstanceSet member (phase, kernel state, placement,
// role and serving kernel, conditions Scheduled/Ready/Progressing/Degraded,
// observedGeneration, restart count), per Host (reachable, dialect, pool usage, agent
// version, conditions Reachable/PoolValid/PoolSynced) and per InstanceSet (replicas, ready,
// updated, conditions). Statuses are rebuilt from what is observed on every pass and
// written only when they change. Events: every action result, host error, scheduling
// problem and readiness, plus the agents' own watchdog events (crash, hang, restart,
// standby takeover), forwarded once each.
// Not yet: Morph (refused with a condition); InstanceSet rollout limits.
// Thread-safety: Start/Stop from one thread; passes are serialized internally.
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
  // One pass for several hosts: one plan, their batches sent in parallel. Returns each
  // host's outcome.
  std::map<std::string, absl::Status> ReconcileHosts(const std::vector<std::string>& hosts);

  int64_t actions_sent() const { return actions_sent_.load(); }
  int64_t passes() const { return passes_.load(); }
  int64_t status_writes() const { return status_writes_.load(); }
  // Hosts with a connection, and those whose Watch stream is up.
  std::pair<int, int> HostCounts();

 private:
  // Opens connections to new hosts (or hosts whose agent address changed), closes those
  // of deleted hosts, and queues every host (on a plain resync, not those backing off).
  void SyncConnections(bool objects_changed);
  struct HostOutcome {
    absl::Status sent;
    std::set<std::string> in_plan;              // kernels the plan touched
    std::map<std::string, std::string> failed;  // kernel -> why
    std::vector<mkfleet::v1::Event> events;
    std::string pool_note;  // what the pool change left as it was (resources in use)
  };
  // Sends `host` its plan and, when they changed, its local policies.
  HostOutcome RunHost(const std::string& host, HostConnection* connection, const Plan* plan,
                      const FleetPlan& fleet);
  // Computes the statuses this pass knows about and writes the changed ones.
  void RecordStatuses(const std::set<std::string>& batch, const std::vector<mkfleet::v1::Host>& hosts,
                      const std::vector<mkfleet::v1::KernelInstance>& instances,
                      const std::vector<mkfleet::v1::InstanceSet>& sets, const FleetPlan& fleet,
                      const std::map<std::string, HostView>& views, const std::map<std::string, HostOutcome>& outcomes,
                      std::vector<mkfleet::v1::Event>* events);
  void ForwardAgentEvents(const std::string& host, std::vector<mkfleet::v1::Event> events);
  void WatchStore();
  void Work();

  static mkfleet::v1::Event MakeEvent(const std::string& kind, const std::string& name, const std::string& host,
                                      bool warning, const std::string& reason, const std::string& message);

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

  // Passes run one at a time; what they remember between them.
  absl::Mutex pass_mu_;
  bool status_loaded_ ABSL_GUARDED_BY(pass_mu_) = false;
  std::map<std::string, std::string> status_cache_ ABSL_GUARDED_BY(pass_mu_);  // key -> serialized

  std::atomic<int64_t> actions_sent_{0};
  std::atomic<int64_t> status_writes_{0};
  std::atomic<int64_t> passes_{0};
  std::thread watcher_;
  std::thread worker_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_RECONCILER_H_
