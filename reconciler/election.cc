#include "reconciler/election.h"

#include <algorithm>
#include <ostream>

#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

std::ostream& Null() {
  static std::ostream* null = new std::ostream(nullptr);
  return *null;
}

}  // namespace

Election::Election(Store& store, Clock& clock, ElectionOptions options)
    : store_(store),
      clock_(clock),
      options_(std::move(options)),
      margin_(options_.margin > absl::ZeroDuration() ? options_.margin : options_.ttl / 5),
      round_(options_.ttl / 5) {
  started_unix_ms_ = absl::ToUnixMillis(clock_.Now());
}

Election::~Election() { Stop(); }

std::ostream& Election::Log() { return options_.log != nullptr ? *options_.log : Null(); }

void Election::Start() {
  // The guard: steps down when the leadership's validity runs out, even while a store call
  // of the election's thread hangs (etcd unreachable).
  guard_ = std::thread([this] {
    absl::MutexLock lock(&mu_);
    while (!stopping_) {
      const absl::Duration now = clock_.Monotonic();
      if (leader_.load() && now >= valid_until_) {
        mu_.Unlock();
        StepDown(absl::StrCat("its lease was not renewed for ", absl::FormatDuration(options_.ttl - margin_)));
        mu_.Lock();
        continue;
      }
      absl::Duration wait = leader_.load() ? std::min(valid_until_ - now, round_) : round_;
      mu_.AwaitWithTimeout(absl::Condition(&stopping_), std::max(wait, absl::Milliseconds(1)));
    }
  });
  thread_ = std::thread([this] {
    while (true) {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
      }
      Step();
      // The leader renews every round; a follower also wakes on every store change, to
      // campaign as soon as the leader key goes.
      if (leader_.load()) {
        absl::MutexLock lock(&mu_);
        mu_.AwaitWithTimeout(absl::Condition(&stopping_), round_);
      } else {
        auto rev = store_.WaitForRevision(seen_revision_, round_);
        if (rev.ok()) {
          seen_revision_ = *rev;
        } else {
          absl::MutexLock lock(&mu_);
          mu_.AwaitWithTimeout(absl::Condition(&stopping_), round_);
        }
      }
    }
  });
}

void Election::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (guard_.joinable()) guard_.join();
  if (leader_.load()) {
    // Resign: the others need not wait for the lease.
    auto kv = store_.Get(kLeaderKey);
    if (kv.ok() && kv->has_value() && (*kv)->value == options_.name) {
      (void)store_.Txn({{kLeaderKey, (*kv)->mod_revision}}, {{Op::Type::kDelete, kLeaderKey, "", 0}});
    }
    StepDown("stopping", /*notify=*/false);  // the caller stops what it runs itself
  }
  if (lease_ != 0) (void)store_.RevokeLease(lease_);
  lease_ = 0;
}

void Election::Crash() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  if (thread_.joinable()) thread_.join();
  if (guard_.joinable()) guard_.join();
  leader_.store(false);
  lease_ = 0;
}

void Election::StepDown(const std::string& why, bool notify) {
  if (!leader_.exchange(false)) return;
  Log() << "mkcontroller: " << options_.name << " steps down as leader: " << why << std::endl;
  {
    absl::MutexLock lock(&mu_);
    if (leader_name_ == options_.name) leader_name_.clear();
  }
  if (notify && options_.on_lost) options_.on_lost();
}

void Election::Register() {
  v1::ControllerMember m;
  m.set_name(options_.name);
  m.set_address(options_.address);
  m.set_version(options_.version);
  m.set_started_unix_ms(started_unix_ms_);
  m.set_leader(leader_.load());
  m.set_lease(lease_);
  auto r = store_.Put(kMembersPrefix + options_.name, m.SerializeAsString(), lease_);
  if (!r.ok()) Log() << "mkcontroller: registering " << options_.name << ": " << r.status().message() << std::endl;
}

void Election::ReadMembers() {
  const absl::Duration started = clock_.Monotonic();
  auto list = store_.List(kMembersPrefix);
  if (!list.ok()) return;
  std::vector<v1::ControllerMember> members;
  for (const KeyValue& kv : *list) {
    v1::ControllerMember m;
    if (m.ParseFromString(kv.value)) members.push_back(std::move(m));
  }
  bool changed;
  {
    absl::MutexLock lock(&mu_);
    changed = members.size() != members_.size();
    for (size_t i = 0; !changed && i < members.size(); ++i) {
      changed = members[i].name() != members_[i].name() || members[i].lease() != members_[i].lease();
    }
    members_ = members;
    members_read_ = started;
  }
  if (changed && options_.on_members) options_.on_members(members);
}

void Election::Step() {
  (void)store_.ExpireLeases();  // SQLite's; etcd expires leases itself
  const absl::Duration sent = clock_.Monotonic();
  if (lease_ == 0) {
    auto lease = store_.GrantLease(options_.ttl);
    if (!lease.ok()) {
      Log() << "mkcontroller: " << options_.name << ": lease: " << lease.status().message() << std::endl;
    } else {
      lease_ = *lease;
      SetValidUntil(sent + options_.ttl - margin_);
      Register();
    }
  } else if (leader_.load() || sent - last_renew_ >= round_) {  // a follower renews once a round too
    last_renew_ = sent;
    absl::Status s = store_.KeepAlive(lease_);
    if (s.ok()) {
      SetValidUntil(sent + options_.ttl - margin_);
    } else if (s.code() == absl::StatusCode::kNotFound) {
      lease_ = 0;  // granted again next round
      SetValidUntil(-absl::InfiniteDuration());
      StepDown("its lease expired");
      return;
    }
  }
  if (leader_.load() && clock_.Monotonic() >= ValidUntil()) {
    // The store has not confirmed the lease for ttl - margin: it may expire any moment.
    StepDown(absl::StrCat("its lease was not renewed for ", absl::FormatDuration(options_.ttl - margin_)));
  }
  auto kv = store_.Get(kLeaderKey);
  if (!kv.ok()) return;
  std::string leader;
  if (kv->has_value()) {
    leader = (*kv)->value;
    if (leader_.load() && (leader != options_.name || (*kv)->lease != lease_)) StepDown("another member leads");
  } else if (options_.campaign && lease_ != 0 && clock_.Monotonic() < ValidUntil()) {
    auto won = store_.Txn({{kLeaderKey, 0}}, {{Op::Type::kPut, kLeaderKey, options_.name, lease_}});
    if (won.ok()) {
      leader = options_.name;
      leader_.store(true);
      Log() << "mkcontroller: " << options_.name << " is the leader" << std::endl;
      Register();
      if (options_.on_elected) options_.on_elected();
    }
  }
  {
    absl::MutexLock lock(&mu_);
    leader_name_ = leader;
  }
  ReadMembers();
}

void Election::SetValidUntil(absl::Duration t) {
  absl::MutexLock lock(&mu_);
  valid_until_ = t;
}

absl::Duration Election::ValidUntil() const {
  absl::MutexLock lock(&mu_);
  return valid_until_;
}

bool Election::MemberValid() const {
  const absl::Duration now = clock_.Monotonic();
  absl::MutexLock lock(&mu_);
  return now < valid_until_ && now < members_read_ + options_.ttl - margin_;
}

std::string Election::Leader() const {
  absl::MutexLock lock(&mu_);
  return leader_name_;
}

std::vector<v1::ControllerMember> Election::Members() const {
  absl::MutexLock lock(&mu_);
  return members_;
}

}  // namespace mkfleet::reconciler
