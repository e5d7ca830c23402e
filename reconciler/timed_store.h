// TimedStore: a Store that records each operation's latency and failures in the
// controller's metrics (common/metrics.h), around any backend:
//
//   mkfleet_store_operation_duration_seconds{op}   histogram: get, list, put, delete, txn,
//                                                  revision, events, compact, size, lease ops
//   mkfleet_store_operation_errors_total{op}       operations that failed (for txn: a failed
//                                                  compare is an error too)
//
// WaitForRevision is a wait, not an operation: not timed.
#ifndef MKFLEET_RECONCILER_TIMED_STORE_H_
#define MKFLEET_RECONCILER_TIMED_STORE_H_

#include <memory>

#include "reconciler/store.h"

namespace mkfleet::reconciler {

std::unique_ptr<Store> TimedStore(std::unique_ptr<Store> inner);

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_TIMED_STORE_H_
