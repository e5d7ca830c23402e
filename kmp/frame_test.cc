#include "kmp/frame.h"

#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kmp {
namespace {

using ::testing::HasSubstr;

Frame Make(MsgType type, uint32_t seq, std::string payload) {
  Frame f;
  f.type = static_cast<uint16_t>(type);
  f.sequence = seq;
  f.timestamp_ns = 0x0102030405060708ull;
  f.payload = std::move(payload);
  return f;
}

TEST(KmpFrameTest, HeaderLayoutIsTheDocumentedOne) {
  std::string bytes = EncodeFrame(Make(MsgType::kMorphCommit, 7, "abc"));
  ASSERT_EQ(bytes.size(), kHeaderSize + 3);
  EXPECT_EQ(bytes.substr(0, 4), std::string("\x00\x50\x4d\x4b", 4));  // 0x4B4D5000 little-endian
  EXPECT_EQ(bytes.substr(4, 2), std::string("\x01\x00", 2));          // version 1
  EXPECT_EQ(bytes.substr(6, 2), std::string("\x24\x00", 2));          // MORPH_COMMIT = 36
  EXPECT_EQ(bytes.substr(8, 4), std::string("\x07\x00\x00\x00", 4));  // sequence
  EXPECT_EQ(bytes.substr(12, 4), std::string("\x03\x00\x00\x00", 4));  // payload length
  EXPECT_EQ(bytes.substr(16, 8), std::string("\x08\x07\x06\x05\x04\x03\x02\x01", 8));
  EXPECT_EQ(bytes.substr(24, 4), std::string("\xc2\x41\x24\x35", 4));  // crc32("abc") = 0x352441c2
  EXPECT_EQ(bytes.substr(28, 4), std::string(4, '\0'));
  EXPECT_EQ(bytes.substr(32), "abc");
}

TEST(KmpFrameTest, DecodesFramesSplitAnywhere) {
  std::string stream;
  std::vector<Frame> sent;
  for (uint32_t i = 0; i < 50; ++i) {
    sent.push_back(Make(i % 2 ? MsgType::kHeartbeatReq : MsgType::kMorphTransferState, i, std::string(i * 37, 'a' + i % 26)));
    stream += EncodeFrame(sent.back());
  }
  std::mt19937 rng(42);
  FrameDecoder d;
  std::vector<Frame> got;
  for (size_t off = 0; off < stream.size();) {
    size_t n = std::min<size_t>(stream.size() - off, rng() % 97);
    ASSERT_TRUE(d.Feed(absl::string_view(stream).substr(off, n), &got).ok());
    off += n;
  }
  ASSERT_EQ(got.size(), sent.size());
  for (size_t i = 0; i < sent.size(); ++i) {
    EXPECT_EQ(got[i].type, sent[i].type);
    EXPECT_EQ(got[i].sequence, sent[i].sequence);
    EXPECT_EQ(got[i].timestamp_ns, sent[i].timestamp_ns);
    EXPECT_EQ(got[i].payload, sent[i].payload);
  }
  EXPECT_EQ(d.buffered(), 0u);
}

TEST(KmpFrameTest, BadFramesFailTheStreamForGood) {
  std::vector<Frame> got;
  std::string good = EncodeFrame(Make(MsgType::kHeartbeatReq, 1, "x"));
  std::string bad_magic = good;
  bad_magic[0] = 'Z';
  FrameDecoder a;
  EXPECT_THAT(a.Feed(bad_magic, &got).message(), HasSubstr("bad magic"));
  EXPECT_FALSE(a.Feed(good, &got).ok()) << "nothing after a bad frame is trusted";
  EXPECT_TRUE(got.empty());

  std::string bad_version = good;
  bad_version[4] = 2;
  FrameDecoder b;
  EXPECT_THAT(b.Feed(bad_version, &got).message(), HasSubstr("version 2"));

  std::string bad_crc = good;
  bad_crc.back() ^= 1;
  FrameDecoder c;
  EXPECT_THAT(c.Feed(bad_crc, &got).message(), HasSubstr("CRC mismatch"));

  // A length past 16 MiB is refused from the header alone: nothing is buffered for it.
  std::string huge = good.substr(0, kHeaderSize);
  huge[12] = 0;
  huge[13] = 0;
  huge[14] = 0;
  huge[15] = 2;  // 32 MiB
  FrameDecoder e;
  absl::Status s = e.Feed(huge, &got);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(e.buffered(), 0u);
  EXPECT_TRUE(got.empty());
}

// Found by frame_fuzzer: a peer's reserved field was dropped, so a decoded frame did not
// encode back to the bytes received. It is kept as sent (and not checked).
TEST(KmpFrameTest, ReservedIsKeptAsSent) {
  Frame f = Make(MsgType::kHeartbeatRsp, 3, "");
  f.reserved = 0x1f0000;
  std::string bytes = EncodeFrame(f);
  FrameDecoder d;
  std::vector<Frame> got;
  ASSERT_TRUE(d.Feed(bytes, &got).ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].reserved, 0x1f0000u);
  EXPECT_EQ(EncodeFrame(got[0]), bytes);
}

TEST(KmpFrameTest, UnknownTypesAreDeliveredForTheReceiverToRefuse) {
  Frame f;
  f.type = 77;
  FrameDecoder d;
  std::vector<Frame> got;
  ASSERT_TRUE(d.Feed(EncodeFrame(f), &got).ok());
  ASSERT_EQ(got.size(), 1u);
  EXPECT_FALSE(IsKnownType(got[0].type));
  EXPECT_EQ(MsgTypeName(got[0].type), "type 77");
  EXPECT_EQ(MsgTypeName(36), "MORPH_COMMIT");
}

}  // namespace
}  // namespace mkfleet::kmp
