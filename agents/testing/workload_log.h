// The morph tests' workload log: one line "INSTANCE-ID VALUE" per increment of the counter
// that the serving guest's workload keeps (and a live update must carry over).
#ifndef MKFLEET_AGENTS_TESTING_WORKLOAD_LOG_H_
#define MKFLEET_AGENTS_TESTING_WORKLOAD_LOG_H_

#include <cstdint>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"

namespace mkfleet::agents::testing {

// The counter's last value (0 before the first increment).
inline int64_t LastCount(const std::string& log) {
  std::ifstream in(log);
  std::string line, last;
  while (std::getline(in, line)) last = line;
  std::istringstream l(last);
  int64_t id = 0, v = 0;
  l >> id >> v;
  return v;
}

// Expects every increment once, in order (none lost or repeated); returns the ids of the
// instances that served, in the order they did.
inline std::vector<int64_t> CheckWorkloadLog(const std::string& log) {
  std::ifstream in(log);
  int64_t id, v, expect = 1;
  std::vector<int64_t> ids;
  while (in >> id >> v) {
    EXPECT_EQ(v, expect) << "increment " << expect << " lost or repeated (instance " << id << ")";
    expect = v + 1;
    if (ids.empty() || ids.back() != id) ids.push_back(id);
  }
  return ids;
}

}  // namespace mkfleet::agents::testing

#endif  // MKFLEET_AGENTS_TESTING_WORKLOAD_LOG_H_
