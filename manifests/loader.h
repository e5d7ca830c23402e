// The manifest loader: YAML files -> validated mkfleet.v1 objects, or every error found.
//
// The YAML tree is walked against the protobuf descriptors (the schema is the truth:
// names, types, units, ranges and formats come from proto/mkfleet/v1), so each error keeps
// the file:line:col of the node it is about. Semantic checks (mutually exclusive fields,
// references between objects, duplicates) run after the walk. Nothing past this folder
// sees YAML.
//
// Thread-safety: the functions are reentrant; a LoadResult is a plain value.
#ifndef MKFLEET_MANIFESTS_LOADER_H_
#define MKFLEET_MANIFESTS_LOADER_H_

#include <cstddef>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "manifests/yaml_tree.h"
#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::manifests {

inline constexpr absl::string_view kApiVersion = "mkfleet.io/v1";

// One problem in the input, printed as
//   file:line:col: Kind/name: field.path: message
struct Diagnostic {
  std::string file;
  Position pos;
  std::string object;  // "KernelInstance/web-1"; empty for file-level problems
  std::string path;    // "spec.resources.memory"; empty for document-level problems
  std::string message;

  std::string ToString() const;
};

// Where each field of an object was written: key and value positions, by field path.
struct FieldPosition {
  Position key;
  Position value;
};
using FieldPositions = absl::flat_hash_map<std::string, FieldPosition>;

struct LoadedObject {
  mkfleet::v1::Object object;
  std::string label;  // "Kind/name" as written, for error lines
  std::string file;
  Position pos;  // where the document starts
  FieldPositions fields;
};

struct LoadOptions {
  // Files larger than this are rejected unread.
  size_t max_file_bytes = 16 << 20;
  // Total YAML nodes per file, counting each alias expansion (bounds memory and time).
  size_t max_nodes = 1 << 20;
  // Report a KernelInstance whose spec.host names no Host among the loaded objects.
  bool check_host_references = true;
  // Hosts defined elsewhere (the controller's, for a folder that holds only part of the
  // fleet): spec.host may name them too.
  std::vector<std::string> known_hosts;
};

struct LoadResult {
  std::vector<LoadedObject> objects;
  std::vector<Diagnostic> errors;

  bool ok() const { return errors.empty(); }
  // "12 objects valid: 3 Host, 8 KernelInstance, 1 InstanceSet"
  std::string Summary() const;
};

// Loads `paths`: files, directories (recursively, *.yaml and *.yml, in name order) and
// "-" for standard input. Runs all checks, including those across objects, and sorts the
// errors by file and position.
LoadResult LoadPaths(const std::vector<std::string>& paths, const LoadOptions& options = {});

// Loads the documents of one file's text into `result` (no cross-object checks).
void LoadText(absl::string_view file, absl::string_view text, const LoadOptions& options,
              LoadResult* result);

// Cross-object checks (duplicate names, host references, fixed ids), then sorts errors.
void CheckObjects(const LoadOptions& options, LoadResult* result);

// Checks objects that arrive as protos (the controller's Apply) exactly as `mkapply
// validate` checks files: each is printed in canonical YAML and loaded back, so every rule
// of the schema and every semantic check applies (host references excepted: the store may
// hold the Host). Returns the objects as loaded back, output-only fields dropped; or
// InvalidArgument listing the errors ("objects[1] KernelInstance/web-1: spec.resources.memory:
// ..."), names and messages cut short so that the error stays small whatever the input.
//
// With a cache, an object sent again exactly as one that passed before (the same bytes, as
// loaded back) skips its own checks; the checks across the objects still run over all.
class RevalidationCache;
absl::StatusOr<std::vector<mkfleet::v1::Object>> RevalidateObjects(const std::vector<mkfleet::v1::Object>& objects,
                                                                  RevalidationCache* cache = nullptr);

// The objects RevalidateObjects found valid as sent, by their exact bytes (no hash: a
// collision would let an object past the checks); at most `max_bytes` of them, then it
// starts over. Thread-safe.
class RevalidationCache {
 public:
  explicit RevalidationCache(size_t max_bytes = 32 << 20) : max_bytes_(max_bytes) {}
  bool Contains(const std::string& bytes) const;
  void Add(std::vector<std::string> valid);

 private:
  const size_t max_bytes_;
  mutable absl::Mutex mu_;
  absl::flat_hash_set<std::string> valid_ ABSL_GUARDED_BY(mu_);
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
};

// "Host", "KernelInstance", "InstanceSet", or "" for an empty Object.
absl::string_view KindOf(const mkfleet::v1::Object& object);
const mkfleet::v1::ObjectMeta& MetadataOf(const mkfleet::v1::Object& object);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_LOADER_H_
