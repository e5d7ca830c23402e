// Kernel images and initrds are opened only beneath the allowed directories (mkagent
// --image-dir, default /var/lib/mkfleet/kernels): resolved with openat2 and
// RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS (or, where the kernel lacks openat2, a walk that opens
// each component with O_NOFOLLOW), regular files only, at most `max_bytes`, and hashed from
// the very descriptor that is then given to kexec_file_load (no check-then-reopen). Every
// refusal, whether the file exists or not, is the same PermissionDenied, so a caller cannot
// probe the file system through the agent.
// Thread-safety: stateless functions; an ImageFile belongs to one thread.
#ifndef MKFLEET_KERNEL_IMAGE_FILES_H_
#define MKFLEET_KERNEL_IMAGE_FILES_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "common/clock.h"

namespace mkfleet::kernel {

inline constexpr char kDefaultImageDir[] = "/var/lib/mkfleet/kernels";

struct ImageDirs {
  std::vector<std::string> dirs;           // absolute; none: every file is refused
  uint64_t max_bytes = uint64_t{1} << 30;  // 1 GiB
  absl::Duration read_timeout = absl::Seconds(60);  // reading and hashing one file
};

// An open, checked and hashed image file. Move-only; closes its descriptor.
class ImageFile {
 public:
  ImageFile() = default;
  ImageFile(ImageFile&& o) noexcept { *this = std::move(o); }
  ImageFile& operator=(ImageFile&& o) noexcept;
  ~ImageFile();
  int fd() const { return fd_; }
  uint64_t size() const { return size_; }
  const std::string& sha256() const { return sha256_; }  // lower-case hex
  const std::string& head() const { return head_; }      // the first 0x210 bytes (format checks)

 private:
  friend absl::StatusOr<ImageFile> OpenImageFile(const ImageDirs&, absl::string_view, absl::string_view, Clock&);
  int fd_ = -1;
  uint64_t size_ = 0;
  std::string sha256_;
  std::string head_;
};

// Opens `path` (`what`: "kernel image", "initrd", for messages) as the header says.
// PermissionDenied for any refusal; DeadlineExceeded when reading it takes longer than
// read_timeout; Internal for a read error of an allowed file.
absl::StatusOr<ImageFile> OpenImageFile(const ImageDirs& dirs, absl::string_view path, absl::string_view what,
                                        Clock& clock);

// Explains a bzImage or anything else that is not an ELF vmlinux, from the file's head.
absl::Status CheckElfVmlinux(absl::string_view head, absl::string_view path);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_IMAGE_FILES_H_
