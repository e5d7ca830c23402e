#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <string>

#include "absl/strings/str_cat.h"
#include "kernel/errno_status.h"
#include "kernel/syscalls.h"

namespace mkfleet::kernel {
namespace {

#if defined(__x86_64__)
constexpr long kSysKexecFileLoad = 320;
constexpr long kSysReboot = 169;
#elif defined(__aarch64__)
constexpr long kSysKexecFileLoad = 294;
constexpr long kSysReboot = 142;
#else
#error "mkfleet's kernel driver supports x86_64 and arm64"
#endif

class LinuxSyscalls final : public Syscalls {
 public:
  absl::Status KexecFileLoad(int kernel_fd, int initrd_fd, absl::string_view cmdline, unsigned long flags) override {
    std::string c(cmdline);
    unsigned long len = (flags & kKexecFileUnload) ? 0 : c.size() + 1;
    long rc = syscall(kSysKexecFileLoad, kernel_fd, initrd_fd, len, (flags & kKexecFileUnload) ? nullptr : c.c_str(),
                      flags);
    if (rc != 0) return ErrnoStatus(errno, absl::StrCat("kexec_file_load flags 0x", absl::Hex(flags)));
    return absl::OkStatus();
  }

  absl::Status Reboot(uint32_t cmd, uint32_t instance_id) override {
    int id = static_cast<int>(instance_id);
    long rc = syscall(kSysReboot, kRebootMagic1, kRebootMagic2, cmd, &id);
    if (rc != 0) return ErrnoStatus(errno, absl::StrCat("reboot cmd 0x", absl::Hex(cmd), " instance ", instance_id));
    return absl::OkStatus();
  }
};

}  // namespace

std::unique_ptr<Syscalls> NewLinuxSyscalls() { return std::make_unique<LinuxSyscalls>(); }

}  // namespace mkfleet::kernel
