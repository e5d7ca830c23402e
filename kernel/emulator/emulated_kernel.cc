#include "kernel/emulator/emulated_kernel.h"

#include <sys/stat.h>
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
#include "kernel/emulator/emulated_kernel_internal.h"
#include "kernel/errno_status.h"

namespace mkfleet::kernel {

namespace {

// Markers a test writes into a kernel image file to get a bad kernel (docs: README, "A bad
// kernel for tests"): "mkfleet-emulator:panic-after-ms=N" (crashes N ms after boot; 0: at
// boot) and "mkfleet-emulator:hang-on-boot" (boots, then never answers). Read from the
// first MiB.
struct ImageMarkers {
  std::optional<absl::Duration> panic_after;
  bool hang_on_boot = false;
};

ImageMarkers ReadMarkers(int fd) {
  ImageMarkers m;
  // Only as much as the image holds: a kernel is loaded for every boot, and a zeroed 1 MiB
  // buffer each time was an eighth of an emulated fleet's CPU (fleet_bench, 10 boots a host).
  struct stat st;
  size_t want = 1 << 20;
  if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode)) want = std::min(want, static_cast<size_t>(st.st_size));
  if (want == 0) return m;
  std::string buf(want, '\0');
  ssize_t n = pread(fd, buf.data(), buf.size(), 0);
  if (n <= 0) return m;
  buf.resize(static_cast<size_t>(n));
  const std::string kPanic = "mkfleet-emulator:panic-after-ms=";
  size_t at = buf.find(kPanic);
  if (at != std::string::npos) {
    size_t end = at + kPanic.size();
    while (end < buf.size() && buf[end] >= '0' && buf[end] <= '9') ++end;
    int64_t ms = 0;
    if (absl::SimpleAtoi(absl::string_view(buf).substr(at + kPanic.size(), end - at - kPanic.size()), &ms)) {
      m.panic_after = absl::Milliseconds(ms);
    }
  }
  m.hang_on_boot = buf.find("mkfleet-emulator:hang-on-boot") != std::string::npos;
  return m;
}

void Add(EmulatedKernel::Counters& to, const EmulatedKernel::Counters& d) {
  to.creates += d.creates;
  to.removes += d.removes;
  to.cpu_adds += d.cpu_adds;
  to.cpu_removes += d.cpu_removes;
  to.memory_adds += d.memory_adds;
  to.memory_removes += d.memory_removes;
  to.device_adds += d.device_adds;
  to.device_removes += d.device_removes;
  to.pool_changes += d.pool_changes;
  to.panics += d.panics;
}
}  // namespace

EmulatedKernel::EmulatedKernel(EmulatorOptions options)
    : options_(std::move(options)),
      clock_(options_.clock != nullptr ? options_.clock : &Clock::Real()),
      guests_(options_.guests) {
  absl::MutexLock lock(&mu_);
  load_status_ = Load();
  // Guests that outlived the agent are adopted (Load kept their pids if they still are
  // those guests); the others start.
  SyncGuests();
}

absl::StatusOr<int> EmulatedKernel::StopsOf(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  auto it = state_.instances.find(std::string(instance));
  if (it == state_.instances.end()) return absl::NotFoundError(absl::StrCat("no instance ", instance));
  return it->second.stops;
}

pid_t EmulatedKernel::GuestPid(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  auto it = state_.instances.find(std::string(instance));
  return it == state_.instances.end() ? 0 : it->second.guest_pid;
}

void EmulatedKernel::Activate(Instance& in, absl::Duration at) {
  in.active_at.reset();
  in.status = "active";
  in.shown_active = false;
  if (in.hang_on_boot) in.hung = true;
  if (in.panic_after) in.crash_at = at + *in.panic_after;
}

void EmulatedKernel::Stopped(Instance& in, const std::string& status) {
  in.status = status;
  in.active_at.reset();
  in.halted_at.reset();
  in.crash_at.reset();
  in.hung = false;
  ++in.stops;
}

void EmulatedKernel::SyncGuests() {
  if (!guests_.enabled()) return;
  for (auto& [name, in] : state_.instances) {
    bool want = in.status == "active" && !in.active_at && !in.halted_at && !in.guest_profile.empty();
    if (!want && in.guest_pid > 0) {
      GuestProcesses::Kill(in.guest_pid);
      in.guest_pid = 0;
      in.guest_start = 0;
      in.guest_frozen = false;
    }
    if (want && in.guest_pid == 0) {
      auto started = guests_.Start(in.id, in.guest_profile);
      // A guest that cannot start is a guest that does not answer: the probes say so.
      if (started.ok()) {
        in.guest_pid = started->pid;
        in.guest_start = started->start_time;
      }
      in.guest_frozen = false;
    }
    if (in.guest_pid > 0 && in.hung != in.guest_frozen) {
      GuestProcesses::Freeze(in.guest_pid, in.hung);
      in.guest_frozen = in.hung;
    }
  }
  size_t running = 0;
  for (const auto& [name, in] : state_.instances) running += in.guest_pid > 0;
  guests_running_.store(running, std::memory_order_release);
}

EmulatedKernel::Counters EmulatedKernel::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void EmulatedKernel::Advance(State& s) {
  absl::Duration now = Now();
  bool changed = false;
  for (auto& [name, in] : s.instances) {
    if (in.active_at && now >= *in.active_at) {
      Activate(in, *in.active_at);
      changed = true;
    }
    // A marked image crashes at its time, but only once its boot was seen (a status read
    // said active): then the crash shows as what it is, an unrequested active -> loaded.
    if (in.crash_at && now >= *in.crash_at && in.status == "active" && !in.halted_at && in.shown_active) {
      Stopped(in, "loaded");  // the marked image panics: an unrequested active -> loaded
      ++counters_.panics;
      changed = true;
    }
    if (in.halted_at && now >= *in.halted_at) {
      bool fail = in.fail_next_halt;
      Stopped(in, fail ? "failed" : "loaded");
      in.fail_next_halt = false;
      in.halt_delay = absl::ZeroDuration();
      changed = true;
    }
  }
  if (changed && &s == &state_) {
    SyncGuests();
    Changed();
  }
}

absl::Duration EmulatedKernel::NextTimedChange() {
  absl::MutexLock lock(&mu_);
  absl::Duration next = absl::InfiniteDuration();
  for (const auto& [name, in] : state_.instances) {
    if (in.active_at) next = std::min(next, *in.active_at);
    if (in.halted_at) next = std::min(next, *in.halted_at);
    // A marked image's crash waits for its boot to be seen; until then a read is the change.
    if (in.crash_at && in.status == "active" && !in.halted_at) {
      next = std::min(next, in.shown_active ? *in.crash_at : Now());
    }
  }
  return next;
}

EmulatedKernel::Instance* EmulatedKernel::FindById(uint32_t id) {
  for (auto& [name, in] : state_.instances) {
    if (in.id == id) return &in;
  }
  return nullptr;
}

// ---------------------------------------------------------------------------- KernelFs

absl::StatusOr<std::string> EmulatedKernel::Read(absl::string_view path) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  if (path == "device_tree") return PoolBlob(state_);
  std::vector<std::string> parts = absl::StrSplit(path, '/');
  if (parts.size() == 3 && parts[0] == "instances") {
    auto it = state_.instances.find(parts[1]);
    if (it != state_.instances.end()) {
      const Instance& in = it->second;
      if (parts[2] == "id") return absl::StrCat(in.id, "\n");
      if (parts[2] == "status") {
        if (in.status == "active") in.shown_active = true;
        return absl::StrCat(in.status, "\n");
      }
      if (parts[2] == "device_tree") return InstanceBlob(in);
    }
  }
  uint32_t n;
  if (parts.size() == 3 && parts[0] == "overlays" && absl::StartsWith(parts[1], "tx_") &&
      absl::SimpleAtoi(parts[1].substr(3), &n)) {
    auto it = txs_.find(n);
    if (it != txs_.end()) {
      const Tx& tx = it->second;
      if (parts[2] == "id") return absl::StrCat(tx.id, "\n");
      if (parts[2] == "status") return absl::StrCat(tx.status, "\n");
      if (parts[2] == "instance") return absl::StrCat(tx.instance, "\n");
      if (parts[2] == "resources") return tx.resources;
      if (parts[2] == "dtbo") return tx.dtbo;
    }
  }
  return ErrnoStatus(ENOENT, absl::StrCat("read ", path));
}

absl::StatusOr<std::vector<std::string>> EmulatedKernel::List(absl::string_view dir) {
  absl::MutexLock lock(&mu_);
  std::vector<std::string> out;
  if (dir == "instances") {
    for (const auto& [name, in] : state_.instances) out.push_back(name);
    return out;
  }
  if (dir == "overlays") {
    out.push_back("new");
    for (const auto& [n, tx] : txs_) out.push_back(absl::StrCat("tx_", n));
    std::sort(out.begin(), out.end());
    return out;
  }
  if (absl::StartsWith(dir, "instances/") && state_.instances.count(std::string(dir.substr(10)))) {
    return std::vector<std::string>{"device_tree", "id", "status"};
  }
  uint32_t n;
  if (absl::StartsWith(dir, "overlays/tx_") && absl::SimpleAtoi(dir.substr(12), &n) && txs_.count(n)) {
    return std::vector<std::string>{"dtbo", "id", "instance", "resources", "status"};
  }
  return ErrnoStatus(ENOENT, absl::StrCat("list ", dir));
}

absl::Status EmulatedKernel::Write(absl::string_view path, absl::string_view blob) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  if (path == "device_tree") {
    absl::Status st = WriteBaseline(blob);
    Save();
    return st;
  }
  if (path != "overlays/new") return ErrnoStatus(EACCES, absl::StrCat("write ", path), "not writable");
  // Every write makes a transaction directory, failed or not.
  uint32_t n = next_tx_++;
  Tx& tx = txs_[n];
  tx.id = n;
  tx.dtbo = std::string(blob);
  tx.status = "failed";
  ++counters_.overlays;
  absl::Status status;
  if (fail_next_overlay_ != 0) {
    status = ErrnoStatus(fail_next_overlay_, "overlay", "injected failure");
    fail_next_overlay_ = 0;
  } else {
    auto overlay = DecodeOverlay(blob);
    if (!overlay.ok()) {
      status = Inval("overlay", overlay.status().message());
    } else {
      auto undo = std::make_shared<Undo>();
      std::string instance;
      Counters delta;
      status = ApplyAll(overlay->fragments, /*reverse=*/false, *undo, &instance, delta);
      tx.instance = instance;
      if (status.ok()) {
        Add(counters_, delta);
        tx.status = "applied";
        tx.undo = std::move(undo);
        auto it = state_.instances.find(instance);
        if (it != state_.instances.end()) tx.resources = InstanceBlob(it->second);
      }
    }
  }
  if (!status.ok()) ++counters_.failed_overlays;
  Save();
  return status;
}

absl::Status EmulatedKernel::Rmdir(absl::string_view path) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  uint32_t n;
  if (!absl::StartsWith(path, "overlays/tx_") || !absl::SimpleAtoi(path.substr(12), &n) || !txs_.count(n)) {
    return ErrnoStatus(ENOENT, absl::StrCat("rmdir ", path));
  }
  Tx& tx = txs_[n];
  if (tx.status == "applied" && tx.undo != nullptr) {
    Undo ignored;
    std::string instance;
    Counters delta;
    absl::Status s = ApplyAll(tx.undo->inverse, /*reverse=*/true, ignored, &instance, delta);
    if (!s.ok()) return ErrnoStatus(EBUSY, absl::StrCat("rollback of tx_", n), s.message());
    ++counters_.rollbacks;
  }
  txs_.erase(n);
  Save();
  return absl::OkStatus();
}

std::string EmulatedKernel::PoolBlob(const State& s) const {
  PoolState pool;
  pool.cpus = s.pool_cpus;
  std::set<uint64_t> lent;
  for (const auto& [name, in] : s.instances) lent.insert(in.resources.cpus.begin(), in.resources.cpus.end());
  for (uint64_t c : s.pool_cpus) {
    if (!lent.count(c)) pool.cpus_available.push_back(c);
  }
  for (const Region& r : s.pool_memory) pool.memory.push_back({r.base, r.size, r.numa});
  pool.devices = s.pool_devices;
  return *EncodePoolReadBack(pool, options_.dialect);
}

std::string EmulatedKernel::InstanceBlob(const Instance& in) const {
  if (in.blob.empty() || !(in.blob_of == in.resources)) {
    in.blob = *EncodeInstance(in.resources, options_.dialect);
    in.blob_of = in.resources;
  }
  return in.blob;
}

absl::Status EmulatedKernel::WriteBaseline(absl::string_view blob) {
  if (!state_.instances.empty()) return Inval("write device_tree", "the pool can change only while no instance exists");
  Dialect d;
  auto pool = DecodePool(blob, &d);
  if (!pool.ok()) return Inval("write device_tree", pool.status().message());
  if (d != options_.dialect) return Inval("write device_tree", absl::StrCat("this kernel speaks the ", DialectName(options_.dialect), " dialect"));
  State s;
  s.has_pool = true;
  for (uint64_t c : pool->cpus) {
    if (!Contains(options_.cpus, c)) return Inval("write device_tree", absl::StrCat("CPU ", c, " does not exist"));
    if (c == 0) return Inval("write device_tree", "CPU 0 stays with the host");
    if (Contains(s.pool_cpus, c)) return Inval("write device_tree", absl::StrCat("CPU ", c, " listed twice"));
    s.pool_cpus.push_back(c);
  }
  if (d == Dialect::kLegacy) {
    for (const PoolMemory& m : pool->memory) {
      bool inside = false;
      for (const MachineMemory& mm : options_.memory) {
        inside |= m.base >= mm.base && m.base + m.size <= mm.base + mm.size;
      }
      if (!inside || m.size == 0) return Inval("write device_tree", "memory-base/memory-bytes outside the machine's RAM");
      s.pool_memory.push_back({m.base, m.size, 0});
    }
  } else {
    // The kernel takes pool chunks from the top of each node's RAM.
    std::map<uint32_t, uint64_t> used;
    for (const PoolMemory& m : pool->memory) {
      const MachineMemory* node = nullptr;
      for (const MachineMemory& mm : options_.memory) {
        if (mm.numa == m.numa) node = &mm;
      }
      if (node == nullptr) return Inval("write device_tree", absl::StrCat("NUMA node ", m.numa, " has no memory"));
      if (m.size == 0 || m.size % kPage != 0) return Inval("write device_tree", "pool memory must be page aligned");
      if (used[m.numa] + m.size > node->size) {
        return ErrnoStatus(ENOMEM, "write device_tree", absl::StrCat("NUMA node ", m.numa, " has too little memory"));
      }
      used[m.numa] += m.size;
      s.pool_memory.push_back({node->base + node->size - used[m.numa], m.size, m.numa});
    }
  }
  for (const PoolDevice& dev : pool->devices) {
    if (std::find(options_.pci_devices.begin(), options_.pci_devices.end(), dev.pci_id) == options_.pci_devices.end()) {
      return Inval("write device_tree", absl::StrCat("no PCI function ", dev.pci_id));
    }
    s.pool_devices.push_back(dev);
  }
  state_ = std::move(s);
  ++counters_.pool_changes;
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------- overlays

absl::Status EmulatedKernel::ApplyAll(const std::vector<Fragment>& fragments, bool reverse, Undo& undo,
                                      std::string* instance, Counters& delta) {
  Journal journal;
  for (size_t k = 0; k < fragments.size(); ++k) {
    const Fragment& f = fragments[reverse ? fragments.size() - 1 - k : k];
    absl::Status st = ApplyFragment(f, state_, journal, delta, undo, instance);
    if (!st.ok()) {
      journal.Restore(state_);
      return st;
    }
  }
  return absl::OkStatus();
}

// What the state's holders hold: who has a CPU or a device, whether a memory range is free.
// A view: it sees the state's changes as a transaction applies them.
// ---------------------------------------------------------------------------- syscalls

absl::Status EmulatedKernel::KexecFileLoad(int kernel_fd, int initrd_fd, absl::string_view cmdline, unsigned long flags) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  if (!(flags & kKexecMultikernel)) return Inval("kexec_file_load", "not a multikernel load");
  uint32_t id = static_cast<uint32_t>((flags & kKexecIdMask) >> 5);
  Instance* in = FindById(id);
  if (in == nullptr) return ErrnoStatus(ENOENT, "kexec_file_load", absl::StrCat("no instance with id ", id));
  if (flags & kKexecFileUnload) {
    if (in->status == "active" || in->active_at) return Busy("kexec_file_load unload", "the instance is running");
    if (in->status != "loaded") return Inval("kexec_file_load unload", "nothing is loaded");
    in->status = "ready";
    in->has_image = false;
    in->cmdline.clear();
    in->guest_profile.clear();
    in->panic_after.reset();
    in->hang_on_boot = false;
    ++counters_.unloads;
    Save();
    return absl::OkStatus();
  }
  if (in->status != "ready") return Busy("kexec_file_load", "a kernel is already loaded there");
  char magic[4] = {0, 0, 0, 0};
  if (kernel_fd < 0 || pread(kernel_fd, magic, 4, 0) != 4) return ErrnoStatus(EBADF, "kexec_file_load", "cannot read the kernel");
  if (memcmp(magic, "\x7f" "ELF", 4) != 0) return ErrnoStatus(ENOEXEC, "kexec_file_load", "not an ELF vmlinux");
  if (initrd_fd < 0 && !(flags & kKexecFileNoInitramfs)) return Inval("kexec_file_load", "no initrd and no KEXEC_FILE_NO_INITRAMFS");
  auto profile = GuestProfile(cmdline);
  if (!profile.ok()) return Inval("kexec_file_load", profile.status().message());
  ImageMarkers markers = ReadMarkers(kernel_fd);
  in->status = "loaded";
  in->has_image = true;
  in->cmdline = std::string(cmdline);
  in->guest_profile = *profile;
  in->panic_after = markers.panic_after;
  in->hang_on_boot = markers.hang_on_boot;
  in->segments = initrd_fd >= 0 ? 4 : 3;
  ++counters_.loads;
  Save();
  return absl::OkStatus();
}

absl::Status EmulatedKernel::Reboot(uint32_t cmd, uint32_t instance_id) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  Instance* in = FindById(instance_id);
  if (in == nullptr) return ErrnoStatus(ENOENT, "reboot", absl::StrCat("no instance with id ", instance_id));
  switch (cmd) {
    case kRebootStart:
      if (in->status == "active" || in->active_at) return Busy("start", "the instance is already running");
      if (in->status != "loaded") return Inval("start", absl::StrCat("the instance is ", in->status.empty() ? "empty" : in->status));
      in->hung = false;
      if (options_.boot_time <= absl::ZeroDuration()) {
        Activate(*in, Now());
      } else {
        in->active_at = Now() + options_.boot_time;
      }
      ++counters_.starts;
      Save();
      return absl::OkStatus();
    case kRebootHalt:
      if (in->status != "active" || in->halted_at) return Inval("halt", absl::StrCat("the instance is ", in->status));
      if (in->hung) {
        Stopped(*in, "failed");  // it never quiesces: the kernel gives up after 30 s
        Save();                  // a change like any other: kept, and its generation moves
        return ErrnoStatus(ETIMEDOUT, "halt", "the instance did not shut down");
      }
      ++counters_.halts;
      if (options_.halt_time + in->halt_delay <= absl::ZeroDuration() && !in->fail_next_halt) {
        Stopped(*in, "loaded");
      } else {
        in->halted_at = Now() + options_.halt_time + in->halt_delay;
      }
      Save();
      return absl::OkStatus();
    case kRebootForceHalt:
      if (in->status != "active" && in->status != "loaded" && in->status != "failed" && !in->active_at) {
        return Inval("force-halt", absl::StrCat("the instance is ", in->status));
      }
      if (in->status == "active" || in->active_at || in->halted_at) {
        Stopped(*in, "loaded");
      } else {
        in->status = "loaded";
      }
      ++counters_.force_halts;
      Save();
      return absl::OkStatus();
    default:
      return Inval("reboot", absl::StrFormat("unknown command 0x%x", cmd));
  }
}

// ---------------------------------------------------------------------------- faults

absl::Status EmulatedKernel::InjectPanic(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  auto it = state_.instances.find(std::string(instance));
  if (it == state_.instances.end()) return absl::NotFoundError(absl::StrCat("no instance ", instance));
  if (it->second.status != "active") return absl::FailedPreconditionError(absl::StrCat(instance, " is not active"));
  Stopped(it->second, "loaded");
  ++counters_.panics;
  Save();
  return absl::OkStatus();
}

absl::Status EmulatedKernel::InjectHang(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  auto it = state_.instances.find(std::string(instance));
  if (it == state_.instances.end()) return absl::NotFoundError(absl::StrCat("no instance ", instance));
  it->second.hung = true;
  Save();
  return absl::OkStatus();
}

void EmulatedKernel::FailNextOverlay(int err) {
  absl::MutexLock lock(&mu_);
  fail_next_overlay_ = err;
}

void EmulatedKernel::SetBusy(const std::string& resource, bool busy) {
  absl::MutexLock lock(&mu_);
  busy_.erase(std::remove(busy_.begin(), busy_.end(), resource), busy_.end());
  if (busy) busy_.push_back(resource);
}

absl::Status EmulatedKernel::SetHaltBehavior(absl::string_view instance, absl::Duration delay, bool fail) {
  absl::MutexLock lock(&mu_);
  auto it = state_.instances.find(std::string(instance));
  if (it == state_.instances.end()) return absl::NotFoundError(absl::StrCat("no instance ", instance));
  it->second.halt_delay = delay;
  it->second.fail_next_halt = fail;
  return absl::OkStatus();
}

bool EmulatedKernel::Probe(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  Advance(state_);
  auto it = state_.instances.find(std::string(instance));
  return it != state_.instances.end() && it->second.status == "active" && !it->second.hung;
}

}  // namespace mkfleet::kernel