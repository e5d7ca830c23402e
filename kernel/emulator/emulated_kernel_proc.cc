// EmulatedKernel's /proc files (iomem, kimage, ...), as the kernel renders them.
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/emulated_kernel_internal.h"

#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <cerrno>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "kernel/errno_status.h"

namespace mkfleet::kernel {

absl::StatusOr<std::string> EmulatedKernel::ReadProc(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  if (name == "iomem") {
    std::string out;
    for (const MachineMemory& m : options_.memory) {
      absl::StrAppendFormat(&out, "%08x-%08x : System RAM\n", m.base, m.base + m.size - 1);
      for (const Region& chunk : state_.pool_memory) {
        if (chunk.base < m.base || chunk.base >= m.base + m.size) continue;
        absl::StrAppendFormat(&out, "  %08x-%08x : Multikernel Memory Pool\n", chunk.base, chunk.base + chunk.size - 1);
        for (const auto& [iname, in] : state_.instances) {
          for (size_t r = 0; r < in.memory.size(); ++r) {
            const Region& reg = in.memory[r];
            if (reg.base >= chunk.base && reg.base < chunk.base + chunk.size) {
              absl::StrAppendFormat(&out, "    %08x-%08x : mk-instance-%d-%s-region-%d\n", reg.base,
                                    reg.base + reg.size - 1, in.id, iname, r);
            }
          }
        }
      }
    }
    return out;
  }
  if (name == "kimage") {
    std::string out = "MK_ID Type Start-Address Segments Mode Cmdline\n";
    for (const auto& [iname, in] : state_.instances) {
      if (!in.has_image) continue;
      absl::StrAppendFormat(&out, "%d multikernel 0x%x %d file %s\n", in.id, in.memory.empty() ? 0 : in.memory[0].base,
                            in.segments, in.cmdline);
    }
    return out;
  }
  return ErrnoStatus(ENOENT, absl::StrCat("/proc/", name));
}

}  // namespace mkfleet::kernel
