// KMP framing (docs/morph.md, "Framing"): the agent <-> guest protocol of live update
// (morph), over vsock port 9000, or an AF_UNIX socket under the emulated kernel. Each
// frame is a 32-byte little-endian header (magic "KMP\0", version 1, message type,
// sequence, payload length <= 16 MiB, the sender's CLOCK_MONOTONIC, CRC-32 of the payload,
// reserved) and the payload (a protobuf message of the project's schema).
//
// FrameDecoder takes the byte stream as it arrives, in pieces of any size, and returns
// whole frames. A bad magic, version, length or CRC is an error after which the connection
// must be closed (with an ERROR frame): nothing past it is trusted. It never buffers more
// than one header and one maximal payload. Thread-compatible.
#ifndef MKFLEET_KMP_FRAME_H_
#define MKFLEET_KMP_FRAME_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kmp {

inline constexpr uint32_t kMagic = 0x4B4D5000;  // "KMP\0"
inline constexpr uint16_t kVersion = 1;
inline constexpr size_t kHeaderSize = 32;
inline constexpr uint32_t kMaxPayload = 16u << 20;
inline constexpr uint32_t kPort = 9000;  // vsock port; CID = instance id

enum class MsgType : uint16_t {
  kHeartbeatReq = 1,
  kHeartbeatRsp = 2,
  kHealthStatus = 3,
  kMorphPrepare = 32,
  kMorphNegotiate = 33,
  kMorphTransferState = 34,
  kMorphValidate = 35,
  kMorphCommit = 36,
  kMorphRollback = 37,
  kError = 48,
  kRetry = 49,
};

// "HEARTBEAT_REQ", ... or "type 77" for a value the protocol does not define.
std::string MsgTypeName(uint16_t type);
// True for the types of the table in docs/morph.md.
bool IsKnownType(uint16_t type);

struct Frame {
  uint16_t type = 0;  // a MsgType, or an unknown value a peer sent (answered with ERROR)
  uint32_t sequence = 0;
  uint64_t timestamp_ns = 0;
  // 0 from this side; what a peer sent is kept as sent (the field is not checked, so that a
  // later revision may use it).
  uint32_t reserved = 0;
  std::string payload;
};

// The frame's bytes: header and payload. REQUIRES: payload.size() <= kMaxPayload.
std::string EncodeFrame(const Frame& frame);

class FrameDecoder {
 public:
  // Appends `bytes` and moves every whole frame now available into `out`. DataLoss (bad
  // magic, version or CRC) or ResourceExhausted (a length past kMaxPayload), naming what was
  // wrong, when the stream cannot be trusted any more; the decoder then stays failed.
  absl::Status Feed(absl::string_view bytes, std::vector<Frame>* out);
  // Bytes held that do not make a whole frame yet.
  size_t buffered() const { return buffer_.size(); }

 private:
  std::string buffer_;
  absl::Status failed_;
};

}  // namespace mkfleet::kmp

#endif  // MKFLEET_KMP_FRAME_H_
