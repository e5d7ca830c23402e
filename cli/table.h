// Output helpers of mkapply's remote commands: one table printer (columns as wide as their
// widest cell, two spaces apart, an optional colour per cell on a terminal) and the
// formats every command shares (byte sizes, CPU ranges, conditions, durations).
// Thread-safety: plain values and pure functions.
#ifndef MKFLEET_CLI_TABLE_H_
#define MKFLEET_CLI_TABLE_H_

#include <cstdint>
#include <functional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mkfleet/v1/state.pb.h"

namespace mkfleet::cli {

class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // `colour` maps a cell of column `col` to an ANSI colour code ("" for none).
  void Print(std::ostream& out, int col = -1, const std::function<std::string(const std::string&)>& colour = {}) const;
  size_t rows() const { return rows_.size() - 1; }

 private:
  std::vector<std::vector<std::string>> rows_;
};

// Green for running/ready/yes, red for failed/no, yellow otherwise.
std::string PhaseColour(const std::string& phase);
// "0-3,8,10-11" for a CPU list in any order; "-" when empty.
std::string Ranges(std::vector<uint32_t> v);
// "2Gi", "1.5Gi", "512Mi".
std::string Bytes(uint64_t b);
uint64_t SumBytes(const google::protobuf::RepeatedPtrField<mkfleet::v1::NodeBytes>& v);
const mkfleet::v1::Condition* FindCondition(const google::protobuf::RepeatedPtrField<mkfleet::v1::Condition>& conditions,
                                            const std::string& type);
void PrintConditions(const google::protobuf::RepeatedPtrField<mkfleet::v1::Condition>& conditions, std::ostream& out);
// "HH:MM:SS" of a Unix time in ms, local time.
std::string ClockTime(int64_t unix_ms);

// A duration as people type it: "30s", "5m", "1h", "250ms"; a bare number is seconds (so
// `--timeout 15` means 15 s). InvalidArgument names the text.
absl::StatusOr<absl::Duration> ParseDuration(const std::string& text);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_TABLE_H_
