// ShardMap: which member of a sharded control plane (`mkcontroller --shards K`) sends to
// which host.
//
// Hosts fall into K shards by a stable hash of their name (FNV-1a, the same in every
// process and build); shards go to the live members (those registered under a lease,
// Election::Members) by consistent hashing: each member has kVirtualNodes points on a
// ring, a shard belongs to the first member point at or after its own. When a member
// joins or dies only the shards next to its points move, about K/members of them; the
// others keep their owner (and their connections, fences and backoffs).
//
// Handover: a shard taken from a member that is still registered (one joined, so the
// ring moved; or this member's first list, where any other member may have had it) is not
// used for `handover` after this member saw the change: the previous owner notices the
// same member list within one election round and stops first, so no host gets batches
// from two members at once. A shard of a member that is gone (its lease expired, after it
// stopped acting on its own) is used at once.
//
// The leader of the control plane also owns a share; besides, it plans for every host.
// Thread-safety: all methods may be called from any thread.
#ifndef MKFLEET_RECONCILER_SHARDS_H_
#define MKFLEET_RECONCILER_SHARDS_H_

#include <functional>
#include <map>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/controller.pb.h"

namespace mkfleet::reconciler {

// The shard of `host` among `shards`.
int ShardOf(const std::string& host, int shards);

// The owner of each of `shards` shards among `members` (names, any order): consistent
// hashing; empty names when there is no member.
std::vector<std::string> AssignShards(const std::vector<std::string>& members, int shards);

class ShardMap {
 public:
  static constexpr int kVirtualNodes = 64;

  // `self`: this member's name. `valid`: whether this member's registration is current
  // (Election::MemberValid); while it is not, it owns nothing (null: always).
  ShardMap(std::string self, int shards, Clock& clock, absl::Duration handover,
           std::function<bool()> valid = nullptr);

  // The members now, and this member's lease (0: unknown). Returns whether this member's
  // shards changed. A new lease of its own means its registration lapsed meanwhile (cut
  // off from the store): the others may have taken its shards, so it takes them back like
  // shards of a live member, after the handover.
  bool SetMembers(const std::vector<std::string>& members, int64_t own_lease = 0);
  // The same from the election's list (Election::Members, ElectionOptions.on_members).
  bool SetMembersFrom(const std::vector<mkfleet::v1::ControllerMember>& members);

  // Whether the ring gives `host` to this member (it keeps a connection to it).
  bool Assigned(const std::string& host) const;
  // Whether this member may send to `host` now: assigned, handed over, registration valid.
  bool Owns(const std::string& host) const;
  // The member the ring gives `host` to ("" while no member is known).
  std::string OwnerOf(const std::string& host) const;

  const std::string& self() const { return self_; }
  int shards() const { return shards_; }
  std::vector<std::string> members() const;

 private:
  const std::string self_;
  const int shards_;
  Clock& clock_;
  const absl::Duration handover_;
  const std::function<bool()> valid_;
  mutable absl::Mutex mu_;
  std::vector<std::string> members_ ABSL_GUARDED_BY(mu_);
  int64_t own_lease_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> owner_ ABSL_GUARDED_BY(mu_);            // by shard
  std::vector<absl::Duration> usable_from_ ABSL_GUARDED_BY(mu_);  // by shard, Monotonic()
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_SHARDS_H_
