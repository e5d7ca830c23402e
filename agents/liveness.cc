#include "agents/liveness.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>

namespace mkfleet::agents {
namespace {

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

}  // namespace

std::unique_ptr<LivenessProbe> NewVsockProbe(uint32_t port, int timeout_ms) {
  return std::make_unique<VsockProbe>(port, timeout_ms);
}

std::unique_ptr<LivenessProbe> NewEmulatorProbe(kernel::EmulatedKernel& emulator) {
  return std::make_unique<EmulatorProbe>(emulator);
}

}  // namespace mkfleet::agents
