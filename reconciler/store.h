// Store: the controller's durable key-value store with etcd-like semantics, so an etcd
// backend can drop in later: every write gets the next global revision; writes can be
// conditional on a key's revision (compare-and-swap) and grouped in atomic transactions;
// changes are replayable in revision order from any revision still in the history
// (watch); keys can hang off leases that expire.
//
// OpenSqliteStore is the embedded default: one SQLite file in WAL mode; OpenEtcdStore
// (etcd_store.h) the same contract on an etcd cluster.
// Thread-safety: implementations are safe to call concurrently.
#ifndef MKFLEET_RECONCILER_STORE_H_
#define MKFLEET_RECONCILER_STORE_H_

#include <cstdint>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace mkfleet::reconciler {

struct KeyValue {
  std::string key;
  std::string value;
  int64_t create_revision = 0;
  int64_t mod_revision = 0;
  int64_t lease = 0;
};

struct Event {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  int64_t revision = 0;
  std::string key;
  std::string value;  // empty for a delete
};

// Transactions: if every compare holds, every op is applied at one new revision;
// otherwise nothing is, and Aborted names the first failing compare. A transaction without
// ops writes nothing and takes no revision; deleting an absent key records no event.
struct Compare {
  std::string key;
  int64_t mod_revision = 0;  // the key's revision must equal this (0: the key must not exist)
};

struct Op {
  enum class Type { kPut, kDelete };
  Type type = Type::kPut;
  std::string key;
  std::string value;
  int64_t lease = 0;
};

// `ops` with each key once: a key written twice in one transaction keeps its last op, in
// the place of its first (the same end state; etcd refuses a key twice). Every Store's Txn
// applies this first, so all backends record the same events.
std::vector<Op> LastOpPerKey(const std::vector<Op>& ops);

// The end of the range of keys starting with `prefix` (etcd's "prefix + 1"); "\0" (every key
// from the start) for an empty prefix or one of only 0xff bytes.
std::string PrefixEnd(const std::string& prefix);

class Store {
 public:
  virtual ~Store() = default;

  virtual absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) = 0;
  // Keys starting with `prefix`, in key order.
  virtual absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) = 0;
  // Unconditional put; returns the new revision.
  virtual absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease = 0) = 0;
  // Unconditional delete; returns the new revision (NotFound if the key is absent).
  virtual absl::StatusOr<int64_t> Delete(const std::string& key) = 0;
  virtual absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops) = 0;

  // The current revision (0 for an empty store).
  virtual absl::StatusOr<int64_t> Revision() = 0;
  // Changes after revision `after` for keys starting with `prefix`, in revision order.
  // OutOfRange if history before `after` was compacted (start again from a List).
  virtual absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) = 0;
  // Blocks until the revision exceeds `after` or `timeout` passes; returns the revision.
  virtual absl::StatusOr<int64_t> WaitForRevision(int64_t after, absl::Duration timeout) = 0;
  // Drops history up to and including `revision` and gives the space back to the file
  // system (SQLite: incremental vacuum), so a store under steady writes stays bounded.
  virtual absl::Status Compact(int64_t revision) = 0;
  // The store's size on disk now (SQLite: database pages plus the write-ahead log).
  virtual absl::StatusOr<int64_t> SizeBytes() = 0;

  virtual absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) = 0;
  // NotFound for an unknown or expired lease.
  virtual absl::Status KeepAlive(int64_t lease) = 0;
  // Ends `lease` now: its keys are deleted (one revision). NotFound for an unknown one.
  virtual absl::Status RevokeLease(int64_t lease) = 0;
  // Deletes the keys of every expired lease (one revision per lease); returns how many
  // leases expired.
  virtual absl::StatusOr<int> ExpireLeases() = 0;
};

// Opens (creating if needed) the SQLite store at `path`.
absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, Clock& clock);

// For tests: the virtual-machine steps of this thread's last List or EventsSince of a
// SQLite store (how many rows it visited, not only those it returned).
int64_t SqliteLastReadStepsForTest();

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_STORE_H_
