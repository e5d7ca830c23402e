// Parsers and printers for the units users write in manifests (docs/manifests.md):
// memory quantities, durations, CPU lists and percentages.
//
// Every parser returns InvalidArgument with a message meant to follow "field: " in an
// error line, e.g. "unknown unit \"Gb\" (use Ki, Mi, Gi, Ti)". Pure functions; thread-safe.
#ifndef MKFLEET_MANIFESTS_UNITS_H_
#define MKFLEET_MANIFESTS_UNITS_H_

#include <cstdint>
#include <string>
#include "absl/strings/string_view.h"
#include <vector>

#include "absl/status/statusor.h"

namespace mkfleet::manifests {

// "512Mi", "2Gi", "1Ti", "4Ki" or plain bytes "4096". Rejects overflow past 2^64-1.
absl::StatusOr<uint64_t> ParseBytes(absl::string_view text);
// The shortest exact spelling: 2147483648 -> "2Gi", 1000 -> "1000".
std::string FormatBytes(uint64_t bytes);

// For messages: FormatBytes when exact, else two decimals of the largest fitting unit
// ("31.97Gi").
std::string FormatBytesApprox(uint64_t bytes);

// "100ms", "5s", "2m", "1h", or a sequence like "1m30s". Result in milliseconds.
absl::StatusOr<uint64_t> ParseDurationMs(absl::string_view text);
// 90000 -> "90s", 120000 -> "2m", 100 -> "100ms".
std::string FormatDurationMs(uint64_t ms);

// The largest CPU number a list may name.
inline constexpr uint32_t kMaxCpu = 65535;
// "0-3,8,10-11" -> {0,1,2,3,8,10,11}: sorted; rejects overlaps, reversed ranges, blanks.
absl::StatusOr<std::vector<uint32_t>> ParseCpuList(absl::string_view text);
// Sorted or not, prints ranges in ascending order: {0,1,2,3,8} -> "0-3,8".
std::string FormatCpuList(std::vector<uint32_t> cpus);

// "25%" -> 25; 0..100.
absl::StatusOr<uint32_t> ParsePercent(absl::string_view text);

// Plain non-negative decimal integer ("0", "42"), at most `max`.
absl::StatusOr<uint64_t> ParseUnsigned(absl::string_view text, uint64_t max);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_UNITS_H_
