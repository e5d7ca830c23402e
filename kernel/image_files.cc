#include "kernel/image_files.h"

#include <fcntl.h>
#include <linux/openat2.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace mkfleet::kernel {
namespace {

class Fd {
 public:
  explicit Fd(int fd = -1) : fd_(fd) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd_ >= 0) close(fd_);
  }
  int get() const { return fd_; }
  int release() {
    int f = fd_;
    fd_ = -1;
    return f;
  }
  void reset(int fd) {
    if (fd_ >= 0) close(fd_);
    fd_ = fd;
  }

 private:
  int fd_;
};

constexpr int kOpenFlags = O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK;

// Opens `rel` beneath the directory `dir_fd`, following no symbolic link at all.
int OpenBeneath(int dir_fd, const std::string& rel) {
  open_how how{};
  how.flags = kOpenFlags;
  how.resolve = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS;
  long fd = syscall(SYS_openat2, dir_fd, rel.c_str(), &how, sizeof(how));
  if (fd >= 0 || errno != ENOSYS) return static_cast<int>(fd);
  // No openat2 (Linux < 5.6): a walk, each component opened with O_NOFOLLOW.
  std::vector<std::string> parts = absl::StrSplit(rel, '/', absl::SkipEmpty());
  if (parts.empty()) return -1;
  Fd at(dup(dir_fd));
  for (size_t i = 0; i + 1 < parts.size(); ++i) {
    if (parts[i] == ".." || parts[i] == ".") return -1;
    int next = openat(at.get(), parts[i].c_str(), O_PATH | O_DIRECTORY | O_NOFOLLOW | O_CLOEXEC);
    if (next < 0) return -1;
    at.reset(next);
  }
  if (parts.back() == ".." || parts.back() == ".") return -1;
  return openat(at.get(), parts.back().c_str(), kOpenFlags | O_NOFOLLOW);
}

std::string Hex(const unsigned char* d, unsigned int n) {
  static const char* k = "0123456789abcdef";
  std::string out;
  for (unsigned int i = 0; i < n; ++i) {
    out.push_back(k[d[i] >> 4]);
    out.push_back(k[d[i] & 15]);
  }
  return out;
}

}  // namespace

ImageFile& ImageFile::operator=(ImageFile&& o) noexcept {
  if (this != &o) {
    if (fd_ >= 0) close(fd_);
    fd_ = o.fd_;
    size_ = o.size_;
    sha256_ = std::move(o.sha256_);
    head_ = std::move(o.head_);
    o.fd_ = -1;
  }
  return *this;
}

ImageFile::~ImageFile() {
  if (fd_ >= 0) close(fd_);
}

absl::StatusOr<ImageFile> OpenImageFile(const ImageDirs& dirs, absl::string_view path, absl::string_view what,
                                        Clock& clock) {
  // One answer for every refusal: nothing tells an absent file from a forbidden one.
  auto refused = [&] {
    return absl::PermissionDeniedError(absl::StrCat(
        what, " ", path, ": not an allowed file (a regular file of at most ", dirs.max_bytes,
        " bytes under the image directories ", dirs.dirs.empty() ? "(none)" : absl::StrJoin(dirs.dirs, ", "),
        ", reached without symbolic links)"));
  };
  Fd file;
  for (const std::string& dir : dirs.dirs) {
    std::string prefix = absl::EndsWith(dir, "/") ? dir : dir + "/";
    if (!absl::StartsWith(path, prefix) || path.size() == prefix.size()) continue;
    Fd dir_fd(open(dir.c_str(), O_PATH | O_DIRECTORY | O_CLOEXEC));
    if (dir_fd.get() < 0) continue;
    file.reset(OpenBeneath(dir_fd.get(), std::string(path.substr(prefix.size()))));
    if (file.get() >= 0) break;
  }
  if (file.get() < 0) return refused();
  struct stat st {};
  if (fstat(file.get(), &st) != 0 || !S_ISREG(st.st_mode) || static_cast<uint64_t>(st.st_size) > dirs.max_bytes) {
    return refused();
  }
  // Back to blocking reads (O_NONBLOCK only kept a FIFO from blocking the open).
  fcntl(file.get(), F_SETFL, fcntl(file.get(), F_GETFL) & ~O_NONBLOCK);

  ImageFile out;
  out.size_ = static_cast<uint64_t>(st.st_size);
  EVP_MD_CTX* ctx = EVP_MD_CTX_new();
  EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr);
  const absl::Time deadline = clock.Now() + dirs.read_timeout;
  std::string buf(1 << 16, '\0');
  uint64_t offset = 0;
  absl::Status failed;
  while (offset < dirs.max_bytes + 1) {
    ssize_t n = pread(file.get(), buf.data(), buf.size(), static_cast<off_t>(offset));
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      failed = absl::InternalError(absl::StrCat(what, " ", path, ": read: ", strerror(errno)));
      break;
    }
    if (n == 0) break;
    if (out.head_.size() < 0x210) out.head_.append(buf.data(), std::min<size_t>(n, 0x210 - out.head_.size()));
    EVP_DigestUpdate(ctx, buf.data(), static_cast<size_t>(n));
    offset += static_cast<uint64_t>(n);
    if ((offset & ((16u << 20) - 1)) < static_cast<uint64_t>(n) && clock.Now() > deadline) {
      failed = absl::DeadlineExceededError(absl::StrCat(what, " ", path, ": reading it took longer than ",
                                                        absl::FormatDuration(dirs.read_timeout)));
      break;
    }
  }
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  EVP_DigestFinal_ex(ctx, digest, &len);
  EVP_MD_CTX_free(ctx);
  if (!failed.ok()) return failed;
  if (offset > dirs.max_bytes) return refused();  // it grew while being read
  out.sha256_ = Hex(digest, len);
  out.fd_ = file.release();
  return out;
}

absl::Status CheckElfVmlinux(absl::string_view head, absl::string_view path) {
  if (absl::StartsWith(head, "\x7f" "ELF")) return absl::OkStatus();
  if (head.size() >= 0x206 && head.substr(0x202, 4) == "HdrS") {
    return absl::InvalidArgumentError(absl::StrCat("kernel image ", path,
                                                   " is a bzImage; the multikernel loader takes an ELF vmlinux "
                                                   "(unpack it, e.g. with extract-vmlinux)"));
  }
  return absl::InvalidArgumentError(absl::StrCat("kernel image ", path, " is not an ELF vmlinux"));
}

}  // namespace mkfleet::kernel
