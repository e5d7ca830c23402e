// BucketIndex: the planner's host index (placement_engine.cc).
#ifndef MKFLEET_PLANNER_HOST_INDEX_H_
#define MKFLEET_PLANNER_HOST_INDEX_H_

#include <algorithm>
#include <cstdint>
#include <utility>
#include <vector>

namespace mkfleet::planner::internal {

// Hosts by an integer key (usable CPUs, usable GiB), scanned from the largest key down.
// Buckets with swap-removal: O(1) updates, deterministic for the same sequence of calls.
class BucketIndex {
 public:
  explicit BucketIndex(size_t hosts) : where_(hosts, {-1, -1}) {}

  void Insert(int64_t key, int host) {
    if (key < 0) key = 0;
    if (static_cast<size_t>(key) >= buckets_.size()) buckets_.resize(key + 1);
    where_[host] = {key, static_cast<int64_t>(buckets_[key].size())};
    buckets_[key].push_back(host);
    top_ = std::max(top_, key);
    ++size_;
  }
  void Erase(int host) {
    auto [key, pos] = where_[host];
    if (key < 0) return;
    std::vector<int>& b = buckets_[key];
    int moved = b.back();
    b[pos] = moved;
    where_[moved].second = pos;
    b.pop_back();
    where_[host] = {-1, -1};
    --size_;
  }
  size_t size() const { return size_; }
  // Hosts with a key of at least `min`, largest first.
  template <typename F>
  void Scan(int64_t min, F&& visit) const {
    for (int64_t key = top_; key >= std::max<int64_t>(min, 0); --key) {
      for (int host : buckets_[key]) {
        if (visit(host)) return;
      }
    }
  }
  // How many hosts have a key below `min`.
  size_t CountBelow(int64_t min) const {
    size_t n = 0;
    for (int64_t key = 0; key < min && key < static_cast<int64_t>(buckets_.size()); ++key) n += buckets_[key].size();
    return n;
  }

 private:
  std::vector<std::vector<int>> buckets_;
  std::vector<std::pair<int64_t, int64_t>> where_;  // host -> (key, position), key -1 if absent
  int64_t top_ = 0;
  size_t size_ = 0;
};

}  // namespace mkfleet::planner::internal

#endif  // MKFLEET_PLANNER_HOST_INDEX_H_
