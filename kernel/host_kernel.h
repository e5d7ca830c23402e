// HostKernel: the driver the agent uses to run kernels on one multikernel host. It speaks
// KernelFs + Syscalls exactly as docs/kernel-abi.md describes, and adds what the reference
// CLI lacks:
//  - every change is one overlay transaction, written under an exclusive flock of our lock
//    file and the kerf lock convention (/var/run/kerf.lock); the new tx_<N> is the first
//    id after the snapshot taken before the write, confirmed by its dtbo being ours (not
//    "the highest"); a failed one is removed, and the kernel's errno becomes a status
//    naming host, action and instance;
//  - state guards before every call (FailedPrecondition, kernel untouched);
//  - idempotence: an action whose effect is already there succeeds without a kernel call;
//  - kernel images checked (ELF vmlinux, optional sha256 pin); each instance's owner and
//    provenance recorded atomically under the state directory.
// CPUs are physical ids. Thread-safety: calls on one HostKernel are serialized by a mutex;
// several processes are serialized by the lock files.
#ifndef MKFLEET_KERNEL_HOST_KERNEL_H_
#define MKFLEET_KERNEL_HOST_KERNEL_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "kernel/device_tree.h"
#include "kernel/kernel_fs.h"
#include "kernel/image_files.h"
#include "kernel/syscalls.h"
#include "mkfleet/v1/state.pb.h"

namespace mkfleet::kernel {

struct HostKernelOptions {
  std::string host = "localhost";                  // for messages
  std::string lock_path;                           // our flock file; empty: none
  std::string kerf_lock_path;                      // e.g. /var/run/kerf.lock; empty: none
  std::string state_dir;                           // provenance files; empty: none kept
  Clock* clock = nullptr;                          // nullptr: the real clock
  absl::Duration poll_interval = absl::Milliseconds(10);
  absl::Duration start_timeout = absl::Seconds(60);
  absl::Duration halt_timeout = absl::Seconds(35);
  absl::Duration lock_timeout = absl::Seconds(10);
  // Keeps each instance's record (owner, provenance) in memory once read or written, so an
  // observation reads no file per instance. Right for the state directory's one writer (the
  // agent holding the host's lock); a second reader of a directory another HostKernel
  // writes (the simulation's view of the truth) must read the files.
  bool cache_records = true;
  // The kernel's change tracking (the emulator's EmulatedKernel::Generation and
  // NextTimedChange). With both set and cache_records, Observe returns its last observation
  // again while the kernel's generation has not moved, no timed kernel change is due and no
  // record changed: an emulated host's liveness-probe passes at rest read nothing (a read
  // decodes the pool's and every instance's device tree and /proc/iomem). Unset (a real
  // kernel, whose changes nothing announces): every Observe reads.
  std::function<uint64_t()> kernel_generation;
  std::function<absl::Duration()> kernel_next_change;
  // Where kernel images and initrds may come from (kernel/image_files.h); none: nowhere.
  ImageDirs images;
  // Refuse to load a kernel that the spec does not pin by sha256.
  bool require_digest = false;
};

struct KernelImage {
  std::string kernel_path;
  std::string initrd_path;  // optional
  std::string cmdline;
  std::string sha256;       // optional pin of the kernel file
  std::string rootfs_image; // provenance only
};

struct InstanceInfo {
  std::string name;
  uint32_t id = 0;
  mkfleet::v1::KernelState state = mkfleet::v1::KERNEL_STATE_UNKNOWN;
  InstanceResources resources;
  mkfleet::v1::Provenance provenance;  // what we loaded, if we did
  std::string owner;                   // who we created it for ("" if we did not create it)
  // Its memory per NUMA node (OS index), from /proc/iomem and the pool's chunks; filled by
  // Observe (empty elsewhere).
  std::map<uint32_t, uint64_t> memory_by_node;
  // Per NUMA node, the sizes of the regions a memory hot-remove can give back, in the order
  // it gives them back (kernel/memory_regions.h); filled by Observe.
  std::map<uint32_t, std::vector<uint64_t>> removable_by_node;
};

struct HostObservation {
  Dialect dialect = Dialect::kV1;
  PoolState pool;
  std::vector<InstanceInfo> instances;
  // Which read of the kernel this is (HostKernel counts them from 1): an observation answered
  // from the last read (HostKernelOptions::kernel_generation) carries that read's number, so
  // a reader can tell it has seen all of it already. 0: not numbered.
  uint64_t read = 0;
};

mkfleet::v1::KernelState ParseKernelState(absl::string_view status);
const char* KernelStateName(mkfleet::v1::KernelState s);

class TxLock;

class HostKernel {
 public:
  HostKernel(KernelFs& fs, Syscalls& sys, HostKernelOptions options);
  ~HostKernel();
  HostKernel(const HostKernel&) = delete;
  HostKernel& operator=(const HostKernel&) = delete;

  // Reads the live pool and picks the dialect the kernel speaks.
  absl::StatusOr<Dialect> ProbeDialect();
  absl::StatusOr<HostObservation> Observe();
  // The same, shared: an observation answered from the last read is not copied.
  absl::StatusOr<std::shared_ptr<const HostObservation>> ObserveShared();
  // Observations read from the kernel (not answered from the last one), for tests.
  uint64_t observe_reads() const { return observe_reads_.load(std::memory_order_relaxed); }
  // KERNEL_STATE_ABSENT for an instance the kernel does not know.
  absl::StatusOr<mkfleet::v1::KernelState> StateOf(absl::string_view name);

  // The pool's CPUs (physical ids), cached until the pool changes through this driver.
  absl::StatusOr<std::vector<uint64_t>> PoolCpus();

  // Writes the pool baseline (only while no instance exists; else FailedPrecondition).
  absl::Status SetPool(const PoolState& pool);
  // Moves the pool toward `target` (memory: one entry per NUMA node with its total).
  // With no instance it writes `target` as the baseline; otherwise, in one /resources
  // transaction, it adds what is missing and removes what is not lent out. What it leaves
  // (CPUs and devices in use, memory it would have to shrink while instances run) is
  // appended to `kept` (may be null), one line each. `cpu_numa`: NUMA node of each CPU.
  absl::Status ChangePool(const PoolState& target, const std::map<uint64_t, uint32_t>& cpu_numa,
                          std::vector<std::string>* kept);

  // Creates the instance and records `owner` beside it. Its memory comes from the first
  // of resources.numa_nodes; `extra_memory` (pool regions of other nodes, e.g. from
  // FreePoolMemory) joins it in the same transaction. Creating what exists with the same
  // CPUs succeeds (and records `owner` if none was).
  absl::Status Create(absl::string_view name, std::optional<uint32_t> id, const InstanceResources& resources,
                      const std::string& owner = "", const std::vector<MemoryEntry>& extra_memory = {});
  // Records `owner` for an instance that exists (NotFound otherwise).
  absl::Status SetOwner(absl::string_view name, const std::string& owner);
  // Opens the kernel (and initrd) from options.images, checks them and loads them from the
  // same descriptors; PermissionDenied for a file that is not allowed (one message whether
  // it exists or not), FailedPrecondition for a sha256 that differs from the pin (or no pin
  // with require_digest). The files are read before the driver's lock is taken.
  absl::Status Load(absl::string_view name, const KernelImage& image);
  // Checks what Load would check of `image` (the file is allowed and an ELF vmlinux, the
  // sha256 pin holds) without touching any instance: run before an instance is taken down
  // to be replaced, so a bad image fails while the old kernel still runs.
  absl::Status CheckImage(absl::string_view name, const KernelImage& image);
  // With `wait` false it returns once the kernel was asked to start (the watchdog's
  // restarts: crash detection of the others must not wait for a boot).
  absl::Status Start(absl::string_view name, bool wait = true);
  absl::Status Halt(absl::string_view name, bool force);
  absl::Status Unload(absl::string_view name);
  absl::Status Remove(absl::string_view name);

  absl::Status AddCpus(absl::string_view name, const std::vector<CpuEntry>& cpus);
  absl::Status RemoveCpus(absl::string_view name, const std::vector<CpuEntry>& cpus);
  absl::Status AddMemory(absl::string_view name, const std::vector<MemoryEntry>& memory);
  absl::Status RemoveMemory(absl::string_view name, const std::vector<MemoryEntry>& memory);
  absl::Status AddDevices(absl::string_view name, const std::vector<DeviceEntry>& devices);
  absl::Status RemoveDevices(absl::string_view name, const std::vector<DeviceEntry>& devices);
  // Memory to hand over by hot-plug, in 128Mi blocks: `bytes` of free pool memory on NUMA
  // node `numa`, and `bytes` of `name`'s own memory on `numa` to give back (never its first
  // region, which holds its kernel image). From the pool read-back and /proc/iomem.
  absl::StatusOr<std::vector<MemoryEntry>> FreePoolMemory(uint32_t numa, uint64_t bytes);
  absl::StatusOr<std::vector<MemoryEntry>> MemoryToRelease(absl::string_view name, uint32_t numa, uint64_t bytes);
  // `name`'s memory per NUMA node (OS index) now.
  absl::StatusOr<std::map<uint32_t, uint64_t>> InstanceMemory(absl::string_view name);

  // Failover: the devices leave `from` and join `to` in one transaction.
  absl::Status MoveDevices(absl::string_view from, absl::string_view to, const std::vector<DeviceEntry>& devices);

 private:
  struct OpenedImage;
  absl::StatusOr<OpenedImage> OpenImage(absl::string_view name, const KernelImage& image);
  // The instance as the kernel shows it: state and id; with `resources`, its device tree;
  // with `provenance`, also what we loaded (a file read).
  absl::StatusOr<InstanceInfo> Get(absl::string_view name, bool provenance = false, bool resources = true)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Every instance's memory regions per NUMA node, from /proc/iomem and the pool's chunks,
  // in region order (the first holds the kernel image).
  struct Region {
    uint32_t index = 0;
    uint64_t base = 0;
    uint64_t size = 0;
  };
  using RegionsByNode = std::map<uint32_t, std::vector<Region>>;
  absl::StatusOr<std::map<std::string, RegionsByNode>> MemoryRegions(const PoolState& pool)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<RegionsByNode> InstanceRegions(absl::string_view name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<std::unique_ptr<TxLock>> LockForTx() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The instance, if it may take hot-plug now (ready, loaded or active; also failed with
  // `allow_failed`); FailedPrecondition otherwise.
  absl::StatusOr<InstanceInfo> ForHotplug(absl::string_view action, absl::string_view name, bool allow_failed = false)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Guard(absl::string_view action, absl::string_view name, const InstanceInfo& info,
                     std::initializer_list<mkfleet::v1::KernelState> allowed) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status Transact(absl::string_view action, absl::string_view name, const Overlay& overlay)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Polls the instance's state without holding mu_ (a boot may take a minute; other calls
  // go on meanwhile).
  // `active_reads`: for a start, ActiveReads before it began (a wait for active that then
  // sees loaded after another reader saw active fails at once); ~0 for none.
  absl::Status WaitFor(absl::string_view name, mkfleet::v1::KernelState want, absl::Duration timeout,
                       uint64_t active_reads = ~uint64_t{0}) ABSL_LOCKS_EXCLUDED(mu_);
  absl::StatusOr<mkfleet::v1::KernelState> ReadState(absl::string_view name);
  // Every status read that said active, per instance: a start's wait that sees loaded again
  // after one (by any reader, e.g. the watchdog) knows the kernel stopped right after booting.
  void NoteState(absl::string_view name, mkfleet::v1::KernelState state) ABSL_LOCKS_EXCLUDED(seen_mu_);
  uint64_t ActiveReads(absl::string_view name) ABSL_LOCKS_EXCLUDED(seen_mu_);
  absl::StatusOr<Dialect> Dialect_() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The record kept beside each instance (owner, provenance): <state_dir>/<name>.record.
  std::string RecordPath(absl::string_view name) const;
  // Records are kept in memory once read or written (options.cache_records).
  mkfleet::v1::InstanceRecord ReadRecord(absl::string_view name) const;
  absl::Status WriteRecord(absl::string_view name, const mkfleet::v1::InstanceRecord& record);
  // Keeps `record` as `name`'s (nullopt: forgets it), when options.cache_records.
  void CacheRecord(absl::string_view name, std::optional<mkfleet::v1::InstanceRecord> record) const;
  void RemoveRecord(absl::string_view name);
  std::string What(absl::string_view action, absl::string_view name) const;

  KernelFs& fs_;
  Syscalls& sys_;
  const HostKernelOptions options_;
  Clock* const clock_;
  absl::Mutex seen_mu_;
  std::map<std::string, uint64_t> active_reads_ ABSL_GUARDED_BY(seen_mu_);
  absl::Mutex mu_;
  // Each instance's last device tree and what it decoded to: an observation decodes only
  // what changed.
  std::map<std::string, std::pair<std::string, InstanceResources>, std::less<>> decoded_ ABSL_GUARDED_BY(mu_);
  mutable absl::Mutex records_mu_;
  mutable std::map<std::string, mkfleet::v1::InstanceRecord, std::less<>> records_ ABSL_GUARDED_BY(records_mu_);
  mutable uint64_t records_changed_ ABSL_GUARDED_BY(records_mu_) = 0;  // every CacheRecord
  // The last observation, and what it was read at (HostKernelOptions::kernel_generation).
  struct LastObservation {
    std::shared_ptr<const HostObservation> obs;
    uint64_t generation = 0;
    uint64_t records_changed = 0;
    absl::Duration until;  // the kernel's next timed change then
  };
  std::optional<LastObservation> last_observation_ ABSL_GUARDED_BY(mu_);
  std::atomic<uint64_t> observe_reads_{0};
  std::optional<Dialect> dialect_ ABSL_GUARDED_BY(mu_);
  std::optional<uint32_t> max_tx_ ABSL_GUARDED_BY(mu_);  // highest transaction id seen
  int lock_fd_ ABSL_GUARDED_BY(mu_) = -1;                // our lock file, opened once
  std::optional<std::vector<uint64_t>> pool_cpus_ ABSL_GUARDED_BY(mu_);
};


}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_HOST_KERNEL_H_
