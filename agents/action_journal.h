// ActionJournal: the agent's durable record of executed action ids and their results, so
// a re-sent action returns its recorded result instead of running again, also after a
// crash or SIGKILL. An append-only file of length-prefixed ActionResult records, written
// at once and fsync'd (per record, or per batch with Sync); a torn last record (crash
// mid-write) is ignored on open. It keeps at
// most `max_entries` results and compacts (rewrite to a temp file + fsync + rename) when
// the file holds twice that many.
// Thread-safety: all methods are safe to call concurrently.
#ifndef MKFLEET_AGENTS_ACTION_JOURNAL_H_
#define MKFLEET_AGENTS_ACTION_JOURNAL_H_

#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mkfleet/v1/agent.pb.h"

namespace mkfleet::agents {

class ActionJournal {
 public:
  // Opens (creating if needed) the journal at `path`.
  static absl::StatusOr<std::unique_ptr<ActionJournal>> Open(std::string path, size_t max_entries = 100000);
  ~ActionJournal();

  std::optional<mkfleet::v1::ActionResult> Lookup(const std::string& id) const;
  // Appends (write(2): it survives the process being killed). With `sync`, also fdatasync
  // (it survives the machine). A result for an id already present replaces it.
  absl::Status Record(const mkfleet::v1::ActionResult& result, bool sync = true);
  // fdatasync of everything appended so far.
  absl::Status Sync();
  size_t size() const;

 private:
  ActionJournal(std::string path, size_t max_entries) : path_(std::move(path)), max_entries_(max_entries) {}
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Compact() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Insert(const mkfleet::v1::ActionResult& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const size_t max_entries_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  size_t records_in_file_ ABSL_GUARDED_BY(mu_) = 0;
  absl::flat_hash_map<std::string, mkfleet::v1::ActionResult> results_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // oldest first
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_ACTION_JOURNAL_H_
