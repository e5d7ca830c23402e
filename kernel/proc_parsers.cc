#include "kernel/proc_parsers.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mkfleet::kernel {
namespace {

bool ParseHex(absl::string_view s, uint64_t* out) {
  absl::ConsumePrefix(&s, "0x");
  if (s.empty() || s.size() > 16) return false;
  return absl::SimpleHexAtoi(s, out);
}

absl::Status BadLine(absl::string_view file, int n, absl::string_view why, absl::string_view line) {
  return absl::InvalidArgumentError(absl::StrCat(file, " line ", n, ": ", why, ": \"", line, "\""));
}

}  // namespace

absl::StatusOr<std::vector<IomemRegion>> ParseIomem(absl::string_view text) {
  std::vector<IomemRegion> out;
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++n;
    if (absl::StripAsciiWhitespace(line).empty()) continue;
    size_t indent = 0;
    while (indent < line.size() && line[indent] == ' ') ++indent;
    absl::string_view rest = line.substr(indent);
    size_t colon = rest.find(" : ");
    size_t dash = rest.find('-');
    if (colon == absl::string_view::npos || dash == absl::string_view::npos || dash > colon) {
      return BadLine("/proc/iomem", n, "expected \"start-end : name\"", line);
    }
    IomemRegion r;
    if (!ParseHex(rest.substr(0, dash), &r.start) || !ParseHex(rest.substr(dash + 1, colon - dash - 1), &r.end)) {
      return BadLine("/proc/iomem", n, "bad address", line);
    }
    if (r.end < r.start) return BadLine("/proc/iomem", n, "end before start", line);
    r.name = std::string(absl::StripAsciiWhitespace(rest.substr(colon + 3)));
    r.depth = static_cast<int>(indent / 2);
    out.push_back(std::move(r));
  }
  return out;
}

PoolRegions FindPoolRegions(const std::vector<IomemRegion>& regions) {
  PoolRegions out;
  for (const IomemRegion& r : regions) {
    if (r.name == "Multikernel Memory Pool") {
      out.pool.push_back(r);
    } else if (r.name == "daxfs") {
      out.daxfs.push_back(r);
    } else if (absl::StartsWith(r.name, "mk-instance-")) {
      // mk-instance-<id>-<name>-region-<n>; names may contain '-'.
      absl::string_view s = absl::StripPrefix(r.name, "mk-instance-");
      size_t dash = s.find('-');
      size_t region = s.rfind("-region-");
      PoolRegions::InstanceRegion ir;
      if (dash == absl::string_view::npos || region == absl::string_view::npos || region <= dash ||
          !absl::SimpleAtoi(s.substr(0, dash), &ir.id) ||
          !absl::SimpleAtoi(s.substr(region + 8), &ir.index)) {
        continue;
      }
      ir.instance = std::string(s.substr(dash + 1, region - dash - 1));
      ir.region = r;
      out.instances.push_back(std::move(ir));
    }
  }
  return out;
}

absl::StatusOr<std::vector<KimageEntry>> ParseKimage(absl::string_view text) {
  std::vector<KimageEntry> out;
  int n = 0;
  for (absl::string_view line : absl::StrSplit(text, '\n')) {
    ++n;
    absl::string_view t = absl::StripAsciiWhitespace(line);
    if (t.empty() || absl::StartsWith(t, "MK_ID")) continue;
    std::vector<absl::string_view> f = absl::StrSplit(t, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    if (f.size() < 5) return BadLine("/proc/kimage", n, "expected 5 or more columns", line);
    KimageEntry e;
    if (!absl::SimpleAtoi(f[0], &e.id)) return BadLine("/proc/kimage", n, "bad MK_ID", line);
    e.type = std::string(f[1]);
    if (!ParseHex(f[2], &e.start_address)) return BadLine("/proc/kimage", n, "bad start address", line);
    if (!absl::SimpleAtoi(f[3], &e.segments)) return BadLine("/proc/kimage", n, "bad segment count", line);
    e.mode = std::string(f[4]);
    // The command line is the rest of the line, spaces and all.
    size_t pos = t.find(f[4], static_cast<size_t>(f[3].data() - t.data()) + f[3].size());
    if (f.size() > 5 && pos != absl::string_view::npos) {
      e.cmdline = std::string(absl::StripAsciiWhitespace(t.substr(pos + f[4].size())));
    }
    out.push_back(std::move(e));
  }
  return out;
}

}  // namespace mkfleet::kernel
