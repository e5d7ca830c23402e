#include <chrono>
#include <deque>
#include <functional>
#include <map>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
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
// Teardown: the destructor waits for OnDone, which may still be running after it signalled
// (its wake-up last): what OnDone touches then is the shared state, kept alive by its own
// reference, never the stream.
class GrpcWatchStream final : public WatchStream, public grpc::ClientReadReactor<v1::HostState> {
 public:
  GrpcWatchStream(v1::Agent::Stub& stub, const v1::WatchRequest& request) : request_(request) {
    stub.async()->Watch(&ctx_, &request_, this);
    StartRead(&incoming_);
    StartCall();
  }
  ~GrpcWatchStream() override {
    ctx_.TryCancel();
    absl::MutexLock lock(&state_->mu);
    state_->mu.Await(absl::Condition(&state_->done));  // gRPC is done with this reactor
  }
  Result Next(v1::HostState* out, bool block, absl::Status* ended) override {
    State& st = *state_;
    absl::MutexLock lock(&st.mu);
    if (block) {
      auto ready = [&st]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(st.mu) { return !st.queue.empty() || st.done; };
      st.mu.Await(absl::Condition(&ready));
    }
    if (!st.queue.empty()) {
      *out = std::move(st.queue.front());
      st.queue.pop_front();
      return Result::kMessage;
    }
    if (!st.done) return Result::kPending;
    *ended = st.status.ok() ? absl::UnavailableError("watch stream ended") : FromGrpc(st.status);
    return Result::kEnded;
  }
  void Cancel() override { ctx_.TryCancel(); }
  void SetWake(std::function<void()> wake) override {
    bool now;
    {
      absl::MutexLock lock(&state_->mu);
      state_->wake = wake;
      now = !state_->queue.empty() || state_->done;
    }
    if (now && wake) wake();
  }
  bool Wakes() const override { return true; }

  void OnReadDone(bool ok) override {
    std::function<void()> wake;
    {
      absl::MutexLock lock(&state_->mu);
      if (ok) state_->queue.push_back(std::move(incoming_));
      wake = state_->wake;
    }
    if (ok) {
      incoming_.Clear();
      StartRead(&incoming_);
    }
    if (wake && ok) wake();
  }
  void OnDone(const grpc::Status& s) override {
    std::shared_ptr<State> state = state_;  // `this` may be gone once `done` is set
    std::function<void()> wake;
    {
      absl::MutexLock lock(&state->mu);
      state->status = s;
      state->done = true;
      wake = state->wake;
    }
    if (wake) wake();
  }

 private:
  struct State {
    absl::Mutex mu;
    std::deque<v1::HostState> queue ABSL_GUARDED_BY(mu);
    bool done ABSL_GUARDED_BY(mu) = false;
    grpc::Status status ABSL_GUARDED_BY(mu);
    std::function<void()> wake ABSL_GUARDED_BY(mu);
  };
  grpc::ClientContext ctx_;
  const v1::WatchRequest request_;
  v1::HostState incoming_;  // the read in flight
  const std::shared_ptr<State> state_ = std::make_shared<State>();
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

// MKFLEET_AGENT_CHANNEL_ARGS="name=int,..." (no flag: for measuring gRPC's knobs on a fleet
// without a rebuild) sets integer channel arguments of every agent channel (these first).
// Every agent channel: no gRPC retry layer (its per-call state and buffers cost ~10 KiB per
// connection: -10 MiB of peak RSS at 1,000 hosts). The controller retries what failed on its
// own (backoff per host and instance), and batches are idempotent (action ids, the agents'
// journals), so a call that gRPC would have retried transparently is retried by the next
// pass instead.
grpc::ChannelArguments AgentChannelArgs() {
  grpc::ChannelArguments args;
  static const std::map<std::string, int> all = [] {
    std::map<std::string, int> out = {{GRPC_ARG_ENABLE_RETRIES, 0}};
    const char* env = getenv("MKFLEET_AGENT_CHANNEL_ARGS");
    for (absl::string_view item : absl::StrSplit(env == nullptr ? "" : env, ',', absl::SkipEmpty())) {
      std::pair<std::string, std::string> kv = absl::StrSplit(item, absl::MaxSplits('=', 1));
      int value = 0;
      if (absl::SimpleAtoi(kv.second, &value)) out[kv.first] = value;
    }
    return out;
  }();
  for (const auto& [name, value] : all) args.SetInt(name, value);
  return args;
}

}  // namespace

std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& address, const std::string& host,
                                                const security::ClientTls* tls) {
  if (tls == nullptr) {
    return std::make_unique<GrpcAgentClient>(
        grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), AgentChannelArgs()));
  }
  auto channel = tls->Channel(address, security::Identity::Agent(host), AgentChannelArgs());
  if (!channel.ok()) return std::make_unique<RefusedAgentClient>(channel.status());
  return std::make_unique<GrpcAgentClient>(*std::move(channel));
}

}  // namespace mkfleet::reconciler
