// ActionJournal: the agent's durable record of executed action ids and their results, so
// a re-sent action returns its recorded result instead of running again, also after a
// crash or SIGKILL; and of the newest fence (controller epoch, sequence) taken, so a
// delayed batch is refused after a restart too.
//
// File format (portable, checked): the 8-byte header "MKJRNL01", then records, each
// [u32 little-endian length][u32 little-endian CRC-32 of the body][body: a JournalRecord].
// Records are written at once (write(2): they survive the process) and fdatasync'd per
// record or per batch (Sync). On open, a torn last record (cut short, or the last one
// failing its checksum) is dropped (recovery_note() says how much); a bad record with more
// after it is corruption, and Open refuses (DataLoss, with the offset) rather than lose the
// records after it. A journal in the older format (host-endian lengths, no checksum) is
// read and rewritten; a file that is neither, or a symbolic link, is refused.
// It keeps at most `max_entries` results and `max_bytes` of them, and compacts (rewrite via
// common/file_util) when the file holds twice either. An append that fails (a full disk) is
// cut back, so the file never keeps half a record in its middle.
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
  struct Options {
    size_t max_entries = 100000;
    // The results kept are also bounded in bytes (the file then in twice that).
    size_t max_bytes = 64u << 20;
    // false: Sync() and sync writes skip fdatasync (tests and the simulation, whose
    // "machine" never loses power).
    bool sync = true;
  };
  // Opens (creating if needed) the journal at `path`.
  static absl::StatusOr<std::unique_ptr<ActionJournal>> Open(std::string path, Options options);
  static absl::StatusOr<std::unique_ptr<ActionJournal>> Open(std::string path, size_t max_entries = 100000) {
    Options o;
    o.max_entries = max_entries;
    return Open(std::move(path), o);
  }
  ~ActionJournal();

  std::optional<mkfleet::v1::ActionResult> Lookup(const std::string& id) const;
  // Appends (write(2): it survives the process being killed). With `sync`, also fdatasync
  // (it survives the machine). A result for an id already present replaces it.
  absl::Status Record(const mkfleet::v1::ActionResult& result, bool sync = true);
  // The newest fence taken (zero if none).
  mkfleet::v1::Fence fence() const;
  // Records `fence` as the newest taken (appended; made durable by the next Sync).
  absl::Status RecordFence(const mkfleet::v1::Fence& fence);
  // fdatasync of everything appended so far.
  absl::Status Sync();
  size_t size() const;
  // What opening dropped (a torn or corrupt tail), "" if nothing.
  std::string recovery_note() const;

 private:
  ActionJournal(std::string path, Options options) : path_(std::move(path)), options_(options) {}
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Compact() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Append(const mkfleet::v1::JournalRecord& record, bool sync) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Insert(const mkfleet::v1::ActionResult& r) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  const std::string path_;
  const Options options_;
  mutable absl::Mutex mu_;
  int fd_ ABSL_GUARDED_BY(mu_) = -1;
  size_t records_in_file_ ABSL_GUARDED_BY(mu_) = 0;
  size_t file_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // the file's length: a failed append is cut back to it
  size_t kept_bytes_ ABSL_GUARDED_BY(mu_) = 0;  // the framed size of the results kept
  absl::flat_hash_map<std::string, mkfleet::v1::ActionResult> results_ ABSL_GUARDED_BY(mu_);
  std::deque<std::string> order_ ABSL_GUARDED_BY(mu_);  // oldest first
  mkfleet::v1::Fence fence_ ABSL_GUARDED_BY(mu_);
  std::string recovery_note_ ABSL_GUARDED_BY(mu_);
};

// Whether `a` is older than `b` (epoch first, then sequence).
bool FenceBefore(const mkfleet::v1::Fence& a, const mkfleet::v1::Fence& b);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_ACTION_JOURNAL_H_
