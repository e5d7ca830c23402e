// Clock: the only way mkfleet code reads time, so tests can drive it.
//
// RealClock reads the system clocks. SimulatedClock (testing/) only moves when told.
// Thread-safety: implementations are safe to call from any thread.
#ifndef MKFLEET_COMMON_CLOCK_H_
#define MKFLEET_COMMON_CLOCK_H_

#include "absl/time/time.h"

namespace mkfleet {

class Clock {
 public:
  virtual ~Clock() = default;
  // Wall-clock time, for timestamps shown to users.
  virtual absl::Time Now() = 0;
  // Monotonic time since an arbitrary origin, for timeouts and intervals.
  virtual absl::Duration Monotonic() = 0;
  // Blocks the caller for `d` (simulated clocks advance instead).
  virtual void SleepFor(absl::Duration d) = 0;

  // The process-wide real clock. Never null; never deleted.
  static Clock& Real();
};

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_CLOCK_H_
