// Syscalls: the two system calls of the multikernel interface (kernel-abi.md section 4):
// kexec_file_load (load/unload an instance's image) and reboot (start/halt an instance).
// Errors carry the kernel's errno (errno_status.h).
//
// NewLinuxSyscalls is the real one (x86_64 and arm64 numbers); the emulated kernel
// implements it too. Thread-safety: implementations are safe to call concurrently.
#ifndef MKFLEET_KERNEL_SYSCALLS_H_
#define MKFLEET_KERNEL_SYSCALLS_H_

#include <cstdint>
#include <memory>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kernel {

inline constexpr unsigned long kKexecFileUnload = 0x1;
inline constexpr unsigned long kKexecFileNoInitramfs = 0x4;
inline constexpr unsigned long kKexecMultikernel = 0x10;
inline constexpr unsigned long kKexecIdMask = 0xFFE0;

// flags for kexec_file_load of instance `id` (1..511).
inline unsigned long KexecFlags(uint32_t id, bool unload, bool has_initrd) {
  unsigned long f = kKexecMultikernel | ((static_cast<unsigned long>(id) << 5) & kKexecIdMask);
  if (unload) f |= kKexecFileUnload;
  if (!unload && !has_initrd) f |= kKexecFileNoInitramfs;
  return f;
}

inline constexpr uint32_t kRebootMagic1 = 0xfee1dead;
inline constexpr uint32_t kRebootMagic2 = 672274793;
inline constexpr uint32_t kRebootStart = 0x4D4B4C49;       // "MKLI"
inline constexpr uint32_t kRebootHalt = 0x4D4B4C48;        // graceful
inline constexpr uint32_t kRebootForceHalt = 0x4D4B4C46;   // NMI to its CPUs

class Syscalls {
 public:
  virtual ~Syscalls() = default;
  // kexec_file_load(kernel_fd, initrd_fd, strlen(cmdline)+1, cmdline, flags); -1 fds to unload.
  virtual absl::Status KexecFileLoad(int kernel_fd, int initrd_fd, absl::string_view cmdline,
                                     unsigned long flags) = 0;
  // reboot(magic1, magic2, cmd, &id).
  virtual absl::Status Reboot(uint32_t cmd, uint32_t instance_id) = 0;
};

std::unique_ptr<Syscalls> NewLinuxSyscalls();

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_SYSCALLS_H_
