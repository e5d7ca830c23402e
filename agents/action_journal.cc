#include "agents/action_journal.h"

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "absl/strings/str_cat.h"

namespace mkfleet::agents {
namespace {

absl::Status Errno(absl::string_view what, const std::string& path) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", strerror(errno)));
}

// Record framing: 4-byte little-endian length, then the serialized ActionResult.
std::string Frame(const mkfleet::v1::ActionResult& r) {
  std::string body = r.SerializeAsString();
  uint32_t n = body.size();
  std::string out(reinterpret_cast<const char*>(&n), 4);
  return out + body;
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

absl::StatusOr<std::unique_ptr<ActionJournal>> ActionJournal::Open(std::string path, size_t max_entries) {
  auto j = std::unique_ptr<ActionJournal>(new ActionJournal(std::move(path), max_entries));
  absl::MutexLock lock(&j->mu_);
  absl::Status s = j->Load();
  if (!s.ok()) return s;
  return j;
}

ActionJournal::~ActionJournal() {
  absl::MutexLock lock(&mu_);
  if (fd_ >= 0) close(fd_);
}

void ActionJournal::Insert(const mkfleet::v1::ActionResult& r) {
  auto [it, inserted] = results_.insert_or_assign(r.id(), r);
  if (inserted) order_.push_back(r.id());
  while (results_.size() > max_entries_) {
    results_.erase(order_.front());
    order_.pop_front();
  }
}

absl::Status ActionJournal::Load() {
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  size_t good_end = 0;
  if (fd >= 0) {
    std::string data;
    char buf[1 << 16];
    ssize_t n;
    while ((n = read(fd, buf, sizeof(buf))) > 0) data.append(buf, n);
    close(fd);
    size_t off = 0;
    while (off + 4 <= data.size()) {
      uint32_t len;
      memcpy(&len, data.data() + off, 4);
      if (off + 4 + len > data.size()) break;  // torn last record
      mkfleet::v1::ActionResult r;
      if (!r.ParseFromArray(data.data() + off + 4, len)) break;
      Insert(r);
      ++records_in_file_;
      off += 4 + len;
    }
    good_end = off;
  } else if (errno != ENOENT) {
    return Errno("open journal", path_);
  }
  fd_ = open(path_.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
  if (fd_ < 0) return Errno("open journal", path_);
  // Drop a torn tail so new records follow the last good one.
  if (ftruncate(fd_, good_end) != 0 || lseek(fd_, good_end, SEEK_SET) < 0) return Errno("truncate journal", path_);
  return absl::OkStatus();
}

std::optional<mkfleet::v1::ActionResult> ActionJournal::Lookup(const std::string& id) const {
  absl::MutexLock lock(&mu_);
  auto it = results_.find(id);
  if (it == results_.end()) return std::nullopt;
  return it->second;
}

size_t ActionJournal::size() const {
  absl::MutexLock lock(&mu_);
  return results_.size();
}

absl::Status ActionJournal::Sync() {
  absl::MutexLock lock(&mu_);
  if (fdatasync(fd_) != 0) return Errno("sync journal", path_);
  return absl::OkStatus();
}

absl::Status ActionJournal::Record(const mkfleet::v1::ActionResult& result, bool sync) {
  absl::MutexLock lock(&mu_);
  if (!WriteAll(fd_, Frame(result)) || (sync && fdatasync(fd_) != 0)) return Errno("append to journal", path_);
  Insert(result);
  if (++records_in_file_ > 2 * max_entries_) return Compact();
  return absl::OkStatus();
}

absl::Status ActionJournal::Compact() {
  std::string tmp = path_ + ".tmp";
  int fd = open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0) return Errno("open", tmp);
  std::string data;
  for (const std::string& id : order_) data += Frame(results_.at(id));
  bool ok = WriteAll(fd, data) && fsync(fd) == 0;
  close(fd);
  if (!ok) return Errno("write", tmp);
  if (rename(tmp.c_str(), path_.c_str()) != 0) return Errno("rename", tmp);
  close(fd_);
  fd_ = open(path_.c_str(), O_WRONLY | O_APPEND | O_CLOEXEC);
  if (fd_ < 0) return Errno("open journal", path_);
  records_in_file_ = order_.size();
  return absl::OkStatus();
}

}  // namespace mkfleet::agents
