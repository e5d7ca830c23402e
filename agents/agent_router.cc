#include "agents/agent_router.h"

#include "agents/agent_watch.h"

#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::agents {

namespace v1 = mkfleet::v1;

AgentService* AgentRouter::Route(const grpc::ServerContextBase& context, grpc::Status* why) const {
  grpc::string_ref authority = context.ExperimentalGetAuthority();
  std::string a(authority.begin(), authority.end());
  if (auto named = by_authority_.find(a); named != by_authority_.end()) return named->second;
  size_t colon = a.rfind(':');
  int port = 0;
  if (colon != std::string::npos && absl::SimpleAtoi(a.substr(colon + 1), &port)) {
    auto it = by_port_.find(port);
    if (it != by_port_.end()) return it->second;
  }
  *why = grpc::Status(grpc::StatusCode::NOT_FOUND,
                      absl::StrCat("no emulated host here serves \"", a.substr(0, 64), "\""));
  return nullptr;
}

grpc::Status AgentRouter::Inventory(grpc::ServerContext* context, const v1::InventoryRequest* request,
                                    v1::InventoryResponse* response) {
  grpc::Status why;
  AgentService* s = Route(*context, &why);
  return s == nullptr ? why : s->Inventory(context, request, response);
}

grpc::ServerWriteReactor<v1::HostState>* AgentRouter::Watch(grpc::CallbackServerContext* context,
                                                           const v1::WatchRequest* request) {
  grpc::Status why;
  AgentService* s = Route(*context, &why);
  return s == nullptr ? new RefusedWatch(why) : s->Watch(context, request);
}

grpc::Status AgentRouter::Execute(grpc::ServerContext* context, const v1::ActionBatch* batch,
                                  v1::ExecuteResponse* response) {
  grpc::Status why;
  AgentService* s = Route(*context, &why);
  return s == nullptr ? why : s->Execute(context, batch, response);
}

grpc::Status AgentRouter::SetPolicy(grpc::ServerContext* context, const v1::SetPolicyRequest* request,
                                    v1::SetPolicyResponse* response) {
  grpc::Status why;
  AgentService* s = Route(*context, &why);
  return s == nullptr ? why : s->SetPolicy(context, request, response);
}

grpc::Status AgentRouter::InjectFault(grpc::ServerContext* context, const v1::FaultRequest* request,
                                      v1::Empty* response) {
  grpc::Status why;
  AgentService* s = Route(*context, &why);
  return s == nullptr ? why : s->InjectFault(context, request, response);
}

}  // namespace mkfleet::agents
