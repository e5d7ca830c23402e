#include <chrono>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "cli/controller_client.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/controller.grpc.pb.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  std::string message = s.error_message();
  if (message.empty()) {
    message = absl::StrCat(absl::StatusCodeToString(static_cast<absl::StatusCode>(s.error_code())),
                           " (the controller gave no details)");
  }
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), message);
}

class GrpcControllerClient final : public ControllerClient {
 public:
  GrpcControllerClient(std::string address, absl::Duration timeout, std::shared_ptr<grpc::Channel> channel)
      : address_(std::move(address)), timeout_(timeout), stub_(v1::Controller::NewStub(channel)) {}

  absl::StatusOr<v1::ApplyResponse> Apply(const v1::ApplyRequest& request) override {
    return Unary<v1::ApplyResponse>([&](grpc::ClientContext* ctx, v1::ApplyResponse* r) { return stub_->Apply(ctx, request, r); });
  }
  absl::StatusOr<v1::ApplyResponse> Diff(const v1::ApplyRequest& request) override {
    return Unary<v1::ApplyResponse>([&](grpc::ClientContext* ctx, v1::ApplyResponse* r) { return stub_->Diff(ctx, request, r); });
  }
  absl::StatusOr<v1::GetResponse> Get(const v1::GetRequest& request) override {
    return Unary<v1::GetResponse>([&](grpc::ClientContext* ctx, v1::GetResponse* r) { return stub_->Get(ctx, request, r); });
  }
  absl::StatusOr<v1::DeleteResponse> Delete(const v1::DeleteRequest& request) override {
    return Unary<v1::DeleteResponse>([&](grpc::ClientContext* ctx, v1::DeleteResponse* r) { return stub_->Delete(ctx, request, r); });
  }
  absl::Status Events(const v1::EventsRequest& request, const std::function<bool(const v1::Event&)>& on_event) override {
    grpc::ClientContext ctx;
    if (!request.follow()) SetDeadline(ctx);
    // A controller that is just starting is waited for, within the deadline.
    ctx.set_wait_for_ready(!request.follow());
    auto reader = stub_->Events(&ctx, request);
    v1::Event e;
    while (reader->Read(&e)) {
      if (!on_event(e)) {
        ctx.TryCancel();
        break;
      }
    }
    grpc::Status s = reader->Finish();
    if (s.error_code() == grpc::StatusCode::CANCELLED) return absl::OkStatus();
    return FromGrpc(s);
  }
  absl::StatusOr<v1::RolloutResponse> Rollout(const v1::RolloutRequest& request) override {
    return Unary<v1::RolloutResponse>(
        [&](grpc::ClientContext* ctx, v1::RolloutResponse* r) { return stub_->Rollout(ctx, request, r); });
  }
  absl::StatusOr<v1::SourceResponse> Source(const v1::SourceRequest& request) override {
    return Unary<v1::SourceResponse>(
        [&](grpc::ClientContext* ctx, v1::SourceResponse* r) { return stub_->Source(ctx, request, r); });
  }
  absl::StatusOr<v1::CordonResponse> Cordon(const v1::CordonRequest& request) override {
    return Unary<v1::CordonResponse>(
        [&](grpc::ClientContext* ctx, v1::CordonResponse* r) { return stub_->Cordon(ctx, request, r); });
  }
  absl::StatusOr<v1::StatsResponse> Stats() override {
    v1::StatsRequest request;
    return Unary<v1::StatsResponse>(
        [&](grpc::ClientContext* ctx, v1::StatsResponse* r) { return stub_->Stats(ctx, request, r); });
  }
  absl::StatusOr<v1::TopologyResponse> Topology(const std::string& host) override {
    v1::TopologyRequest request;
    request.set_host(host);
    return Unary<v1::TopologyResponse>(
        [&](grpc::ClientContext* ctx, v1::TopologyResponse* r) { return stub_->Topology(ctx, request, r); });
  }
  absl::StatusOr<v1::ControllersResponse> Controllers() override {
    v1::ControllersRequest request;
    return Unary<v1::ControllersResponse>(
        [&](grpc::ClientContext* ctx, v1::ControllersResponse* r) { return stub_->Controllers(ctx, request, r); });
  }
  absl::StatusOr<v1::MorphResponse> Morph(const v1::MorphRequest& request) override {
    return Unary<v1::MorphResponse>([&](grpc::ClientContext* ctx, v1::MorphResponse* r) { return stub_->Morph(ctx, request, r); });
  }
  absl::StatusOr<v1::AuditResponse> Audit(const v1::AuditRequest& request) override {
    return Unary<v1::AuditResponse>([&](grpc::ClientContext* ctx, v1::AuditResponse* r) { return stub_->Audit(ctx, request, r); });
  }
  const std::string& address() const override { return address_; }

 private:
  void SetDeadline(grpc::ClientContext& ctx) {
    ctx.set_deadline(std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout_));
  }
  template <typename Response, typename Call>
  absl::StatusOr<Response> Unary(Call call) {
    const auto deadline = std::chrono::system_clock::now() + absl::ToChronoMilliseconds(timeout_);
    for (bool wait = false;; wait = true) {
      grpc::ClientContext ctx;
      ctx.set_deadline(deadline);
      // A controller that is still starting (connection refused) is waited for, within the
      // deadline, so an apply right after mkcontroller started does not fail at once; a
      // refused handshake (wrong CA, expired or wrong certificate) is reported at once.
      ctx.set_wait_for_ready(wait);
      Response r;
      grpc::Status s = call(&ctx, &r);
      if (s.ok()) return r;
      bool starting = s.error_code() == grpc::StatusCode::UNAVAILABLE &&
                      absl::StrContains(s.error_message(), "Connection refused");
      if (wait || !starting) return FromGrpc(s);
    }
  }

  std::string address_;
  absl::Duration timeout_;
  std::unique_ptr<v1::Controller::Stub> stub_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<ControllerClient>> NewGrpcControllerClient(const std::string& address,
                                                                          absl::Duration request_timeout,
                                                                          const security::TlsOptions& tls) {
  if (!tls.insecure && tls.dir.empty()) {
    return absl::FailedPreconditionError(
        "no credentials: pass --tls-dir DIR (or set MKFLEET_TLS_DIR) with your certificate from `mkapply certs issue "
        "user NAME`; --insecure only for a controller serving plaintext on loopback");
  }
  auto client_tls = security::ClientTls::Create(tls);
  if (!client_tls.ok()) return client_tls.status();
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);  // a fleet's instances in one list
  auto channel = (*client_tls)->Channel(address, security::Identity::Controller(), args);
  if (!channel.ok()) return channel.status();
  return std::unique_ptr<ControllerClient>(new GrpcControllerClient(address, request_timeout, *std::move(channel)));
}

}  // namespace mkfleet::cli
