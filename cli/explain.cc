// mkapply explain KIND[.field...]: a manifest field's type, rules and description, from the
// schema itself (the .proto files' comments, compiled in as a descriptor set with source
// info, and their (rules) options).
#include <map>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"
#include "console/assets.h"
#include "google/protobuf/descriptor.pb.h"
#include "manifests/units.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/options.pb.h"

namespace mkfleet::cli {

// The schema's descriptor set (//cli:schema_descriptor_cc).
const std::vector<console::Asset>& Assets();

namespace {

using google::protobuf::Descriptor;
using google::protobuf::FieldDescriptor;

// Comments by element: "mkfleet.v1.Resources" (a message), "mkfleet.v1.Resources.cpus" (a
// field), by the descriptor set's source info.
const std::map<std::string, std::string>& Comments() {
  static const auto* comments = [] {
    auto* out = new std::map<std::string, std::string>();
    google::protobuf::FileDescriptorSet set;
    for (const console::Asset& a : Assets()) {
      if (a.name == "schema.pb") set.ParseFromString(a.bytes);
    }
    for (const auto& file : set.file()) {
      // Location paths: [4, i] message i; [.., 3, k] nested message k; [.., 2, j] field j.
      std::map<std::vector<int>, std::string> names;
      std::function<void(const google::protobuf::DescriptorProto&, const std::string&, std::vector<int>)> walk =
          [&](const google::protobuf::DescriptorProto& m, const std::string& prefix, std::vector<int> path) {
            const std::string name = prefix + "." + m.name();
            names[path] = name;
            for (int j = 0; j < m.field_size(); ++j) {
              std::vector<int> p = path;
              p.insert(p.end(), {2, j});
              names[p] = name + "." + m.field(j).name();
            }
            for (int k = 0; k < m.nested_type_size(); ++k) {
              std::vector<int> p = path;
              p.insert(p.end(), {3, k});
              walk(m.nested_type(k), name, p);
            }
          };
      for (int i = 0; i < file.message_type_size(); ++i) walk(file.message_type(i), file.package(), {4, i});
      for (const auto& loc : file.source_code_info().location()) {
        std::vector<int> path(loc.path().begin(), loc.path().end());
        auto it = names.find(path);
        if (it == names.end()) continue;
        std::string text = loc.leading_comments();
        if (text.empty()) text = loc.trailing_comments();
        std::vector<std::string> lines;
        for (absl::string_view l : absl::StrSplit(text, '\n')) {
          l = absl::StripAsciiWhitespace(l);
          if (!l.empty()) lines.push_back(std::string(l));
        }
        if (!lines.empty()) (*out)[it->second] = absl::StrJoin(lines, " ");
      }
    }
    return out;
  }();
  return *comments;
}

std::string Comment(const std::string& full_name) {
  auto it = Comments().find(full_name);
  return it == Comments().end() ? "" : it->second;
}

std::string YamlName(const FieldDescriptor* f) { return f->json_name(); }

std::string TypeOf(const FieldDescriptor* f) {
  const auto& rules = f->options().GetExtension(v1::rules);
  std::string t;
  if (f->is_map()) {
    t = "map of string";
  } else if (rules.unit() == v1::UNIT_BYTES) {
    t = "quantity (bytes: 512Mi, 2Gi)";
  } else if (rules.unit() == v1::UNIT_DURATION_MS) {
    t = "duration (100ms, 30s, 5m)";
  } else if (rules.unit() == v1::UNIT_CPU_LIST) {
    t = "CPU list (\"0-3,8\")";
  } else if (rules.unit() == v1::UNIT_INT_OR_PERCENT) {
    t = "count or percent (2, \"25%\")";
  } else if (f->message_type() != nullptr) {
    t = "object (" + f->message_type()->name() + ")";
  } else if (f->enum_type() != nullptr) {
    std::vector<std::string> values;
    for (int i = 0; i < f->enum_type()->value_count(); ++i) {
      const std::string& y = f->enum_type()->value(i)->options().GetExtension(v1::yaml);
      if (!y.empty()) values.push_back(y);
    }
    t = values.empty() ? "string" : "one of " + absl::StrJoin(values, " | ");
  } else {
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING: t = "string"; break;
      case FieldDescriptor::CPPTYPE_BOOL: t = "boolean"; break;
      default: t = "integer";
    }
  }
  if (f->is_repeated() && !f->is_map()) t = "list of " + t;
  return t;
}

std::string RulesOf(const FieldDescriptor* f) {
  const auto& r = f->options().GetExtension(v1::rules);
  std::vector<std::string> out;
  if (r.required()) out.push_back("required");
  if (r.output_only()) out.push_back("output only (written by mkfleet)");
  auto value = [&](int64_t v) {
    if (r.unit() == v1::UNIT_BYTES && v > 0) return manifests::FormatBytes(static_cast<uint64_t>(v));
    if (r.unit() == v1::UNIT_DURATION_MS && v > 0) return manifests::FormatDurationMs(static_cast<uint64_t>(v));
    return absl::StrCat(v);
  };
  if (r.has_min()) out.push_back("at least " + value(r.min()));
  if (r.has_max()) out.push_back("at most " + value(r.max()));
  if (r.multiple_of() > 0) out.push_back("a multiple of " + manifests::FormatBytes(r.multiple_of()));
  if (r.max_items() > 0) out.push_back(absl::StrCat("at most ", r.max_items(), " items"));
  if (r.format() != v1::FORMAT_NONE) {
    std::string name = v1::Format_Name(r.format()).substr(7);  // FORMAT_DNS_LABEL -> DNS_LABEL
    out.push_back(absl::AsciiStrToLower(name) + " format");
  }
  if (f->containing_oneof() != nullptr && f->containing_oneof()->field_count() > 1) {
    std::vector<std::string> others;
    for (int i = 0; i < f->containing_oneof()->field_count(); ++i) {
      if (f->containing_oneof()->field(i) != f) others.push_back(YamlName(f->containing_oneof()->field(i)));
    }
    out.push_back("not with " + absl::StrJoin(others, ", "));
  }
  return absl::StrJoin(out, "; ");
}

const Descriptor* KindDescriptor(const std::string& kind) {
  if (kind == "Host") return v1::Host::descriptor();
  if (kind == "KernelInstance") return v1::KernelInstance::descriptor();
  if (kind == "InstanceSet") return v1::InstanceSet::descriptor();
  if (kind == "RolloutPolicy") return v1::RolloutPolicy::descriptor();
  if (kind == "RoleBinding") return v1::RoleBinding::descriptor();
  if (kind == "GitSource") return v1::GitSource::descriptor();
  return nullptr;
}

}  // namespace

int RunExplain(const std::string& what, std::ostream& out, std::ostream& err) {
  std::vector<std::string> parts = absl::StrSplit(what, '.');
  const std::string kind = CanonicalKind(parts[0]);
  const Descriptor* d = KindDescriptor(kind);
  if (d == nullptr) {
    err << "error: explain: unknown type \"" << parts[0]
        << "\" (hosts, instances, sets, policies, rolebindings, sources; mkapply api-resources)\n";
    return kExitInvalid;
  }
  const FieldDescriptor* field = nullptr;
  std::string path;
  for (size_t i = 1; i < parts.size(); ++i) {
    if (d == nullptr) {
      err << "error: explain: " << path << " has no fields (it is " << TypeOf(field) << ")\n";
      return kExitInvalid;
    }
    const FieldDescriptor* next = nullptr;
    std::vector<std::string> names;
    for (int j = 0; j < d->field_count(); ++j) {
      names.push_back(YamlName(d->field(j)));
      if (YamlName(d->field(j)) == parts[i]) next = d->field(j);
    }
    if (next == nullptr) {
      const std::string close = Closest(parts[i], names);
      err << "error: explain: " << kind << (path.empty() ? "" : "." + path) << " has no field \"" << parts[i] << "\""
          << (close.empty() ? "" : " (did you mean \"" + close + "\"?)") << "; its fields: " << absl::StrJoin(names, ", ")
          << "\n";
      return kExitInvalid;
    }
    field = next;
    path += (path.empty() ? "" : ".") + parts[i];
    d = field->message_type() != nullptr && field->options().GetExtension(v1::rules).unit() == v1::UNIT_NONE &&
                !field->is_map()
            ? field->message_type()
            : nullptr;
  }
  out << "KIND:     " << kind << "\nVERSION:  mkfleet.io/v1\n";
  std::string description;
  if (field != nullptr) {
    out << "FIELD:    " << path << " <" << TypeOf(field) << ">\n";
    const std::string rules = RulesOf(field);
    if (!rules.empty()) out << "RULES:    " << rules << "\n";
    description = Comment(field->full_name());
    if (description.empty() && d != nullptr) description = Comment(d->full_name());
  } else {
    description = Comment(d->full_name());
  }
  out << "\nDESCRIPTION:\n  " << (description.empty() ? "(the schema says no more)" : description) << "\n";
  if (d != nullptr) {
    out << "\nFIELDS:\n";
    for (int j = 0; j < d->field_count(); ++j) {
      const FieldDescriptor* f = d->field(j);
      const std::string rules = RulesOf(f);
      out << "  " << YamlName(f) << "  <" << TypeOf(f) << ">" << (rules.empty() ? "" : "  " + rules) << "\n";
      const std::string c = Comment(f->full_name());
      if (!c.empty()) out << "      " << c << "\n";
    }
  }
  return kExitOk;
}

}  // namespace mkfleet::cli
