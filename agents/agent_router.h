// AgentRouter: one gRPC service in front of many AgentServices (mkagent --hosts N serves
// every emulated host from one server, one listening port per host): a call goes to the
// host it was addressed to, read from its :authority: with TLS the host's name (the
// controller sets the expected agent's DNS name, and only that host's port presents its
// certificate), in plaintext its address ("127.0.0.1:7105", by port). Another is NOT_FOUND. Each host's port still has that host's certificate, and
// each AgentService still checks its caller.
// Thread-safety: Add before serving; calls from gRPC's threads.
#ifndef MKFLEET_AGENTS_AGENT_ROUTER_H_
#define MKFLEET_AGENTS_AGENT_ROUTER_H_

#include <map>
#include <string>

#include "agents/agent_service.h"

namespace mkfleet::agents {

class AgentRouter final : public mkfleet::v1::Agent::WithCallbackMethod_Watch<mkfleet::v1::Agent::Service> {
 public:
  // `service` answers the calls addressed to `port`.
  void Add(int port, AgentService* service) { by_port_[port] = service; }
  // `service` answers the calls whose authority is `authority` (the host's DNS name).
  void AddAuthority(const std::string& authority, AgentService* service) { by_authority_[authority] = service; }

  grpc::Status Inventory(grpc::ServerContext* context, const mkfleet::v1::InventoryRequest* request,
                         mkfleet::v1::InventoryResponse* response) override;
  grpc::ServerWriteReactor<mkfleet::v1::HostState>* Watch(grpc::CallbackServerContext* context,
                                                          const mkfleet::v1::WatchRequest* request) override;
  grpc::Status Execute(grpc::ServerContext* context, const mkfleet::v1::ActionBatch* batch,
                       mkfleet::v1::ExecuteResponse* response) override;
  grpc::Status SetPolicy(grpc::ServerContext* context, const mkfleet::v1::SetPolicyRequest* request,
                         mkfleet::v1::SetPolicyResponse* response) override;
  grpc::Status InjectFault(grpc::ServerContext* context, const mkfleet::v1::FaultRequest* request,
                           mkfleet::v1::Empty* response) override;

 private:
  // The host the call was addressed to; null (and `why`) when none.
  AgentService* Route(const grpc::ServerContextBase& context, grpc::Status* why) const;
  std::map<int, AgentService*> by_port_;
  std::map<std::string, AgentService*> by_authority_;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_AGENT_ROUTER_H_
