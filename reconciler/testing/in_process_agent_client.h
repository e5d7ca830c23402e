// InProcessAgentClient: an AgentClient that calls an agents::Agent in this process, no
// gRPC, for tests of the controller's loop and the fleet simulation. The agent comes from a
// function so that it can go away (nullptr: UNAVAILABLE, as an unreachable agent) and come
// back as another object (a restarted agent: open streams end; one allocated where the old
// one was goes unnoticed, and the stream resumes from the earlier run's version, for which
// the agent sends a whole snapshot). Failures on command:
// FailNext(status) fails the next call (any method).
// Thread-safety: safe to call concurrently if the agent function is.
#ifndef MKFLEET_RECONCILER_TESTING_IN_PROCESS_AGENT_CLIENT_H_
#define MKFLEET_RECONCILER_TESTING_IN_PROCESS_AGENT_CLIENT_H_

#include <atomic>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "agents/agent.h"
#include "reconciler/agent_client.h"

namespace mkfleet::reconciler {

class InProcessAgentClient final : public AgentClient {
 public:
  explicit InProcessAgentClient(std::function<agents::Agent*()> agent) : agent_(std::move(agent)) {}

  void FailNext(absl::Status status) {
    absl::MutexLock lock(&mu_);
    fail_next_ = std::move(status);
  }

  absl::StatusOr<mkfleet::v1::InventoryResponse> Inventory(absl::Duration) override {
    agents::Agent* a = nullptr;
    if (absl::Status s = Check(&a); !s.ok()) return s;
    return a->Inventory();
  }
  std::unique_ptr<WatchStream> Watch(const mkfleet::v1::WatchRequest& request) override {
    return std::make_unique<Stream>(agent_, request.resource_version());
  }
  absl::StatusOr<mkfleet::v1::ExecuteResponse> Execute(const mkfleet::v1::ActionBatch& batch,
                                                       absl::Duration) override {
    agents::Agent* a = nullptr;
    if (absl::Status s = Check(&a); !s.ok()) return s;
    return a->Execute(batch);
  }
  absl::Status SetPolicy(const mkfleet::v1::SetPolicyRequest& request, absl::Duration) override {
    agents::Agent* a = nullptr;
    if (absl::Status s = Check(&a); !s.ok()) return s;
    return a->SetPolicy(request);
  }

 private:
  class Stream final : public WatchStream {
   public:
    Stream(std::function<agents::Agent*()> agent, int64_t version)
        : agent_fn_(std::move(agent)), agent_(agent_fn_()), version_(version) {}
    Result Next(mkfleet::v1::HostState* out, bool block, absl::Status* ended) override {
      while (true) {
        agents::Agent* now = agent_fn_();
        if (now == nullptr || now != agent_ || cancelled_) {
          *ended = absl::UnavailableError(cancelled_ ? "cancelled" : "agent went away");
          return Result::kEnded;
        }
        if (!started_) {
          started_ = true;
          mkfleet::v1::HostState snapshot = now->Snapshot();
          if (snapshot.resource_version() != version_) {
            version_ = snapshot.resource_version();
            *out = std::move(snapshot);
            return Result::kMessage;
          }
        }
        if (now->WaitForChange(version_, block ? absl::Milliseconds(50) : absl::ZeroDuration(), out)) {
          version_ = out->resource_version();
          return Result::kMessage;
        }
        if (!block) return Result::kPending;
      }
    }
    void Cancel() override { cancelled_ = true; }

   private:
    std::function<agents::Agent*()> agent_fn_;
    agents::Agent* agent_;
    int64_t version_;
    bool started_ = false;
    std::atomic<bool> cancelled_{false};
  };

  absl::Status Check(agents::Agent** out) {
    {
      absl::MutexLock lock(&mu_);
      if (fail_next_) {
        absl::Status s = *std::move(fail_next_);
        fail_next_.reset();
        return s;
      }
    }
    *out = agent_();
    if (*out == nullptr) return absl::UnavailableError("agent is down");
    return absl::OkStatus();
  }

  std::function<agents::Agent*()> agent_;
  absl::Mutex mu_;
  std::optional<absl::Status> fail_next_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_TESTING_IN_PROCESS_AGENT_CLIENT_H_
