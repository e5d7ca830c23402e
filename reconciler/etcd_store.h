// OpenEtcdStore: the Store interface on etcd's v3 gRPC API (KV, Watch, Lease, Maintenance),
// for control planes that outlive one machine (several mkcontrollers on one etcd cluster).
//
// Mapping (store.h's contract, checked by the same contract tests as SQLite):
// - keys live under `prefix` in etcd (so several fleets can share one cluster); revisions are
//   etcd's (global to the cluster, so they also move for other prefixes' writes);
// - Txn is one etcd Txn: each Compare is `mod_revision == N` (0: absent); when it fails, the
//   failure branch reads the compared keys so the error names the first that moved. A key
//   written twice in one transaction keeps its last op (etcd refuses duplicates);
// - a transaction without compares larger than `max_txn_ops` (etcd's --max-txn-ops, default
//   128) or about 1 MiB is written in chunks, each atomic on its own (statuses, events, audit:
//   the writers that need no compare-and-swap); one with compares must fit, or it fails
//   naming etcd's flag to raise (an apply is all-or-nothing);
// - EventsSince replays with a Watch from `after + 1` (OutOfRange once etcd compacted it);
//   WaitForRevision follows one background Watch; Compact(r) compacts etcd at r + 1 (so
//   history up to and including r is gone, as on SQLite);
// - leases are etcd's (it expires them itself: ExpireLeases returns 0);
// - SizeBytes is etcd's db size in use (the member answering).
// Endpoints are tried in order; a call that finds one unavailable moves to the next.
// Thread-safety: safe to call concurrently.
#ifndef MKFLEET_RECONCILER_ETCD_STORE_H_
#define MKFLEET_RECONCILER_ETCD_STORE_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

struct EtcdStoreOptions {
  std::vector<std::string> endpoints;  // "http://127.0.0.1:2379" (http only for now)
  std::string prefix;                  // prepended to every key; "" for the whole keyspace
  int max_txn_ops = 128;               // etcd's --max-txn-ops
  int64_t max_txn_bytes = 1 << 20;     // below etcd's --max-request-bytes (1.5 MiB)
  absl::Duration call_timeout = absl::Seconds(10);
};

// Parses "etcd:http://a:2379[,http://b:2379...]" into endpoints (InvalidArgument naming the
// bad part).
absl::StatusOr<std::vector<std::string>> ParseEtcdEndpoints(const std::string& spec);

// Connects (checking the cluster answers within the call timeout).
absl::StatusOr<std::unique_ptr<Store>> OpenEtcdStore(const EtcdStoreOptions& options);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_ETCD_STORE_H_
