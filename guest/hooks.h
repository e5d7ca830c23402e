// The user's morph hooks (docs/morph.md, "Guest hooks"): executables in one folder
// (`/etc/mkfleet/morph.d/` in a spawn kernel), each optional, run with a timeout, with the
// state on stdin (restore) or stdout (checkpoint). A missing hook means nothing to do.
// Thread-compatible (each Run is independent).
#ifndef MKFLEET_GUEST_HOOKS_H_
#define MKFLEET_GUEST_HOOKS_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"

namespace mkfleet::guest {

class Hooks {
 public:
  Hooks(std::string dir, absl::Duration timeout) : dir_(std::move(dir)), timeout_(timeout) {}

  // Runs hook `name` with `input` on its stdin; returns its stdout (at most `max_output`
  // bytes). OK with "" when the hook does not exist. FailedPrecondition when it exits
  // non-zero (with its exit status and the last line of its stderr), DeadlineExceeded when
  // it outlives the timeout (it is killed), ResourceExhausted past max_output.
  absl::StatusOr<std::string> Run(const std::string& name, const std::string& input = "",
                                  size_t max_output = size_t{1} << 30) const;
  bool Has(const std::string& name) const;

 private:
  std::string dir_;
  absl::Duration timeout_;
};

}  // namespace mkfleet::guest

#endif  // MKFLEET_GUEST_HOOKS_H_
