// AuditLog: every mutating request the controller receives (apply, delete), accepted or
// refused, with who asked, what for, the result and when, kept in the store under
// /audit/<sequence>. Bounded like the events, except that nothing younger than `retain`
// is ever evicted: past `max_records` the oldest go only once they are older than that.
// Thread-safety: safe to call concurrently.
#ifndef MKFLEET_RECONCILER_AUDIT_LOG_H_
#define MKFLEET_RECONCILER_AUDIT_LOG_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "manifests/loader.h"
#include "mkfleet/v1/controller.pb.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

inline constexpr char kAuditPrefix[] = "/audit/";

struct AuditOptions {
  size_t max_records = 10000;
  absl::Duration retain = absl::Hours(24 * 30);
};

// What an audit record keeps of an apply's objects: "Kind/name" of the first hundred (a
// record is not a copy of the request), then "... N more".
template <typename Objects>
void AddAuditObjects(const Objects& objects, mkfleet::v1::AuditRecord* record) {
  int n = 0;
  for (const mkfleet::v1::Object& o : objects) {
    if (n++ == 100) {
      record->add_objects(absl::StrCat("... ", objects.size() - 100, " more"));
      return;
    }
    record->add_objects(absl::StrCat(manifests::KindOf(o), "/", manifests::MetadataOf(o).name().substr(0, 253)));
  }
}

class AuditLog {
 public:
  // Reads the stored records to continue their sequence.
  static absl::StatusOr<std::unique_ptr<AuditLog>> Open(Store& store, Clock& clock, AuditOptions options = {});

  // Stamps `record` with the time, stores it and evicts what the bound allows.
  absl::Status Record(mkfleet::v1::AuditRecord record);
  // Stored records at or after `since_unix_ms`, oldest first; the newest `limit` (0: all).
  absl::StatusOr<std::vector<mkfleet::v1::AuditRecord>> List(int64_t since_unix_ms = 0, size_t limit = 0);

 private:
  AuditLog(Store& store, Clock& clock, AuditOptions options) : store_(store), clock_(clock), options_(options) {}
  Store& store_;
  Clock& clock_;
  const AuditOptions options_;
  absl::Mutex mu_;
  uint64_t next_ ABSL_GUARDED_BY(mu_) = 1;
  std::deque<std::pair<std::string, int64_t>> stored_ ABSL_GUARDED_BY(mu_);  // (key, time), oldest first
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_AUDIT_LOG_H_
