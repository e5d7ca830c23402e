// Private to reconciler/: a server stream on gRPC's callback API that sends what it was
// started with (a snapshot, a history), then, when it follows, each new change under one
// prefix as the WatchHub reads it. It has no thread of its own: an idle stream is a queue
// and a subscription, woken by the hub. Thread-safety: reactions (gRPC's threads) and hub
// wake-ups (the hub's thread) may come at once; the reactor serializes them.
#ifndef MKFLEET_RECONCILER_FOLLOW_REACTOR_H_
#define MKFLEET_RECONCILER_FOLLOW_REACTOR_H_

#include <atomic>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "absl/synchronization/mutex.h"
#include "common/stream_limiter.h"
#include "grpcpp/grpcpp.h"
#include "reconciler/watch_hub.h"

namespace mkfleet::reconciler {

// A stream that is refused before it starts.
template <typename Msg>
class RefusedStream final : public grpc::ServerWriteReactor<Msg> {
 public:
  explicit RefusedStream(const grpc::Status& status) { this->Finish(status); }
  void OnDone() override { delete this; }
};

template <typename Msg>
class FollowReactor final : public grpc::ServerWriteReactor<Msg> {
 public:
  // What a change becomes for this stream (nullopt: not sent).
  using Convert = std::function<std::optional<Msg>(const Event&)>;
  struct Options {
    bool follow = true;
    // Fell behind what the hub keeps: end with OUT_OF_RANGE (a watch starts again from a
    // snapshot), or go on from the hub's newest revision (a follower of events).
    bool out_of_range_ends = true;
  };

  // Starts sending `initial`, then the changes after revision `seen` under `prefix`.
  // `slot` (the stream's place under the stream limits) is freed when the stream ends.
  FollowReactor(WatchHub& hub, std::deque<Msg> initial, int64_t seen, std::string prefix, Convert convert,
                Options options, std::unique_ptr<StreamLimiter::Token> slot)
      : hub_(hub),
        queue_(std::move(initial)),
        seen_(seen),
        prefix_(std::move(prefix)),
        convert_(std::move(convert)),
        options_(options),
        slot_(std::move(slot)),
        shim_(std::make_shared<Shim>(this)) {
    // At once, before any message: a client can tell an accepted stream (its initial
    // metadata) from one still on its way or refused (ClientReader::WaitForInitialMetadata).
    this->StartSendInitialMetadata();
    if (options_.follow) hub_.Subscribe(shim_);
    Pump();
  }

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&mu_);
      writing_ = false;
      if (!ok) ending_ = grpc::Status::CANCELLED;  // the client went away
    }
    Pump();
  }
  void OnCancel() override {
    {
      absl::MutexLock lock(&mu_);
      if (!ending_) ending_ = grpc::Status::CANCELLED;
    }
    Pump();
  }
  void OnDone() override {
    {
      absl::MutexLock lock(&shim_->mu);
      shim_->reactor = nullptr;
    }
    Unref();
  }

 private:
  // The hub's way in: holds the reactor (counted) while it pumps, so it is never deleted
  // under it.
  struct Shim final : WatchHub::Listener {
    explicit Shim(FollowReactor* r) : reactor(r) {}
    void OnChanges() override {
      FollowReactor* r;
      {
        absl::MutexLock lock(&mu);
        r = reactor;
        if (r == nullptr) return;
        r->refs_.fetch_add(1);
      }
      r->Pump();
      r->Unref();
    }
    absl::Mutex mu;
    FollowReactor* reactor ABSL_GUARDED_BY(mu);
  };

  void Unref() {
    if (refs_.fetch_sub(1) == 1) delete this;
  }

  // Sends the next message, finishes, or waits for the hub; never holds a lock while it
  // calls into gRPC.
  void Pump() {
    enum { kNothing, kWrite, kFinish } act = kNothing;
    grpc::Status finish;
    {
      absl::MutexLock lock(&mu_);
      if (writing_ || finished_) return;
      if (!ending_ && queue_.empty() && options_.follow) Fill();
      if (ending_) {
        finished_ = true;
        finish = *ending_;
        act = kFinish;
      } else if (!queue_.empty()) {
        current_ = std::move(queue_.front());
        queue_.pop_front();
        writing_ = true;
        act = kWrite;
      } else if (!options_.follow) {
        finished_ = true;
        finish = grpc::Status::OK;
        act = kFinish;
      }
    }
    if (act == kWrite) this->StartWrite(&current_);
    if (act == kFinish) this->Finish(finish);
  }

  // Takes what the hub has after `seen_` (without waiting).
  void Fill() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    int64_t now = seen_;
    auto changes = hub_.Next(seen_, prefix_, absl::ZeroDuration(), &now);
    if (changes.status().code() == absl::StatusCode::kOutOfRange && !options_.out_of_range_ends) {
      seen_ = now;  // skip ahead
      return;
    }
    if (!changes.ok()) {
      ending_ = grpc::Status(static_cast<grpc::StatusCode>(changes.status().code()),
                             std::string(changes.status().message()));
      return;
    }
    for (const Event& e : *changes) {
      seen_ = std::max(seen_, e.revision);
      if (auto m = convert_(e)) queue_.push_back(*std::move(m));
    }
    seen_ = std::max(seen_, now);
  }

  WatchHub& hub_;
  absl::Mutex mu_;
  std::deque<Msg> queue_ ABSL_GUARDED_BY(mu_);
  Msg current_;  // the message being written (only touched while not writing_)
  int64_t seen_ ABSL_GUARDED_BY(mu_);
  const std::string prefix_;
  const Convert convert_;
  const Options options_;
  bool writing_ ABSL_GUARDED_BY(mu_) = false;
  bool finished_ ABSL_GUARDED_BY(mu_) = false;
  std::optional<grpc::Status> ending_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<StreamLimiter::Token> slot_;
  std::atomic<int> refs_{1};  // gRPC's (dropped in OnDone), plus one per hub wake-up in progress
  std::shared_ptr<Shim> shim_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_FOLLOW_REACTOR_H_
