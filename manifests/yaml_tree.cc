#include "manifests/yaml_tree.h"

#include <sstream>
#include <unordered_map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "yaml-cpp/eventhandler.h"
#include "yaml-cpp/exceptions.h"
#include "yaml-cpp/mark.h"
#include "yaml-cpp/parser.h"

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

Position ToPosition(const YAML::Mark& mark) {
  if (mark.is_null()) return Position{};
  return Position{mark.line + 1, mark.column + 1};
}

// Thrown inside the event handler to stop the parser; caught in YamlTree::Parse.
struct StopParsing {
  YamlError error;
};

}  // namespace

class TreeBuilder final : public YAML::EventHandler {
 public:
  TreeBuilder(YamlTree* tree, size_t max_nodes) : tree_(tree), max_nodes_(max_nodes) {}

  void OnDocumentStart(const YAML::Mark&) override {
    stack_.clear();
    pending_key_.clear();
    anchors_.clear();
    root_ = nullptr;
  }
  void OnDocumentEnd() override {
    if (root_ == nullptr) root_ = NewNode(YamlNode::Kind::kNull, YAML::Mark());
    tree_->documents_.push_back(root_);
  }
  void OnNull(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    YamlNode* n = NewNode(YamlNode::Kind::kNull, mark);
    Complete(n, anchor);
  }
  void OnAlias(const YAML::Mark& mark, YAML::anchor_t anchor) override {
    auto it = anchors_.find(anchor);
    if (it == anchors_.end()) {
      throw StopParsing{{ToPosition(mark), "unknown alias"}};
    }
    if (it->second == nullptr) {
      throw StopParsing{{ToPosition(mark),
                         "alias refers to a node that contains it (recursive structures are not "
                         "allowed)"}};
    }
    Attach(it->second);
  }
  void OnScalar(const YAML::Mark& mark, const std::string& tag, YAML::anchor_t anchor,
                const std::string& value) override {
    YamlNode* n = NewNode(YamlNode::Kind::kScalar, mark);
    n->value = value;
    n->quoted = !tag.empty() && tag != "?";
    Complete(n, anchor);
  }
  void OnSequenceStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                       YAML::EmitterStyle::value) override {
    Open(NewNode(YamlNode::Kind::kSequence, mark), anchor);
  }
  void OnSequenceEnd() override { Close(); }
  void OnMapStart(const YAML::Mark& mark, const std::string&, YAML::anchor_t anchor,
                  YAML::EmitterStyle::value) override {
    Open(NewNode(YamlNode::Kind::kMap, mark), anchor);
  }
  void OnMapEnd() override { Close(); }

 private:
  struct Frame {
    YamlNode* node;
    YAML::anchor_t anchor;
  };

  YamlNode* NewNode(YamlNode::Kind kind, const YAML::Mark& mark) {
    if (tree_->arena_.size() >= max_nodes_) {
      throw StopParsing{{ToPosition(mark),
                         absl::StrCat("too many YAML nodes (more than ", max_nodes_, ")")}};
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

  void Complete(YamlNode* n, YAML::anchor_t anchor) {
    if (anchor != YAML::NullAnchor) anchors_[anchor] = n;
    Attach(n);
  }

  void Open(YamlNode* n, YAML::anchor_t anchor) {
    // The anchor is known but not yet usable: an alias to it now would be recursive.
    if (anchor != YAML::NullAnchor) anchors_[anchor] = nullptr;
    stack_.push_back({n, anchor});
    pending_key_.push_back(nullptr);
  }

  void Close() {
    Frame f = stack_.back();
    stack_.pop_back();
    pending_key_.pop_back();
    Complete(f.node, f.anchor);
  }

  YamlTree* tree_;
  size_t max_nodes_;
  const YamlNode* root_ = nullptr;
  std::vector<Frame> stack_;
  std::vector<const YamlNode*> pending_key_;
  std::unordered_map<YAML::anchor_t, const YamlNode*> anchors_;
};

YamlTree YamlTree::Parse(absl::string_view text, size_t max_nodes) {
  YamlTree tree;
  std::istringstream in{std::string(text)};
  TreeBuilder builder(&tree, max_nodes);
  try {
    YAML::Parser parser(in);
    while (parser.HandleNextDocument(builder)) {
    }
  } catch (const StopParsing& stop) {
    tree.errors_.push_back(stop.error);
  } catch (const YAML::Exception& e) {
    tree.errors_.push_back({ToPosition(e.mark), absl::StrCat("YAML syntax error: ", e.msg)});
  } catch (const std::exception& e) {
    tree.errors_.push_back({Position{}, absl::StrCat("YAML error: ", e.what())});
  }
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
