// SimulatedClock: a Clock that moves only when a test advances it.
// Thread-safety: all methods are safe to call concurrently.
#ifndef MKFLEET_COMMON_TESTING_SIMULATED_CLOCK_H_
#define MKFLEET_COMMON_TESTING_SIMULATED_CLOCK_H_

#include "absl/synchronization/mutex.h"
#include "common/clock.h"

namespace mkfleet {

class SimulatedClock final : public Clock {
 public:
  explicit SimulatedClock(absl::Time start = absl::UnixEpoch() + absl::Hours(24 * 365 * 56))
      : now_(start) {}

  absl::Time Now() override {
    absl::MutexLock lock(&mu_);
    return now_;
  }
  absl::Duration Monotonic() override {
    absl::MutexLock lock(&mu_);
    return elapsed_;
  }
  // Advances the clock instead of blocking.
  void SleepFor(absl::Duration d) override { Advance(d); }

  void Advance(absl::Duration d) {
    absl::MutexLock lock(&mu_);
    now_ += d;
    elapsed_ += d;
  }

 private:
  absl::Mutex mu_;
  absl::Time now_ ABSL_GUARDED_BY(mu_);
  absl::Duration elapsed_ ABSL_GUARDED_BY(mu_) = absl::ZeroDuration();
};

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_TESTING_SIMULATED_CLOCK_H_
