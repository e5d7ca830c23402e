// A KMP connection over one stream socket (vsock, or AF_UNIX under the emulated kernel):
// frames out, frames in with a timeout, and calls whose answer is matched by sequence. A
// bad frame from the peer is answered with an ERROR frame and ends the connection; so does
// the peer closing it. Thread-compatible: one user at a time.
#ifndef MKFLEET_KMP_CONNECTION_H_
#define MKFLEET_KMP_CONNECTION_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "google/protobuf/message_lite.h"
#include "kmp/frame.h"

namespace mkfleet::kmp {

class Connection {
 public:
  explicit Connection(int fd);  // takes the socket
  Connection(const Connection&) = delete;
  Connection& operator=(const Connection&) = delete;
  ~Connection();

  // Sends `payload` as a frame of `type` with `sequence` (a response carries its request's).
  absl::Status Send(MsgType type, const google::protobuf::MessageLite& payload, uint32_t sequence);
  absl::Status SendFrame(const Frame& frame);
  // The next frame within `timeout`: DeadlineExceeded, Unavailable when the peer closed,
  // DataLoss or ResourceExhausted for a bad frame (the peer got an ERROR frame; the
  // connection is closed).
  absl::StatusOr<Frame> Receive(absl::Duration timeout);
  // Sends a request with the next sequence and waits for the frame answering it (frames with
  // other sequences are kept for Receive). An ERROR answer is FailedPrecondition with the
  // peer's reason; RETRY is Unavailable.
  absl::StatusOr<Frame> Call(MsgType type, const google::protobuf::MessageLite& payload, absl::Duration timeout);
  bool closed() const { return fd_ < 0; }
  // Ends the connection both ways (a Receive blocked in another thread returns Unavailable);
  // safe to call from another thread, unlike the rest.
  void Shutdown();

 private:
  void Close();
  int fd_;
  uint32_t next_sequence_ = 1;
  FrameDecoder decoder_;
  std::deque<Frame> pending_;  // decoded, not yet taken
};

// Clients: connect within `timeout`.
absl::StatusOr<std::unique_ptr<Connection>> DialUnix(const std::string& path, absl::Duration timeout);
absl::StatusOr<std::unique_ptr<Connection>> DialVsock(uint32_t cid, uint32_t port, absl::Duration timeout);

// Servers: a listening socket (the path is replaced if it exists), and one connection from it.
absl::StatusOr<int> ListenUnix(const std::string& path);
absl::StatusOr<int> ListenVsock(uint32_t port);
absl::StatusOr<std::unique_ptr<Connection>> Accept(int listen_fd, absl::Duration timeout);

}  // namespace mkfleet::kmp

#endif  // MKFLEET_KMP_CONNECTION_H_
