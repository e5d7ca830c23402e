// AgentClient: the controller's calls to one host's agent (proto/mkfleet/v1/agent.proto),
// behind a small interface so that the loop runs over gRPC in mkcontroller and over an
// in-process or simulated network in tests (reconciler/testing/, sim/).
//
// Errors are absl::Status with the gRPC code (UNAVAILABLE, DEADLINE_EXCEEDED, ABORTED for a
// stale fence, ...). Thread-safety: implementations are safe to call concurrently; a
// WatchStream is used by one thread, except Cancel.
#ifndef MKFLEET_RECONCILER_AGENT_CLIENT_H_
#define MKFLEET_RECONCILER_AGENT_CLIENT_H_

#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mkfleet/v1/agent.pb.h"
#include "security/tls.h"

namespace mkfleet::reconciler {

class WatchStream {
 public:
  virtual ~WatchStream() = default;
  enum class Result { kMessage, kEnded, kPending };
  // The next message. With `block` false, kPending when none has arrived yet (a gRPC stream
  // always blocks). On kEnded, `ended` says why (Unavailable for a clean end).
  virtual Result Next(mkfleet::v1::HostState* out, bool block, absl::Status* ended) = 0;
  // Makes a blocked Next return kEnded; safe from any thread.
  virtual void Cancel() = 0;
  // `wake` is called (from any thread, without the stream's locks) whenever Next may have
  // something new: a message or the end. Streams that cannot tell keep the default (their
  // owner must poll or block).
  virtual void SetWake(std::function<void()> wake) {}
  // Whether SetWake works (a connection pool may then wait for wake-ups instead of polling).
  virtual bool Wakes() const { return false; }
};

class AgentClient {
 public:
  virtual ~AgentClient() = default;
  virtual absl::StatusOr<mkfleet::v1::InventoryResponse> Inventory(absl::Duration timeout) = 0;
  virtual std::unique_ptr<WatchStream> Watch(const mkfleet::v1::WatchRequest& request) = 0;
  virtual absl::StatusOr<mkfleet::v1::ExecuteResponse> Execute(const mkfleet::v1::ActionBatch& batch,
                                                               absl::Duration timeout) = 0;
  virtual absl::Status SetPolicy(const mkfleet::v1::SetPolicyRequest& request, absl::Duration timeout) = 0;
};

// The real one: a gRPC channel to `address`, where only `host`'s agent certificate is
// accepted (with `tls`; null: plaintext, for in-process tests). When `tls` refuses the
// address (plaintext to a non-loopback one) every call fails with its reason.
std::unique_ptr<AgentClient> NewGrpcAgentClient(const std::string& address, const std::string& host = "",
                                                const security::ClientTls* tls = nullptr);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_AGENT_CLIENT_H_
