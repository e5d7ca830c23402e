// YamlTree: a YAML stream parsed into a small immutable tree that keeps every node's
// position. The only place mkfleet parses YAML; it uses libyaml's event parser (several
// times faster than yaml-cpp's, and it reports errors without exceptions).
//
// Safety against hostile input: nodes live in an arena (no recursive destruction), the
// builder keeps an explicit stack (no recursion), an alias may only name a node that is
// complete (recursive structures are rejected), and the node count is bounded.
// Thread-safety: a built tree is immutable and may be read from any thread.
#ifndef MKFLEET_MANIFESTS_YAML_TREE_H_
#define MKFLEET_MANIFESTS_YAML_TREE_H_

#include <deque>
#include <string>
#include "absl/strings/string_view.h"
#include <utility>
#include <vector>

namespace mkfleet::manifests {

// 1-based line and column, as editors show them.
struct Position {
  int line = 1;
  int column = 1;
  bool operator<(const Position& o) const {
    return line != o.line ? line < o.line : column < o.column;
  }
};

struct YamlNode {
  enum class Kind { kNull, kScalar, kSequence, kMap };
  Kind kind = Kind::kNull;
  Position pos;
  std::string value;   // kScalar
  bool quoted = false;  // kScalar written in quotes (or with a non-plain tag)
  std::vector<const YamlNode*> items;                                // kSequence
  std::vector<std::pair<const YamlNode*, const YamlNode*>> entries;  // kMap, in file order
};

// A human name for the kind of a node: "a mapping", "a list", "null", "a scalar".
absl::string_view DescribeKind(const YamlNode& node);

struct YamlError {
  Position pos;
  std::string message;
};

class YamlTree {
 public:
  // Parses `text` (all documents). On a syntax error, returns the documents before it and
  // sets `error`. `max_nodes` bounds the total number of nodes.
  static YamlTree Parse(absl::string_view text, size_t max_nodes = 1 << 20);

  YamlTree(YamlTree&&) = default;
  YamlTree& operator=(YamlTree&&) = default;

  // Root node of each document, in order; an empty document has a kNull root.
  const std::vector<const YamlNode*>& documents() const { return documents_; }
  const std::vector<YamlError>& errors() const { return errors_; }

 private:
  YamlTree() = default;
  friend class TreeBuilder;

  std::deque<YamlNode> arena_;
  std::vector<const YamlNode*> documents_;
  std::vector<YamlError> errors_;
};

// Checks that `text` is UTF-8 with no control characters YAML forbids. On failure, sets
// `error` to the position of the first offending byte and returns false.
bool CheckYamlText(absl::string_view text, YamlError* error);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_YAML_TREE_H_
