#include "agents/liveness.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <map>

#include "absl/synchronization/mutex.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;

class VsockProbe final : public LivenessProbe {
 public:
  VsockProbe(uint32_t port, int timeout_ms) : port_(port), timeout_ms_(timeout_ms) {}
  bool Probe(const std::string&, uint32_t id) override {
    int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    sockaddr_vm addr{};
    addr.svm_family = AF_VSOCK;
    addr.svm_cid = id;
    addr.svm_port = port_;
    bool ok = false;
    if (connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0) {
      ok = true;
    } else if (errno == EINPROGRESS) {
      pollfd p{fd, POLLOUT, 0};
      int err = 0;
      socklen_t len = sizeof(err);
      ok = poll(&p, 1, timeout_ms_) == 1 && getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &len) == 0 && err == 0;
    }
    close(fd);
    return ok;
  }

 private:
  uint32_t port_;
  int timeout_ms_;
};

class EmulatorProbe final : public LivenessProbe {
 public:
  explicit EmulatorProbe(kernel::EmulatedKernel& e) : e_(e) {}
  bool Probe(const std::string& instance, uint32_t) override { return e_.Probe(instance); }

 private:
  kernel::EmulatedKernel& e_;
};

class KmpProbe final : public LivenessProbe {
 public:
  KmpProbe(GuestDialer dial, std::unique_ptr<LivenessProbe> fallback, absl::Duration timeout)
      : dial_(std::move(dial)), fallback_(std::move(fallback)), timeout_(timeout) {}

  bool Probe(const std::string& instance, uint32_t id) override {
    std::unique_ptr<kmp::Connection> conn;
    {
      absl::MutexLock lock(&mu_);
      auto it = conns_.find(instance);
      if (it != conns_.end()) {
        conn = std::move(it->second);
        conns_.erase(it);
      }
    }
    if (conn == nullptr || conn->closed()) {
      auto dialed = dial_(id);
      if (!dialed.ok()) return fallback_ != nullptr && fallback_->Probe(instance, id);
      conn = *std::move(dialed);
    }
    auto rsp = conn->Call(kmp::MsgType::kHeartbeatReq, v1::KmpHeartbeat(), timeout_);
    v1::KmpHeartbeat hb;
    bool alive = rsp.ok() && rsp->type == static_cast<uint16_t>(kmp::MsgType::kHeartbeatRsp) &&
                 hb.ParseFromString(rsp->payload) && hb.instance_id() == id;
    if (alive) {
      absl::MutexLock lock(&mu_);
      conns_[instance] = std::move(conn);  // kept for the next probe
    }
    return alive;
  }

 private:
  GuestDialer dial_;
  std::unique_ptr<LivenessProbe> fallback_;
  const absl::Duration timeout_;
  absl::Mutex mu_;
  std::map<std::string, std::unique_ptr<kmp::Connection>> conns_ ABSL_GUARDED_BY(mu_);
};

}  // namespace

std::unique_ptr<LivenessProbe> NewKmpProbe(GuestDialer dial, std::unique_ptr<LivenessProbe> fallback,
                                           absl::Duration timeout) {
  return std::make_unique<KmpProbe>(std::move(dial), std::move(fallback), timeout);
}

std::unique_ptr<LivenessProbe> NewVsockProbe(uint32_t port, int timeout_ms) {
  return std::make_unique<VsockProbe>(port, timeout_ms);
}

std::unique_ptr<LivenessProbe> NewEmulatorProbe(kernel::EmulatedKernel& emulator) {
  return std::make_unique<EmulatorProbe>(emulator);
}

}  // namespace mkfleet::agents
