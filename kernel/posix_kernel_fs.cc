#include <dirent.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "kernel/errno_status.h"
#include "kernel/kernel_fs.h"

namespace mkfleet::kernel {
namespace {

class PosixKernelFs final : public KernelFs {
 public:
  PosixKernelFs(std::string mount, std::string proc) : mount_(std::move(mount)), proc_(std::move(proc)) {}

  absl::StatusOr<std::string> Read(absl::string_view path) override { return ReadFile(Full(path)); }

  absl::Status Write(absl::string_view path, absl::string_view blob) override {
    std::string full = Full(path);
    int fd = open(full.c_str(), O_WRONLY | O_TRUNC | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", full));
    ssize_t n = write(fd, blob.data(), blob.size());
    int err = errno;
    close(fd);
    if (n < 0) return ErrnoStatus(err, absl::StrCat("write ", full));
    if (static_cast<size_t>(n) != blob.size()) {
      return ErrnoStatus(EIO, absl::StrCat("write ", full), absl::StrCat("short write of ", n, " bytes"));
    }
    return absl::OkStatus();
  }

  absl::StatusOr<std::vector<std::string>> List(absl::string_view dir) override {
    std::string full = Full(dir);
    DIR* d = opendir(full.c_str());
    if (d == nullptr) return ErrnoStatus(errno, absl::StrCat("opendir ", full));
    std::vector<std::string> names;
    while (dirent* e = readdir(d)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(std::move(name));
    }
    closedir(d);
    std::sort(names.begin(), names.end());
    return names;
  }

  absl::Status Rmdir(absl::string_view path) override {
    std::string full = Full(path);
    if (rmdir(full.c_str()) != 0) return ErrnoStatus(errno, absl::StrCat("rmdir ", full));
    return absl::OkStatus();
  }

  absl::StatusOr<std::string> ReadProc(absl::string_view name) override {
    return ReadFile(absl::StrCat(proc_, "/", name));
  }

 private:
  std::string Full(absl::string_view path) const { return absl::StrCat(mount_, "/", path); }

  static absl::StatusOr<std::string> ReadFile(const std::string& path) {
    int fd = open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return ErrnoStatus(errno, absl::StrCat("open ", path));
    std::string out;
    char buf[65536];
    while (true) {
      ssize_t n = read(fd, buf, sizeof(buf));
      if (n < 0) {
        int err = errno;
        close(fd);
        return ErrnoStatus(err, absl::StrCat("read ", path));
      }
      if (n == 0) break;
      out.append(buf, n);
    }
    close(fd);
    return out;
  }

  std::string mount_;
  std::string proc_;
};

}  // namespace

std::unique_ptr<KernelFs> NewPosixKernelFs(std::string mount, std::string proc) {
  return std::make_unique<PosixKernelFs>(std::move(mount), std::move(proc));
}

}  // namespace mkfleet::kernel
