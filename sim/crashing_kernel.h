// CrashingKernel: the KernelFs and Syscalls an agent uses in the fleet simulation. It
// forwards to an emulated kernel (which outlives agents, as a real kernel does) and can
// kill the agent at a chosen point: once armed with n, the nth mutating call from now is
// carried out in the kernel, and then the process counts as dead: every later call fails
// (UNAVAILABLE) until the simulation restarts the agent over a fresh CrashingKernel. This
// models a crash between a kernel change and the agent recording it. It also counts the
// mutating calls that reached the kernel (the exactly-once check).
// Thread-safety: single-threaded (the simulation).
#ifndef MKFLEET_SIM_CRASHING_KERNEL_H_
#define MKFLEET_SIM_CRASHING_KERNEL_H_

#include <cstdint>

#include "absl/status/status.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/kernel_fs.h"
#include "kernel/syscalls.h"

namespace mkfleet::sim {

class CrashingKernel final : public kernel::KernelFs, public kernel::Syscalls {
 public:
  explicit CrashingKernel(kernel::EmulatedKernel& kernel) : kernel_(kernel) {}

  // The `n`th mutating call from now (1: the next) is the last.
  void ArmCrash(int n) { countdown_ = n; }
  bool dead() const { return dead_; }
  // Mutating calls that went through to the kernel so far.
  int64_t mutations() const { return mutations_; }

  absl::StatusOr<std::string> Read(absl::string_view path) override {
    if (dead_) return Dead();
    return kernel_.Read(path);
  }
  absl::Status Write(absl::string_view path, absl::string_view blob) override {
    if (dead_) return Dead();
    absl::Status s = kernel_.Write(path, blob);
    Mutated();
    return s;
  }
  absl::StatusOr<std::vector<std::string>> List(absl::string_view dir) override {
    if (dead_) return Dead();
    return kernel_.List(dir);
  }
  absl::Status Rmdir(absl::string_view path) override {
    if (dead_) return Dead();
    absl::Status s = kernel_.Rmdir(path);
    Mutated();
    return s;
  }
  absl::StatusOr<std::string> ReadProc(absl::string_view name) override {
    if (dead_) return Dead();
    return kernel_.ReadProc(name);
  }
  absl::Status KexecFileLoad(int kernel_fd, int initrd_fd, absl::string_view cmdline, unsigned long flags) override {
    if (dead_) return Dead();
    absl::Status s = kernel_.KexecFileLoad(kernel_fd, initrd_fd, cmdline, flags);
    Mutated();
    return s;
  }
  absl::Status Reboot(uint32_t cmd, uint32_t instance_id) override {
    if (dead_) return Dead();
    absl::Status s = kernel_.Reboot(cmd, instance_id);
    Mutated();
    return s;
  }

 private:
  static absl::Status Dead() { return absl::UnavailableError("the agent process died"); }
  void Mutated() {
    ++mutations_;
    if (countdown_ > 0 && --countdown_ == 0) dead_ = true;
  }

  kernel::EmulatedKernel& kernel_;
  int countdown_ = 0;
  bool dead_ = false;
  int64_t mutations_ = 0;
};

}  // namespace mkfleet::sim

#endif  // MKFLEET_SIM_CRASHING_KERNEL_H_
