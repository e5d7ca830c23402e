// Guest: the inside of a spawn kernel's side of KMP (docs/morph.md), as mkguest runs it:
// answers heartbeats, and takes the morph messages in either role, running the user's hooks:
//   old kernel  PREPARE -> NEGOTIATE (quiesce) -> TRANSFER_STATE (checkpoint, sent in chunks)
//               -> COMMIT (then the process ends) | ROLLBACK (resume)
//   new kernel  PREPARE -> NEGOTIATE -> TRANSFER_STATE chunks in (restore once whole)
//               -> VALIDATE (validate) -> COMMIT (commit: start serving) | ROLLBACK
// A message out of turn, an unknown type or a failing hook is answered with ERROR (the
// reason); a bad frame ends the connection (kmp::Connection). Thread-safe: connections may
// be served at once (heartbeats never wait for a hook).
#ifndef MKFLEET_GUEST_GUEST_H_
#define MKFLEET_GUEST_GUEST_H_

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "guest/hooks.h"
#include "kmp/connection.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::guest {

inline constexpr size_t kStateChunk = 1u << 20;

class Guest {
 public:
  Guest(uint32_t instance_id, Hooks hooks) : instance_id_(instance_id), hooks_(std::move(hooks)) {}

  enum class End { kClosed, kCommitted };
  // Serves `conn` until the peer closes it (kClosed), or the old side's COMMIT was answered
  // (kCommitted: the process should end). An error for a broken connection.
  absl::StatusOr<End> Serve(kmp::Connection& conn);

 private:
  // Answers one frame; sets *committed when the old side committed.
  absl::Status Handle(kmp::Connection& conn, const kmp::Frame& f, bool* committed);
  absl::Status Refuse(kmp::Connection& conn, const kmp::Frame& f, const std::string& reason);

  const uint32_t instance_id_;
  const Hooks hooks_;
  absl::Mutex mu_;  // the morph's state; heartbeats do not take it
  std::string morph_id_ ABSL_GUARDED_BY(mu_);
  mkfleet::v1::KmpMorphPrepare::Role role_ ABSL_GUARDED_BY(mu_) = mkfleet::v1::KmpMorphPrepare::ROLE_UNSPECIFIED;
  bool negotiated_ ABSL_GUARDED_BY(mu_) = false;
  std::string state_ ABSL_GUARDED_BY(mu_);  // new side: the state received so far
  bool restored_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace mkfleet::guest

#endif  // MKFLEET_GUEST_GUEST_H_
