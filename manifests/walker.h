// Walker: fills a protobuf message from a YAML node by the message's descriptor,
// reporting every problem with its position. Private to manifests/.
//
// Thread-safety: one Walker per document, used from one thread.
#ifndef MKFLEET_MANIFESTS_WALKER_H_
#define MKFLEET_MANIFESTS_WALKER_H_

#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "google/protobuf/message.h"
#include "manifests/loader.h"
#include "manifests/yaml_tree.h"

namespace mkfleet::manifests {

class Walker {
 public:
  // Errors go to `errors`, tagged with `file` and `object`; field positions to `positions`.
  // `*budget` bounds the number of nodes visited (alias expansion); it is shared by the
  // walkers of one file and decremented as nodes are visited.
  Walker(absl::string_view file, absl::string_view object, size_t* budget,
         std::vector<Diagnostic>* errors, FieldPositions* positions)
      : file_(file), object_(object), budget_(budget), errors_(errors), positions_(positions) {}

  // Fills `msg` from the mapping `node`. `path` is the field path of `msg` ("" at the top);
  // `key_pos` is where missing fields of `msg` are reported.
  void WalkMessage(const YamlNode& node, google::protobuf::Message* msg, const std::string& path,
                   Position key_pos);

 private:
  void WalkField(const YamlNode& value, google::protobuf::Message* msg, const struct FieldInfo& fi,
                 const std::string& path, Position key_pos);
  void WalkScalar(const YamlNode& value, google::protobuf::Message* msg,
                  const struct FieldInfo& fi, const std::string& path);
  bool Spend(const YamlNode& node);
  void Error(Position pos, const std::string& path, std::string message);

  absl::string_view file_;
  absl::string_view object_;
  size_t* budget_;
  bool budget_reported_ = false;
  std::vector<Diagnostic>* errors_;
  FieldPositions* positions_;
};

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_WALKER_H_
