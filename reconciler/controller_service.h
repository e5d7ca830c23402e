// ControllerService: the gRPC face of the controller's object store for mkapply
// (proto/mkfleet/v1/controller.proto): Apply, Diff (an apply that writes nothing), Get
// and Delete over reconciler::Objects, and Watch (a snapshot, then every change, in store
// revision order) and Events (the stored history, then new ones with follow); streams take
// the changes from one WatchHub (one store reader for all of them).
// Thread-safety: gRPC calls it from many threads; Objects is safe for that.
#ifndef MKFLEET_RECONCILER_CONTROLLER_SERVICE_H_
#define MKFLEET_RECONCILER_CONTROLLER_SERVICE_H_

#include <memory>
#include <functional>
#include <string>

#include "common/clock.h"
#include "common/stream_limiter.h"
#include "grpcpp/grpcpp.h"
#include "manifests/loader.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "reconciler/access.h"
#include "reconciler/audit_log.h"
#include "reconciler/event_log.h"
#include "reconciler/objects.h"
#include "reconciler/rollouts.h"
#include "reconciler/watch_hub.h"

namespace mkfleet::reconciler {

// Watch and Events run on gRPC's callback API (reconciler/follow_reactor.h): an idle stream
// holds no thread; the other methods are synchronous.
using ControllerServiceBase = mkfleet::v1::Controller::WithCallbackMethod_Watch<
    mkfleet::v1::Controller::WithCallbackMethod_Events<mkfleet::v1::Controller::Service>>;

// --require-digest: InvalidArgument naming each KernelInstance and InstanceSet whose kernel
// is not pinned by kernel.sha256 (the first 20).
absl::Status CheckPinned(const std::vector<mkfleet::v1::Object>& objects);

class ControllerService final : public ControllerServiceBase {
 public:
  ControllerService(Store& store, Objects& objects, EventLog* events = nullptr, Clock& clock = Clock::Real())
      : store_(store), objects_(objects), events_(events), clock_(clock), hub_(std::make_unique<WatchHub>(store)) {}

  grpc::Status Apply(grpc::ServerContext*, const mkfleet::v1::ApplyRequest* request,
                     mkfleet::v1::ApplyResponse* response) override;
  grpc::Status Diff(grpc::ServerContext*, const mkfleet::v1::ApplyRequest* request,
                    mkfleet::v1::ApplyResponse* response) override;
  grpc::Status Get(grpc::ServerContext*, const mkfleet::v1::GetRequest* request,
                   mkfleet::v1::GetResponse* response) override;
  grpc::Status Delete(grpc::ServerContext*, const mkfleet::v1::DeleteRequest* request,
                      mkfleet::v1::DeleteResponse*) override;
  // revision 0: every object (at the current revision), then changes; revision R: the
  // changes after R (OUT_OF_RANGE once R's history is compacted: start again from 0).
  // Ends when the client cancels or the server shuts down.
  grpc::ServerWriteReactor<mkfleet::v1::ObjectWatchEvent>* Watch(grpc::CallbackServerContext* context,
                                                                  const mkfleet::v1::ObjectWatchRequest* request) override;
  grpc::ServerWriteReactor<mkfleet::v1::Event>* Events(grpc::CallbackServerContext* context,
                                                       const mkfleet::v1::EventsRequest* request) override;
  grpc::Status Stats(grpc::ServerContext*, const mkfleet::v1::StatsRequest*,
                     mkfleet::v1::StatsResponse* response) override;
  grpc::Status Audit(grpc::ServerContext*, const mkfleet::v1::AuditRequest* request,
                     mkfleet::v1::AuditResponse* response) override;
  grpc::Status Morph(grpc::ServerContext*, const mkfleet::v1::MorphRequest* request,
                     mkfleet::v1::MorphResponse* response) override;
  // status and history read the set's rollout record; pause and resume change it; undo
  // applies the set again with an older revision's template (a new revision).
  grpc::Status Rollout(grpc::ServerContext*, const mkfleet::v1::RolloutRequest* request,
                       mkfleet::v1::RolloutResponse* response) override;
  // sync: fetch the GitSource now and apply its commit; suspend, resume: its spec.suspend.
  grpc::Status Source(grpc::ServerContext*, const mkfleet::v1::SourceRequest* request,
                      mkfleet::v1::SourceResponse* response) override;
  // The control plane's members (mkcontroller --ha; unset: this controller alone).
  grpc::Status Controllers(grpc::ServerContext*, const mkfleet::v1::ControllersRequest*,
                           mkfleet::v1::ControllersResponse* response) override;
  void SetControllers(std::function<mkfleet::v1::ControllersResponse()> source) { controllers_ = std::move(source); }
  grpc::Status Topology(grpc::ServerContext*, const mkfleet::v1::TopologyRequest* request,
                        mkfleet::v1::TopologyResponse* response) override;
  grpc::Status Cordon(grpc::ServerContext*, const mkfleet::v1::CordonRequest* request,
                      mkfleet::v1::CordonResponse* response) override;
  // Where Topology takes a host's (Reconciler::HostTopology; set once, before serving).
  using TopologySource = std::function<absl::StatusOr<mkfleet::v1::TopologyInfo>(const std::string& host)>;
  void SetTopologySource(TopologySource source) { topology_ = std::move(source); }
  // In a control plane of several controllers, OK only on the leader: morph, rollout and
  // source verbs need its loop and are refused elsewhere (UNAVAILABLE, naming the leader).
  // Reads, applies and deletes go to the shared store from any member. Set before serving.
  void SetLeaderCheck(std::function<absl::Status()> check) { leader_check_ = std::move(check); }
  // Where `sync` goes (SourceController::Sync; set once, before serving).
  using SyncHandler = std::function<absl::StatusOr<std::string>(const std::string& name)>;
  void SetSync(SyncHandler sync) { sync_ = std::move(sync); }
  // Where Rollout goes (the reconciler's; set once, before serving).
  void SetRollouts(Rollouts* rollouts) { rollouts_ = rollouts; }
  // Where Morph goes (Reconciler::Morph; set once, before serving).
  using MorphHandler = std::function<absl::StatusOr<mkfleet::v1::MorphResponse>(const mkfleet::v1::MorphRequest&)>;
  void SetMorph(MorphHandler handler) { morph_ = std::move(handler); }
  // Who may call what (null: anyone, for in-process tests), and where apply and delete are
  // recorded (null: nowhere). Set once, before serving.
  void SetAccess(Access* access) { access_ = access; }
  // At most `per_client` open Watch and Events streams per client and `total` in all
  // (defaults 16 and 256); past them a new one is RESOURCE_EXHAUSTED. Set before serving.
  void SetStreamLimits(int per_client, int total) { streams_ = std::make_unique<StreamLimiter>(per_client, total); }
  // etcd's NOSPACE alarm: while the store is larger than `bytes` (0: no quota), applies are
  // refused (RESOURCE_EXHAUSTED) and deletes and compaction go on, so an operator can
  // always make room. Set before serving.
  void SetStoreQuota(int64_t bytes) { store_quota_ = bytes; }
  // Refuse every KernelInstance (and InstanceSet template) whose kernel is not pinned by
  // kernel.sha256 (mkcontroller --require-digest). Set before serving.
  void SetRequireDigest(bool require) { require_digest_ = require; }
  void SetAuditLog(AuditLog* audit) { audit_ = audit; }
  // Where Stats takes the reconcile loop's counters (set once, before serving).
  void SetStatsSource(std::function<mkfleet::v1::StatsResponse()> source) { stats_ = std::move(source); }
  // What a dry run or diff says an apply would do to running kernels, per "Kind/name"
  // (Reconciler::Preview; set once, before serving).
  using Preview = std::function<std::map<std::string, std::vector<std::string>>(const std::vector<mkfleet::v1::Object>&)>;
  void SetPreview(Preview preview) { preview_ = std::move(preview); }

 private:
  // undo of a RolloutPolicy: the instances of revision `to` that still exist get their specs
  // then, in one atomic apply (a new revision of the policy).
  absl::StatusOr<mkfleet::v1::RolloutResponse> UndoPolicy(const std::string& name, uint32_t to, const std::string& who);
  grpc::Status DoApply(grpc::ServerContext& context, const mkfleet::v1::ApplyRequest& request, bool dry_run,
                       mkfleet::v1::ApplyResponse* response);
  // The caller, allowed to `verb` `kind`/`name`; else the refusal (PERMISSION_DENIED).
  absl::StatusOr<Access::Caller> Allow(const grpc::ServerContextBase& context, absl::string_view verb,
                                       absl::string_view kind, absl::string_view name = "");
  // Records a mutating request and its result in the audit log (if any).
  void RecordAudit(const grpc::ServerContextBase& context, const security::Identity& who, mkfleet::v1::AuditRecord record,
             const absl::Status& result);
  Store& store_;
  Objects& objects_;
  EventLog* events_;
  Clock& clock_;
  std::function<mkfleet::v1::StatsResponse()> stats_;
  std::function<mkfleet::v1::ControllersResponse()> controllers_;
  std::function<absl::Status()> leader_check_;
  TopologySource topology_;
  // leader_check_'s refusal, or OK.
  grpc::Status OnLeader() const;
  Preview preview_;
  MorphHandler morph_;
  SyncHandler sync_;
  Rollouts* rollouts_ = nullptr;
  Access* access_ = nullptr;
  AuditLog* audit_ = nullptr;
  std::unique_ptr<StreamLimiter> streams_ = std::make_unique<StreamLimiter>(16, 256);
  int64_t store_quota_ = 0;
  bool require_digest_ = false;
  // Objects that passed the checks as sent: a re-apply of the same ones checks only what
  // spans them (10,000 unchanged Hosts are not printed and parsed again).
  manifests::RevalidationCache revalidated_;
  // Every Watch and followed Events stream reads the store's changes from here.
  std::unique_ptr<WatchHub> hub_;
};

// The kinds the controller stores.
bool IsKnownKind(const std::string& kind);

// Starts a server for `service` on `address` (port 0 picks a free one) with the health
// service and server reflection. `port` receives the bound port. Null credentials:
// plaintext (in-process tests on loopback).
std::unique_ptr<grpc::Server> StartControllerServer(ControllerService& service, const std::string& address,
                                                    int* port,
                                                    std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_CONTROLLER_SERVICE_H_
