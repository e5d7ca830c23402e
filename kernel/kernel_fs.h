// KernelFs: the multikernel filesystem (/sys/fs/multikernel) and the /proc files the
// driver reads. Paths are relative to the mount: "device_tree", "overlays/new",
// "instances/web-1/status". Errors carry the kernel's errno (errno_status.h).
//
// NewPosixKernelFs is the real one; the emulated kernel (emulator/) implements it too.
// Thread-safety: implementations are safe to call concurrently.
#ifndef MKFLEET_KERNEL_KERNEL_FS_H_
#define MKFLEET_KERNEL_KERNEL_FS_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kernel {

class KernelFs {
 public:
  virtual ~KernelFs() = default;
  virtual absl::StatusOr<std::string> Read(absl::string_view path) = 0;
  // One write(2) of the whole blob, as the kernel requires.
  virtual absl::Status Write(absl::string_view path, absl::string_view blob) = 0;
  // Entry names of a directory, sorted.
  virtual absl::StatusOr<std::vector<std::string>> List(absl::string_view dir) = 0;
  virtual absl::Status Rmdir(absl::string_view path) = 0;
  // /proc/<name>: "iomem", "kimage", "cpuinfo".
  virtual absl::StatusOr<std::string> ReadProc(absl::string_view name) = 0;
};

// The real filesystem under `mount` (normally /sys/fs/multikernel) and `proc` (/proc).
std::unique_ptr<KernelFs> NewPosixKernelFs(std::string mount = "/sys/fs/multikernel",
                                           std::string proc = "/proc");

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_KERNEL_FS_H_
