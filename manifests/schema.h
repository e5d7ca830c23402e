// Cached views of the mkfleet.v1 descriptors as YAML sees them: fields by JSON name with
// their rules, enum values by their (yaml) spelling. Private to manifests/.
//
// Thread-safety: the tables are built once (thread-safe static init) and then immutable.
#ifndef MKFLEET_MANIFESTS_SCHEMA_H_
#define MKFLEET_MANIFESTS_SCHEMA_H_

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "google/protobuf/descriptor.h"
#include "mkfleet/v1/options.pb.h"

namespace mkfleet::manifests {

struct FieldInfo {
  const google::protobuf::FieldDescriptor* field;
  std::string yaml_name;
  mkfleet::v1::FieldRules rules;
};

struct MessageInfo {
  std::vector<FieldInfo> fields;  // declaration order
  absl::flat_hash_map<std::string, const FieldInfo*> by_name;
  std::vector<std::string> names;  // user-writable names, for suggestions
};

struct EnumInfo {
  absl::flat_hash_map<std::string, int> by_yaml;
  // How each value prints: its manifest spelling, or for values without one (output-only
  // enums) the words after the common prefix, capitalised (KERNEL_STATE_RUNNING: Running).
  absl::flat_hash_map<int, std::string> yaml_of;
  std::vector<std::string> names;  // declaration order
};

// REQUIRES: `d` is reachable from mkfleet.v1.Object.
const MessageInfo& InfoFor(const google::protobuf::Descriptor* d);
const EnumInfo& InfoFor(const google::protobuf::EnumDescriptor* d);

// The closest candidate to `word` (case-insensitive edit distance), or "" if none is close.
std::string Suggest(absl::string_view word, const std::vector<std::string>& candidates);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_SCHEMA_H_
