#include "cli/table.h"

#include <algorithm>
#include <cstdio>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "manifests/units.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

void Table::Print(std::ostream& out, int col, const std::function<std::string(const std::string&)>& colour) const {
  std::vector<size_t> width;
  for (const auto& r : rows_) {
    if (width.size() < r.size()) width.resize(r.size(), 0);
    for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
  }
  for (size_t n = 0; n < rows_.size(); ++n) {
    const auto& r = rows_[n];
    std::string line;
    for (size_t i = 0; i < r.size(); ++i) {
      std::string cell = r[i];
      std::string code = n > 0 && static_cast<int>(i) == col && colour ? colour(cell) : "";
      if (i + 1 < r.size()) cell += std::string(width[i] - r[i].size() + 2, ' ');
      line += code.empty() ? cell : absl::StrCat("\033[", code, "m", r[i], "\033[0m", cell.substr(r[i].size()));
    }
    out << line << "\n";
  }
}

std::string PhaseColour(const std::string& phase) {
  if (phase == "Running" || phase == "Ready" || phase == "Loaded" || phase == "yes") return "32";
  if (phase == "Failed" || phase == "no") return "31";
  return "33";
}

std::string Ranges(std::vector<uint32_t> v) {
  std::sort(v.begin(), v.end());
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? std::to_string(v[i]) : absl::StrCat(v[i], "-", v[j]);
    i = j + 1;
  }
  return out.empty() ? "-" : out;
}

std::string Bytes(uint64_t b) {
  if (b == 0) return "0";
  if (b % (1ull << 30) == 0) return absl::StrCat(b >> 30, "Gi");
  char buf[32];
  if (b >= (1ull << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1fGi", b / double(1ull << 30));
    return buf;
  }
  if (b % (1ull << 20) == 0) return absl::StrCat(b >> 20, "Mi");
  return absl::StrCat(b);
}

uint64_t SumBytes(const google::protobuf::RepeatedPtrField<v1::NodeBytes>& v) {
  uint64_t total = 0;
  for (const auto& nb : v) total += nb.bytes();
  return total;
}

const v1::Condition* FindCondition(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions,
                                   const std::string& type) {
  for (const v1::Condition& c : conditions) {
    if (c.type() == type) return &c;
  }
  return nullptr;
}

void PrintConditions(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions, std::ostream& out) {
  if (conditions.empty()) {
    out << "Conditions:   (none yet)\n";
    return;
  }
  out << "Conditions:\n";
  Table t({"  TYPE", "STATUS", "REASON", "MESSAGE"});
  for (const v1::Condition& c : conditions) {
    t.Add({"  " + c.type(), c.status() == v1::CONDITION_TRUE ? "True" : "False", c.reason(),
           c.message().empty() ? "-" : c.message()});
  }
  t.Print(out);
}

std::string ClockTime(int64_t unix_ms) {
  return absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(unix_ms), absl::LocalTimeZone());
}

absl::StatusOr<absl::Duration> ParseDuration(const std::string& text) {
  int64_t seconds = 0;
  if (absl::SimpleAtoi(text, &seconds)) {
    if (seconds < 0) return absl::InvalidArgumentError(absl::StrCat("\"", text, "\": a duration cannot be negative"));
    return absl::Seconds(seconds);
  }
  auto ms = manifests::ParseDurationMs(text);
  if (!ms.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("\"", text, "\" is not a duration (e.g. 30s, 5m, 1h, 250ms; a bare number is seconds)"));
  }
  return absl::Milliseconds(*ms);
}

}  // namespace mkfleet::cli
