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
    // Values without a manifest spelling (those of output-only fields: KERNEL_STATE_RUNNING,
    // CONDITION_TRUE) print in the manifests' style all the same: the words after the
    // values' common prefix, capitalised (Running, True). Only printed, never read.
    size_t common = std::string::npos;
    for (int i = 1; i < e->value_count(); ++i) {
      const std::string& a = e->value(0)->name();
      const std::string& b = e->value(i)->name();
      size_t n = 0;
      while (n < a.size() && n < b.size() && a[n] == b[n]) ++n;
      common = std::min(common, n);
    }
    const std::string& first = e->value(0)->name();
    size_t prefix = common == std::string::npos ? 0 : first.rfind('_', common == 0 ? 0 : common - 1);
    prefix = prefix == std::string::npos ? 0 : prefix + 1;
    for (int i = 0; i < e->value_count(); ++i) {
      const std::string& yaml = e->value(i)->options().GetExtension(mkfleet::v1::yaml);
      if (yaml.empty()) {
        std::string words;
        bool upper = true;
        for (char c : e->value(i)->name().substr(std::min(prefix, e->value(i)->name().size()))) {
          if (c == '_') {
            upper = true;
            continue;
          }
          words += upper ? absl::ascii_toupper(c) : absl::ascii_tolower(c);
          upper = false;
        }
        info->yaml_of[e->value(i)->number()] = words.empty() ? e->value(i)->name() : words;
        continue;
      }
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
