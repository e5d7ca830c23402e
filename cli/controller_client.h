// ControllerClient: mkapply's calls to mkcontroller (proto/mkfleet/v1/controller.proto)
// behind a small interface: the gRPC one for the command line, fakes in tests. Every call
// has the client's request timeout. Errors keep the gRPC code and never have an empty
// message. Thread-safety: safe to call concurrently.
#ifndef MKFLEET_CLI_CONTROLLER_CLIENT_H_
#define MKFLEET_CLI_CONTROLLER_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mkfleet/v1/controller.pb.h"
#include "security/tls.h"

namespace mkfleet::cli {

class ControllerClient {
 public:
  virtual ~ControllerClient() = default;
  virtual absl::StatusOr<mkfleet::v1::ApplyResponse> Apply(const mkfleet::v1::ApplyRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::ApplyResponse> Diff(const mkfleet::v1::ApplyRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::GetResponse> Get(const mkfleet::v1::GetRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::DeleteResponse> Delete(const mkfleet::v1::DeleteRequest& request) = 0;
  // Calls `on_event` for each event; with follow it returns only when the stream ends (or
  // `on_event` returns false). The request timeout does not apply to a followed stream.
  virtual absl::Status Events(const mkfleet::v1::EventsRequest& request,
                              const std::function<bool(const mkfleet::v1::Event&)>& on_event) = 0;
  virtual absl::StatusOr<mkfleet::v1::AuditResponse> Audit(const mkfleet::v1::AuditRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::MorphResponse> Morph(const mkfleet::v1::MorphRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::RolloutResponse> Rollout(const mkfleet::v1::RolloutRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::SourceResponse> Source(const mkfleet::v1::SourceRequest& request) = 0;
  // The control plane's members and leader (`mkapply get controllers`).
  virtual absl::StatusOr<mkfleet::v1::ControllersResponse> Controllers() {
    return absl::UnimplementedError("this client has no Controllers call");
  }
  // The controller's counters and version (`mkapply version`).
  virtual absl::StatusOr<mkfleet::v1::StatsResponse> Stats() {
    return absl::UnimplementedError("this client has no Stats call");
  }
  // Sets a Host's spec.cordoned.
  virtual absl::StatusOr<mkfleet::v1::CordonResponse> Cordon(const mkfleet::v1::CordonRequest& request) {
    return absl::UnimplementedError("this client has no Cordon call");
  }
  // A host's topology as its agent reported it (`describe host --topology`).
  virtual absl::StatusOr<mkfleet::v1::TopologyResponse> Topology(const std::string& host) {
    return absl::UnimplementedError("this client has no Topology call");
  }
  // Where it connects, for messages.
  virtual const std::string& address() const = 0;
};

// Mutual TLS with `tls` (the controller must present the controller's certificate), or
// plaintext to a loopback address with tls.insecure. FailedPrecondition saying how to set
// TLS up when neither is given or the credentials are unusable.
absl::StatusOr<std::unique_ptr<ControllerClient>> NewGrpcControllerClient(const std::string& address,
                                                                          absl::Duration request_timeout,
                                                                          const security::TlsOptions& tls);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_CONTROLLER_CLIENT_H_
