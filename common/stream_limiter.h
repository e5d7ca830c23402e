// StreamLimiter: caps long-lived streaming calls (watches, followed event streams), per
// client and in all, so that idle streams cannot pile up threads and memory in a daemon.
// Acquire returns a token that frees the slot when destroyed, or ResourceExhausted saying
// which limit was hit. Thread-safe.
#ifndef MKFLEET_COMMON_STREAM_LIMITER_H_
#define MKFLEET_COMMON_STREAM_LIMITER_H_

#include <map>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"

namespace mkfleet {

class StreamLimiter {
 public:
  StreamLimiter(int per_client, int total) : per_client_(per_client), total_(total) {}

  class Token {
   public:
    Token(StreamLimiter* owner, std::string client) : owner_(owner), client_(std::move(client)) {}
    Token(const Token&) = delete;
    Token& operator=(const Token&) = delete;
    ~Token() { owner_->Release(client_); }

   private:
    StreamLimiter* owner_;
    std::string client_;
  };

  // `client` names the caller in messages and counts ("user alice", "ipv4:127.0.0.1:5000").
  absl::StatusOr<std::unique_ptr<Token>> Acquire(const std::string& client) {
    absl::MutexLock lock(&mu_);
    if (all_ >= total_) {
      return absl::ResourceExhaustedError(
          absl::StrCat("too many open streams (", all_, ", at most ", total_, " in all); try again later"));
    }
    int& mine = by_client_[client];
    if (mine >= per_client_) {
      return absl::ResourceExhaustedError(
          absl::StrCat(client, " has ", mine, " open streams, at most ", per_client_, " per client"));
    }
    ++mine;
    ++all_;
    return std::make_unique<Token>(this, client);
  }

  int open() const {
    absl::MutexLock lock(&mu_);
    return all_;
  }

 private:
  void Release(const std::string& client) {
    absl::MutexLock lock(&mu_);
    --all_;
    auto it = by_client_.find(client);
    if (it != by_client_.end() && --it->second == 0) by_client_.erase(it);
  }

  const int per_client_;
  const int total_;
  mutable absl::Mutex mu_;
  int all_ ABSL_GUARDED_BY(mu_) = 0;
  std::map<std::string, int> by_client_ ABSL_GUARDED_BY(mu_);
};

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_STREAM_LIMITER_H_
