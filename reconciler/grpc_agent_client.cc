#include <chrono>

#include "absl/synchronization/mutex.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "reconciler/agent_client.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  std::string message = s.error_message();
  if (message.empty()) message = "no message from gRPC";
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), message);
}

void SetDeadline(grpc::ClientContext& ctx, absl::Duration timeout) {
  ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout));
}

class GrpcWatchStream final : public WatchStream {
 public:
  GrpcWatchStream(v1::Agent::Stub& stub, const v1::WatchRequest& request) {
    reader_ = stub.Watch(&ctx_, request);
  }
  Result Next(v1::HostState* out, bool, absl::Status* ended) override {
    if (reader_->Read(out)) return Result::kMessage;
    grpc::Status s = reader_->Finish();
    *ended = s.ok() ? absl::UnavailableError("watch stream ended") : FromGrpc(s);
    return Result::kEnded;
  }
  void Cancel() override { ctx_.TryCancel(); }

 private:
  grpc::ClientContext ctx_;
  std::unique_ptr<grpc::ClientReader<v1::HostState>> reader_;
};

class GrpcAgentClient final : public AgentClient {
 public:
  explicit GrpcAgentClient(std::shared_ptr<grpc::Channel> channel) : stub_(v1::Agent::NewStub(channel)) {}

  absl::StatusOr<v1::InventoryResponse> Inventory(absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::InventoryResponse r;
    grpc::Status s = stub_->Inventory(&ctx, v1::InventoryRequest(), &r);
    if (!s.ok()) return FromGrpc(s);
    return r;
  }
  std::unique_ptr<WatchStream> Watch(const v1::WatchRequest& request) override {
    return std::make_unique<GrpcWatchStream>(*stub_, request);
  }
  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ActionBatch& batch, absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::ExecuteResponse r;
    grpc::Status s = stub_->Execute(&ctx, batch, &r);
    if (!s.ok()) return FromGrpc(s);
    return r;
  }
  absl::Status SetPolicy(const v1::SetPolicyRequest& request, absl::Duration timeout) override {
    grpc::ClientContext ctx;
    SetDeadline(ctx, timeout);
    v1::SetPolicyResponse r;
    return FromGrpc(stub_->SetPolicy(&ctx, request, &r));
  }

 private:
  std::unique_ptr<v1::Agent::Stub> stub_;
};

// An agent that cannot be dialled at all: every call fails with why.
class RefusedAgentClient final : public AgentClient {
 public:
  explicit RefusedAgentClient(absl::Status why) : why_(std::move(why)) {}
  absl::StatusOr<v1::InventoryResponse> Inventory(absl::Duration) override { return why_; }
  std::unique_ptr<WatchStream> Watch(const v1::WatchRequest&) override {
    class Ended final : public WatchStream {
     public:
      explicit Ended(absl::Status why) : why_(std::move(why)) {}
      Result Next(v1::HostState*, bool, absl::Status* ended) override {
        *ended = why_;
        return Result::kEnded;
      }
      void Cancel() override {}

     private:
      absl::Status why_;
    };
    return std::make_unique<Ended>(why_);
  }
  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ActionBatch&, absl::Duration) override { return why_; }
  absl::Status SetPolicy(const v1::SetPolicyRequest&, absl::Duration) override { return why_; }

 private:
  const absl::Status why_;
};

}  // namespace

std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& address, const std::string& host,
                                                const security::ClientTls* tls) {
  if (tls == nullptr) {
    return std::make_unique<GrpcAgentClient>(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
  }
  auto channel = tls->Channel(address, security::Identity::Agent(host));
  if (!channel.ok()) return std::make_unique<RefusedAgentClient>(channel.status());
  return std::make_unique<GrpcAgentClient>(*std::move(channel));
}

}  // namespace mkfleet::reconciler
