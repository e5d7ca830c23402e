#include "manifests/walker.h"

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/formats.h"
#include "manifests/schema.h"
#include "manifests/units.h"
#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::manifests {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

std::string Join(const std::string& path, absl::string_view name) {
  return path.empty() ? std::string(name) : absl::StrCat(path, ".", name);
}

absl::string_view TypeName(const FieldDescriptor* f, const mkfleet::v1::FieldRules& rules) {
  switch (rules.unit()) {
    case mkfleet::v1::UNIT_BYTES:
      return "a memory quantity";
    case mkfleet::v1::UNIT_DURATION_MS:
      return "a duration";
    case mkfleet::v1::UNIT_CPU_LIST:
      return "a CPU list";
    case mkfleet::v1::UNIT_INT_OR_PERCENT:
      return "a number or a percentage";
    default:
      break;
  }
  if (f->is_map()) return "a mapping";
  if (f->is_repeated()) return "a list";
  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_MESSAGE:
      return "a mapping";
    case FieldDescriptor::CPPTYPE_BOOL:
      return "true or false";
    case FieldDescriptor::CPPTYPE_ENUM:
      return "one of the listed values";
    case FieldDescriptor::CPPTYPE_STRING:
      return "a string";
    default:
      return "a whole number";
  }
}

bool ParseBool(absl::string_view s, bool* out) {
  if (s == "true" || s == "True" || s == "TRUE") {
    *out = true;
    return true;
  }
  if (s == "false" || s == "False" || s == "FALSE") {
    *out = false;
    return true;
  }
  return false;
}

std::string RangeMessage(const mkfleet::v1::FieldRules& rules, uint64_t limit_max,
                         const std::string& got, bool bytes) {
  // Limits in the field's unit: "at least 1s", not "at least 1000" (milliseconds).
  auto fmt = [&](int64_t v) {
    if (bytes) return FormatBytes(v);
    if (rules.unit() == mkfleet::v1::UNIT_DURATION_MS) return FormatDurationMs(v);
    return absl::StrCat(v);
  };
  int64_t lo = rules.has_min() ? rules.min() : 0;
  if (rules.has_max()) {
    return absl::StrCat("must be between ", fmt(lo), " and ", fmt(rules.max()), ", got ", got);
  }
  if (rules.has_min()) return absl::StrCat("must be at least ", fmt(lo), ", got ", got);
  return absl::StrCat("must be at most ", limit_max, ", got ", got);
}

}  // namespace

void Walker::Error(Position pos, const std::string& path, std::string message) {
  errors_->push_back({std::string(file_), pos, std::string(object_), path, std::move(message)});
}

bool Walker::Spend(const YamlNode& node) {
  if (*budget_ > 0) {
    --*budget_;
    return true;
  }
  if (!budget_reported_) {
    budget_reported_ = true;
    Error(node.pos, "", "document is too large (too many nodes after expanding aliases)");
  }
  return false;
}

void Walker::WalkMessage(const YamlNode& node, Message* msg, const std::string& path,
                         Position key_pos) {
  if (!Spend(node)) return;
  if (node.kind != YamlNode::Kind::kMap) {
    Error(node.pos, path, absl::StrCat("expected a mapping, got ", DescribeKind(node)));
    return;
  }
  const MessageInfo& info = InfoFor(msg->GetDescriptor());
  // Which keys this mapping set, and which oneof member each oneof got.
  absl::flat_hash_map<const FieldInfo*, Position> seen;
  absl::flat_hash_set<const FieldInfo*> written;  // keys with a non-null value
  absl::flat_hash_map<const google::protobuf::OneofDescriptor*, const FieldInfo*> oneof_set;

  for (const auto& [key, value] : node.entries) {
    if (key->kind != YamlNode::Kind::kScalar) {
      Error(key->pos, path, absl::StrCat("mapping keys must be field names, got ", DescribeKind(*key)));
      continue;
    }
    const std::string field_path = Join(path, key->value);
    auto it = info.by_name.find(key->value);
    if (it == info.by_name.end()) {
      std::string suggestion = Suggest(key->value, info.names);
      Error(key->pos, field_path,
            suggestion.empty()
                ? absl::StrCat("unknown field \"", key->value, "\"")
                : absl::StrCat("unknown field \"", key->value, "\" (did you mean \"", suggestion,
                               "\"?)"));
      continue;
    }
    const FieldInfo& fi = *it->second;
    if (auto s = seen.find(&fi); s != seen.end()) {
      Error(key->pos, field_path,
            absl::StrCat("duplicate key (first at line ", s->second.line, ")"));
      continue;
    }
    seen[&fi] = key->pos;
    if (fi.rules.output_only()) {
      Error(key->pos, field_path, "is set by mkfleet and cannot be written in a manifest");
      continue;
    }
    (*positions_)[field_path] = {key->pos, value->pos};
    if (value->kind == YamlNode::Kind::kNull) continue;  // null means unset
    written.insert(&fi);
    if (const auto* oneof = fi.field->real_containing_oneof()) {
      auto [o, inserted] = oneof_set.emplace(oneof, &fi);
      if (!inserted) {
        Error(key->pos, field_path,
              absl::StrCat("cannot be combined with \"", o->second->yaml_name,
                           "\" (set only one)"));
        continue;
      }
    }
    WalkField(*value, msg, fi, field_path, key->pos);
  }

  for (const FieldInfo& fi : info.fields) {
    if (fi.rules.required() && !written.contains(&fi)) {
      Error(key_pos, Join(path, fi.yaml_name), "is required");
    }
  }
  const google::protobuf::Descriptor* d = msg->GetDescriptor();
  for (int i = 0; i < d->real_oneof_decl_count(); ++i) {
    const auto* oneof = d->oneof_decl(i);
    if (!oneof->options().GetExtension(mkfleet::v1::one_required) || oneof_set.contains(oneof)) {
      continue;
    }
    std::vector<std::string> names;
    for (int k = 0; k < oneof->field_count(); ++k) names.push_back(oneof->field(k)->json_name());
    Error(key_pos, path, absl::StrCat("one of ", absl::StrJoin(names, ", "), " is required"));
  }
}

void Walker::WalkField(const YamlNode& value, Message* msg, const FieldInfo& fi,
                       const std::string& path, Position key_pos) {
  const FieldDescriptor* f = fi.field;
  const Reflection* r = msg->GetReflection();
  if (f->is_map()) {
    if (!Spend(value)) return;
    if (value.kind != YamlNode::Kind::kMap) {
      Error(value.pos, path, absl::StrCat("expected a mapping, got ", DescribeKind(value)));
      return;
    }
    absl::flat_hash_map<absl::string_view, int> keys;
    for (const auto& [k, v] : value.entries) {
      if (!Spend(*v)) return;
      if (k->kind != YamlNode::Kind::kScalar || (v->kind != YamlNode::Kind::kScalar &&
                                                  v->kind != YamlNode::Kind::kNull)) {
        Error(k->pos, path, "keys and values must be strings");
        continue;
      }
      std::string entry_path = Join(path, k->value);
      if (!keys.emplace(k->value, k->pos.line).second) {
        Error(k->pos, entry_path, "duplicate key");
        continue;
      }
      if (!IsLabelKey(k->value)) {
        Error(k->pos, entry_path,
              "invalid label key (a name of letters, digits, '-', '_', '.', at most 63 characters, "
              "optionally prefixed by a DNS name and '/')");
        continue;
      }
      if (!IsLabelValue(v->value)) {
        Error(v->pos, entry_path,
              absl::StrCat("invalid label value \"", v->value,
                           "\" (letters, digits, '-', '_', '.', at most 63 characters)"));
        continue;
      }
      Message* entry = r->AddMessage(msg, f);
      const auto* ed = entry->GetDescriptor();
      entry->GetReflection()->SetString(entry, ed->field(0), k->value);
      entry->GetReflection()->SetString(entry, ed->field(1), v->value);
    }
    return;
  }
  if (f->is_repeated()) {
    if (!Spend(value)) return;
    if (value.kind != YamlNode::Kind::kSequence) {
      Error(value.pos, path, absl::StrCat("expected a list, got ", DescribeKind(value)));
      return;
    }
    if (fi.rules.max_items() > 0 && value.items.size() > fi.rules.max_items()) {
      Error(value.pos, path,
            absl::StrCat("at most ", fi.rules.max_items(), " items allowed, got ",
                         value.items.size()));
      return;
    }
    for (size_t i = 0; i < value.items.size(); ++i) {
      const YamlNode& item = *value.items[i];
      std::string item_path = absl::StrCat(path, "[", i, "]");
      (*positions_)[item_path] = {item.pos, item.pos};
      if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
        WalkMessage(item, r->AddMessage(msg, f), item_path, item.pos);
      } else {
        WalkScalar(item, msg, fi, item_path);
      }
    }
    return;
  }
  if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE && fi.rules.unit() == mkfleet::v1::UNIT_NONE) {
    WalkMessage(value, r->MutableMessage(msg, f), path, key_pos);
    return;
  }
  WalkScalar(value, msg, fi, path);
}

void Walker::WalkScalar(const YamlNode& value, Message* msg, const FieldInfo& fi,
                        const std::string& path) {
  if (!Spend(value)) return;
  const FieldDescriptor* f = fi.field;
  const Reflection* r = msg->GetReflection();
  const mkfleet::v1::FieldRules& rules = fi.rules;
  if (value.kind != YamlNode::Kind::kScalar) {
    Error(value.pos, path,
          absl::StrCat("expected ", TypeName(f, rules), ", got ", DescribeKind(value)));
    return;
  }
  const std::string& text = value.value;
  auto fail = [&](std::string message) { Error(value.pos, path, std::move(message)); };

  switch (rules.unit()) {
    case mkfleet::v1::UNIT_CPU_LIST: {
      auto cpus = ParseCpuList(text);
      if (!cpus.ok()) return fail(std::string(cpus.status().message()));
      auto* list = static_cast<mkfleet::v1::CpuList*>(r->MutableMessage(msg, f));
      list->mutable_ids()->Assign(cpus->begin(), cpus->end());
      return;
    }
    case mkfleet::v1::UNIT_INT_OR_PERCENT: {
      auto* v = static_cast<mkfleet::v1::IntOrPercent*>(r->MutableMessage(msg, f));
      if (absl::EndsWith(text, "%")) {
        auto pct = ParsePercent(text);
        if (!pct.ok()) return fail(std::string(pct.status().message()));
        v->set_percent(*pct);
      } else {
        auto n = ParseUnsigned(text, UINT32_MAX);
        if (!n.ok()) {
          return fail(absl::StrCat("expected a number or a percentage like \"25%\", got \"", text,
                                   "\""));
        }
        v->set_count(static_cast<uint32_t>(*n));
      }
      return;
    }
    default:
      break;
  }

  switch (f->cpp_type()) {
    case FieldDescriptor::CPPTYPE_STRING: {
      std::string problem = CheckFormat(rules.format(), text);
      if (!problem.empty()) return fail(problem);
      if (f->is_repeated()) {
        r->AddString(msg, f, text);
      } else {
        r->SetString(msg, f, text);
      }
      return;
    }
    case FieldDescriptor::CPPTYPE_BOOL: {
      bool b;
      if (!ParseBool(text, &b)) return fail(absl::StrCat("expected true or false, got \"", text, "\""));
      if (f->is_repeated()) {
        r->AddBool(msg, f, b);
      } else {
        r->SetBool(msg, f, b);
      }
      return;
    }
    case FieldDescriptor::CPPTYPE_ENUM: {
      const EnumInfo& info = InfoFor(f->enum_type());
      auto it = info.by_yaml.find(text);
      if (it == info.by_yaml.end()) {
        std::string suggestion = Suggest(text, info.names);
        return fail(absl::StrCat("unknown value \"", text, "\" (expected one of ",
                                 absl::StrJoin(info.names, ", "),
                                 suggestion.empty() ? "" : "; did you mean \"", suggestion,
                                 suggestion.empty() ? "" : "\"?", ")"));
      }
      if (f->is_repeated()) {
        r->AddEnumValue(msg, f, it->second);
      } else {
        r->SetEnumValue(msg, f, it->second);
      }
      return;
    }
    case FieldDescriptor::CPPTYPE_UINT32:
    case FieldDescriptor::CPPTYPE_UINT64:
    case FieldDescriptor::CPPTYPE_INT32:
    case FieldDescriptor::CPPTYPE_INT64: {
      uint64_t type_max = f->cpp_type() == FieldDescriptor::CPPTYPE_UINT32  ? UINT32_MAX
                          : f->cpp_type() == FieldDescriptor::CPPTYPE_INT32 ? INT32_MAX
                          : f->cpp_type() == FieldDescriptor::CPPTYPE_INT64 ? INT64_MAX
                                                                            : UINT64_MAX;
      bool bytes = rules.unit() == mkfleet::v1::UNIT_BYTES;
      absl::StatusOr<uint64_t> n =
          bytes ? ParseBytes(text)
          : rules.unit() == mkfleet::v1::UNIT_DURATION_MS ? ParseDurationMs(text)
                                                          : ParseUnsigned(text, UINT64_MAX);
      if (!n.ok()) {
        if (!bytes && rules.unit() == mkfleet::v1::UNIT_NONE) {
          bool negative = !text.empty() && text[0] == '-';
          return fail(negative ? RangeMessage(rules, type_max, text, false)
                               : absl::StrCat("expected a whole number, got \"", text, "\""));
        }
        return fail(std::string(n.status().message()));
      }
      uint64_t hi = rules.has_max() ? static_cast<uint64_t>(rules.max()) : type_max;
      uint64_t lo = rules.has_min() ? static_cast<uint64_t>(rules.min()) : 0;
      if (*n > hi) return fail(RangeMessage(rules, type_max, text, bytes));
      if (rules.multiple_of() > 0 && *n % rules.multiple_of() != 0) {
        return fail(absl::StrCat("must be a multiple of ",
                                 bytes ? FormatBytes(rules.multiple_of())
                                       : absl::StrCat(rules.multiple_of()),
                                 ", got ", text));
      }
      if (*n < lo) return fail(RangeMessage(rules, type_max, text, bytes));
      switch (f->cpp_type()) {
        case FieldDescriptor::CPPTYPE_UINT32:
          f->is_repeated() ? r->AddUInt32(msg, f, *n) : r->SetUInt32(msg, f, *n);
          break;
        case FieldDescriptor::CPPTYPE_UINT64:
          f->is_repeated() ? r->AddUInt64(msg, f, *n) : r->SetUInt64(msg, f, *n);
          break;
        case FieldDescriptor::CPPTYPE_INT32:
          f->is_repeated() ? r->AddInt32(msg, f, *n) : r->SetInt32(msg, f, *n);
          break;
        default:
          f->is_repeated() ? r->AddInt64(msg, f, *n) : r->SetInt64(msg, f, *n);
          break;
      }
      return;
    }
    default:
      return fail("this field type cannot be written in YAML");
  }
}

}  // namespace mkfleet::manifests
