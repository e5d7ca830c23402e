// CutStore: one member's view of a shared store that can be cut off (every call that reads
// or writes answers Unavailable), as a controller partitioned from etcd sees it. For the
// election's tests and the fleet simulation.
#ifndef MKFLEET_RECONCILER_TESTING_CUT_STORE_H_
#define MKFLEET_RECONCILER_TESTING_CUT_STORE_H_

#include <string>
#include <vector>

#include "reconciler/testing/forwarding_store.h"

namespace mkfleet::reconciler {

class CutStore : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  bool cut = false;

  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) override {
    if (cut) return Cut();
    return ForwardingStore::Get(key);
  }
  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) override {
    if (cut) return Cut();
    return ForwardingStore::List(prefix);
  }
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease) override {
    if (cut) return Cut();
    return ForwardingStore::Put(key, value, lease);
  }
  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& c, const std::vector<Op>& o) override {
    if (cut) return Cut();
    return ForwardingStore::Txn(c, o);
  }
  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    if (cut) return Cut();
    return ForwardingStore::GrantLease(ttl);
  }
  absl::Status KeepAlive(int64_t lease) override {
    if (cut) return Cut();
    return ForwardingStore::KeepAlive(lease);
  }
  absl::StatusOr<int> ExpireLeases() override {
    if (cut) return Cut();
    return ForwardingStore::ExpireLeases();
  }

 private:
  static absl::Status Cut() { return absl::UnavailableError("store: cut off"); }
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_TESTING_CUT_STORE_H_
