#include "agents/action_journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "common/file_util.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;

constexpr char kMagic[] = "MKJRNL01";
constexpr size_t kMagicSize = 8;
// A record's body is one action result: anything larger is corruption, not data.
constexpr uint32_t kMaxRecord = 16u << 20;

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", strerror(errno)));
}

std::string Frame(const v1::JournalRecord& r) {
  std::string body = r.SerializeAsString();
  std::string out;
  out.reserve(body.size() + 8);
  PutFixed32(&out, static_cast<uint32_t>(body.size()));
  PutFixed32(&out, Crc32(body));
  out += body;
  return out;
}

bool WriteAll(int fd, const std::string& data) {
  size_t off = 0;
  while (off < data.size()) {
    ssize_t w = write(fd, data.data() + off, data.size() - off);
    if (w < 0) {
      if (errno == EINTR) continue;
      return false;
    }
    off += w;
  }
  return true;
}

}  // namespace

bool FenceBefore(const v1::Fence& a, const v1::Fence& b) {
  return a.epoch() != b.epoch() ? a.epoch() < b.epoch() : a.sequence() < b.sequence();
}

absl::StatusOr<std::unique_ptr<ActionJournal>> ActionJournal::Open(std::string path, Options options) {
  auto j = std::unique_ptr<ActionJournal>(new ActionJournal(std::move(path), options));
  absl::MutexLock lock(&j->mu_);
  absl::Status s = j->Load();
  if (!s.ok()) return s;
  return j;
}

ActionJournal::~ActionJournal() {
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) close(fd_);
}

void ActionJournal::Insert(const v1::ActionResult& r) {
  auto it = results_.find(r.id());
  if (it != results_.end()) kept_bytes_ -= 8 + it->second.ByteSizeLong() + 2;
  auto [pos, inserted] = results_.insert_or_assign(r.id(), r);
  kept_bytes_ += 8 + r.ByteSizeLong() + 2;  // frame, and the JournalRecord's own tag and length (about)
  if (inserted) order_.push_back(r.id());
  while (results_.size() > options_.max_entries || (kept_bytes_ > options_.max_bytes && results_.size() > 1)) {
    auto old = results_.find(order_.front());
    kept_bytes_ -= 8 + old->second.ByteSizeLong() + 2;
    results_.erase(old);
    order_.pop_front();
  }
}

absl::Status ActionJournal::Load() {
  // Never through a link: the journal is ours, in our state directory.
  auto data = ReadFile(path_, /*follow_symlinks=*/false);
  if (!data.ok() && !absl::IsNotFound(data.status())) return data.status();
  bool rewrite = false;
  auto corrupt = [&](size_t off, absl::string_view what) {
    return absl::DataLossError(absl::StrCat(
        "journal ", path_, ": ", what, " at offset ", off, " of ", data->size(),
        " bytes, with more after it; refusing to start (later records would be lost and their actions run again). "
        "Move it away to start with an empty journal"));
  };
  if (data.ok() && !data->empty()) {
    const std::string& d = *data;
    size_t off = 0;
    if (d.size() >= kMagicSize && d.compare(0, kMagicSize, kMagic, kMagicSize) == 0) {
      off = kMagicSize;
      while (off + 8 <= d.size()) {
        uint32_t len = GetFixed32(d.data() + off), crc = GetFixed32(d.data() + off + 4);
        if (len > kMaxRecord) return corrupt(off, "corrupt record (impossible length)");
        if (off + 8 + len > d.size()) break;  // torn: the last write did not finish
        absl::string_view body(d.data() + off + 8, len);
        v1::JournalRecord r;
        if (Crc32(body) != crc || !r.ParseFromArray(body.data(), static_cast<int>(body.size()))) {
          // The last record damaged is a torn write; one with records after it is not.
          if (off + 8 + len == d.size()) break;
          return corrupt(off, "corrupt record");
        }
        if (r.has_result()) Insert(r.result());
        if (r.has_fence() && FenceBefore(fence_, r.fence())) fence_ = r.fence();
        ++records_in_file_;
        off += 8 + len;
      }
      if (off < d.size()) {
        recovery_note_ = absl::StrCat("journal ", path_, ": dropped ", d.size() - off,
                                      " bytes after the last whole record (a torn write)");
        rewrite = true;
      }
    } else {
      // The first format: a host-endian (x86: little-endian) length, then the result; the
      // whole file must read as that, or it is not a journal at all.
      while (off + 4 <= d.size()) {
        uint32_t len = GetFixed32(d.data() + off);
        v1::ActionResult r;
        if (len > kMaxRecord || off + 4 + len > d.size() ||
            !r.ParseFromArray(d.data() + off + 4, static_cast<int>(len)) || r.id().empty()) {
          return absl::DataLossError(absl::StrCat("journal ", path_, ": not a journal (no ", kMagic,
                                                  " header, and not the first format either); refusing to "
                                                  "overwrite it. Move it away to start with an empty journal"));
        }
        Insert(r);
        off += 4 + len;
      }
      rewrite = true;
    }
  }
  if (!data.ok() || data->empty()) {
    // A new journal: the header, durably.
    absl::Status s = WriteFileAtomically(path_, std::string(kMagic, kMagicSize), 0600, options_.sync);
    if (!s.ok()) return s;
    file_bytes_ = kMagicSize;
  } else if (rewrite) {
    absl::Status s = Compact();  // also opens fd_
    if (!s.ok()) return s;
    return absl::OkStatus();
  }
  fd_ = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  if (fd_ < 0) return Errno("open journal", path_);
  if (data.ok() && !data->empty()) file_bytes_ = data->size();
  return absl::OkStatus();
}

std::optional<v1::ActionResult> ActionJournal::Lookup(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = results_.find(id);
  if (it == results_.end()) return std::nullopt;
  return it->second;
}

size_t ActionJournal::size() const {
  absl::MutexLock lock(&mu_);
  return results_.size();
}

std::string ActionJournal::recovery_note() const {
  absl::MutexLock lock(&mu_);
  return recovery_note_;
}

v1::Fence ActionJournal::fence() const {
  absl::MutexLock lock(&mu_);
  return fence_;
}

absl::Status ActionJournal::Sync() {
  absl::MutexLock lock(&mu_);
  if (options_.sync && fdatasync(fd_) != 0) return Errno("sync journal", path_);
  return absl::OkStatus();
}

absl::Status ActionJournal::Append(const v1::JournalRecord& record, bool sync) {
  std::string frame = Frame(record);
  if (!WriteAll(fd_, frame) || (sync && options_.sync && fdatasync(fd_) != 0)) {
    absl::Status failed = Errno("append to journal", path_);
    // No half record may stay: a later append after it would make it corruption mid-file.
    if (ftruncate(fd_, static_cast<off_t>(file_bytes_)) != 0) {
      return absl::DataLossError(absl::StrCat(failed.message(), "; and cutting it back failed: ", strerror(errno)));
    }
    return failed;
  }
  file_bytes_ += frame.size();
  if (++records_in_file_ > 2 * options_.max_entries + 1 || file_bytes_ > 2 * options_.max_bytes + kMagicSize) {
    return Compact();
  }
  return absl::OkStatus();
}

absl::Status ActionJournal::Record(const v1::ActionResult& result, bool sync) {
  absl::MutexLock lock(&mu_);
  v1::JournalRecord r;
  *r.mutable_result() = result;
  Insert(result);
  return Append(r, sync);
}

absl::Status ActionJournal::RecordFence(const v1::Fence& fence) {
  absl::MutexLock lock(&mu_);
  if (!FenceBefore(fence_, fence)) return absl::OkStatus();
  fence_ = fence;
  v1::JournalRecord r;
  *r.mutable_fence() = fence;
  return Append(r, /*sync=*/false);
}

absl::Status ActionJournal::Compact() {
  std::string data(kMagic, kMagicSize);
  for (const std::string& id : order_) {
    v1::JournalRecord r;
    *r.mutable_result() = results_.at(id);
    data += Frame(r);
  }
  if (fence_.epoch() != 0 || fence_.sequence() != 0) {
    v1::JournalRecord r;
    *r.mutable_fence() = fence_;
    data += Frame(r);
  }
  absl::Status s = WriteFileAtomically(path_, data, 0600, options_.sync);
  if (!s.ok()) return s;
  if (fd_ >= 0) close(fd_);
  fd_ = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC | O_NOFOLLOW);
  if (fd_ < 0) return Errno("open journal", path_);
  records_in_file_ = order_.size() + 1;
  file_bytes_ = data.size();
  return absl::OkStatus();
}

}  // namespace mkfleet::agents
