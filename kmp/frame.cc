#include "kmp/frame.h"

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace mkfleet::kmp {
namespace {

void Put16(std::string* out, uint16_t v) {
  out->push_back(static_cast<char>(v & 0xff));
  out->push_back(static_cast<char>(v >> 8));
}

void Put64(std::string* out, uint64_t v) {
  PutFixed32(out, static_cast<uint32_t>(v));
  PutFixed32(out, static_cast<uint32_t>(v >> 32));
}

uint16_t Get16(const char* p) {
  return static_cast<uint16_t>(static_cast<unsigned char>(p[0]) | (static_cast<unsigned char>(p[1]) << 8));
}

uint64_t Get64(const char* p) { return GetFixed32(p) | (static_cast<uint64_t>(GetFixed32(p + 4)) << 32); }

}  // namespace

bool IsKnownType(uint16_t type) {
  switch (static_cast<MsgType>(type)) {
    case MsgType::kHeartbeatReq:
    case MsgType::kHeartbeatRsp:
    case MsgType::kHealthStatus:
    case MsgType::kMorphPrepare:
    case MsgType::kMorphNegotiate:
    case MsgType::kMorphTransferState:
    case MsgType::kMorphValidate:
    case MsgType::kMorphCommit:
    case MsgType::kMorphRollback:
    case MsgType::kError:
    case MsgType::kRetry:
      return true;
  }
  return false;
}

std::string MsgTypeName(uint16_t type) {
  switch (static_cast<MsgType>(type)) {
    case MsgType::kHeartbeatReq:
      return "HEARTBEAT_REQ";
    case MsgType::kHeartbeatRsp:
      return "HEARTBEAT_RSP";
    case MsgType::kHealthStatus:
      return "HEALTH_STATUS";
    case MsgType::kMorphPrepare:
      return "MORPH_PREPARE";
    case MsgType::kMorphNegotiate:
      return "MORPH_NEGOTIATE";
    case MsgType::kMorphTransferState:
      return "MORPH_TRANSFER_STATE";
    case MsgType::kMorphValidate:
      return "MORPH_VALIDATE";
    case MsgType::kMorphCommit:
      return "MORPH_COMMIT";
    case MsgType::kMorphRollback:
      return "MORPH_ROLLBACK";
    case MsgType::kError:
      return "ERROR";
    case MsgType::kRetry:
      return "RETRY";
  }
  return absl::StrCat("type ", type);
}

std::string EncodeFrame(const Frame& frame) {
  std::string out;
  out.reserve(kHeaderSize + frame.payload.size());
  PutFixed32(&out, kMagic);
  Put16(&out, kVersion);
  Put16(&out, frame.type);
  PutFixed32(&out, frame.sequence);
  PutFixed32(&out, static_cast<uint32_t>(frame.payload.size()));
  Put64(&out, frame.timestamp_ns);
  PutFixed32(&out, Crc32(frame.payload));
  PutFixed32(&out, frame.reserved);
  out += frame.payload;
  return out;
}

absl::Status FrameDecoder::Feed(absl::string_view bytes, std::vector<Frame>* out) {
  if (!failed_.ok()) return failed_;
  buffer_.append(bytes.data(), bytes.size());
  size_t off = 0;
  while (buffer_.size() - off >= kHeaderSize) {
    const char* h = buffer_.data() + off;
    uint32_t magic = GetFixed32(h);
    uint16_t version = Get16(h + 4);
    uint32_t len = GetFixed32(h + 12);
    if (magic != kMagic) {
      failed_ = absl::DataLossError(absl::StrCat("KMP: bad magic 0x", absl::Hex(magic), " (want 0x", absl::Hex(kMagic), ")"));
    } else if (version != kVersion) {
      failed_ = absl::DataLossError(absl::StrCat("KMP: version ", version, " (this side speaks ", kVersion, ")"));
    } else if (len > kMaxPayload) {
      failed_ = absl::ResourceExhaustedError(
          absl::StrCat("KMP: a payload of ", len, " bytes (at most ", kMaxPayload, "; larger state goes in chunks)"));
    }
    if (!failed_.ok()) {
      buffer_.clear();
      return failed_;
    }
    if (buffer_.size() - off - kHeaderSize < len) break;  // the rest of the payload is still coming
    Frame f;
    f.type = Get16(h + 6);
    f.sequence = GetFixed32(h + 8);
    f.timestamp_ns = Get64(h + 16);
    uint32_t crc = GetFixed32(h + 24);
    f.reserved = GetFixed32(h + 28);
    f.payload.assign(h + kHeaderSize, len);
    if (Crc32(f.payload) != crc) {
      failed_ = absl::DataLossError(
          absl::StrCat("KMP: ", MsgTypeName(f.type), " sequence ", f.sequence, ": payload CRC mismatch"));
      buffer_.clear();
      return failed_;
    }
    out->push_back(std::move(f));
    off += kHeaderSize + len;
  }
  buffer_.erase(0, off);
  return absl::OkStatus();
}

}  // namespace mkfleet::kmp
