// ForwardingStore: a Store that passes every call to another one, for tests that change one
// method (refuse transactions, count reads) and keep the rest real.
#ifndef MKFLEET_RECONCILER_TESTING_FORWARDING_STORE_H_
#define MKFLEET_RECONCILER_TESTING_FORWARDING_STORE_H_

#include <string>
#include <vector>

#include "reconciler/store.h"

namespace mkfleet::reconciler {

class ForwardingStore : public Store {
 public:
  explicit ForwardingStore(Store& inner) : inner_(inner) {}
  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) override { return inner_.Get(key); }
  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) override { return inner_.List(prefix); }
  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease) override {
    return inner_.Put(key, value, lease);
  }
  absl::StatusOr<int64_t> Delete(const std::string& key) override { return inner_.Delete(key); }
  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops) override {
    return inner_.Txn(compares, ops);
  }
  absl::StatusOr<int64_t> Revision() override { return inner_.Revision(); }
  absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) override {
    return inner_.EventsSince(after, prefix);
  }
  absl::StatusOr<int64_t> WaitForRevision(int64_t after, absl::Duration timeout) override {
    return inner_.WaitForRevision(after, timeout);
  }
  absl::Status Compact(int64_t revision) override { return inner_.Compact(revision); }
  absl::StatusOr<int64_t> SizeBytes() override { return inner_.SizeBytes(); }
  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override { return inner_.GrantLease(ttl); }
  absl::Status KeepAlive(int64_t lease) override { return inner_.KeepAlive(lease); }
  absl::Status RevokeLease(int64_t lease) override { return inner_.RevokeLease(lease); }
  absl::StatusOr<int> ExpireLeases() override { return inner_.ExpireLeases(); }

 private:
  Store& inner_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_TESTING_FORWARDING_STORE_H_
