#include <chrono>
#include <deque>
#include <functional>

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

// A Watch on gRPC's callback API: messages queue as they come (no thread waits on the
// stream); Next takes them, blocking or not; `wake` says when there is something.
class GrpcWatchStream final : public WatchStream, public grpc::ClientReadReactor<v1::HostState> {
 public:
  GrpcWatchStream(v1::Agent::Stub& stub, const v1::WatchRequest& request) : request_(request) {
    stub.async()->Watch(&ctx_, &request_, this);
    StartRead(&incoming_);
    StartCall();
  }
  ~GrpcWatchStream() override {
    ctx_.TryCancel();
    absl::MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&done_));  // gRPC is done with this reactor
  }
  Result Next(v1::HostState* out, bool block, absl::Status* ended) override {
    absl::MutexLock lock(&mu_);
    if (block) {
      auto ready = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return !queue_.empty() || done_; };
      mu_.Await(absl::Condition(&ready));
    }
    if (!queue_.empty()) {
      *out = std::move(queue_.front());
      queue_.pop_front();
      return Result::kMessage;
    }
    if (!done_) return Result::kPending;
    *ended = status_.ok() ? absl::UnavailableError("watch stream ended") : FromGrpc(status_);
    return Result::kEnded;
  }
  void Cancel() override { ctx_.TryCancel(); }
  void SetWake(std::function<void()> wake) override {
    bool now;
    {
      absl::MutexLock lock(&mu_);
      wake_ = wake;
      now = !queue_.empty() || done_;
    }
    if (now && wake) wake();
  }
  bool Wakes() const override { return true; }

  void OnReadDone(bool ok) override {
    std::function<void()> wake;
    {
      absl::MutexLock lock(&mu_);
      if (ok) queue_.push_back(std::move(incoming_));
      wake = wake_;
    }
    if (ok) {
      incoming_.Clear();
      StartRead(&incoming_);
    }
    if (wake && ok) wake();
  }
  void OnDone(const grpc::Status& s) override {
    std::function<void()> wake;
    {
      absl::MutexLock lock(&mu_);
      status_ = s;
      done_ = true;
      wake = wake_;
    }
    if (wake) wake();
  }

 private:
  grpc::ClientContext ctx_;
  const v1::WatchRequest request_;
  v1::HostState incoming_;  // the read in flight
  absl::Mutex mu_;
  std::deque<v1::HostState> queue_ ABSL_GUARDED_BY(mu_);
  bool done_ ABSL_GUARDED_BY(mu_) = false;
  grpc::Status status_ ABSL_GUARDED_BY(mu_);
  std::function<void()> wake_ ABSL_GUARDED_BY(mu_);
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
