// Linked into every mkfleet binary (not the unit tests): turns off absl's Mutex deadlock
// detector, which Debian's absl leaves on because the library is built without NDEBUG. With it
// on, every Mutex lock and unlock, ours and gRPC's (grpc_core::Mutex is an absl::Mutex),
// records the acquisition order in one process-wide graph under one global lock: 3.5x the
// cost of an uncontended lock pair here (92.6 ns against 26.0 ns) and a point where all
// threads of a daemon meet. Tests keep the detector. MKFLEET_MUTEX_DEADLOCK_CHECK=1 keeps it
// on in a binary too, for debugging a hang.
#include "common/release_mutex.h"

#include <cstdlib>
#include <cstring>

#include "absl/synchronization/mutex.h"

namespace mkfleet::common {
namespace {

const bool kDetectorOff = [] {
  const char* keep = std::getenv("MKFLEET_MUTEX_DEADLOCK_CHECK");
  if (keep != nullptr && std::strcmp(keep, "1") == 0) return false;
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  return true;
}();

}  // namespace

bool MutexDeadlockDetectorOff() { return kDetectorOff; }

}  // namespace mkfleet::common
