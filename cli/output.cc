#include "cli/output.h"

#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/table.h"
#include "manifests/defaults.h"
#include "manifests/json.h"
#include "manifests/loader.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

absl::Status Bad(absl::string_view what, absl::string_view detail) {
  return absl::InvalidArgumentError(absl::StrCat(what, ": ", detail));
}

// One step of a path: a field, an index, or every element.
struct Step {
  enum Kind { kField, kIndex, kAll } kind = kField;
  std::string field;
  int64_t index = 0;
};

absl::StatusOr<std::vector<Step>> ParsePath(absl::string_view path) {
  std::vector<Step> steps;
  size_t i = 0;
  if (!path.empty() && (path[0] == '$' || path[0] == '@')) i = 1;
  while (i < path.size()) {
    if (path[i] == '.') {
      ++i;
      if (i < path.size() && path[i] == '.') return Bad("jsonpath", "recursive descent (..) is not supported");
      if (i < path.size() && path[i] == '*') {
        steps.push_back({Step::kAll, "", 0});
        ++i;
        continue;
      }
      size_t start = i;
      while (i < path.size() && (absl::ascii_isalnum(static_cast<unsigned char>(path[i])) || path[i] == '_' ||
                                 path[i] == '-' || path[i] == '/')) {
        ++i;
      }
      if (i == start) {
        if (i == path.size()) break;  // "." alone: the current value
        return Bad("jsonpath", absl::StrCat("unexpected '", path.substr(i, 1), "' in ", path));
      }
      steps.push_back({Step::kField, std::string(path.substr(start, i - start)), 0});
    } else if (path[i] == '[') {
      size_t close = path.find(']', i);
      if (close == std::string::npos) return Bad("jsonpath", absl::StrCat("unterminated [ in ", path));
      absl::string_view inside = absl::StripAsciiWhitespace(path.substr(i + 1, close - i - 1));
      i = close + 1;
      if (inside == "*") {
        steps.push_back({Step::kAll, "", 0});
      } else if (inside.size() >= 2 && (inside.front() == '\'' || inside.front() == '"') &&
                 inside.back() == inside.front()) {
        steps.push_back({Step::kField, std::string(inside.substr(1, inside.size() - 2)), 0});
      } else {
        int64_t n = 0;
        if (!absl::SimpleAtoi(inside, &n)) {
          return Bad("jsonpath", absl::StrCat("[", inside, "] is not an index, * or a quoted field"));
        }
        steps.push_back({Step::kIndex, "", n});
      }
    } else {
      return Bad("jsonpath", absl::StrCat("unexpected '", path.substr(i, 1), "' in ", path));
    }
  }
  return steps;
}

// The values `path` selects from `root` (missing fields select nothing).
absl::StatusOr<std::vector<const Json*>> Select(const Json& root, absl::string_view path) {
  auto steps = ParsePath(path);
  if (!steps.ok()) return steps.status();
  std::vector<const Json*> current = {&root};
  for (const Step& s : *steps) {
    std::vector<const Json*> next;
    for (const Json* v : current) {
      switch (s.kind) {
        case Step::kField:
          if (v->is_object() && v->contains(s.field)) next.push_back(&(*v)[s.field]);
          break;
        case Step::kIndex:
          if (v->is_array()) {
            int64_t n = s.index < 0 ? static_cast<int64_t>(v->size()) + s.index : s.index;
            if (n >= 0 && n < static_cast<int64_t>(v->size())) next.push_back(&(*v)[static_cast<size_t>(n)]);
          }
          break;
        case Step::kAll:
          if (v->is_array() || v->is_object()) {
            for (const auto& e : *v) next.push_back(&e);
          }
          break;
      }
    }
    current = std::move(next);
  }
  return current;
}

std::string Text(const Json& v) {
  if (v.is_string()) return v.get<std::string>();
  if (v.is_null()) return "";
  return v.dump();
}

std::string Unescape(absl::string_view s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '\\' && i + 1 < s.size()) {
      char c = s[++i];
      out += c == 'n' ? '\n' : c == 't' ? '\t' : c == 'r' ? '\r' : c;
    } else {
      out += s[i];
    }
  }
  return out;
}

struct Node {
  enum Kind { kText, kExpr, kRange, kEnd } kind;
  std::string text;  // kText: the text; kExpr, kRange: the path
};

absl::StatusOr<std::vector<Node>> ParseTemplate(const std::string& t) {
  std::vector<Node> nodes;
  size_t i = 0;
  std::string text;
  while (i < t.size()) {
    if (t[i] != '{') {
      text += t[i++];
      continue;
    }
    if (!text.empty()) nodes.push_back({Node::kText, Unescape(text)});
    text.clear();
    // The expression runs to the first } outside quotes.
    size_t j = i + 1;
    char quote = 0;
    while (j < t.size() && (quote != 0 || t[j] != '}')) {
      if (quote == 0 && (t[j] == '"' || t[j] == '\'')) {
        quote = t[j];
      } else if (quote != 0 && t[j] == quote && t[j - 1] != '\\') {
        quote = 0;
      }
      ++j;
    }
    if (j >= t.size()) return Bad("jsonpath", absl::StrCat("unclosed { in ", t));
    std::string expr(absl::StripAsciiWhitespace(absl::string_view(t).substr(i + 1, j - i - 1)));
    i = j + 1;
    if (expr.size() >= 2 && (expr.front() == '"' || expr.front() == '\'') && expr.back() == expr.front()) {
      nodes.push_back({Node::kText, Unescape(expr.substr(1, expr.size() - 2))});
    } else if (absl::StartsWith(expr, "range ")) {
      nodes.push_back({Node::kRange, std::string(absl::StripAsciiWhitespace(expr.substr(6)))});
    } else if (expr == "end") {
      nodes.push_back({Node::kEnd, ""});
    } else if (expr.empty()) {
      return Bad("jsonpath", "empty {}");
    } else {
      nodes.push_back({Node::kExpr, expr});
    }
  }
  if (!text.empty()) nodes.push_back({Node::kText, Unescape(text)});
  int depth = 0;
  for (const Node& n : nodes) {
    depth += n.kind == Node::kRange ? 1 : n.kind == Node::kEnd ? -1 : 0;
    if (depth < 0) return Bad("jsonpath", "{end} without {range}");
  }
  if (depth != 0) return Bad("jsonpath", "{range} without {end}");
  return nodes;
}

absl::Status Run(const std::vector<Node>& nodes, size_t begin, size_t end, const Json& current, std::string* out) {
  for (size_t i = begin; i < end; ++i) {
    const Node& n = nodes[i];
    if (n.kind == Node::kText) {
      *out += n.text;
    } else if (n.kind == Node::kExpr) {
      auto values = Select(current, n.text);
      if (!values.ok()) return values.status();
      std::vector<std::string> texts;
      for (const Json* v : *values) texts.push_back(Text(*v));
      *out += absl::StrJoin(texts, " ");
    } else if (n.kind == Node::kRange) {
      size_t close = i + 1;
      for (int depth = 1; close < end; ++close) {
        depth += nodes[close].kind == Node::kRange ? 1 : nodes[close].kind == Node::kEnd ? -1 : 0;
        if (depth == 0) break;
      }
      auto values = Select(current, n.text);
      if (!values.ok()) return values.status();
      // {range .items} and {range .items[*]} both go over the elements.
      std::vector<const Json*> elements;
      if (values->size() == 1 && (*values)[0]->is_array()) {
        for (const auto& e : *(*values)[0]) elements.push_back(&e);
      } else {
        elements = *values;
      }
      for (const Json* e : elements) {
        if (absl::Status s = Run(nodes, i + 1, close, *e, out); !s.ok()) return s;
      }
      i = close;
    }
  }
  return absl::OkStatus();
}

}  // namespace

std::string NameOf(const v1::Object& object) {
  return absl::StrCat(manifests::KindOf(object), "/", manifests::MetadataOf(object).name());
}

namespace {

// As stored, with status and the schema's defaults (manifests/defaults.h).
manifests::PrintOptions AsStored() {
  manifests::PrintOptions options;
  options.include_output_only = true;
  options.zero_enums = true;
  return options;
}

v1::Object WithDefaults(const v1::Object& object) {
  v1::Object copy = object;
  manifests::FillDefaults(&copy);
  return copy;
}

}  // namespace

Json ObjectJson(const v1::Object& object) { return manifests::PrintJson(WithDefaults(object), AsStored()); }

Json ObjectsJson(const std::vector<v1::Object>& objects, bool single) {
  if (single && objects.size() == 1) return ObjectJson(objects[0]);
  Json items = Json::array();
  for (const v1::Object& o : objects) items.push_back(ObjectJson(o));
  return Json{{"apiVersion", "mkfleet.io/v1"}, {"kind", "List"}, {"items", std::move(items)}};
}

bool IsObjectFormat(const std::string& output) {
  return output == "yaml" || output == "json" || output == "name" || absl::StartsWith(output, "jsonpath=") ||
         absl::StartsWith(output, "custom-columns=");
}

absl::StatusOr<std::string> JsonPath(const Json& data, const std::string& template_text) {
  auto nodes = ParseTemplate(template_text);
  if (!nodes.ok()) return nodes.status();
  std::string out;
  if (absl::Status s = Run(*nodes, 0, nodes->size(), data, &out); !s.ok()) return s;
  return out;
}

absl::StatusOr<std::string> FormatObjects(const std::vector<v1::Object>& objects, bool single,
                                          const std::string& output) {
  if (output == "name") {
    std::string out;
    for (const v1::Object& o : objects) absl::StrAppend(&out, NameOf(o), "\n");
    return out;
  }
  if (output == "json") return ObjectsJson(objects, single).dump(2) + "\n";
  if (output == "yaml") {
    std::vector<v1::Object> filled;
    filled.reserve(objects.size());
    for (const v1::Object& o : objects) filled.push_back(WithDefaults(o));
    return manifests::PrintYaml(filled, AsStored());
  }
  if (absl::StartsWith(output, "jsonpath=")) {
    return JsonPath(ObjectsJson(objects, single), output.substr(9));
  }
  if (absl::StartsWith(output, "custom-columns=")) {
    std::vector<std::string> header;
    std::vector<std::string> paths;
    for (absl::string_view column : absl::StrSplit(output.substr(15), ',')) {
      std::pair<std::string, std::string> hp = absl::StrSplit(column, absl::MaxSplits(':', 1));
      if (hp.first.empty() || hp.second.empty()) {
        return Bad("custom-columns", absl::StrCat("\"", column, "\" is not HEADER:PATH (e.g. NAME:.metadata.name)"));
      }
      if (auto steps = ParsePath(hp.second); !steps.ok()) return steps.status();
      header.push_back(hp.first);
      paths.push_back(hp.second);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      Json j = ObjectJson(o);
      std::vector<std::string> row;
      for (const std::string& p : paths) {
        auto values = Select(j, p);
        std::vector<std::string> texts;
        for (const Json* v : *values) texts.push_back(Text(*v));
        std::string cell = absl::StrJoin(texts, ",");
        row.push_back(cell.empty() ? "<none>" : cell);
      }
      t.Add(row);
    }
    std::ostringstream out;
    t.Print(out);
    return out.str();
  }
  return Bad("-o", absl::StrCat("unknown format ", output));
}

}  // namespace mkfleet::cli
