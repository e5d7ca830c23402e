// Reconciler: the controller's loop. It keeps a HostConnection to every stored Host's
// `spec.agent`, and a keyed work queue (one key per host) fed by store changes, host view
// changes and a periodic resync. A pass takes every host that is ready in the queue, plans
// the fleet once (PlanFleet over the stored objects and the host views), sends each of
// those hosts its plan in one fenced batch (hosts in parallel) and its local policies, then
// records statuses (ComputeStatuses) and events in one store transaction each.
//
// Early send: a pass whose batch hosts are concerned only by changes of KernelInstances
// pinned to them (spec.host), while the last whole pass found nothing waiting, held or
// unschedulable anywhere (no rollout, no RolloutPolicy), nothing to do on those hosts and
// nothing on its way to them, and their views have not changed since, first plans just those hosts (their
// pinned instances, what runs there, sets keeping exactly their members) and sends them
// that, then plans the whole fleet as always. A change then reaches its agent without
// waiting for a plan of 10,000 hosts; the whole pass that follows finds the same actions
// (same ids: the agent runs them once). It sends early only actions for those pinned
// instances; anything else (a set member, an instance elsewhere) leaves it to the pass.
//
// Local pass: when such an early send (or the same reading with nothing to send) leaves
// no set member's status changed, it stands for the whole pass: the batch hosts' statuses
// and drift are recorded from that part of the plan and no whole-fleet plan follows (the
// rest of the fleet's plan cannot have changed: only pinned instances of these hosts did).
// A host a local pass served stays eligible with its new view (the report of what was just
// sent, a pinned instance's restart), as long as what it needs is only its pinned
// instances' actions. With check_early_sends (the simulation) the whole pass still runs
// after it and must find nothing more to do: no other action, no status to write, and no
// host that was idle at its current view given work (a mismatch otherwise).
//
// Failures: a host whose call fails backs off (5 ms doubling to 1000 s); an instance whose
// action fails backs off on its own (its actions are held back, the host's others go on).
// Action ids are deterministic per (plan step, observed version) and the agent journals
// them, so re-sending a plan runs nothing twice; fences (an epoch raised at every start,
// a sequence per host) make the agent refuse a delayed older batch.
//
// A deleted Host is drained (its kernels deleted) and removed once empty. History is
// compacted to a window on every resync.
//
// Two ways to drive it: Start() runs it on threads (a store watcher, a worker, and the host
// connections: one thread each, or a pool of a few, as mkcontroller does); or Step() does one round without blocking or
// threads, on the injected clock, for a driver that owns time (the fleet simulation).
// Thread-safety: Start/Stop/Step from one thread; passes are serialized internally.
#ifndef MKFLEET_RECONCILER_RECONCILER_H_
#define MKFLEET_RECONCILER_RECONCILER_H_

#include <atomic>
#include <functional>
#include <iostream>
#include <map>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/controller.pb.h"
#include "reconciler/drift.h"
#include "reconciler/agent_client.h"
#include "reconciler/controller_metrics.h"
#include "reconciler/dispatch.h"
#include "reconciler/event_log.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/host_connection.h"
#include "reconciler/objects.h"
#include "reconciler/statuses.h"
#include "reconciler/rollouts.h"
#include "reconciler/shards.h"
#include "reconciler/store.h"
#include "reconciler/work_queue.h"

namespace mkfleet::reconciler {

struct ReconcilerOptions {
  absl::Duration resync = absl::Seconds(30);
  absl::Duration unreachable_after = absl::Seconds(10);
  absl::Duration call_timeout = absl::Seconds(10);
  // Makes the client for a host's agent (default: gRPC to `address` with agent_tls).
  std::function<std::unique_ptr<AgentClient>(const std::string& host, const std::string& address)> client_factory;
  // The controller's credentials for dialling agents (each must present its Host's
  // certificate); null: plaintext (in-process tests).
  std::shared_ptr<const security::ClientTls> agent_tls;
  // Hosts whose batches are sent at once (1: one after the other, deterministic).
  int parallel_sends = 32;
  // Start(): the host connections run on a pool of this many threads (0: a thread each).
  int connection_threads = 0;
  // Store revisions of history kept (older history is compacted on every resync).
  int64_t history_window = 10000;
  // Per-host retry backoff after a failed pass (house default: 5 ms doubling to 1000 s).
  absl::Duration host_backoff_max = absl::Seconds(1000);
  // Per-instance retry backoff after a failed action.
  absl::Duration instance_backoff_base = absl::Milliseconds(5);
  absl::Duration instance_backoff_max = absl::Seconds(1000);
  // Where the loop reports its own errors (a host's failed pass, a store write), one line
  // each; null: nowhere (the simulation, which reports through statuses and events).
  std::ostream* log = &std::cerr;
  // Keeps the last pass's whole plan for LastPlanForTest (the simulation's invariants); off,
  // a pass does not hold the previous fleet's plan while it builds the next.
  bool keep_last_plan = false;
  // Keep counts of the KernelInstances by phase and by host from the statuses written (the
  // console's fleet page; metrics keep them too).
  bool count_instances = false;
  // Asked right before each call to an agent and before each threaded pass (null: always
  // yes): false while this controller is not the leader of its control plane
  // (Election::IsLeader). A follower's loop keeps its connections and views and runs no
  // pass.
  std::function<bool()> may_act;
  // Early sends (see Reconciler); false: every pass plans the whole fleet before it sends.
  bool early_send = true;
  // Early sends: also plan the whole fleet from the same inputs and send
  // early only when the batch hosts' actions are the same (a mismatch is counted and
  // logged, nothing goes early). For the simulation and tests: it costs a whole plan.
  bool check_early_sends = false;
  // A pass that takes at least this long (wall clock) logs its phases; zero: none does.
  absl::Duration slow_pass = absl::Seconds(1);
  // What a host without spec.driftPolicy does about changes made outside mkfleet.
  mkfleet::v1::DriftPolicy drift_policy = mkfleet::v1::DRIFT_CORRECT;
  // A sharded control plane (mkcontroller --shards; null: not sharded): which hosts this
  // member sends to. The leader (may_act) still plans the whole fleet, with a connection to
  // every host: it sends the hosts it owns their plans and publishes the others' in the
  // store (`/shards/work/<host>`: actions and policies). Every member keeps connections to
  // the hosts it is assigned, sends each what the leader published for it (each change
  // once, again after a failure, fenced with its own epoch, raised whenever the members
  // change) and reports the outcome (`/shards/report/<host>`), which the leader's statuses
  // take as that host's. The agents' events go to the store from the host's owner only.
  const ShardMap* shards = nullptr;
};

class Reconciler {
 public:
  // `events` (may be null) receives an event for every action failure, host error and
  // status transition (scheduled or not, ready).
  Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options = {}, EventLog* events = nullptr);
  ~Reconciler();

  // Threads: the store watcher, the worker, the host connections.
  void Start();
  void Stop();

  // One round without threads or blocking: notices object changes (and the resync),
  // polls every host connection, and runs a pass for the hosts that are due.
  void Step();
  // The next time (Clock::Monotonic) something is due in the work queue: a driver may
  // skip to it.
  absl::Duration NextDue();

  // Sharded: the members (or this member's leadership) changed. The watcher opens and
  // closes connections for the new assignment, raises the epoch for the next batches and
  // sends every owned host its published work again. Cheap: callable from the election's
  // thread.
  void ShardsChanged() { shards_changed_ = true; }

  // One pass for `host`: plan the fleet, send this host's actions. Returns why it failed.
  absl::Status ReconcileHost(const std::string& host);
  // One pass for several hosts: one plan, their batches sent in parallel. Returns each
  // host's outcome.
  std::map<std::string, absl::Status> ReconcileHosts(const std::vector<std::string>& hosts);

  // Previews what applying `objects` (in place of the stored ones of the same kind and
  // name) would do to running kernels: per "Kind/name", lines such as "would re-create
  // web-1 on node-a: the boot CPU 4 is not in the new placement".
  std::map<std::string, std::vector<std::string>> Preview(const std::vector<mkfleet::v1::Object>& objects);

  // kmorphctl's verbs (controller.proto MorphRequest) on the instance `request.name`:
  // FailedPrecondition for a refusal (no morph in progress, already committed, nothing to
  // update), NotFound for an instance that is not placed.
  absl::StatusOr<mkfleet::v1::MorphResponse> Morph(const mkfleet::v1::MorphRequest& request);

  // The sets' rollouts (`mkapply rollout`): records, pause and resume, undo's template.
  Rollouts& rollouts() { return rollouts_; }

  int64_t actions_sent() const { return dispatcher_.actions_sent(); }
  int64_t passes() const { return passes_.load(); }
  // The hosts of all passes' batches, summed (a pass over 3 hosts counts 3).
  int64_t hosts_reconciled() const { return hosts_reconciled_.load(); }
  int64_t status_writes() const { return status_writes_.load(); }
  // Batches sent early (see above), and with check_early_sends, those whose whole-fleet
  // plan differed (a defect: then nothing was sent early).
  int64_t early_sends() const { return early_sends_.load(); }
  int64_t early_send_mismatches() const { return early_send_mismatches_.load(); }
  // Passes a local pass stood for (no whole-fleet plan; see above).
  int64_t local_passes() const { return local_passes_.load(); }
  // Hosts with a connection, and those whose Watch stream is up.
  std::pair<int, int> HostCounts();
  // The topology `host`'s agent reported: NotFound when this controller has no connection
  // to the host (not a Host, or another member's shard), Unavailable before its agent's
  // first inventory.
  absl::StatusOr<std::shared_ptr<const planner::Topology>> HostTopology(const std::string& host);
  // KernelInstances by the phase of their stored status (counted only with metrics on).
  std::map<std::string, int64_t> PhaseCounts() {
    absl::MutexLock lock(&phases_mu_);
    return phase_counts_;
  }
  // KernelInstances placed on each host, from their stored statuses (with count_instances or
  // metrics on).
  std::map<std::string, int64_t> InstancesByHost() {
    absl::MutexLock lock(&phases_mu_);
    return host_counts_;
  }
  // Instances whose status shows a live update, by its phase (with metrics on).
  std::map<std::string, int64_t> MorphCounts() {
    absl::MutexLock lock(&phases_mu_);
    return morph_counts_;
  }
  // The rollouts as the last whole pass left them (with metrics on).
  std::map<std::string, metrics::RolloutGauge> RolloutGauges() {
    absl::MutexLock lock(&phases_mu_);
    return rollout_gauges_;
  }
  // Hosts waiting in the work queue (ready or backing off).
  size_t QueueDepth() { return queue_.Len(); }
  // For tests: the last whole pass found the fleet settled (a pinned change may be sent
  // early; waits for a pass in progress).
  bool SettledForTest() {
    absl::MutexLock pass(&pass_mu_);
    return settled_.valid;
  }
  // The last pass's plan (for tests and the simulation's invariants).
  // The last pass's plan; empty unless options.keep_last_plan.
  FleetPlan LastPlanForTest();

 private:
  // options_.log, or a stream that drops what it is given.
  std::ostream& Log();
  struct Connection {
    std::string address;
    std::shared_ptr<HostConnection> link;
  };
  struct Objects_ {
    std::vector<mkfleet::v1::Host> hosts;
    std::vector<mkfleet::v1::KernelInstance> instances;
    std::vector<mkfleet::v1::InstanceSet> sets;
    std::vector<mkfleet::v1::RolloutPolicy> policies;
  };

  absl::StatusOr<Objects_> ReadObjects();
  // Opens connections to new hosts (or hosts whose agent address changed), closes those
  // of deleted hosts, and queues every host (on a plain resync, not those backing off);
  // after a change of objects that concerns only some hosts (`concerned`), only those.
  void SyncConnections(bool objects_changed, const std::set<std::string>* concerned = nullptr);
  // The hosts a change of objects concerns, or false when it may concern any: a Host's own;
  // a KernelInstance fixed to a host: that host and the one the last pass placed it on.
  // (A host whose plan the pass changes all the same gets a pass of its own after it.)
  bool HostsConcerned(const std::vector<Event>& events, std::set<std::string>* hosts);
  // Looks at the store once (waiting up to `wait` for a new revision) and resyncs when due.
  void PollStore(absl::Duration wait);
  // Takes the hosts due in the queue (waiting up to `wait` for the first) and runs a pass.
  void RunDue(absl::Duration wait);
  void RecordStatuses(const std::set<std::string>& batch, const Objects_& objects, const FleetPlan& fleet,
                      const std::map<std::string, HostView>& views, const std::map<std::string, HostOutcome>& outcomes,
                      const RolloutPass& rollouts, const DriftPass& drift, std::vector<mkfleet::v1::Event> events)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // The early send for `batch` when it may go (see the class comment): kNone when it may
  // not, kSent when it sent and the whole pass follows, kDone when it was a local pass
  // (`result` then holds each batch host's outcome; with check_early_sends the whole pass
  // still follows, as a check). A batch host whose view does not show its last batch yet
  // is left out (nothing sent; its view showing it brings it round again): with no host
  // left, a local pass that did nothing.
  enum class Early { kNone, kSent, kDone };
  // A host left out of a pass because its view does not show its last batch yet comes
  // round when it does (its connection says so); this is in case nothing does (as long
  // as the connection's settle timeout).
  static constexpr absl::Duration kSettleRecheck = absl::Seconds(5);
  Early EarlySend(const std::vector<std::string>& batch, std::map<std::string, absl::Status>* result)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // Queues `hosts` after a look at the store: those `concerned` when objects changed (all
  // when null), else those not backing off.
  void QueueHosts(const std::vector<std::string>& hosts, bool objects_changed, const std::set<std::string>* concerned);
  // A hash of a plan's action ids (a pass requeues a host whose plan it changed).
  static size_t PlanIds(const Plan& plan);
  // Notes where `fleet` runs each instance (serving_) and the kernels named otherwise
  // (kernel_names_): all of them, or only those on `hosts` when given (a local pass).
  void NoteServing(const FleetPlan& fleet, const std::set<std::string>* hosts);
  // Whether `e` puts a KernelInstance with spec.host (what an early send may follow).
  static bool IsPinnedInstancePut(const Event& e);
  // Writes a pass's statuses (one transaction) and events.
  void WriteStatuses(StatusUpdate update, std::vector<mkfleet::v1::Event> events) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // After a whole pass: whether it found nothing waiting anywhere, and which hosts it found
  // with nothing to do, for the next early send.
  void NoteSettled(const FleetPlan& fleet, const Objects_& objects, const RolloutPass& rollout,
                   const std::map<std::string, HostView>& views, const std::set<std::string>& retry,
                   int64_t read_revision) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // Reads the stored statuses into status_cache_ if they are not there (or may be stale).
  void LoadStatusCache() ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  void FinalizeDrained(const FleetPlan& fleet);
  void ForwardAgentEvents(const std::string& host, std::vector<mkfleet::v1::Event> events);
  std::map<std::string, HostView> Views(std::map<std::string, std::shared_ptr<HostConnection>>* links);
  // Whether this controller plans (not a follower of an HA or sharded control plane).
  bool Leading() const { return !options_.may_act || options_.may_act(); }
  // Sharded: reads the published work and reports (List), or follows their changes.
  void FollowShards(int64_t after, int64_t now);
  void NoteShardRecord(const std::string& key, const std::string& value, bool deleted, bool queue);
  // Sharded, on the leader: `host`'s plan as published for its owner (queued in `publish`
  // when it changed), and the outcome its owner last reported.
  HostOutcome Publish(const std::string& host, const Plan& plan, const FleetPlan& fleet, std::vector<Op>* publish);
  // Sharded, on a member that does not lead: sends the hosts it owns their published work.
  std::map<std::string, absl::Status> SendPublished(const std::vector<std::string>& hosts);

  Store& store_;
  Objects& objects_;
  EventLog* events_;
  Clock& clock_;
  const ReconcilerOptions options_;
  WorkQueue queue_;
  Dispatcher dispatcher_;  // sends the plans, fenced, with per-instance backoff
  Rollouts rollouts_;      // the sets' revisions and rollouts
  DriftTracker drift_;     // changes made outside mkfleet

  absl::Mutex mu_;
  std::map<std::string, Connection> connections_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  bool threaded_ ABSL_GUARDED_BY(mu_) = false;

  // The store watcher's state (PollStore's caller only).
  int64_t seen_revision_ = -1;
  absl::Duration last_resync_;

  // Passes run one at a time; what they remember between them.
  absl::Mutex pass_mu_;
  bool status_loaded_ ABSL_GUARDED_BY(pass_mu_) = false;
  // With metrics on: each KernelInstance's phase as its stored status says, and how many
  // are in each (what a scrape reads, without waiting for a pass).
  void CountPhases(const std::vector<std::pair<std::string, const std::string*>>& changes, bool reset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  absl::Mutex phases_mu_;
  struct Phases {
    std::string phase, morph;  // morph: "" when no live update shows
    std::string host;          // where it is placed ("" when nowhere)
  };
  std::map<std::string, int64_t> host_counts_ ABSL_GUARDED_BY(phases_mu_);
  std::map<std::string, Phases> phase_of_ ABSL_GUARDED_BY(phases_mu_);
  std::map<std::string, int64_t> phase_counts_ ABSL_GUARDED_BY(phases_mu_);
  std::map<std::string, int64_t> morph_counts_ ABSL_GUARDED_BY(phases_mu_);
  // With metrics on: the rollouts as the last whole pass left them.
  void NoteRollouts(const RolloutPass& rollout) ABSL_LOCKS_EXCLUDED(phases_mu_);
  std::map<std::string, metrics::RolloutGauge> rollout_gauges_ ABSL_GUARDED_BY(phases_mu_);
  std::map<std::string, std::string> status_cache_ ABSL_GUARDED_BY(pass_mu_);  // key -> serialized
  FleetPlan last_plan_ ABSL_GUARDED_BY(pass_mu_);
  // Where each KernelInstance was last planned (kept while it exists, until planned
  // elsewhere): one whose kernel vanished is placed there again first (PlanFleet's previous).
  std::map<std::string, mkfleet::v1::Placement> last_placed_ ABSL_GUARDED_BY(pass_mu_);
  // What the last pass planned, for the morph verbs and agent events (not held across a
  // pass: a call never waits for one). Where each placed instance runs (host, serving
  // kernel); (host, kernel) -> the instance it serves where the names differ (after a live
  // update: agents name kernels in their events, people look for the instance); and the
  // instances whose held (rolled back) revision may morph again (`mkapply morph prepare`),
  // with the morph id seen when asked (dropped once another one shows).
  absl::Mutex served_mu_;
  // (Shared and never changed once made: a pass reads the last one without copying it.)
  using Serving = std::map<std::string, std::pair<std::string, std::string>>;
  std::shared_ptr<const Serving> serving_ ABSL_GUARDED_BY(served_mu_) = std::make_shared<const Serving>();
  std::map<std::pair<std::string, std::string>, std::string> kernel_names_ ABSL_GUARDED_BY(served_mu_);
  std::map<std::string, std::string> morph_retry_ ABSL_GUARDED_BY(served_mu_);
  // Per reachable host, a fingerprint of the action ids of its plan in the last pass.
  std::map<std::string, size_t> last_plan_seen_ ABSL_GUARDED_BY(pass_mu_);
  // Creates sent whose kernel the host's view does not show yet, by request name: planned
  // where they were sent until the view shows them, one of their actions fails, a newer
  // view shows another kernel on their CPUs or devices, or `unreachable_after` passes
  // (PlanFleet's `in_flight`).
  struct InFlight {
    mkfleet::v1::Placement placement;
    std::string kernel;
    absl::Duration sent;
    int64_t basis = 0;  // the host view's state_version the create was planned from
  };
  std::map<std::string, InFlight> in_flight_ ABSL_GUARDED_BY(pass_mu_);
  std::map<std::string, mkfleet::v1::Placement> InFlightPlacements(const std::map<std::string, HostView>& views)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  void NoteSent(const FleetPlan& fleet, const std::map<std::string, HostView>& views,
                const std::map<std::string, HostOutcome>& outcomes)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);

  // Sharded: the published records as last read (host -> serialized HostWork; reports),
  // what this member last sent each host it owns (a fingerprint of the work, and whether
  // it went through without a failure) and the reports it last wrote.
  std::atomic<bool> shards_changed_{false};
  // The newest revision of an object change this member saw, and the revision of the
  // objects the leader's published work was planned from (`/shards/planned`).
  std::atomic<int64_t> objects_revision_{0};
  std::atomic<int64_t> planned_revision_{0};
  int64_t planned_written_ ABSL_GUARDED_BY(shard_mu_) = -1;  // the leader's last mark
  bool shards_loaded_ = false;  // the store watcher's
  absl::Mutex shard_mu_;
  std::map<std::string, std::string> shard_work_ ABSL_GUARDED_BY(shard_mu_);
  std::map<std::string, mkfleet::v1::HostReport> shard_reports_ ABSL_GUARDED_BY(shard_mu_);
  std::map<std::string, std::pair<size_t, bool>> work_sent_ ABSL_GUARDED_BY(shard_mu_);
  std::map<std::string, std::string> reported_ ABSL_GUARDED_BY(shard_mu_);

  // The last whole pass, when it found nothing waiting anywhere: the store revision of its
  // objects, and the view version of each host it found with nothing to do.
  struct Settled {
    bool valid = false;
    int64_t read_revision = -1;
    // Hosts whose remaining work was known to be their pinned instances' only, at this view
    // version; and those with nothing to do at all, at this version (the check's).
    std::map<std::string, int64_t> versions;
    std::map<std::string, int64_t> idle;
    std::map<std::string, std::string> standby_host;  // instance -> its warm standby's host
  };
  Settled settled_ ABSL_GUARDED_BY(pass_mu_);
  // What the early send of this pass sent each host: the actions (a fingerprint) and the
  // outcome. The whole pass that follows does not send the same batch again.
  struct EarlySent {
    size_t actions = 0;
    HostOutcome outcome;
  };
  std::map<std::string, EarlySent> early_sent_ ABSL_GUARDED_BY(pass_mu_);
  // check_early_sends: the local pass this whole pass checks (its batch hosts' view
  // versions then); empty when none.
  std::map<std::string, int64_t> local_check_ ABSL_GUARDED_BY(pass_mu_);
  // The whole pass after a local pass found more to do (check_early_sends): logs and counts.
  void LocalMismatch(const std::string& what) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // The early send's outcome for `host` if `plan` is the batch it sent.
  const HostOutcome* SentEarly(const std::string& host, const Plan& plan) ABSL_EXCLUSIVE_LOCKS_REQUIRED(pass_mu_);
  // The store watcher's: the newest object change that is not a put of a pinned
  // KernelInstance, and the revision up to which it has looked at every change.
  std::atomic<int64_t> nonlocal_revision_{0};
  std::atomic<int64_t> classified_revision_{0};
  std::atomic<int64_t> early_sends_{0};
  std::atomic<int64_t> early_send_mismatches_{0};
  std::atomic<int64_t> local_passes_{0};
  std::atomic<int64_t> status_writes_{0};
  std::atomic<int64_t> passes_{0};
  std::atomic<int64_t> hosts_reconciled_{0};
  std::thread watcher_;
  std::thread worker_;
  std::unique_ptr<ConnectionPool> pool_;  // connection_threads > 0
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_RECONCILER_H_
