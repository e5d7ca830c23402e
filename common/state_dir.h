// A daemon's state directory and store files, made safe to trust: created 0700, refused when
// they are symbolic links, owned by another user, or writable by group or others; and held
// with an exclusive flock, so that a second mkagent or mkcontroller on the same state exits
// (2) naming the pid that holds it instead of handing out the same CPUs twice.
// Thread-safety: stateless functions; a StateLock belongs to its owner.
#ifndef MKFLEET_COMMON_STATE_DIR_H_
#define MKFLEET_COMMON_STATE_DIR_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"

namespace mkfleet {

// An exclusive flock on a lock file, held until destroyed (or the process dies).
class StateLock {
 public:
  explicit StateLock(int fd) : fd_(fd) {}
  StateLock(const StateLock&) = delete;
  StateLock& operator=(const StateLock&) = delete;
  ~StateLock();

 private:
  int fd_;
};

// Creates `dir` (0700, and its missing parents 0700) if it does not exist, checks it (a real
// directory, ours, not group- or world-writable) and locks DIR/lock. FailedPrecondition
// naming the problem, or "... is in use by pid N" when another process holds it.
absl::StatusOr<std::unique_ptr<StateLock>> OpenStateDir(const std::string& dir);

// For a store file: when it exists, a regular file (not a link), ours, not group- or
// world-writable, and not empty (a 0-byte store is a truncated one, not a new one); its
// directory not writable by others unless sticky. Then locks PATH.lock as OpenStateDir does.
absl::StatusOr<std::unique_ptr<StateLock>> OpenStoreFile(const std::string& path);

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_STATE_DIR_H_
