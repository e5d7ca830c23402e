// EmulatedKernel: an in-process multikernel host kernel with the semantics of
// docs/kernel-abi.md, behind the same KernelFs and Syscalls interfaces as the real one, so
// the driver (host_kernel.h) runs unchanged against it.
//
// It keeps a pool, instances with their CPUs, memory regions and devices, one transaction
// directory per overlay (applied atomically: a failed overlay changes nothing and leaves
// tx_<N> with status "failed"), rollback by rmdir, the state machine and its guards with
// the real errnos, boot and halt times on an injected clock, and fault injection.
// Thread-safety: every method is safe to call concurrently (one mutex).
#ifndef MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_H_
#define MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_H_

#include <atomic>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "kernel/device_tree.h"
#include "kernel/emulator/guests.h"
#include "kernel/kernel_fs.h"
#include "kernel/syscalls.h"

namespace mkfleet::kernel {

struct MachineMemory {
  uint32_t numa = 0;
  uint64_t base = 0;
  uint64_t size = 0;
};

struct EmulatorOptions {
  std::vector<uint64_t> cpus;             // physical ids of every CPU of the machine
  std::vector<MachineMemory> memory;      // the machine's RAM, per NUMA node
  std::vector<std::string> pci_devices;   // BDFs present on the machine
  Dialect dialect = Dialect::kV1;
  uint32_t llc_ways = 12;                 // the baseline way mask is (1 << ways) - 1
  absl::Duration boot_time = absl::ZeroDuration();
  absl::Duration halt_time = absl::ZeroDuration();
  Clock* clock = nullptr;                 // nullptr: the real clock
  // If set, the kernel's state outlives the process: loaded from this file at start and
  // saved (tmp + rename) after every change, as a real kernel outlives its agent.
  std::string state_file;
  // The guests (mkguest) of instances whose command line asks for one (guests.h).
  GuestOptions guests;
};

class EmulatedKernel final : public KernelFs, public Syscalls {
 public:
  explicit EmulatedKernel(EmulatorOptions options);

  // KernelFs
  absl::StatusOr<std::string> Read(absl::string_view path) override;
  absl::Status Write(absl::string_view path, absl::string_view blob) override;
  absl::StatusOr<std::vector<std::string>> List(absl::string_view dir) override;
  absl::Status Rmdir(absl::string_view path) override;
  absl::StatusOr<std::string> ReadProc(absl::string_view name) override;

  // Syscalls
  absl::Status KexecFileLoad(int kernel_fd, int initrd_fd, absl::string_view cmdline, unsigned long flags) override;
  absl::Status Reboot(uint32_t cmd, uint32_t instance_id) override;

  // Fault injection. Each returns NotFound for an unknown instance.
  // The instance crashes: active -> loaded, unrequested.
  absl::Status InjectPanic(absl::string_view instance);
  // The instance hangs: stays active, its liveness probe fails, a graceful halt times out.
  absl::Status InjectHang(absl::string_view instance);
  // The next overlay write fails with `err` (applied nothing, tx status failed).
  void FailNextOverlay(int err);
  // Any overlay touching this CPU (physical id) or PCI function fails with EBUSY; so does the
  // removal of an instance of this name.
  void SetBusy(const std::string& resource, bool busy);
  // The next graceful halt of `instance` takes `delay` (slow), or ends in "failed".
  absl::Status SetHaltBehavior(absl::string_view instance, absl::Duration delay, bool fail);
  // What a liveness probe (vsock on a real host) would see: active, booted and not hung.
  bool Probe(absl::string_view instance);

  // How many times `instance` stopped running (halt, force-halt, crash) since it was created:
  // a live update must never stop the old kernel. NotFound for an unknown instance.
  absl::StatusOr<int> StopsOf(absl::string_view instance);
  // The pid of `instance`'s guest process (0: none).
  pid_t GuestPid(absl::string_view instance);
  // Whether any instance's guest process runs (as of the last change; never false while
  // one does). Cheap, without the lock: a liveness probe asks it before it looks for a
  // guest's socket (a path lookup per probe, ten a second per instance, was most of an
  // emulated fleet's CPU at rest).
  bool RunsGuests() const { return guests_running_.load(std::memory_order_acquire) > 0; }

  // How many times each operation took effect, for exactly-once tests.
  struct Counters {
    int overlays = 0, failed_overlays = 0, rollbacks = 0;
    int creates = 0, removes = 0, loads = 0, unloads = 0, starts = 0, halts = 0, force_halts = 0;
    int cpu_adds = 0, cpu_removes = 0, memory_adds = 0, memory_removes = 0, device_adds = 0, device_removes = 0;
    int pool_changes = 0;
    int panics = 0;  // crashes (injected, or a kernel image marked to panic)
  };
  Counters counters() const;

  // Change tracking for a watchdog that observes only when something may have changed
  // (mkagent --hosts N): Generation() rises with every change of the kernel's state (an
  // overlay, a load, a start, a halt, a crash, a fault); NextTimedChange() is the monotonic
  // time of the next change that comes by itself (a boot or halt finishing, a marked image's
  // crash), infinite if none is pending. A reader that saw generation G and observes again
  // when it differs, or at NextTimedChange(), misses nothing.
  uint64_t Generation() const { return generation_.load(std::memory_order_acquire); }
  absl::Duration NextTimedChange();
  // Gives `options` (HostKernelOptions, agents::AgentOptions: their kernel_generation and
  // kernel_next_change) this kernel's change tracking. The kernel must outlive their users.
  template <typename Options>
  void TrackChanges(Options& options) {
    options.kernel_generation = [this] { return Generation(); };
    options.kernel_next_change = [this] { return NextTimedChange(); };
  }
  // Set (true) with every rise of the generation, for a watchdog that passes only the hosts
  // whose flag it finds set or whose time is due (agents/fleet_watchdog.h). Null: none.
  void SetWakeFlag(std::atomic<bool>* flag) {
    absl::MutexLock lock(&mu_);
    wake_flag_ = flag;
  }

  // The state file could not be read at start (then the kernel starts empty).
  absl::Status load_status() const { return load_status_; }

 private:
  struct Region {
    uint64_t base = 0;
    uint64_t size = 0;
    uint32_t numa = 0;
  };
  struct Instance {
    uint32_t id = 0;
    std::string status = "ready";  // "" | ready | loaded | active | failed
    InstanceResources resources;   // as created, kept current by hot-plug
    std::vector<Region> memory;    // regions, region 0 holds the loaded image
    std::string cmdline;
    uint32_t segments = 0;
    bool has_image = false;
    bool hung = false;
    int stops = 0;                            // halts, force-halts and crashes since created
    // What the loaded image's markers ask for (a bad kernel for tests, see KexecFileLoad).
    std::optional<absl::Duration> panic_after;  // crash this long after boot
    bool hang_on_boot = false;
    std::optional<absl::Duration> crash_at;   // a marked image crashes then (once seen active)
    mutable bool shown_active = false;        // a status read has said active since the boot
    std::string guest_profile;                // mkfleet.guest=PROFILE on the command line
    pid_t guest_pid = 0;                      // its mkguest process, while active
    uint64_t guest_start = 0;                 // that process's start time (GuestProcesses)
    bool guest_frozen = false;                // stopped (the instance hangs)
    std::optional<absl::Duration> active_at;  // booting until then
    std::optional<absl::Duration> halted_at;  // halting until then
    bool fail_next_halt = false;
    absl::Duration halt_delay = absl::ZeroDuration();
    // The device tree last encoded for `resources` (every observation reads it): kept
    // while the resources compare equal to `blob_of`.
    mutable std::string blob;
    mutable InstanceResources blob_of;
  };
  struct State {
    bool has_pool = false;
    std::vector<uint64_t> pool_cpus;
    std::vector<Region> pool_memory;  // chunks
    std::vector<PoolDevice> pool_devices;
    std::map<std::string, Instance> instances;
  };
  struct Undo;     // inverse operations of one transaction
  struct Journal;  // what one transaction changed, to restore it if it fails
  struct Tx {
    std::string status;  // applied | failed | removed
    uint32_t id = 0;
    std::string instance;
    std::string resources;  // the instance's resources after the tx (DTB), if any
    std::string dtbo;
    std::shared_ptr<Undo> undo;
  };

  absl::Duration Now() const { return clock_->Monotonic(); }
  void Advance(State& s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The instance finished booting (at `at`): active, and what its image's markers ask for.
  void Activate(Instance& in, absl::Duration at) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The instance stops running (halt done, force-halt, crash).
  void Stopped(Instance& in, const std::string& status) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Makes the guest processes match the instances: one per booted instance that asks for
  // one, frozen while it hangs; none for the others.
  void SyncGuests() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  Instance* FindById(uint32_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status WriteBaseline(absl::string_view blob) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies in place, saving what it touches in `journal` and counting into `delta`; the
  // caller restores the journal if it fails.
  absl::Status ApplyFragment(const Fragment& f, State& s, Journal& journal, Counters& delta, Undo& undo,
                             std::string* instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Its parts: a resource the test made busy (EBUSY), then by target: the pool
  // (/resources), instance-create and -remove (/instances), hot-plug (/instances/<name>).
  struct Holdings;
  absl::Status CheckBusy(const Fragment& f) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyPoolFragment(const Fragment& f, State& s, Journal& journal, Counters& delta, Undo& undo)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyInstancesFragment(const Fragment& f, State& s, Journal& journal, Counters& delta, Undo& undo,
                                      std::string* instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status ApplyHotplugFragment(const Fragment& f, State& s, Journal& journal, Counters& delta, Undo& undo,
                                    std::string* instance) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Applies every fragment, or nothing (restored) on the first failure.
  absl::Status ApplyAll(const std::vector<Fragment>& fragments, bool reverse, Undo& undo, std::string* instance,
                        Counters& delta) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string PoolBlob(const State& s) const;
  void Save() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Load() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  std::string InstanceBlob(const Instance& in) const;

  const EmulatorOptions options_;
  Clock* const clock_;
  mutable absl::Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_);
  std::map<uint32_t, Tx> txs_ ABSL_GUARDED_BY(mu_);
  uint32_t next_tx_ ABSL_GUARDED_BY(mu_) = 1;
  int fail_next_overlay_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<std::string> busy_ ABSL_GUARDED_BY(mu_);
  Counters counters_ ABSL_GUARDED_BY(mu_);
  std::atomic<size_t> guests_running_{0};  // instances with guest_pid > 0, set by SyncGuests
  GuestProcesses guests_;
  std::atomic<uint64_t> generation_{0};
  std::atomic<bool>* wake_flag_ ABSL_GUARDED_BY(mu_) = nullptr;
  // The generation rises (a change of the state), and the wake flag is set.
  void Changed() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    generation_.fetch_add(1, std::memory_order_acq_rel);
    if (wake_flag_ != nullptr) wake_flag_->store(true, std::memory_order_release);
  }
  absl::Status load_status_;
};

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_EMULATOR_EMULATED_KERNEL_H_
