#include "common/state_dir.h"

#include <fcntl.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace mkfleet {
namespace {

absl::Status Refuse(const std::string& path, absl::string_view why) {
  return absl::FailedPreconditionError(absl::StrCat(path, ": ", why));
}

// Ours, and writable by nobody else.
absl::Status CheckOwnership(const std::string& path, const struct stat& st) {
  if (st.st_uid != geteuid()) {
    return Refuse(path, absl::StrCat("owned by uid ", st.st_uid, ", not by this process (uid ", geteuid(),
                                     "); refusing to trust it"));
  }
  if ((st.st_mode & 022) != 0) {
    char mode[8];
    snprintf(mode, sizeof(mode), "%04o", static_cast<unsigned>(st.st_mode & 07777));
    return Refuse(path, absl::StrCat("writable by group or others (mode ", mode, "); chmod go-w it, or use a fresh one"));
  }
  return absl::OkStatus();
}

absl::Status MakeDirs(const std::string& dir) {
  if (dir.empty()) return absl::OkStatus();
  struct stat st {};
  if (lstat(dir.c_str(), &st) == 0) return absl::OkStatus();
  size_t slash = dir.rfind('/');
  if (slash != std::string::npos && slash > 0) {
    if (absl::Status s = MakeDirs(dir.substr(0, slash)); !s.ok()) return s;
  }
  if (mkdir(dir.c_str(), 0700) != 0 && errno != EEXIST) {
    return Refuse(dir, absl::StrCat("cannot create: ", strerror(errno)));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<StateLock>> Lock(const std::string& lock_path, const std::string& what) {
  int fd = open(lock_path.c_str(), O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC, 0600);
  if (fd < 0) return Refuse(lock_path, absl::StrCat("cannot open the lock file: ", strerror(errno)));
  auto lock = std::make_unique<StateLock>(fd);
  if (flock(fd, LOCK_EX | LOCK_NB) != 0) {
    int err = errno;
    char buf[32] = {0};
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    int pid = 0;
    bool known = n > 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(absl::string_view(buf, n)), &pid);
    if (err == EWOULDBLOCK) {
      return absl::FailedPreconditionError(absl::StrCat(what, " is in use by ", known ? "pid " : "another process",
                                                        known ? std::to_string(pid) : "", " (", lock_path, ")"));
    }
    return Refuse(lock_path, absl::StrCat("flock: ", strerror(err)));
  }
  std::string pid = absl::StrCat(getpid(), "\n");
  if (ftruncate(fd, 0) != 0 || pwrite(fd, pid.data(), pid.size(), 0) != static_cast<ssize_t>(pid.size())) {
    return Refuse(lock_path, absl::StrCat("cannot write the lock file: ", strerror(errno)));
  }
  return lock;
}

}  // namespace

StateLock::~StateLock() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<std::unique_ptr<StateLock>> OpenStateDir(const std::string& dir) {
  if (absl::Status s = MakeDirs(dir); !s.ok()) return s;
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) return Refuse(dir, strerror(errno));
  if (S_ISLNK(st.st_mode)) return Refuse(dir, "is a symbolic link; give the real directory");
  if (!S_ISDIR(st.st_mode)) return Refuse(dir, "is not a directory");
  if (absl::Status s = CheckOwnership(dir, st); !s.ok()) return s;
  return Lock(dir + "/lock", "state directory " + dir);
}

absl::StatusOr<std::unique_ptr<StateLock>> OpenStoreFile(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  struct stat st {};
  if (lstat(dir.c_str(), &st) != 0) return Refuse(dir, absl::StrCat("the store's directory: ", strerror(errno)));
  if ((st.st_mode & 002) != 0 && (st.st_mode & S_ISVTX) == 0) {
    return Refuse(dir, "the store's directory is writable by everyone (and not sticky); use a directory of its own");
  }
  if (lstat(path.c_str(), &st) == 0) {
    if (S_ISLNK(st.st_mode)) return Refuse(path, "is a symbolic link; give the real file");
    if (!S_ISREG(st.st_mode)) return Refuse(path, "is not a regular file");
    if (absl::Status s = CheckOwnership(path, st); !s.ok()) return s;
    if (st.st_size == 0) {
      return Refuse(path, "is empty: a store is never 0 bytes (truncated?); move it away to start a new store, or "
                          "restore it from a backup");
    }
  } else if (errno != ENOENT) {
    return Refuse(path, strerror(errno));
  }
  return Lock(path + ".lock", "store " + path);
}

}  // namespace mkfleet
