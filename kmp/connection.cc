#include "kmp/connection.h"

#include <fcntl.h>
#include <linux/vm_sockets.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::kmp {
namespace {

namespace v1 = mkfleet::v1;
using Steady = std::chrono::steady_clock;

absl::Status Errno(absl::string_view what) {
  return absl::UnavailableError(absl::StrCat("KMP: ", what, ": ", strerror(errno)));
}

int PollMs(Steady::time_point deadline) {
  auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Steady::now()).count();
  return left < 0 ? 0 : static_cast<int>(std::min<int64_t>(left, 1 << 30));
}

Steady::time_point DeadlineAfter(absl::Duration timeout) {
  return Steady::now() + std::chrono::duration_cast<Steady::duration>(absl::ToChronoNanoseconds(timeout));
}

uint64_t MonotonicNs() {
  return static_cast<uint64_t>(std::chrono::duration_cast<std::chrono::nanoseconds>(
                                   Steady::now().time_since_epoch())
                                   .count());
}

// Connects `fd` to `addr` within `timeout` (non-blocking connect, then poll).
absl::StatusOr<std::unique_ptr<Connection>> Connect(int fd, const sockaddr* addr, socklen_t len,
                                                    absl::Duration timeout, const std::string& what) {
  fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK);
  if (connect(fd, addr, len) != 0 && errno != EINPROGRESS) {
    absl::Status s = Errno("connect " + what);
    close(fd);
    return s;
  }
  pollfd p{fd, POLLOUT, 0};
  if (poll(&p, 1, PollMs(DeadlineAfter(timeout))) != 1) {
    close(fd);
    return absl::DeadlineExceededError(absl::StrCat("KMP: connect ", what, ": no answer within ",
                                                    absl::FormatDuration(timeout)));
  }
  int err = 0;
  socklen_t elen = sizeof(err);
  getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
  if (err != 0) {
    close(fd);
    return absl::UnavailableError(absl::StrCat("KMP: connect ", what, ": ", strerror(err)));
  }
  return std::make_unique<Connection>(fd);
}

// An AF_UNIX address for `path`. sun_path holds 107 bytes; a longer path (a test's deep
// temporary folder) is reached through its directory's descriptor, /proc/self/fd/N/NAME,
// which the address holds open until it is destroyed.
struct UnixAddress {
  sockaddr_un addr{};
  int dir_fd = -1;
  UnixAddress() = default;
  UnixAddress(UnixAddress&& o) noexcept : addr(o.addr), dir_fd(std::exchange(o.dir_fd, -1)) {}
  UnixAddress& operator=(UnixAddress&&) = delete;
  ~UnixAddress() {
    if (dir_fd >= 0) close(dir_fd);
  }
  const sockaddr* get() const { return reinterpret_cast<const sockaddr*>(&addr); }
};

absl::StatusOr<UnixAddress> ResolveUnix(const std::string& path) {
  UnixAddress a;
  a.addr.sun_family = AF_UNIX;
  std::string use = path;
  if (path.size() >= sizeof(a.addr.sun_path)) {
    size_t slash = path.rfind('/');
    std::string dir = slash == std::string::npos ? "." : path.substr(0, slash);
    a.dir_fd = open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC);
    if (a.dir_fd < 0) return Errno("open " + dir);
    use = absl::StrCat("/proc/self/fd/", a.dir_fd, "/", path.substr(slash + 1));
    if (use.size() >= sizeof(a.addr.sun_path)) return absl::InvalidArgumentError("KMP: socket name too long: " + path);
  }
  std::memcpy(a.addr.sun_path, use.c_str(), use.size() + 1);
  return a;
}

}  // namespace

Connection::Connection(int fd) : fd_(fd) {
  if (fd_ >= 0) fcntl(fd_, F_SETFL, fcntl(fd_, F_GETFL) | O_NONBLOCK);
}

Connection::~Connection() { Close(); }

void Connection::Shutdown() {
  int fd = fd_;
  if (fd >= 0) shutdown(fd, SHUT_RDWR);
}

void Connection::Close() {
  if (fd_ >= 0) close(fd_);
  fd_ = -1;
}

absl::Status Connection::SendFrame(const Frame& frame) {
  if (fd_ < 0) return absl::UnavailableError("KMP: the connection is closed");
  std::string bytes = EncodeFrame(frame);
  size_t off = 0;
  const auto deadline = DeadlineAfter(absl::Seconds(10));
  while (off < bytes.size()) {
    ssize_t n = send(fd_, bytes.data() + off, bytes.size() - off, MSG_NOSIGNAL);
    if (n > 0) {
      off += static_cast<size_t>(n);
      continue;
    }
    if (n < 0 && errno == EINTR) continue;
    if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      pollfd p{fd_, POLLOUT, 0};
      if (poll(&p, 1, PollMs(deadline)) != 1) {
        Close();
        return absl::DeadlineExceededError("KMP: the peer does not read");
      }
      continue;
    }
    absl::Status s = Errno("send");
    Close();
    return s;
  }
  return absl::OkStatus();
}

absl::Status Connection::Send(MsgType type, const google::protobuf::MessageLite& payload, uint32_t sequence) {
  Frame f;
  f.type = static_cast<uint16_t>(type);
  f.sequence = sequence;
  f.timestamp_ns = MonotonicNs();
  if (!payload.SerializeToString(&f.payload)) return absl::InternalError("KMP: cannot serialize the payload");
  return SendFrame(f);
}

absl::StatusOr<Frame> Connection::Receive(absl::Duration timeout) {
  const auto deadline = DeadlineAfter(timeout);
  while (pending_.empty()) {
    if (fd_ < 0) return absl::UnavailableError("KMP: the connection is closed");
    pollfd p{fd_, POLLIN, 0};
    int r = poll(&p, 1, PollMs(deadline));
    if (r == 0) return absl::DeadlineExceededError("KMP: no frame within " + absl::FormatDuration(timeout));
    if (r < 0) {
      if (errno == EINTR) continue;
      return Errno("poll");
    }
    char buf[1 << 16];
    ssize_t n = recv(fd_, buf, sizeof(buf), 0);
    if (n == 0) {
      Close();
      return absl::UnavailableError("KMP: the peer closed the connection");
    }
    if (n < 0) {
      if (errno == EINTR || errno == EAGAIN || errno == EWOULDBLOCK) continue;
      absl::Status s = Errno("recv");
      Close();
      return s;
    }
    std::vector<Frame> frames;
    absl::Status s = decoder_.Feed(absl::string_view(buf, static_cast<size_t>(n)), &frames);
    for (Frame& f : frames) pending_.push_back(std::move(f));
    if (!s.ok()) {
      // Tell the peer why, then end: nothing more from it is trusted.
      v1::KmpError e;
      e.set_reason(std::string(s.message()));
      (void)Send(MsgType::kError, e, 0);
      Close();
      if (pending_.empty()) return s;
    }
  }
  Frame f = std::move(pending_.front());
  pending_.pop_front();
  return f;
}

absl::StatusOr<Frame> Connection::Call(MsgType type, const google::protobuf::MessageLite& payload,
                                       absl::Duration timeout) {
  const uint32_t sequence = next_sequence_++;
  if (absl::Status s = Send(type, payload, sequence); !s.ok()) return s;
  const auto deadline = DeadlineAfter(timeout);
  std::deque<Frame> others;
  while (true) {
    auto left = absl::FromChrono(deadline - Steady::now());
    auto f = Receive(std::max(left, absl::ZeroDuration()));
    if (!f.ok()) {
      for (auto it = others.rbegin(); it != others.rend(); ++it) pending_.push_front(std::move(*it));
      return f.status();
    }
    if (f->sequence != sequence) {
      others.push_back(*std::move(f));
      continue;
    }
    for (auto it = others.rbegin(); it != others.rend(); ++it) pending_.push_front(std::move(*it));
    if (f->type == static_cast<uint16_t>(MsgType::kError)) {
      v1::KmpError e;
      e.ParseFromString(f->payload);
      return absl::FailedPreconditionError(absl::StrCat("KMP: ", MsgTypeName(static_cast<uint16_t>(type)),
                                                        " refused: ", e.reason()));
    }
    if (f->type == static_cast<uint16_t>(MsgType::kRetry)) {
      return absl::UnavailableError(absl::StrCat("KMP: ", MsgTypeName(static_cast<uint16_t>(type)), ": retry later"));
    }
    return f;
  }
}

absl::StatusOr<std::unique_ptr<Connection>> DialUnix(const std::string& path, absl::Duration timeout) {
  auto a = ResolveUnix(path);
  if (!a.ok()) return a.status();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  return Connect(fd, a->get(), sizeof(a->addr), timeout, path);
}

absl::StatusOr<std::unique_ptr<Connection>> DialVsock(uint32_t cid, uint32_t port, absl::Duration timeout) {
  sockaddr_vm a{};
  a.svm_family = AF_VSOCK;
  a.svm_cid = cid;
  a.svm_port = port;
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket(AF_VSOCK)");
  return Connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a), timeout, absl::StrCat("vsock ", cid, ":", port));
}

absl::StatusOr<int> ListenUnix(const std::string& path) {
  auto a = ResolveUnix(path);
  if (!a.ok()) return a.status();
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket");
  unlink(path.c_str());
  if (bind(fd, a->get(), sizeof(a->addr)) != 0 || listen(fd, 16) != 0) {
    absl::Status s = Errno("listen on " + path);
    close(fd);
    return s;
  }
  return fd;
}

absl::StatusOr<int> ListenVsock(uint32_t port) {
  sockaddr_vm a{};
  a.svm_family = AF_VSOCK;
  a.svm_cid = VMADDR_CID_ANY;
  a.svm_port = port;
  int fd = socket(AF_VSOCK, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return Errno("socket(AF_VSOCK)");
  if (bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0 || listen(fd, 16) != 0) {
    absl::Status s = Errno(absl::StrCat("listen on vsock port ", port));
    close(fd);
    return s;
  }
  return fd;
}

absl::StatusOr<std::unique_ptr<Connection>> Accept(int listen_fd, absl::Duration timeout) {
  pollfd p{listen_fd, POLLIN, 0};
  int r = poll(&p, 1, PollMs(DeadlineAfter(timeout)));
  if (r == 0) return absl::DeadlineExceededError("KMP: no connection within " + absl::FormatDuration(timeout));
  if (r < 0) return Errno("poll");
  int fd = accept4(listen_fd, nullptr, nullptr, SOCK_CLOEXEC);
  if (fd < 0) return Errno("accept");
  return std::make_unique<Connection>(fd);
}

}  // namespace mkfleet::kmp
