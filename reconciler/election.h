// Election: leader election among the mkcontrollers of one store (etcd in production),
// with the store's leases, as Kubernetes' leader election does on etcd.
//
// Each member grants itself a lease of `ttl` and registers `/control/members/<name>` on it
// (a ControllerMember). The leader is whoever creates `/control/leader` (value: its name) on
// its own lease, with a compare that the key is absent; the others watch the store and try
// again as soon as the key goes (the leader resigned, or its lease expired ttl after its
// last keep-alive).
//
// Safety: the leader keeps its lease alive every ttl/5 and counts its leadership as valid
// until `sent + ttl - margin`, where `sent` is when its last successful keep-alive was sent
// (etcd's expiry is at least `sent + ttl`). Past that (etcd unreachable, the process
// stalled), it steps down on its own before the lease can expire and another member be
// elected: IsLeader() turns false and on_lost runs, so no two members act at once. The
// reconciler checks IsLeader() right before each batch it sends; the agents' fences (an
// epoch raised by each new leader) refuse whatever an old leader had in flight.
//
// Two ways to drive it: Start() runs it on a thread, or Step() runs one round on the
// caller's clock (tests, the simulation).
// Thread-safety: IsLeader, Leader and Members from any thread; Start/Stop/Step from one.
#ifndef MKFLEET_RECONCILER_ELECTION_H_
#define MKFLEET_RECONCILER_ELECTION_H_

#include <atomic>
#include <functional>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/controller.pb.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

inline constexpr char kLeaderKey[] = "/control/leader";
inline constexpr char kMembersPrefix[] = "/control/members/";

struct ElectionOptions {
  std::string name;     // this member (unique in the control plane)
  std::string address;  // where mkapply reaches it
  std::string version;
  absl::Duration ttl = absl::Seconds(5);
  // Stop acting this long before the lease could expire (default ttl/5).
  absl::Duration margin = absl::ZeroDuration();
  // Whether this member may lead (sharded members all register; only one leads the global
  // steps). False: a member only.
  bool campaign = true;
  // Called on the election's thread, without locks held, and must return quickly (the
  // lease is renewed on that thread): after winning, and after stepping
  // down on its own (lost the lease, or could not renew it in time; not on Stop). on_lost
  // may run on a second thread (the guard that steps down while a store call hangs).
  std::function<void()> on_elected;
  std::function<void()> on_lost;
  // Called after every round that saw the member list change (sharding re-balances).
  std::function<void(const std::vector<mkfleet::v1::ControllerMember>&)> on_members;
  std::ostream* log = &std::cerr;
};

class Election {
 public:
  Election(Store& store, Clock& clock, ElectionOptions options);
  ~Election();

  void Start();
  // Steps down (deleting the leader key and the member's lease keys) and stops the thread.
  void Stop();
  // Tests and the simulation: stops as a killed process does, resigning nothing (its lease
  // runs out in the store).
  void Crash();
  // One round: renew or grant the lease, register, step down when due, campaign when the
  // leader key is absent. Never blocks longer than the store's calls.
  void Step();

  bool IsLeader() const { return leader_.load(); }
  // Whether this member's registration and member list are current: its lease was
  // confirmed, and the member list read, less than ttl - margin ago. A sharded member sends
  // to its hosts only while it is: one whose list is older may not know that a member
  // joined and took some of its hosts (the one that joined waits a ttl before it uses
  // them, ShardMap's handover).
  bool MemberValid() const;
  // The leader's name as last read ("" while none).
  std::string Leader() const;
  // The registered members as last read, in name order (this one included once registered).
  std::vector<mkfleet::v1::ControllerMember> Members() const;
  const std::string& name() const { return options_.name; }
  // How long after the lease was last renewed this member still counts itself leader.
  absl::Duration margin() const { return margin_; }

 private:
  void StepDown(const std::string& why, bool notify = true);
  void SetValidUntil(absl::Duration t);
  absl::Duration ValidUntil() const;
  void Register();
  void ReadMembers();
  std::ostream& Log();

  Store& store_;
  Clock& clock_;
  const ElectionOptions options_;
  const absl::Duration margin_;
  const absl::Duration round_;

  // The election thread's own state.
  int64_t lease_ = 0;
  absl::Duration last_renew_ = -absl::InfiniteDuration();
  int64_t seen_revision_ = 0;
  int64_t started_unix_ms_ = 0;

  std::atomic<bool> leader_{false};
  mutable absl::Mutex mu_;
  std::string leader_name_ ABSL_GUARDED_BY(mu_);
  std::vector<mkfleet::v1::ControllerMember> members_ ABSL_GUARDED_BY(mu_);
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // Monotonic(): the registration (and the leadership, if any) is trusted until then.
  absl::Duration valid_until_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  // Monotonic() when the member list was last read (its read started).
  absl::Duration members_read_ ABSL_GUARDED_BY(mu_) = -absl::InfiniteDuration();
  std::thread thread_;
  std::thread guard_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_ELECTION_H_
