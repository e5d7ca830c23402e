// libFuzzer target for mkguest's message handling (scripts/fuzz): the input is cut into KMP
// frames (a type byte, a length byte, that much payload, repeated), valid on the wire but
// with any type and any payload, sent to a Guest over a socket pair. It must answer or
// refuse each and never crash or hang (ASan; libFuzzer's timeout).
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <string>

#include "guest/guest.h"
#include "kmp/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mkfleet;
  static const uint16_t kTypes[] = {1, 2, 3, 32, 33, 34, 35, 36, 37, 48, 49, 77};
  std::string wire;
  for (size_t i = 0; i + 2 <= size && wire.size() < (64u << 10);) {
    kmp::Frame f;
    f.type = kTypes[data[i] % (sizeof(kTypes) / sizeof(kTypes[0]))];
    f.sequence = static_cast<uint32_t>(i);
    size_t n = std::min<size_t>(data[i + 1], size - i - 2);
    f.payload.assign(reinterpret_cast<const char*>(data) + i + 2, n);
    wire += kmp::EncodeFrame(f);
    i += 2 + n;
  }
  int fds[2];
  if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return 0;
  int big = 4 << 20;
  setsockopt(fds[0], SOL_SOCKET, SO_RCVBUF, &big, sizeof(big));
  setsockopt(fds[1], SOL_SOCKET, SO_SNDBUF, &big, sizeof(big));
  if (write(fds[0], wire.data(), wire.size()) != static_cast<ssize_t>(wire.size())) abort();
  shutdown(fds[0], SHUT_WR);
  guest::Guest g(1, guest::Hooks("/nonexistent-mkguest-hooks", absl::Seconds(1)));
  kmp::Connection conn(fds[1]);
  auto end = g.Serve(conn);
  (void)end;
  close(fds[0]);
  return 0;
}
