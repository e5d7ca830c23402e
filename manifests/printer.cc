#include "manifests/printer.h"

#include "manifests/json.h"

#include <algorithm>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "manifests/schema.h"
#include "manifests/units.h"
#include "yaml-cpp/emitter.h"
#include "yaml-cpp/yaml.h"

namespace mkfleet::manifests {
namespace {

using google::protobuf::FieldDescriptor;
using google::protobuf::Message;
using google::protobuf::Reflection;

// Strings that YAML would read as another type are quoted; the emitter quotes the rest
// (special characters) on its own.
bool NeedsQuotes(absl::string_view s) {
  if (s.empty()) return true;
  char c = s.front();
  if (absl::ascii_isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == '+') {
    return true;
  }
  std::string lower = absl::AsciiStrToLower(s);
  return lower == "true" || lower == "false" || lower == "null" || lower == "~" ||
         lower == "yes" || lower == "no" || lower == "on" || lower == "off";
}

class Printer {
 public:
  explicit Printer(const PrintOptions& options) : options_(options) {}

  void PrintMessage(const Message& msg, YAML::Emitter& out) {
    const MessageInfo& info = InfoFor(msg.GetDescriptor());
    const Reflection* r = msg.GetReflection();
    std::vector<const FieldInfo*> fields;
    for (const FieldInfo& fi : info.fields) {
      if (fi.rules.output_only() && !options_.include_output_only) continue;
      const FieldDescriptor* f = fi.field;
      // Required fields are printed even at their zero value ("node: 0"); a present but
      // empty sub-message is printed as {} (its presence can matter).
      if (f->is_repeated() ? r->FieldSize(msg, f) == 0 : !IsSet(msg, fi) && !fi.rules.required()) {
        continue;
      }
      fields.push_back(&fi);
    }
    if (fields.empty()) out << YAML::Flow;
    out << YAML::BeginMap;
    for (const FieldInfo* fi : fields) {
      out << YAML::Key << fi->yaml_name << YAML::Value;
      PrintField(msg, *fi, out);
    }
    out << YAML::EndMap;
  }

 private:
  // Whether a singular field is worth printing: present, and not a default enum.
  bool IsSet(const Message& msg, const FieldInfo& fi) {
    const FieldDescriptor* f = fi.field;
    const Reflection* r = msg.GetReflection();
    if (f->has_presence()) return r->HasField(msg, f);
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        return !r->GetString(msg, f).empty();
      case FieldDescriptor::CPPTYPE_BOOL:
        return r->GetBool(msg, f);
      case FieldDescriptor::CPPTYPE_ENUM: {
        if (r->GetEnumValue(msg, f) != 0) return true;
        if (!options_.zero_enums) return false;
        for (const auto& [name, value] : InfoFor(f->enum_type()).by_yaml) {
          if (value == 0) return true;
        }
        return false;
      }
      case FieldDescriptor::CPPTYPE_UINT32:
        return r->GetUInt32(msg, f) != 0;
      case FieldDescriptor::CPPTYPE_UINT64:
        return r->GetUInt64(msg, f) != 0;
      case FieldDescriptor::CPPTYPE_INT32:
        return r->GetInt32(msg, f) != 0;
      case FieldDescriptor::CPPTYPE_INT64:
        return r->GetInt64(msg, f) != 0;
      default:
        return true;
    }
  }

  void PrintField(const Message& msg, const FieldInfo& fi, YAML::Emitter& out) {
    const FieldDescriptor* f = fi.field;
    const Reflection* r = msg.GetReflection();
    if (f->is_map()) {
      std::vector<std::pair<std::string, std::string>> entries;
      for (int i = 0; i < r->FieldSize(msg, f); ++i) {
        const Message& e = r->GetRepeatedMessage(msg, f, i);
        const auto* ed = e.GetDescriptor();
        entries.emplace_back(ScalarText(e, ed->field(0), -1),
                             ScalarText(e, ed->field(1), -1));
      }
      std::sort(entries.begin(), entries.end());
      out << YAML::Flow << YAML::BeginMap;
      for (const auto& [k, v] : entries) {
        out << YAML::Key;
        EmitString(k, out);
        out << YAML::Value;
        EmitString(v, out);
      }
      out << YAML::EndMap;
      return;
    }
    if (f->is_repeated()) {
      bool scalars = f->cpp_type() != FieldDescriptor::CPPTYPE_MESSAGE;
      if (scalars) out << YAML::Flow;
      out << YAML::BeginSeq;
      for (int i = 0; i < r->FieldSize(msg, f); ++i) {
        if (scalars) {
          EmitScalar(msg, fi, i, out);
        } else {
          PrintMessage(r->GetRepeatedMessage(msg, f, i), out);
        }
      }
      out << YAML::EndSeq;
      return;
    }
    switch (fi.rules.unit()) {
      case mkfleet::v1::UNIT_CPU_LIST: {
        const auto& list = static_cast<const mkfleet::v1::CpuList&>(r->GetMessage(msg, f));
        out << YAML::DoubleQuoted
            << FormatCpuList(std::vector<uint32_t>(list.ids().begin(), list.ids().end()));
        return;
      }
      case mkfleet::v1::UNIT_INT_OR_PERCENT: {
        const auto& v = static_cast<const mkfleet::v1::IntOrPercent&>(r->GetMessage(msg, f));
        if (v.value_case() == mkfleet::v1::IntOrPercent::kPercent) {
          out << YAML::DoubleQuoted << absl::StrCat(v.percent(), "%");
        } else {
          out << v.count();
        }
        return;
      }
      default:
        break;
    }
    if (f->cpp_type() == FieldDescriptor::CPPTYPE_MESSAGE) {
      PrintMessage(r->GetMessage(msg, f), out);
      return;
    }
    EmitScalar(msg, fi, -1, out);
  }

  // The text of a scalar field (index -1 for singular), with units applied.
  std::string ScalarText(const Message& msg, const FieldDescriptor* f, int index,
                         mkfleet::v1::Unit unit = mkfleet::v1::UNIT_NONE) {
    const Reflection* r = msg.GetReflection();
    bool rep = index >= 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_STRING:
        return rep ? r->GetRepeatedString(msg, f, index) : r->GetString(msg, f);
      case FieldDescriptor::CPPTYPE_BOOL:
        return (rep ? r->GetRepeatedBool(msg, f, index) : r->GetBool(msg, f)) ? "true" : "false";
      case FieldDescriptor::CPPTYPE_ENUM: {
        int v = rep ? r->GetRepeatedEnumValue(msg, f, index) : r->GetEnumValue(msg, f);
        const EnumInfo& info = InfoFor(f->enum_type());
        auto it = info.yaml_of.find(v);
        return it != info.yaml_of.end() ? it->second : absl::StrCat(v);
      }
      default:
        break;
    }
    uint64_t n = 0;
    switch (f->cpp_type()) {
      case FieldDescriptor::CPPTYPE_UINT32:
        n = rep ? r->GetRepeatedUInt32(msg, f, index) : r->GetUInt32(msg, f);
        break;
      case FieldDescriptor::CPPTYPE_UINT64:
        n = rep ? r->GetRepeatedUInt64(msg, f, index) : r->GetUInt64(msg, f);
        break;
      case FieldDescriptor::CPPTYPE_INT32:
        return absl::StrCat(rep ? r->GetRepeatedInt32(msg, f, index) : r->GetInt32(msg, f));
      case FieldDescriptor::CPPTYPE_INT64:
        return absl::StrCat(rep ? r->GetRepeatedInt64(msg, f, index) : r->GetInt64(msg, f));
      default:
        return "";
    }
    if (unit == mkfleet::v1::UNIT_BYTES) return FormatBytes(n);
    if (unit == mkfleet::v1::UNIT_DURATION_MS) return FormatDurationMs(n);
    return absl::StrCat(n);
  }

  void EmitScalar(const Message& msg, const FieldInfo& fi, int index, YAML::Emitter& out) {
    std::string text = ScalarText(msg, fi.field, index, fi.rules.unit());
    if (fi.field->cpp_type() == FieldDescriptor::CPPTYPE_STRING ||
        fi.field->cpp_type() == FieldDescriptor::CPPTYPE_ENUM) {  // "True" is an enum's, not a bool
      EmitString(text, out);
    } else {
      out << text;
    }
  }

  static void EmitString(const std::string& text, YAML::Emitter& out) {
    if (NeedsQuotes(text)) out << YAML::DoubleQuoted;
    out << text;
  }

  const PrintOptions& options_;
};

void Emit(const mkfleet::v1::Object& object, const PrintOptions& options, YAML::Emitter& out) {
  const Message* msg = nullptr;
  switch (object.kind_case()) {
    case mkfleet::v1::Object::kHost:
      msg = &object.host();
      break;
    case mkfleet::v1::Object::kKernelInstance:
      msg = &object.kernel_instance();
      break;
    case mkfleet::v1::Object::kInstanceSet:
      msg = &object.instance_set();
      break;
    case mkfleet::v1::Object::kRoleBinding:
      msg = &object.role_binding();
      break;
    case mkfleet::v1::Object::kRolloutPolicy:
      msg = &object.rollout_policy();
      break;
    case mkfleet::v1::Object::kGitSource:
      msg = &object.git_source();
      break;
    default:
      out << YAML::BeginMap << YAML::EndMap;
      return;
  }
  Printer(options).PrintMessage(*msg, out);
}

}  // namespace

std::string PrintYaml(const mkfleet::v1::Object& object, const PrintOptions& options) {
  YAML::Emitter out;
  out.SetIndent(2);
  Emit(object, options, out);
  return absl::StrCat(out.c_str(), "\n");
}

namespace {

nlohmann::ordered_json ToJson(const YAML::Node& node) {
  switch (node.Type()) {
    case YAML::NodeType::Map: {
      nlohmann::ordered_json map = nlohmann::ordered_json::object();
      for (const auto& kv : node) map[kv.first.Scalar()] = ToJson(kv.second);
      return map;
    }
    case YAML::NodeType::Sequence: {
      nlohmann::ordered_json list = nlohmann::ordered_json::array();
      for (const auto& item : node) list.push_back(ToJson(item));
      return list;
    }
    case YAML::NodeType::Scalar: {
      const std::string& s = node.Scalar();
      if (node.Tag() == "!") return s;  // quoted: a string whatever it looks like
      if (s == "true" || s == "false") return s == "true";
      int64_t i = 0;
      uint64_t u = 0;
      if (absl::SimpleAtoi(s, &i)) return i;
      if (absl::SimpleAtoi(s, &u)) return u;
      return s;
    }
    default:
      return nullptr;
  }
}

}  // namespace

nlohmann::ordered_json PrintJson(const mkfleet::v1::Object& object, const PrintOptions& options) {
  return ToJson(YAML::Load(PrintYaml(object, options)));
}

std::string PrintYaml(const std::vector<mkfleet::v1::Object>& objects, const PrintOptions& options) {
  std::string text;
  for (size_t i = 0; i < objects.size(); ++i) {
    if (i > 0) text += "---\n";
    text += PrintYaml(objects[i], options);
  }
  return text;
}

}  // namespace mkfleet::manifests
