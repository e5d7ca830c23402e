// AgentService: the gRPC face of an Agent (proto/mkfleet/v1/agent.proto).
// Execute checks the batch itself (ids present and unique) and answers per action;
// Watch streams a snapshot, then changes; InjectFault is refused unless enabled.
// With `require_controller` (every TLS agent) each call must come from the controller's
// certificate: anyone else is PERMISSION_DENIED before the request is looked at.
// Thread-safety: gRPC calls it from many threads; the Agent is thread-safe.
#ifndef MKFLEET_AGENTS_AGENT_SERVICE_H_
#define MKFLEET_AGENTS_AGENT_SERVICE_H_

#include <cstdio>
#include <memory>
#include <string>

#include "absl/synchronization/mutex.h"
#include "agents/agent.h"
#include "common/stream_limiter.h"
#include "grpcpp/grpcpp.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.grpc.pb.h"

namespace mkfleet::agents {

// Appends one line per Execute and SetPolicy call received (mkagent --request-log), for
// checking who sent what and when (e.g. that two controllers never acted on one host at
// once): "<unix ms> <host> <method> fence=<epoch>.<sequence> <action ids, comma-separated>".
// Written and flushed before the call is carried out. Thread-safe.
class RequestLog {
 public:
  static absl::StatusOr<std::shared_ptr<RequestLog>> Open(const std::string& path);
  ~RequestLog();
  void Record(const std::string& host, const char* method, const mkfleet::v1::Fence& fence, const std::string& detail);

 private:
  explicit RequestLog(FILE* f) : f_(f) {}
  absl::Mutex mu_;
  FILE* f_;
};

// Watch is on gRPC's callback API (agent_watch.h: no thread per stream); the other calls
// are synchronous.
class AgentService final : public mkfleet::v1::Agent::WithCallbackMethod_Watch<mkfleet::v1::Agent::Service> {
 public:
  // `faults` (the emulated kernel) may be null; fault injection also needs `enable_faults`.
  // Installs the agent's change hook (its Watch streams are woken by it).
  AgentService(Agent& agent, kernel::EmulatedKernel* faults, bool enable_faults, bool require_controller = false);

  grpc::Status Inventory(grpc::ServerContext*, const mkfleet::v1::InventoryRequest*,
                         mkfleet::v1::InventoryResponse* response) override;
  grpc::ServerWriteReactor<mkfleet::v1::HostState>* Watch(grpc::CallbackServerContext* context,
                                                          const mkfleet::v1::WatchRequest* request) override;
  grpc::Status Execute(grpc::ServerContext*, const mkfleet::v1::ActionBatch* batch,
                       mkfleet::v1::ExecuteResponse* response) override;
  grpc::Status SetPolicy(grpc::ServerContext*, const mkfleet::v1::SetPolicyRequest* request,
                         mkfleet::v1::SetPolicyResponse*) override;
  grpc::Status InjectFault(grpc::ServerContext*, const mkfleet::v1::FaultRequest* request,
                           mkfleet::v1::Empty*) override;
  // The out-of-band operator (agents/kerf_ops.h) for the kerf-* faults: a HostKernel of its
  // own over the emulated kernel. Set once, before serving.
  void SetKerf(std::unique_ptr<kernel::HostKernel> kerf) { kerf_ = std::move(kerf); }
  // Where received Execute and SetPolicy calls are logged (null: nowhere). Set before serving.
  void SetRequestLog(std::shared_ptr<RequestLog> log) { request_log_ = std::move(log); }
  // Watch streams open now (each holds a slot until gRPC is done with it).
  int open_streams() const { return streams_.open(); }

 private:
  // OK when the caller may call `method`.
  grpc::Status Allow(const grpc::ServerContextBase& context, const char* method) const;

  Agent& agent_;
  kernel::EmulatedKernel* faults_;
  bool enable_faults_;
  bool require_controller_;
  std::unique_ptr<kernel::HostKernel> kerf_;
  std::shared_ptr<RequestLog> request_log_;
  // The controller keeps one Watch per host; a few more are allowed (a restarting one).
  StreamLimiter streams_{4, 8};
};

// Starts a server for `service` on `address` (port 0 picks a free one) with the health
// service and server reflection. `port` receives the bound port. Null credentials:
// plaintext (in-process tests on loopback).
std::unique_ptr<grpc::Server> StartAgentServer(AgentService& service, const std::string& address, int* port,
                                              bool lean = false,
                                              std::shared_ptr<grpc::ServerCredentials> credentials = nullptr);

// absl::Status -> grpc::Status, same code and message.
grpc::Status ToGrpc(const absl::Status& s);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_AGENT_SERVICE_H_
