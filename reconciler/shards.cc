#include "reconciler/shards.h"

#include <algorithm>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "common/fnv.h"

namespace mkfleet::reconciler {
namespace {

// FNV-1a spreads similar names (host-0001, host-0002) poorly over the high bits; a
// splitmix64 finalizer mixes every input bit into every output bit.
uint64_t Mix(uint64_t x) {
  x ^= x >> 30;
  x *= 0xbf58476d1ce4e5b9ull;
  x ^= x >> 27;
  x *= 0x94d049bb133111ebull;
  x ^= x >> 31;
  return x;
}

uint64_t Point(const std::string& s) { return Mix(Fnv1a().Add(s).value()); }

}  // namespace

int ShardOf(const std::string& host, int shards) {
  return shards <= 1 ? 0 : static_cast<int>(Point(host) % static_cast<uint64_t>(shards));
}

std::vector<std::string> AssignShards(const std::vector<std::string>& members, int shards) {
  std::vector<std::string> owner(std::max(shards, 1));
  if (members.empty()) return owner;
  std::vector<std::pair<uint64_t, const std::string*>> ring;
  std::set<std::string> unique(members.begin(), members.end());
  for (const std::string& m : unique) {
    for (int i = 0; i < ShardMap::kVirtualNodes; ++i) ring.emplace_back(Point(absl::StrCat(m, "#", i)), &m);
  }
  // Ties (never seen in practice) go to the smaller name, the same in every process.
  std::sort(ring.begin(), ring.end(),
            [](const auto& a, const auto& b) { return a.first != b.first ? a.first < b.first : *a.second < *b.second; });
  for (int s = 0; s < static_cast<int>(owner.size()); ++s) {
    uint64_t p = Point(absl::StrCat("shard#", s));
    auto it = std::lower_bound(ring.begin(), ring.end(), p, [](const auto& e, uint64_t v) { return e.first < v; });
    if (it == ring.end()) it = ring.begin();
    owner[s] = *it->second;
  }
  return owner;
}

ShardMap::ShardMap(std::string self, int shards, Clock& clock, absl::Duration handover, std::function<bool()> valid)
    : self_(std::move(self)),
      shards_(std::max(shards, 1)),
      clock_(clock),
      handover_(handover),
      valid_(std::move(valid)),
      owner_(shards_),
      usable_from_(shards_, absl::ZeroDuration()) {}

bool ShardMap::SetMembers(const std::vector<std::string>& members, int64_t own_lease) {
  std::vector<std::string> owner = AssignShards(members, shards_);
  const std::set<std::string> alive(members.begin(), members.end());
  const absl::Duration now = clock_.Monotonic();
  absl::MutexLock lock(&mu_);
  const bool lapsed = own_lease != 0 && own_lease_ != 0 && own_lease != own_lease_;
  if (own_lease != 0) own_lease_ = own_lease;
  bool changed = false;
  for (int s = 0; s < shards_; ++s) {
    const bool mine = owner[s] == self_;
    if (owner[s] != owner_[s] && (mine || owner_[s] == self_)) changed = true;
    if (!mine || (owner_[s] == self_ && !lapsed)) continue;
    // Gained (or kept across a lapse of its own registration). From a member still there,
    // from whoever of the others had it on this member's first list, or from anyone while
    // its registration lapsed: that one stops when it sees this list (or its list gets too
    // old for it to act), so wait. From a member that is gone: at once.
    const bool from_live =
        (lapsed || owner_[s].empty()) ? alive.size() > 1 : alive.count(owner_[s]) > 0;
    usable_from_[s] = from_live ? now + handover_ : now;
    changed |= lapsed;
  }
  owner_ = std::move(owner);
  members_ = std::vector<std::string>(alive.begin(), alive.end());
  return changed;
}

bool ShardMap::SetMembersFrom(const std::vector<mkfleet::v1::ControllerMember>& members) {
  std::vector<std::string> names;
  int64_t own_lease = 0;
  for (const auto& m : members) {
    names.push_back(m.name());
    if (m.name() == self_) own_lease = m.lease();
  }
  return SetMembers(names, own_lease);
}

bool ShardMap::Assigned(const std::string& host) const {
  absl::MutexLock lock(&mu_);
  return owner_[ShardOf(host, shards_)] == self_;
}

bool ShardMap::Owns(const std::string& host) const {
  if (valid_ && !valid_()) return false;
  const int s = ShardOf(host, shards_);
  const absl::Duration now = clock_.Monotonic();
  absl::MutexLock lock(&mu_);
  return owner_[s] == self_ && now >= usable_from_[s];
}

std::string ShardMap::OwnerOf(const std::string& host) const {
  absl::MutexLock lock(&mu_);
  return owner_[ShardOf(host, shards_)];
}

std::vector<std::string> ShardMap::members() const {
  absl::MutexLock lock(&mu_);
  return members_;
}

}  // namespace mkfleet::reconciler
