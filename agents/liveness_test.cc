#include "agents/liveness.h"

#include <unistd.h>

#include <atomic>
#include <mutex>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "guest/guest.h"

namespace mkfleet::agents {
namespace {

// A probe whose answer the test sets (an instance without a guest).
class FixedProbe final : public LivenessProbe {
 public:
  explicit FixedProbe(std::atomic<bool>* answer) : answer_(answer) {}
  bool Probe(const std::string&, uint32_t) override { return *answer_; }

 private:
  std::atomic<bool>* answer_;
};

// mkguest's logic for instance `id`, serving connections on a unix socket until stopped.
class GuestServer {
 public:
  GuestServer(const std::string& path, uint32_t id) : path_(path), guest_(id, guest::Hooks("/nonexistent", absl::Seconds(1))) {
    auto fd = kmp::ListenUnix(path);
    EXPECT_TRUE(fd.ok()) << fd.status();
    fd_ = *fd;
    thread_ = std::thread([this] {
      while (!stop_) {
        auto c = kmp::Accept(fd_, absl::Milliseconds(50));
        if (!c.ok()) continue;
        {
          std::lock_guard<std::mutex> l(mu_);
          if (stop_) break;  // the destructor has looked already: do not start serving
          current_ = c->get();
        }
        (void)guest_.Serve(**c);
        std::lock_guard<std::mutex> l(mu_);
        current_ = nullptr;  // before the connection is destroyed
      }
    });
  }
  ~GuestServer() {
    stop_ = true;
    // The probe keeps its connection: end it, as a dying guest's would end.
    {
      std::lock_guard<std::mutex> l(mu_);
      if (current_ != nullptr) current_->Shutdown();
    }
    thread_.join();
    close(fd_);
    unlink(path_.c_str());
  }

 private:
  std::string path_;
  guest::Guest guest_;
  int fd_ = -1;
  std::atomic<bool> stop_{false};
  std::mutex mu_;
  kmp::Connection* current_ = nullptr;  // guarded by mu_
  std::thread thread_;
};

TEST(KmpProbeTest, HeartbeatsWhereAGuestRunsAndTheFallbackElsewhere) {
  const std::string dir = ::testing::TempDir();
  auto path = [&](uint32_t id) { return dir + "/vsock-" + std::to_string(getpid()) + "-" + std::to_string(id); };
  std::atomic<bool> fallback_answer{true};
  auto probe = NewKmpProbe([&](uint32_t id) { return kmp::DialUnix(path(id), absl::Milliseconds(50)); },
                           std::make_unique<FixedProbe>(&fallback_answer), absl::Milliseconds(500));
  {
    GuestServer guest(path(7), 7);
    EXPECT_TRUE(probe->Probe("web-1", 7));
    EXPECT_TRUE(probe->Probe("web-1", 7)) << "again, on the kept connection";
    fallback_answer = false;
    EXPECT_TRUE(probe->Probe("web-1", 7)) << "the guest answers, whatever the fallback says";
    // A guest of another instance answering on that address is not this instance.
    GuestServer impostor(path(8), 9);
    EXPECT_FALSE(probe->Probe("db-1", 8));
  }
  // The guest is gone: its kept connection fails the heartbeat, and with no guest to dial
  // the fallback decides.
  EXPECT_FALSE(probe->Probe("web-1", 7));
  fallback_answer = true;
  EXPECT_TRUE(probe->Probe("web-1", 7));
}

}  // namespace
}  // namespace mkfleet::agents
