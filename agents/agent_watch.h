// Watch streams on gRPC's callback API, without a thread each: an agent's streams are woken
// when its state changes (Agent's change hook, called under the agent's lock, only marks it
// in the process's WatchNotifier; the notifier's one thread then pumps that agent's streams
// outside the agent's lock). An idle stream is a subscription; a thousand emulated hosts'
// streams cost no thread.
// Thread-safety: reactions (gRPC's threads) and wake-ups (the notifier's thread) may come at
// once; each reactor serializes them.
#ifndef MKFLEET_AGENTS_AGENT_WATCH_H_
#define MKFLEET_AGENTS_AGENT_WATCH_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "agents/agent.h"
#include "common/stream_limiter.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/agent.pb.h"

namespace mkfleet::agents {

class WatchNotifier {
 public:
  struct Listener {
    virtual ~Listener() = default;
    virtual void OnChange() = 0;
  };
  // The process's notifier (its thread starts with the first subscription).
  static WatchNotifier& Default();

  // `listener` hears of every change of `agent` until it is gone (held weakly).
  void Subscribe(const Agent* agent, std::shared_ptr<Listener> listener);
  // `agent` changed: cheap, never calls into the agent (it may be called under its lock).
  void Changed(const Agent* agent);

 private:
  void Run();
  absl::Mutex mu_;
  std::map<const Agent*, std::vector<std::weak_ptr<Listener>>> listeners_ ABSL_GUARDED_BY(mu_);
  std::set<const Agent*> dirty_ ABSL_GUARDED_BY(mu_);
  bool started_ ABSL_GUARDED_BY(mu_) = false;
};

// A Watch refused before it starts (its status at once).
class RefusedWatch final : public grpc::ServerWriteReactor<mkfleet::v1::HostState> {
 public:
  explicit RefusedWatch(const grpc::Status& status) { Finish(status); }
  void OnDone() override { delete this; }
};

// One Watch: the snapshot (unless the client is current), then the changes, as they come.
class AgentWatchReactor final : public grpc::ServerWriteReactor<mkfleet::v1::HostState> {
 public:
  // `version`: the client's resource_version (0: none). `slot` is freed when the stream ends.
  AgentWatchReactor(Agent& agent, int64_t version, std::unique_ptr<StreamLimiter::Token> slot);
  void OnWriteDone(bool ok) override;
  void OnCancel() override;
  void OnDone() override;

 private:
  struct Shim final : WatchNotifier::Listener {
    explicit Shim(AgentWatchReactor* r) : reactor(r) {}
    void OnChange() override;
    absl::Mutex mu;
    AgentWatchReactor* reactor ABSL_GUARDED_BY(mu);
  };
  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }
  // Writes what is new, or finishes; never holds its lock while it calls into gRPC.
  void Pump();

  Agent& agent_;
  std::unique_ptr<StreamLimiter::Token> slot_;  // freed in OnDone
  absl::Mutex mu_;
  int64_t version_ ABSL_GUARDED_BY(mu_);
  std::optional<mkfleet::v1::HostState> first_ ABSL_GUARDED_BY(mu_);  // the snapshot to send first
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool ending_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  mkfleet::v1::HostState current_;  // the message being written
  std::atomic<int> refs_{1};        // gRPC's (dropped in OnDone) and the notifier's while it pumps
  std::shared_ptr<Shim> shim_;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_AGENT_WATCH_H_
