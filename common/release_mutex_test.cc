// The binaries link release_mutex: a lock-order inversion, which the deadlock detector of
// Debian's absl (built without NDEBUG) reports and aborts on, passes unnoticed with it off.
#include "common/release_mutex.h"

#include "absl/synchronization/mutex.h"
#include "gtest/gtest.h"

namespace mkfleet::common {
namespace {

TEST(ReleaseMutexTest, TheDeadlockDetectorIsOffInTheBinaries) {
  ASSERT_TRUE(MutexDeadlockDetectorOff());
  absl::Mutex a, b;
  {
    absl::MutexLock la(&a);
    absl::MutexLock lb(&b);
  }
  {
    absl::MutexLock lb(&b);
    absl::MutexLock la(&a);  // aborts here with the detector on (its default in this absl)
  }
  SUCCEED();
}

}  // namespace
}  // namespace mkfleet::common
