#include "manifests/schema.h"

#include <algorithm>
#include <memory>

#include "absl/strings/ascii.h"
#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::manifests {
namespace {

using google::protobuf::Descriptor;
using google::protobuf::EnumDescriptor;
using google::protobuf::FieldDescriptor;

struct Tables {
  absl::flat_hash_map<const Descriptor*, std::unique_ptr<MessageInfo>> messages;
  absl::flat_hash_map<const EnumDescriptor*, std::unique_ptr<EnumInfo>> enums;

  void Add(const Descriptor* d) {
    if (messages.contains(d)) return;
    auto info = std::make_unique<MessageInfo>();
    MessageInfo* raw = info.get();
    messages[d] = std::move(info);
    raw->fields.reserve(d->field_count());
    for (int i = 0; i < d->field_count(); ++i) {
      const FieldDescriptor* f = d->field(i);
      raw->fields.push_back({f, f->json_name(), f->options().GetExtension(mkfleet::v1::rules)});
      if (f->message_type() != nullptr) Add(f->message_type());
      if (f->enum_type() != nullptr) AddEnum(f->enum_type());
    }
    for (const FieldInfo& fi : raw->fields) {
      raw->by_name[fi.yaml_name] = &fi;
      if (!fi.rules.output_only()) raw->names.push_back(fi.yaml_name);
    }
  }

  void AddEnum(const EnumDescriptor* e) {
    if (enums.contains(e)) return;
    auto info = std::make_unique<EnumInfo>();
    for (int i = 0; i < e->value_count(); ++i) {
      const std::string& yaml = e->value(i)->options().GetExtension(mkfleet::v1::yaml);
      if (yaml.empty()) continue;
      info->by_yaml[yaml] = e->value(i)->number();
      info->yaml_of[e->value(i)->number()] = yaml;
      info->names.push_back(yaml);
    }
    enums[e] = std::move(info);
  }
};

const Tables& GetTables() {
  static const Tables* tables = [] {
    auto* t = new Tables();
    t->Add(mkfleet::v1::Object::descriptor());
    return t;
  }();
  return *tables;
}

size_t EditDistance(absl::string_view a, absl::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      size_t sub = prev[j - 1] + (absl::ascii_tolower(a[i - 1]) == absl::ascii_tolower(b[j - 1]) ? 0 : 1);
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, sub});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

}  // namespace

const MessageInfo& InfoFor(const Descriptor* d) { return *GetTables().messages.at(d); }

const EnumInfo& InfoFor(const EnumDescriptor* d) { return *GetTables().enums.at(d); }

std::string Suggest(absl::string_view word, const std::vector<std::string>& candidates) {
  if (word.size() > 64) return "";
  std::string best;
  size_t best_distance = std::max<size_t>(1, word.size() / 3) + 1;
  for (const std::string& c : candidates) {
    size_t d = EditDistance(word, c);
    if (d < best_distance) {
      best_distance = d;
      best = c;
    }
  }
  return best;
}

}  // namespace mkfleet::manifests
