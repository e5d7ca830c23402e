// DeterministicBytes: a message's serialization with map entries in key order, so that the
// same message gives the same bytes in every process (hashes, change detection).
#ifndef MKFLEET_PROTO_DETERMINISTIC_H_
#define MKFLEET_PROTO_DETERMINISTIC_H_

#include <string>

#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "google/protobuf/message.h"

namespace mkfleet {

inline std::string DeterministicBytes(const google::protobuf::Message& m) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    m.SerializeToCodedStream(&coded);
  }
  return bytes;
}

}  // namespace mkfleet

#endif  // MKFLEET_PROTO_DETERMINISTIC_H_
