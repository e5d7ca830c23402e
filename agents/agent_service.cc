#include "agents/agent_service.h"

#include "agents/kerf_ops.h"

#include <cerrno>
#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agents/agent_watch.h"
#include "agents/request_checks.h"
#include "common/grpc_server.h"
#include "security/tls.h"

namespace mkfleet::agents {

namespace v1 = mkfleet::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), std::string(s.message()));
}

absl::StatusOr<std::shared_ptr<RequestLog>> RequestLog::Open(const std::string& path) {
  FILE* f = fopen(path.c_str(), "a");
  if (f == nullptr) return absl::InvalidArgumentError(absl::StrCat(path, ": ", strerror(errno)));
  return std::shared_ptr<RequestLog>(new RequestLog(f));
}

RequestLog::~RequestLog() { fclose(f_); }

void RequestLog::Record(const std::string& host, const char* method, const v1::Fence& fence, const std::string& detail) {
  std::string line = absl::StrCat(absl::ToUnixMillis(absl::Now()), " ", host, " ", method, " fence=", fence.epoch(), ".",
                                  fence.sequence(), " ", detail.empty() ? "-" : detail, "\n");
  absl::MutexLock lock(&mu_);
  fwrite(line.data(), 1, line.size(), f_);
  fflush(f_);
}

AgentService::AgentService(Agent& agent, kernel::EmulatedKernel* faults, bool enable_faults, bool require_controller)
    : agent_(agent), faults_(faults), enable_faults_(enable_faults), require_controller_(require_controller) {
  Agent* a = &agent_;
  agent_.SetChangeHook([a] { WatchNotifier::Default().Changed(a); });
}

grpc::Status AgentService::Allow(const grpc::ServerContextBase& context, const char* method) const {
  if (!require_controller_) return grpc::Status::OK;
  security::Identity peer = security::PeerIdentity(context);
  if (peer.kind == security::Identity::Kind::kController) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                      absl::StrCat("agent ", agent_.host(), ": ", peer.ToString(), " may not call ", method,
                                   " (only the controller may)"));
}

grpc::Status AgentService::Inventory(grpc::ServerContext* context, const v1::InventoryRequest*,
                                     v1::InventoryResponse* response) {
  if (grpc::Status a = Allow(*context, "Inventory"); !a.ok()) return a;
  *response = agent_.Inventory();
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::HostState>* AgentService::Watch(grpc::CallbackServerContext* context,
                                                            const v1::WatchRequest* request) {
  if (grpc::Status a = Allow(*context, "Watch"); !a.ok()) return new RefusedWatch(a);
  auto slot = streams_.Acquire(security::PeerKey(*context));
  if (!slot.ok()) return new RefusedWatch(ToGrpc(slot.status()));
  return new AgentWatchReactor(agent_, request->resource_version(), *std::move(slot));
}

grpc::Status AgentService::Execute(grpc::ServerContext* context, const v1::ActionBatch* batch,
                                   v1::ExecuteResponse* response) {
  if (grpc::Status a = Allow(*context, "Execute"); !a.ok()) return a;
  if (absl::Status c = CheckBatch(*batch); !c.ok()) return ToGrpc(c);
  if (request_log_ != nullptr) {
    std::string ids;
    for (const auto& a : batch->actions()) absl::StrAppend(&ids, ids.empty() ? "" : ",", a.id());
    request_log_->Record(agent_.host(), "Execute", batch->fence(), ids);
  }
  auto r = agent_.Execute(*batch);
  if (!r.ok()) return ToGrpc(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status AgentService::SetPolicy(grpc::ServerContext* context, const v1::SetPolicyRequest* request,
                                     v1::SetPolicyResponse*) {
  if (grpc::Status a = Allow(*context, "SetPolicy"); !a.ok()) return a;
  if (absl::Status c = CheckPolicies(*request); !c.ok()) return ToGrpc(c);
  if (request_log_ != nullptr) request_log_->Record(agent_.host(), "SetPolicy", request->fence(), "");
  return ToGrpc(agent_.SetPolicy(*request));
}

grpc::Status AgentService::InjectFault(grpc::ServerContext* context, const v1::FaultRequest* request, v1::Empty*) {
  if (grpc::Status a = Allow(*context, "InjectFault"); !a.ok()) return a;
  if (!enable_faults_ || faults_ == nullptr) {
    return grpc::Status(grpc::StatusCode::PERMISSION_DENIED,
                        "fault injection is off (start mkagent with --kernel=emulated --enable-fault-injection)");
  }
  const std::string& f = request->fault();
  if (!request->instance().empty()) {
    if (absl::Status c = CheckInstanceName(request->instance(), "instance"); !c.ok()) return ToGrpc(c);
  }
  absl::Status s;
  if (f == "panic") {
    s = faults_->InjectPanic(request->instance());
  } else if (f == "hang") {
    s = faults_->InjectHang(request->instance());
  } else if (f == "fail-overlay") {
    faults_->FailNextOverlay(EINVAL);
  } else if (f == "busy") {
    if (request->resource().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "busy needs resource");
    faults_->SetBusy(request->resource(), true);
  } else if (f == "unbusy") {
    faults_->SetBusy(request->resource(), false);
  } else if (f == "slow-halt") {
    s = faults_->SetHaltBehavior(request->instance(), absl::Seconds(5), false);
  } else if (f == "fail-halt") {
    s = faults_->SetHaltBehavior(request->instance(), absl::ZeroDuration(), true);
  } else if (IsKerfOperation(f)) {
    if (kerf_ == nullptr) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this agent has no out-of-band operator");
    s = KerfOperation(*kerf_, f, request->instance(), request->resource());
  } else {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("unknown fault \"", f, "\" (panic, hang, fail-overlay, busy, unbusy, slow-halt, fail-halt, kerf-halt, kerf-remove, kerf-cpu-remove, kerf-memory-remove, kerf-create)"));
  }
  return ToGrpc(s);
}

std::unique_ptr<grpc::Server> StartAgentServer(AgentService& service, const std::string& address, int* port,
                                              bool lean, std::shared_ptr<grpc::ServerCredentials> credentials) {
  if (credentials == nullptr) credentials = grpc::InsecureServerCredentials();
  return StartGrpcServer(service, "mkfleet.v1.Agent", address, port, std::move(credentials), lean);
}

}  // namespace mkfleet::agents
