// //common:release_mutex: every mkfleet binary turns off absl's Mutex deadlock detector at
// start (see release_mutex.cc for why); the unit tests keep it.
#ifndef MKFLEET_COMMON_RELEASE_MUTEX_H_
#define MKFLEET_COMMON_RELEASE_MUTEX_H_

namespace mkfleet::common {

// Whether this process turned the detector off (false when MKFLEET_MUTEX_DEADLOCK_CHECK=1).
bool MutexDeadlockDetectorOff();

}  // namespace mkfleet::common

#endif  // MKFLEET_COMMON_RELEASE_MUTEX_H_
