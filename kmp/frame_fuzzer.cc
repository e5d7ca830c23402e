// libFuzzer target for the KMP frame decoder (scripts/fuzz): any byte stream, fed in pieces.
// Properties beyond "no crash, no hang, no leak" (ASan): the decoder never holds more than
// one header and one maximal payload; every frame it returns encodes back to exactly the
// bytes it was decoded from (so nothing was invented or dropped); after an error it stays
// failed.
#include <cstdint>
#include <cstdlib>
#include <string>
#include <vector>

#include "kmp/frame.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mkfleet::kmp;
  if (size == 0) return 0;
  // The first byte chooses how the stream is cut into pieces.
  const size_t piece = 1 + data[0] % 64;
  std::string stream(reinterpret_cast<const char*>(data) + 1, size - 1);
  FrameDecoder d;
  std::vector<Frame> got;
  std::string consumed;
  bool failed = false;
  for (size_t off = 0; off < stream.size(); off += piece) {
    absl::Status s = d.Feed(absl::string_view(stream).substr(off, piece), &got);
    if (d.buffered() > kHeaderSize + kMaxPayload) abort();
    if (!s.ok()) {
      failed = true;
      if (d.Feed("x", &got).ok()) abort();  // stays failed
      break;
    }
  }
  for (const Frame& f : got) consumed += EncodeFrame(f);
  if (stream.compare(0, consumed.size(), consumed) != 0) abort();
  if (!failed && consumed.size() + d.buffered() != stream.size()) abort();
  return 0;
}
