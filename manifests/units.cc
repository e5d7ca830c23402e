#include "manifests/units.h"

#include <algorithm>
#include <limits>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mkfleet::manifests {
namespace {

constexpr uint64_t kMax64 = std::numeric_limits<uint64_t>::max();

// Splits "512Mi" into digits "512" and suffix "Mi". Returns false when there are no digits.
bool SplitNumber(absl::string_view text, absl::string_view* digits, absl::string_view* suffix) {
  size_t i = 0;
  while (i < text.size() && absl::ascii_isdigit(static_cast<unsigned char>(text[i]))) ++i;
  *digits = text.substr(0, i);
  *suffix = text.substr(i);
  return i > 0;
}

absl::Status Invalid(absl::string_view what, absl::string_view text, absl::string_view hint) {
  return absl::InvalidArgumentError(absl::StrCat("invalid ", what, " \"", text, "\"",
                                                 hint.empty() ? "" : " (", hint,
                                                 hint.empty() ? "" : ")"));
}

struct Suffix {
  absl::string_view name;
  uint64_t factor;
};

constexpr Suffix kByteSuffixes[] = {
    {"Ti", 1ull << 40}, {"Gi", 1ull << 30}, {"Mi", 1ull << 20}, {"Ki", 1ull << 10}};

constexpr Suffix kDurationSuffixes[] = {
    {"ms", 1}, {"s", 1000}, {"m", 60 * 1000}, {"h", 60 * 60 * 1000}};

}  // namespace

absl::StatusOr<uint64_t> ParseUnsigned(absl::string_view text, uint64_t max) {
  if (text.empty()) return absl::InvalidArgumentError("expected a number, got an empty string");
  uint64_t value = 0;
  for (char c : text) {
    if (!absl::ascii_isdigit(static_cast<unsigned char>(c))) {
      return absl::InvalidArgumentError(absl::StrCat("expected a whole number, got \"", text, "\""));
    }
    uint64_t digit = c - '0';
    if (value > (kMax64 - digit) / 10) {
      return absl::InvalidArgumentError(absl::StrCat("number \"", text, "\" is too large"));
    }
    value = value * 10 + digit;
  }
  if (value > max) {
    return absl::InvalidArgumentError(absl::StrCat("must be at most ", max, ", got ", text));
  }
  return value;
}

absl::StatusOr<uint64_t> ParseBytes(absl::string_view text) {
  absl::string_view digits, suffix;
  if (!SplitNumber(text, &digits, &suffix)) {
    return Invalid("memory quantity", text, "write e.g. 512Mi, 2Gi, 1Ti or plain bytes");
  }
  auto value = ParseUnsigned(digits, kMax64);
  if (!value.ok()) {
    return absl::InvalidArgumentError(absl::StrCat("memory quantity \"", text, "\" is too large"));
  }
  if (suffix.empty()) return *value;
  for (const Suffix& s : kByteSuffixes) {
    if (suffix != s.name) continue;
    if (*value > kMax64 / s.factor) {
      return absl::InvalidArgumentError(
          absl::StrCat("memory quantity \"", text, "\" is too large"));
    }
    return *value * s.factor;
  }
  std::string hint = "use Ki, Mi, Gi or Ti";
  if (suffix == "K" || suffix == "M" || suffix == "G" || suffix == "T" || suffix == "k") {
    hint = absl::StrCat("binary units only: did you mean ", digits,
                        absl::AsciiStrToUpper(suffix), "i?");
  } else if (suffix == "KB" || suffix == "MB" || suffix == "GB" || suffix == "TB" ||
             suffix == "Gb" || suffix == "Mb") {
    hint = absl::StrCat("binary units only: did you mean ", digits, suffix.substr(0, 1), "i?");
  }
  return absl::InvalidArgumentError(
      absl::StrCat("invalid memory quantity \"", text, "\": unknown unit \"", suffix, "\" (",
                   hint, ")"));
}

std::string FormatBytes(uint64_t bytes) {
  if (bytes == 0) return "0";
  for (const Suffix& s : kByteSuffixes) {
    if (bytes % s.factor == 0) return absl::StrCat(bytes / s.factor, s.name);
  }
  return absl::StrCat(bytes);
}

std::string FormatBytesApprox(uint64_t bytes) {
  std::string exact = FormatBytes(bytes);
  if (bytes < (1ull << 10) || exact.size() <= 6) return exact;
  for (const Suffix& s : kByteSuffixes) {
    if (bytes >= s.factor) {
      return absl::StrFormat("%.2f%s", static_cast<double>(bytes) / s.factor, std::string(s.name));
    }
  }
  return exact;
}

absl::StatusOr<uint64_t> ParseDurationMs(absl::string_view text) {
  if (text.empty()) return Invalid("duration", text, "write e.g. 100ms, 5s, 2m, 1h");
  absl::string_view rest = text;
  uint64_t total = 0;
  while (!rest.empty()) {
    absl::string_view digits, tail;
    if (!SplitNumber(rest, &digits, &tail)) {
      return Invalid("duration", text, "write e.g. 100ms, 5s, 2m, 1h");
    }
    size_t unit_len = 0;
    while (unit_len < tail.size() && absl::ascii_isalpha(static_cast<unsigned char>(tail[unit_len]))) {
      ++unit_len;
    }
    absl::string_view unit = tail.substr(0, unit_len);
    if (unit.empty()) {
      return Invalid("duration", text, "a unit is required: ms, s, m or h");
    }
    const Suffix* found = nullptr;
    for (const Suffix& s : kDurationSuffixes) {
      if (unit == s.name) found = &s;
    }
    if (found == nullptr) {
      return absl::InvalidArgumentError(absl::StrCat("invalid duration \"", text,
                                                     "\": unknown unit \"", unit,
                                                     "\" (use ms, s, m or h)"));
    }
    auto value = ParseUnsigned(digits, kMax64);
    if (!value.ok() || *value > kMax64 / found->factor ||
        total > kMax64 - *value * found->factor) {
      return absl::InvalidArgumentError(absl::StrCat("duration \"", text, "\" is too large"));
    }
    total += *value * found->factor;
    rest = tail.substr(unit_len);
  }
  return total;
}

std::string FormatDurationMs(uint64_t ms) {
  if (ms == 0) return "0s";
  if (ms % (3600 * 1000) == 0) return absl::StrCat(ms / (3600 * 1000), "h");
  if (ms % (60 * 1000) == 0) return absl::StrCat(ms / (60 * 1000), "m");
  if (ms % 1000 == 0) return absl::StrCat(ms / 1000, "s");
  return absl::StrCat(ms, "ms");
}

absl::StatusOr<std::vector<uint32_t>> ParseCpuList(absl::string_view text) {
  absl::string_view trimmed = absl::StripAsciiWhitespace(text);
  if (trimmed.empty()) return absl::InvalidArgumentError("CPU list is empty");
  std::vector<std::pair<uint32_t, uint32_t>> ranges;
  for (absl::string_view part : absl::StrSplit(trimmed, ',')) {
    part = absl::StripAsciiWhitespace(part);
    if (part.empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid CPU list \"", text, "\": empty item (write e.g. \"0-3,8\")"));
    }
    std::pair<absl::string_view, absl::string_view> ends = absl::StrSplit(part, absl::MaxSplits('-', 1));
    bool is_range = part.find('-') != absl::string_view::npos;
    auto lo = ParseUnsigned(absl::StripAsciiWhitespace(ends.first), kMaxCpu);
    auto hi = is_range ? ParseUnsigned(absl::StripAsciiWhitespace(ends.second), kMaxCpu) : lo;
    if (!lo.ok() || !hi.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "invalid CPU list \"", text, "\": \"", part, "\" is not a CPU number or range (0..",
          kMaxCpu, ")"));
    }
    if (*hi < *lo) {
      return absl::InvalidArgumentError(
          absl::StrCat("invalid CPU list \"", text, "\": range \"", part, "\" is reversed"));
    }
    ranges.emplace_back(static_cast<uint32_t>(*lo), static_cast<uint32_t>(*hi));
  }
  std::sort(ranges.begin(), ranges.end());
  std::vector<uint32_t> cpus;
  for (size_t i = 0; i < ranges.size(); ++i) {
    if (i > 0 && ranges[i].first <= ranges[i - 1].second) {
      return absl::InvalidArgumentError(absl::StrCat("invalid CPU list \"", text, "\": CPU ",
                                                     ranges[i].first, " is listed twice"));
    }
    for (uint32_t c = ranges[i].first;; ++c) {
      cpus.push_back(c);
      if (c == ranges[i].second) break;
    }
  }
  return cpus;
}

std::string FormatCpuList(std::vector<uint32_t> cpus) {
  std::sort(cpus.begin(), cpus.end());
  cpus.erase(std::unique(cpus.begin(), cpus.end()), cpus.end());
  std::vector<std::string> parts;
  for (size_t i = 0; i < cpus.size();) {
    size_t j = i;
    while (j + 1 < cpus.size() && cpus[j + 1] == cpus[j] + 1) ++j;
    parts.push_back(j == i ? absl::StrCat(cpus[i]) : absl::StrCat(cpus[i], "-", cpus[j]));
    i = j + 1;
  }
  return absl::StrJoin(parts, ",");
}

absl::StatusOr<uint32_t> ParsePercent(absl::string_view text) {
  if (!absl::ConsumeSuffix(&text, "%")) {
    return Invalid("percentage", text, "write e.g. 25%");
  }
  auto value = ParseUnsigned(text, 100);
  if (!value.ok()) {
    return absl::InvalidArgumentError(
        absl::StrCat("invalid percentage \"", text, "%\" (a whole number from 0 to 100)"));
  }
  return static_cast<uint32_t>(*value);
}

}  // namespace mkfleet::manifests
