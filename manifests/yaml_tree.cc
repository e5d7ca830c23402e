#include "manifests/yaml_tree.h"

#include <yaml.h>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace mkfleet::manifests {

absl::string_view DescribeKind(const YamlNode& node) {
  switch (node.kind) {
    case YamlNode::Kind::kNull:
      return "null";
    case YamlNode::Kind::kScalar:
      return "a scalar";
    case YamlNode::Kind::kSequence:
      return "a list";
    case YamlNode::Kind::kMap:
      return "a mapping";
  }
  return "?";
}

namespace {

Position ToPosition(const yaml_mark_t& mark) {
  return Position{static_cast<int>(mark.line) + 1, static_cast<int>(mark.column) + 1};
}

bool IsNullScalar(const yaml_event_t& e) {
  if (e.data.scalar.style != YAML_PLAIN_SCALAR_STYLE || e.data.scalar.tag != nullptr) return false;
  absl::string_view v(reinterpret_cast<const char*>(e.data.scalar.value), e.data.scalar.length);
  return v.empty() || v == "~" || v == "null" || v == "Null" || v == "NULL";
}

std::string AnchorOf(const yaml_char_t* anchor) {
  return anchor == nullptr ? std::string() : std::string(reinterpret_cast<const char*>(anchor));
}

}  // namespace

// Builds the tree from libyaml's events (libyaml's parser is a state machine with an
// explicit stack, so deep nesting costs memory, bounded by the input size, not stack).
class TreeBuilder {
 public:
  TreeBuilder(YamlTree* tree, size_t max_nodes) : tree_(tree), max_nodes_(max_nodes) {}

  // Handles one event; returns false with `error` set to stop.
  bool Handle(const yaml_event_t& e, YamlError* error) {
    switch (e.type) {
      case YAML_DOCUMENT_START_EVENT:
        stack_.clear();
        pending_key_.clear();
        anchors_.clear();
        root_ = nullptr;
        return true;
      case YAML_DOCUMENT_END_EVENT:
        if (root_ == nullptr) {
          YamlNode* n = NewNode(YamlNode::Kind::kNull, e.start_mark, error);
          if (n == nullptr) return false;
          root_ = n;
        }
        tree_->documents_.push_back(root_);
        return true;
      case YAML_ALIAS_EVENT: {
        auto it = anchors_.find(AnchorOf(e.data.alias.anchor));
        if (it == anchors_.end()) {
          *error = {ToPosition(e.start_mark), "unknown alias"};
          return false;
        }
        if (it->second == nullptr) {
          *error = {ToPosition(e.start_mark),
                    "alias refers to a node that contains it (recursive structures are not "
                    "allowed)"};
          return false;
        }
        Attach(it->second);
        return true;
      }
      case YAML_SCALAR_EVENT: {
        bool is_null = IsNullScalar(e);
        YamlNode* n = NewNode(is_null ? YamlNode::Kind::kNull : YamlNode::Kind::kScalar,
                              e.start_mark, error);
        if (n == nullptr) return false;
        if (!is_null) {
          n->value.assign(reinterpret_cast<const char*>(e.data.scalar.value), e.data.scalar.length);
          n->quoted = e.data.scalar.style != YAML_PLAIN_SCALAR_STYLE;
        }
        Complete(n, AnchorOf(e.data.scalar.anchor));
        return true;
      }
      case YAML_SEQUENCE_START_EVENT:
      case YAML_MAPPING_START_EVENT: {
        bool seq = e.type == YAML_SEQUENCE_START_EVENT;
        YamlNode* n = NewNode(seq ? YamlNode::Kind::kSequence : YamlNode::Kind::kMap,
                              e.start_mark, error);
        if (n == nullptr) return false;
        Open(n, AnchorOf(seq ? e.data.sequence_start.anchor : e.data.mapping_start.anchor));
        return true;
      }
      case YAML_SEQUENCE_END_EVENT:
      case YAML_MAPPING_END_EVENT:
        Close();
        return true;
      default:
        return true;
    }
  }

 private:
  struct Frame {
    YamlNode* node;
    std::string anchor;
  };

  YamlNode* NewNode(YamlNode::Kind kind, const yaml_mark_t& mark, YamlError* error) {
    if (tree_->arena_.size() >= max_nodes_) {
      *error = {ToPosition(mark), absl::StrCat("too many YAML nodes (more than ", max_nodes_, ")")};
      return nullptr;
    }
    YamlNode& n = tree_->arena_.emplace_back();
    n.kind = kind;
    n.pos = ToPosition(mark);
    return &n;
  }

  // Adds a finished node to its parent (or makes it the document root).
  void Attach(const YamlNode* n) {
    if (stack_.empty()) {
      root_ = n;
      return;
    }
    YamlNode* parent = stack_.back().node;
    if (parent->kind == YamlNode::Kind::kSequence) {
      parent->items.push_back(n);
    } else if (pending_key_.back() == nullptr) {
      pending_key_.back() = n;
    } else {
      parent->entries.emplace_back(pending_key_.back(), n);
      pending_key_.back() = nullptr;
    }
  }

  void Complete(YamlNode* n, const std::string& anchor) {
    if (!anchor.empty()) anchors_[anchor] = n;
    Attach(n);
  }

  void Open(YamlNode* n, std::string anchor) {
    // The anchor is known but not yet usable: an alias to it now would be recursive.
    if (!anchor.empty()) anchors_[anchor] = nullptr;
    stack_.push_back({n, std::move(anchor)});
    pending_key_.push_back(nullptr);
  }

  void Close() {
    Frame f = std::move(stack_.back());
    stack_.pop_back();
    pending_key_.pop_back();
    Complete(f.node, f.anchor);
  }

  YamlTree* tree_;
  size_t max_nodes_;
  const YamlNode* root_ = nullptr;
  std::vector<Frame> stack_;
  std::vector<const YamlNode*> pending_key_;
  absl::flat_hash_map<std::string, const YamlNode*> anchors_;
};

YamlTree YamlTree::Parse(absl::string_view text, size_t max_nodes) {
  YamlTree tree;
  TreeBuilder builder(&tree, max_nodes);
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser)) {
    tree.errors_.push_back({Position{}, "YAML error: out of memory"});
    return tree;
  }
  yaml_parser_set_input_string(&parser, reinterpret_cast<const unsigned char*>(text.data()),
                               text.size());
  while (true) {
    yaml_event_t event;
    if (!yaml_parser_parse(&parser, &event)) {
      std::string message = absl::StrCat("YAML syntax error: ",
                                         parser.problem ? parser.problem : "malformed input");
      if (parser.context != nullptr) absl::StrAppend(&message, " (", parser.context, ")");
      tree.errors_.push_back({ToPosition(parser.problem_mark), std::move(message)});
      break;
    }
    YamlError error;
    bool ok = builder.Handle(event, &error);
    bool done = event.type == YAML_STREAM_END_EVENT;
    yaml_event_delete(&event);
    if (!ok) {
      tree.errors_.push_back(std::move(error));
      break;
    }
    if (done) break;
  }
  yaml_parser_delete(&parser);
  return tree;
}

bool CheckYamlText(absl::string_view text, YamlError* error) {
  int line = 1, column = 1;
  size_t i = 0;
  auto fail = [&](std::string message) {
    error->pos = {line, column};
    error->message = std::move(message);
    return false;
  };
  while (i < text.size()) {
    unsigned char c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      if (c < 0x20 && c != '\t' && c != '\n' && c != '\r') {
        return fail(absl::StrFormat("control character 0x%02x is not allowed in YAML", c));
      }
      if (c == 0x7f) return fail("control character 0x7f is not allowed in YAML");
      ++i;
      if (c == '\n') {
        ++line;
        column = 1;
      } else {
        ++column;
      }
      continue;
    }
    int len = (c & 0xE0) == 0xC0 ? 2 : (c & 0xF0) == 0xE0 ? 3 : (c & 0xF8) == 0xF0 ? 4 : 0;
    bool ok = len > 0 && i + len <= text.size();
    uint32_t cp = len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      unsigned char cc = static_cast<unsigned char>(text[i + k]);
      ok = (cc & 0xC0) == 0x80;
      cp = (cp << 6) | (cc & 0x3F);
    }
    // Overlong forms, surrogates and values past U+10FFFF are not UTF-8.
    if (ok) {
      ok = !((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
             (cp >= 0xD800 && cp <= 0xDFFF) || cp > 0x10FFFF);
    }
    if (!ok) return fail(absl::StrFormat("file is not valid UTF-8 (byte 0x%02x)", c));
    i += len;
    ++column;
  }
  return true;
}

}  // namespace mkfleet::manifests
