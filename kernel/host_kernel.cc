#include "kernel/host_kernel.h"

#include <fcntl.h>
#include <signal.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <optional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "google/protobuf/text_format.h"
#include "kernel/errno_status.h"
#include "kernel/memory_regions.h"
#include "kernel/proc_parsers.h"

namespace mkfleet::kernel {
namespace v1 = mkfleet::v1;

// Holds our flock and the kerf lock file for the length of one transaction.
// A lock file holding the pid of a process that no longer exists (an agent killed inside
// a transaction) is removed; true when it was. Lock files without a pid (kerf's own) are
// never taken for stale.
bool StaleLock(const std::string& path) {
  std::ifstream in(path);
  int64_t pid = 0;
  if (!(in >> pid) || pid <= 0 || pid == getpid()) return false;
  if (kill(static_cast<pid_t>(pid), 0) == 0 || errno != ESRCH) return false;
  return unlink(path.c_str()) == 0 || errno == ENOENT;
}

class TxLock {
 public:
  // `lock_fd`: our open lock file, or -1.
  static absl::StatusOr<std::unique_ptr<TxLock>> Acquire(const HostKernelOptions& o, int lock_fd, Clock& clock) {
    auto lock = std::unique_ptr<TxLock>(new TxLock());
    if (lock_fd >= 0) {
      if (flock(lock_fd, LOCK_EX) != 0) return ErrnoStatus(errno, absl::StrCat("flock ", o.lock_path));
      lock->fd_ = lock_fd;
    }
    if (!o.kerf_lock_path.empty()) {
      absl::Duration deadline = clock.Monotonic() + o.lock_timeout;
      while (true) {
        int fd = open(o.kerf_lock_path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0600);
        if (fd >= 0) {
          // Our pid inside, so that a lock left by a killed agent can be told from a live one.
          std::string pid = absl::StrCat(getpid(), "\n");
          if (write(fd, pid.data(), pid.size()) < 0) {
            // An empty lock is still a lock; it just cannot be recognized as stale.
          }
          close(fd);
          lock->kerf_ = o.kerf_lock_path;
          break;
        }
        if (errno != EEXIST) return ErrnoStatus(errno, absl::StrCat("create ", o.kerf_lock_path));
        if (StaleLock(o.kerf_lock_path)) continue;
        if (clock.Monotonic() >= deadline) {
          return absl::UnavailableError(absl::StrCat("another tool holds ", o.kerf_lock_path));
        }
        clock.SleepFor(o.poll_interval);
      }
    }
    return lock;
  }
  ~TxLock() {
    if (!kerf_.empty()) unlink(kerf_.c_str());
    if (fd_ >= 0) flock(fd_, LOCK_UN);
  }

 private:
  TxLock() = default;
  int fd_ = -1;
  std::string kerf_;
};

namespace {

std::set<uint32_t> TxIds(const std::vector<std::string>& entries) {
  std::set<uint32_t> ids;
  for (const std::string& e : entries) {
    uint32_t n;
    if (absl::StartsWith(e, "tx_") && absl::SimpleAtoi(e.substr(3), &n)) ids.insert(n);
  }
  return ids;
}

std::string Hex(const unsigned char* d, size_t n) {
  std::string out;
  for (size_t i = 0; i < n; ++i) absl::StrAppendFormat(&out, "%02x", d[i]);
  return out;
}

Fragment Target(absl::string_view name) {
  Fragment f;
  f.target_path = absl::StrCat("/instances/", name);
  return f;
}

bool HasDevice(const InstanceInfo& info, const std::string& pci) {
  for (const auto& d : info.resources.devices) {
    if (d.pci_id == pci) return true;
  }
  return false;
}

std::string CpuList(const std::vector<CpuEntry>& cpus) {
  std::vector<uint64_t> ids;
  for (const CpuEntry& c : cpus) ids.push_back(c.physical_id);
  return absl::StrJoin(ids, ",");
}

}  // namespace

v1::KernelState ParseKernelState(absl::string_view status) {
  status = absl::StripAsciiWhitespace(status);
  if (status.empty()) return v1::KERNEL_STATE_EMPTY;
  if (status == "ready") return v1::KERNEL_STATE_READY;
  if (status == "loaded") return v1::KERNEL_STATE_LOADED;
  if (status == "active") return v1::KERNEL_STATE_ACTIVE;
  if (status == "failed") return v1::KERNEL_STATE_FAILED;
  return v1::KERNEL_STATE_UNKNOWN;
}

const char* KernelStateName(v1::KernelState s) {
  switch (s) {
    case v1::KERNEL_STATE_ABSENT:
      return "absent";
    case v1::KERNEL_STATE_EMPTY:
      return "empty";
    case v1::KERNEL_STATE_READY:
      return "ready";
    case v1::KERNEL_STATE_LOADED:
      return "loaded";
    case v1::KERNEL_STATE_ACTIVE:
      return "active";
    case v1::KERNEL_STATE_FAILED:
      return "failed";
    default:
      return "unknown";
  }
}

HostKernel::HostKernel(KernelFs& fs, Syscalls& sys, HostKernelOptions options)
    : fs_(fs), sys_(sys), options_(std::move(options)), clock_(options_.clock != nullptr ? options_.clock : &Clock::Real()) {}

HostKernel::~HostKernel() {
  if (lock_fd_ >= 0) close(lock_fd_);
}

absl::StatusOr<std::unique_ptr<TxLock>> HostKernel::LockForTx() {
  if (!options_.lock_path.empty() && lock_fd_ < 0) {
    lock_fd_ = open(options_.lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (lock_fd_ < 0) return ErrnoStatus(errno, absl::StrCat("open lock file ", options_.lock_path));
  }
  return TxLock::Acquire(options_, lock_fd_, *clock_);
}

std::string HostKernel::What(absl::string_view action, absl::string_view name) const {
  return absl::StrCat("host ", options_.host, ": ", action, name.empty() ? "" : " ", name);
}

absl::StatusOr<Dialect> HostKernel::Dialect_() {
  if (dialect_) return *dialect_;
  MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
  Dialect d = Dialect::kV1;
  if (!blob.empty()) {
    auto pool = DecodePool(blob, &d);
    if (!pool.ok()) return Annotate(pool.status(), What("read pool", ""));
  }
  dialect_ = d;
  return d;
}

absl::StatusOr<Dialect> HostKernel::ProbeDialect() {
  absl::MutexLock lock(&mu_);
  dialect_.reset();
  return Dialect_();
}

absl::StatusOr<InstanceInfo> HostKernel::Get(absl::string_view name, bool provenance, bool resources) {
  InstanceInfo info;
  info.name = std::string(name);
  auto status = fs_.Read(absl::StrCat("instances/", name, "/status"));
  if (!status.ok()) {
    if (ErrnoOf(status.status()) == ENOENT) {
      info.state = v1::KERNEL_STATE_ABSENT;
      auto cached = decoded_.find(name);
      if (cached != decoded_.end()) decoded_.erase(cached);
      return info;
    }
    return status.status();
  }
  info.state = ParseKernelState(*status);
  NoteState(name, info.state);
  MK_ASSIGN_OR_RETURN(std::string id, fs_.Read(absl::StrCat("instances/", name, "/id")));
  if (!absl::SimpleAtoi(absl::StripAsciiWhitespace(id), &info.id)) {
    return absl::InternalError(absl::StrCat(What("read id of", name), ": \"", id, "\""));
  }
  if (resources) {
    MK_ASSIGN_OR_RETURN(std::string dt, fs_.Read(absl::StrCat("instances/", name, "/device_tree")));
    auto cached = decoded_.find(name);
    if (cached != decoded_.end() && cached->second.first == dt) {
      info.resources = cached->second.second;
    } else {
      MK_ASSIGN_OR_RETURN(info.resources, DecodeInstance(dt));
      decoded_[std::string(name)] = {std::move(dt), info.resources};
    }
  }
  if (provenance) {
    mkfleet::v1::InstanceRecord record = ReadRecord(name);
    info.provenance = record.provenance();
    info.owner = record.owner();
  }
  return info;
}

absl::StatusOr<v1::KernelState> HostKernel::StateOf(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
  return info.state;
}

absl::StatusOr<v1::KernelState> HostKernel::ReadState(absl::string_view name) {
  auto status = fs_.Read(absl::StrCat("instances/", name, "/status"));
  if (!status.ok()) {
    if (ErrnoOf(status.status()) == ENOENT) return v1::KERNEL_STATE_ABSENT;
    return status.status();
  }
  v1::KernelState state = ParseKernelState(*status);
  NoteState(name, state);
  return state;
}

void HostKernel::NoteState(absl::string_view name, v1::KernelState state) {
  if (state != v1::KERNEL_STATE_ACTIVE) return;
  absl::MutexLock lock(&seen_mu_);
  ++active_reads_[std::string(name)];
}

uint64_t HostKernel::ActiveReads(absl::string_view name) {
  absl::MutexLock lock(&seen_mu_);
  auto it = active_reads_.find(std::string(name));
  return it == active_reads_.end() ? 0 : it->second;
}

absl::StatusOr<HostObservation> HostKernel::Observe() {
  MK_ASSIGN_OR_RETURN(std::shared_ptr<const HostObservation> obs, ObserveShared());
  return *obs;
}

absl::StatusOr<std::shared_ptr<const HostObservation>> HostKernel::ObserveShared() {
  const bool tracked = options_.cache_records && options_.kernel_generation && options_.kernel_next_change;
  // Read before the observation: a change during it makes the next one read again.
  const uint64_t generation = tracked ? options_.kernel_generation() : 0;
  uint64_t records_changed = 0;
  if (tracked) {
    absl::MutexLock lock(&records_mu_);
    records_changed = records_changed_;
  }
  absl::MutexLock lock(&mu_);
  if (tracked && last_observation_ && last_observation_->generation == generation &&
      last_observation_->records_changed == records_changed && clock_->Monotonic() < last_observation_->until) {
    return last_observation_->obs;
  }
  last_observation_.reset();
  HostObservation obs;
  obs.read = observe_reads_.fetch_add(1, std::memory_order_relaxed) + 1;
  MK_ASSIGN_OR_RETURN(obs.dialect, Dialect_());
  MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
  if (!blob.empty()) {
    MK_ASSIGN_OR_RETURN(obs.pool, DecodePool(blob));
  }
  MK_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.List("instances"));
  for (const std::string& n : names) {
    auto info = Get(n, /*provenance=*/true);
    if (!info.ok()) return Annotate(info.status(), What("observe", n));
    if (info->state != v1::KERNEL_STATE_ABSENT) obs.instances.push_back(*std::move(info));
  }
  if (!obs.instances.empty()) {
    auto memory = MemoryRegions(obs.pool);
    if (memory.ok()) {
      for (InstanceInfo& i : obs.instances) {
        for (const auto& [node, regions] : (*memory)[i.name]) {
          for (const Region& r : regions) i.memory_by_node[node] += r.size;
          for (auto r = regions.rbegin(); r != regions.rend(); ++r) {
            if (r->index != 0) i.removable_by_node[node].push_back(r->size);
          }
        }
      }
    }
  }
  auto shared = std::make_shared<const HostObservation>(std::move(obs));
  if (tracked) last_observation_ = LastObservation{shared, generation, records_changed, options_.kernel_next_change()};
  return shared;
}

absl::StatusOr<std::map<std::string, HostKernel::RegionsByNode>> HostKernel::MemoryRegions(const PoolState& pool) {
  // Each instance's /proc/iomem regions inside the pool's chunks.
  MK_ASSIGN_OR_RETURN(std::string iomem, fs_.ReadProc("iomem"));
  MK_ASSIGN_OR_RETURN(std::vector<IomemRegion> regions, ParseIomem(iomem));
  std::map<std::string, RegionsByNode> out;
  for (const auto& ir : FindPoolRegions(regions).instances) {
    for (const PoolMemory& chunk : pool.memory) {
      if (ir.region.start >= chunk.base && ir.region.start < chunk.base + chunk.size) {
        out[ir.instance][chunk.numa].push_back({ir.index, ir.region.start, ir.region.size()});
        break;
      }
    }
  }
  for (auto& [name, nodes] : out) {
    for (auto& [node, list] : nodes) {
      std::sort(list.begin(), list.end(), [](const Region& a, const Region& b) { return a.index < b.index; });
    }
  }
  return out;
}

absl::StatusOr<HostKernel::RegionsByNode> HostKernel::InstanceRegions(absl::string_view name) {
  MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
  PoolState pool;
  if (!blob.empty()) {
    MK_ASSIGN_OR_RETURN(pool, DecodePool(blob));
  }
  MK_ASSIGN_OR_RETURN(auto all, MemoryRegions(pool));
  return all[std::string(name)];
}

absl::StatusOr<std::map<uint32_t, uint64_t>> HostKernel::InstanceMemory(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(RegionsByNode regions, InstanceRegions(name));
  std::map<uint32_t, uint64_t> out;
  for (const auto& [node, list] : regions) {
    for (const Region& r : list) out[node] += r.size;
  }
  return out;
}

absl::Status HostKernel::Guard(absl::string_view action, absl::string_view name, const InstanceInfo& info,
                               std::initializer_list<v1::KernelState> allowed) {
  for (v1::KernelState s : allowed) {
    if (info.state == s) return absl::OkStatus();
  }
  std::vector<std::string> names;
  for (v1::KernelState s : allowed) names.push_back(KernelStateName(s));
  return absl::FailedPreconditionError(absl::StrCat(What(action, name), ": the instance is ", KernelStateName(info.state),
                                                    "; ", action, " needs it ", absl::StrJoin(names, " or ")));
}

absl::Status HostKernel::Transact(absl::string_view action, absl::string_view name, const Overlay& overlay) {
  MK_ASSIGN_OR_RETURN(Dialect d, Dialect_());
  MK_ASSIGN_OR_RETURN(std::string blob, EncodeOverlay(overlay, d));
  MK_ASSIGN_OR_RETURN(auto lock, LockForTx());
  // The snapshot of transaction ids before the write is kept between calls as the highest
  // id seen: under the locks nobody else writes, so ours is the next one. It is verified
  // by its dtbo, and a full listing settles any doubt (another writer that ignores locks).
  if (!max_tx_) {
    MK_ASSIGN_OR_RETURN(std::vector<std::string> before, fs_.List("overlays"));
    std::set<uint32_t> ids = TxIds(before);
    max_tx_ = ids.empty() ? 0 : *ids.rbegin();
  }
  const uint32_t before_max = *max_tx_;
  absl::Status write = fs_.Write("overlays/new", blob);
  std::optional<uint32_t> mine;
  auto is_mine = [&](uint32_t id) {
    auto dtbo = fs_.Read(absl::StrCat("overlays/tx_", id, "/dtbo"));
    return dtbo.ok() && *dtbo == blob;
  };
  if (is_mine(before_max + 1)) {
    mine = before_max + 1;
  } else {
    MK_ASSIGN_OR_RETURN(std::vector<std::string> after, fs_.List("overlays"));
    for (uint32_t id : TxIds(after)) {
      if (id > before_max && is_mine(id)) mine = id;
    }
  }
  if (!mine) {
    max_tx_.reset();
    if (!write.ok()) return ErrnoStatus(ErrnoOf(write), What(action, name), write.message());
    return absl::InternalError(absl::StrCat(What(action, name), ": the kernel made no transaction for the overlay"));
  }
  max_tx_ = std::max(*max_tx_, *mine);
  std::string tx = absl::StrCat("overlays/tx_", *mine);
  auto status = fs_.Read(tx + "/status");
  std::string st = status.ok() ? std::string(absl::StripAsciiWhitespace(*status)) : "";
  if (write.ok() && st == "applied") return absl::OkStatus();
  // Failed: take the transaction away and say what the kernel said.
  fs_.Rmdir(tx).IgnoreError();
  if (!write.ok()) {
    int err = ErrnoOf(write);
    std::string detail(write.message());
    size_t paren = detail.find(" (");
    detail = paren != std::string::npos ? detail.substr(paren + 2, detail.size() - paren - 3) : "";
    return ErrnoStatus(err != 0 ? err : EIO, What(action, name), detail);
  }
  return absl::InternalError(absl::StrCat(What(action, name), ": transaction tx_", *mine, " is ", st));
}

absl::Status HostKernel::WaitFor(absl::string_view name, v1::KernelState want, absl::Duration timeout,
                                 uint64_t active_reads) {
  absl::Duration deadline = clock_->Monotonic() + timeout;
  while (true) {
    MK_ASSIGN_OR_RETURN(v1::KernelState state, ReadState(name));
    if (state == want) return absl::OkStatus();
    if (want == v1::KERNEL_STATE_ACTIVE && state == v1::KERNEL_STATE_LOADED && active_reads != ~uint64_t{0} &&
        ActiveReads(name) > active_reads) {
      return absl::AbortedError(absl::StrCat(What("start", name),
                                             ": the kernel stopped right after it booted (a panic or poweroff inside)"));
    }
    if (state == v1::KERNEL_STATE_FAILED) {
      return absl::InternalError(absl::StrCat(What("wait for", name), ": the instance failed"));
    }
    if (clock_->Monotonic() >= deadline) {
      return absl::DeadlineExceededError(absl::StrCat(What("wait for", name), ": still ", KernelStateName(state),
                                                      " after ", absl::FormatDuration(timeout), ", want ",
                                                      KernelStateName(want)));
    }
    clock_->SleepFor(options_.poll_interval);
  }
}

absl::StatusOr<std::vector<uint64_t>> HostKernel::PoolCpus() {
  absl::MutexLock lock(&mu_);
  if (!pool_cpus_) {
    MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
    if (blob.empty()) return std::vector<uint64_t>();
    MK_ASSIGN_OR_RETURN(PoolState pool, DecodePool(blob));
    std::sort(pool.cpus.begin(), pool.cpus.end());
    pool_cpus_ = pool.cpus;
  }
  return *pool_cpus_;
}

absl::Status HostKernel::SetPool(const PoolState& pool) {
  absl::MutexLock lock(&mu_);
  pool_cpus_.reset();
  MK_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.List("instances"));
  if (!names.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(What("set pool", ""), ": ", names.size(),
                                                      " instances exist; the pool baseline can change only while none does"));
  }
  MK_ASSIGN_OR_RETURN(Dialect d, Dialect_());
  MK_ASSIGN_OR_RETURN(std::string blob, EncodeBaseline(pool, d));
  MK_ASSIGN_OR_RETURN(auto tx_lock, LockForTx());
  absl::Status s = fs_.Write("device_tree", blob);
  if (!s.ok()) return Annotate(s, What("set pool", ""));
  return absl::OkStatus();
}

absl::Status HostKernel::ChangePool(const PoolState& target, const std::map<uint64_t, uint32_t>& cpu_numa,
                                    std::vector<std::string>* kept) {
  absl::MutexLock lock(&mu_);
  pool_cpus_.reset();
  MK_ASSIGN_OR_RETURN(std::vector<std::string> names, fs_.List("instances"));
  MK_ASSIGN_OR_RETURN(Dialect d, Dialect_());
  MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
  PoolState current;
  if (!blob.empty()) {
    MK_ASSIGN_OR_RETURN(current, DecodePool(blob));
  }
  auto totals = [](const PoolState& p) {
    std::map<uint32_t, uint64_t> t;
    for (const PoolMemory& m : p.memory) t[m.numa] += m.size;
    return t;
  };
  std::set<uint64_t> have_cpus(current.cpus.begin(), current.cpus.end());
  std::set<uint64_t> want_cpus(target.cpus.begin(), target.cpus.end());
  std::set<std::string> have_devs, want_devs;
  for (const PoolDevice& dev : current.devices) have_devs.insert(dev.pci_id);
  for (const PoolDevice& dev : target.devices) want_devs.insert(dev.pci_id);
  std::map<uint32_t, uint64_t> have_mem = totals(current), want_mem = totals(target);
  if (have_cpus == want_cpus && have_devs == want_devs && have_mem == want_mem) return absl::OkStatus();
  if (names.empty()) {
    // Nothing is lent: the baseline can be written whole.
    MK_ASSIGN_OR_RETURN(std::string baseline, EncodeBaseline(target, d));
    MK_ASSIGN_OR_RETURN(auto tx_lock, LockForTx());
    absl::Status s = fs_.Write("device_tree", baseline);
    if (!s.ok()) return Annotate(s, What("pool-change", ""));
    return absl::OkStatus();
  }
  // What the instances hold stays.
  std::set<uint64_t> lent_cpus;
  std::set<std::string> lent_devs;
  for (const std::string& name : names) {
    MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/true));
    lent_cpus.insert(info.resources.cpus.begin(), info.resources.cpus.end());
    for (const auto& dev : info.resources.devices) lent_devs.insert(dev.pci_id);
  }
  auto note = [&](const std::string& line) {
    if (kept != nullptr) kept->push_back(line);
  };
  Fragment f;
  f.target_path = "/resources";
  for (uint64_t c : have_cpus) {
    if (want_cpus.count(c)) continue;
    if (lent_cpus.count(c)) {
      note(absl::StrCat("CPU ", c, " stays in the pool: it is lent to an instance"));
      continue;
    }
    auto n = cpu_numa.find(c);
    f.cpu_remove.push_back({c, n != cpu_numa.end() ? n->second : 0, 0});
  }
  for (uint64_t c : want_cpus) {
    if (have_cpus.count(c)) continue;
    auto n = cpu_numa.find(c);
    f.cpu_add.push_back({c, n != cpu_numa.end() ? n->second : 0, 0});
  }
  for (const PoolDevice& dev : current.devices) {
    if (want_devs.count(dev.pci_id)) continue;
    if (lent_devs.count(dev.pci_id)) {
      note(absl::StrCat(dev.pci_id, " stays in the pool: it is lent to an instance"));
      continue;
    }
    f.device_remove.push_back({dev.pci_id, dev.name, "", 0});
  }
  for (const PoolDevice& dev : target.devices) {
    if (!have_devs.count(dev.pci_id)) f.device_add.push_back({dev.pci_id, dev.name, "", 0});
  }
  std::set<uint32_t> nodes;
  for (const auto& [n, b] : have_mem) nodes.insert(n);
  for (const auto& [n, b] : want_mem) nodes.insert(n);
  for (uint32_t n : nodes) {
    uint64_t have = have_mem[n], want = want_mem[n];
    if (want > have) {
      f.memory_add.push_back({0, want - have, n});
    } else if (want < have) {
      note(absl::StrCat("memory on NUMA node ", n, " stays at ", have, " bytes (want ", want,
                        "): a pool in use only grows"));
    }
  }
  if (f.cpu_add.empty() && f.cpu_remove.empty() && f.device_add.empty() && f.device_remove.empty() &&
      f.memory_add.empty()) {
    return absl::OkStatus();
  }
  return Transact("pool-change", "", {{f}});
}

absl::Status HostKernel::Create(absl::string_view name, std::optional<uint32_t> id, const InstanceResources& resources,
                                const std::string& owner, const std::vector<MemoryEntry>& extra_memory) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name));
  if (info.state != v1::KERNEL_STATE_ABSENT) {
    // Idempotent: the same instance already there.
    std::set<uint64_t> want(resources.cpus.begin(), resources.cpus.end());
    std::set<uint64_t> have(info.resources.cpus.begin(), info.resources.cpus.end());
    if ((!id || *id == info.id) && want == have) {
      v1::InstanceRecord record = ReadRecord(name);
      if (owner.empty() || record.owner() == owner) return absl::OkStatus();
      record.set_owner(owner);
      return WriteRecord(name, record);
    }
    return absl::AlreadyExistsError(absl::StrCat(What("create", name), ": an instance of that name exists with other resources"));
  }
  if (id && (*id < 1 || *id > 511)) return absl::InvalidArgumentError(absl::StrCat(What("create", name), ": id must be 1..511"));
  if (resources.cpus.empty()) return absl::InvalidArgumentError(absl::StrCat(What("create", name), ": no CPUs"));
  Fragment f;
  f.target_path = "/instances";
  f.create_name = std::string(name);
  f.create_id = id;
  f.create_resources = resources;
  MK_ASSIGN_OR_RETURN(Dialect d, Dialect_());
  if (d == Dialect::kLegacy && f.create_resources.memory_base == 0) {
    // The older kernel wants user space to choose the range: first fit inside the pool,
    // from /proc/iomem.
    MK_ASSIGN_OR_RETURN(std::string iomem, fs_.ReadProc("iomem"));
    MK_ASSIGN_OR_RETURN(std::vector<IomemRegion> regions, ParseIomem(iomem));
    PoolRegions pr = FindPoolRegions(regions);
    uint64_t size = resources.memory_bytes;
    bool found = false;
    for (const IomemRegion& p : pr.pool) {
      for (uint64_t base = p.start; !found && base + size <= p.end + 1; base += 128ull << 20) {
        bool clash = false;
        for (const auto& ir : pr.instances) {
          clash |= base < ir.region.end + 1 && ir.region.start < base + size;
        }
        if (!clash) {
          f.create_resources.memory_base = base;
          found = true;
        }
      }
    }
    if (!found) return absl::ResourceExhaustedError(absl::StrCat(What("create", name), ": no free pool range of ", size, " bytes"));
  }
  Overlay overlay{{f}};
  if (!extra_memory.empty()) {
    Fragment more = Target(name);
    more.memory_add = extra_memory;
    overlay.fragments.push_back(std::move(more));
  }
  // The record first: a crash between the two leaves a record without an instance (removed
  // with the next create or remove of the name), never an instance without its owner.
  v1::InstanceRecord record;
  record.set_owner(owner);
  MK_RETURN_IF_ERROR(WriteRecord(name, record));
  absl::Status created = Transact("create", name, overlay);
  if (!created.ok()) RemoveRecord(name);
  return created;
}

absl::Status HostKernel::SetOwner(absl::string_view name, const std::string& owner) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
  if (info.state == v1::KERNEL_STATE_ABSENT) {
    return absl::NotFoundError(absl::StrCat(What("claim", name), ": no such instance"));
  }
  v1::InstanceRecord record = ReadRecord(name);
  if (record.owner() == owner) return absl::OkStatus();
  record.set_owner(owner);
  return WriteRecord(name, record);
}

// The kernel and initrd of `image`, opened, hashed and checked (not loaded).
struct HostKernel::OpenedImage {
  ImageFile kernel;
  ImageFile initrd;  // fd -1 when there is none
};

absl::StatusOr<HostKernel::OpenedImage> HostKernel::OpenImage(absl::string_view name, const KernelImage& image) {
  const std::string what = What("load", name);
  if (options_.require_digest && image.sha256.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": this agent runs --require-digest and the spec pins no ",
                                                      "kernel.sha256"));
  }
  OpenedImage out;
  auto kernel = OpenImageFile(options_.images, image.kernel_path, "kernel image", *clock_);
  if (!kernel.ok()) return Annotate(kernel.status(), what);
  out.kernel = *std::move(kernel);
  MK_RETURN_IF_ERROR(Annotate(CheckElfVmlinux(out.kernel.head(), image.kernel_path), what));
  if (!image.sha256.empty() && image.sha256 != out.kernel.sha256()) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": kernel ", image.kernel_path, " has sha256 ",
                                                      out.kernel.sha256(), ", the spec pins ", image.sha256));
  }
  if (!image.initrd_path.empty()) {
    auto initrd = OpenImageFile(options_.images, image.initrd_path, "initrd", *clock_);
    if (!initrd.ok()) return Annotate(initrd.status(), what);
    out.initrd = *std::move(initrd);
  }
  return out;
}

absl::Status HostKernel::Load(absl::string_view name, const KernelImage& image) {
  // Read and hashed before the lock: a large file never holds up observation.
  MK_ASSIGN_OR_RETURN(OpenedImage files, OpenImage(name, image));
  const std::string& sha = files.kernel.sha256();
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/true, /*resources=*/false));
  if (info.state == v1::KERNEL_STATE_LOADED || info.state == v1::KERNEL_STATE_ACTIVE) {
    if (info.provenance.kernel_sha256() == sha && info.provenance.cmdline() == image.cmdline) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(What("load", name), ": another kernel is loaded; unload it first"));
  }
  MK_RETURN_IF_ERROR(Guard("load", name, info, {v1::KERNEL_STATE_READY}));
  const bool has_initrd = files.initrd.fd() >= 0;
  absl::Status st =
      sys_.KexecFileLoad(files.kernel.fd(), files.initrd.fd(), image.cmdline, KexecFlags(info.id, false, has_initrd));
  if (!st.ok()) return ErrnoStatus(ErrnoOf(st), What("load", name), st.message());
  v1::Provenance p;
  p.set_kernel_path(image.kernel_path);
  p.set_kernel_sha256(sha);
  p.set_initrd_path(image.initrd_path);
  p.set_initrd_sha256(has_initrd ? files.initrd.sha256() : "");
  p.set_cmdline(image.cmdline);
  p.set_rootfs_image(image.rootfs_image);
  p.set_loaded_unix_ms(absl::ToUnixMillis(clock_->Now()));
  v1::InstanceRecord record = ReadRecord(name);
  *record.mutable_provenance() = p;
  return WriteRecord(name, record);
}

absl::Status HostKernel::CheckImage(absl::string_view name, const KernelImage& image) {
  return OpenImage(name, image).status();
}

absl::Status HostKernel::Start(absl::string_view name, bool wait) {
  const uint64_t active_reads = ActiveReads(name);
  {
    absl::MutexLock lock(&mu_);
    MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
    if (info.state == v1::KERNEL_STATE_ACTIVE) return absl::OkStatus();
    MK_RETURN_IF_ERROR(Guard("start", name, info, {v1::KERNEL_STATE_LOADED}));
    absl::Status st = sys_.Reboot(kRebootStart, info.id);
    // EBUSY: it is booting already (the watchdog restarted it): what was asked for is
    // happening, so this waits for it like for its own start.
    if (!st.ok() && ErrnoOf(st) != EBUSY) return ErrnoStatus(ErrnoOf(st), What("start", name), st.message());
  }
  if (!wait) return absl::OkStatus();
  return WaitFor(name, v1::KERNEL_STATE_ACTIVE, options_.start_timeout, active_reads);
}

absl::Status HostKernel::Halt(absl::string_view name, bool force) {
  const char* action = force ? "force-halt" : "halt";
  {
    absl::MutexLock lock(&mu_);
    MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
    if (info.state == v1::KERNEL_STATE_LOADED && !force) return absl::OkStatus();
    if (force) {
      MK_RETURN_IF_ERROR(
          Guard(action, name, info, {v1::KERNEL_STATE_ACTIVE, v1::KERNEL_STATE_LOADED, v1::KERNEL_STATE_FAILED}));
    } else {
      MK_RETURN_IF_ERROR(Guard(action, name, info, {v1::KERNEL_STATE_ACTIVE}));
    }
    absl::Status st = sys_.Reboot(force ? kRebootForceHalt : kRebootHalt, info.id);
    if (!st.ok()) return ErrnoStatus(ErrnoOf(st), What(action, name), st.message());
  }
  return WaitFor(name, v1::KERNEL_STATE_LOADED, options_.halt_timeout);
}

absl::Status HostKernel::Unload(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
  if (info.state == v1::KERNEL_STATE_READY) return absl::OkStatus();
  MK_RETURN_IF_ERROR(Guard("unload", name, info, {v1::KERNEL_STATE_LOADED}));
  absl::Status st = sys_.KexecFileLoad(-1, -1, "", KexecFlags(info.id, true, false));
  if (!st.ok()) return ErrnoStatus(ErrnoOf(st), What("unload", name), st.message());
  v1::InstanceRecord record = ReadRecord(name);
  if (record.has_provenance()) {
    record.clear_provenance();
    return WriteRecord(name, record);
  }
  return absl::OkStatus();
}

absl::Status HostKernel::Remove(absl::string_view name) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name, /*provenance=*/false, /*resources=*/false));
  if (info.state == v1::KERNEL_STATE_ABSENT) {
    RemoveRecord(name);
    return absl::OkStatus();
  }
  MK_RETURN_IF_ERROR(Guard("remove", name, info, {v1::KERNEL_STATE_READY, v1::KERNEL_STATE_EMPTY}));
  Fragment f;
  f.target_path = "/instances";
  f.remove_name = std::string(name);
  MK_RETURN_IF_ERROR(Transact("remove", name, {{f}}));
  RemoveRecord(name);
  return absl::OkStatus();
}

absl::StatusOr<InstanceInfo> HostKernel::ForHotplug(absl::string_view action, absl::string_view name, bool allow_failed) {
  MK_ASSIGN_OR_RETURN(InstanceInfo info, Get(name));
  if (allow_failed) {
    MK_RETURN_IF_ERROR(Guard(action, name, info,
                             {v1::KERNEL_STATE_READY, v1::KERNEL_STATE_LOADED, v1::KERNEL_STATE_ACTIVE, v1::KERNEL_STATE_FAILED}));
  } else {
    MK_RETURN_IF_ERROR(Guard(action, name, info, {v1::KERNEL_STATE_READY, v1::KERNEL_STATE_LOADED, v1::KERNEL_STATE_ACTIVE}));
  }
  return info;
}

absl::Status HostKernel::AddCpus(absl::string_view name, const std::vector<CpuEntry>& cpus) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("cpu-add", name));
  Fragment f = Target(name);
  for (const CpuEntry& c : cpus) {
    if (std::find(info.resources.cpus.begin(), info.resources.cpus.end(), c.physical_id) == info.resources.cpus.end()) {
      f.cpu_add.push_back(c);
    }
  }
  if (f.cpu_add.empty()) return absl::OkStatus();
  return Transact(absl::StrCat("cpu-add ", CpuList(f.cpu_add), " to"), name, {{f}});
}

absl::Status HostKernel::RemoveCpus(absl::string_view name, const std::vector<CpuEntry>& cpus) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("cpu-remove", name));
  Fragment f = Target(name);
  for (const CpuEntry& c : cpus) {
    auto pos = std::find(info.resources.cpus.begin(), info.resources.cpus.end(), c.physical_id);
    if (pos == info.resources.cpus.end()) continue;
    if (pos == info.resources.cpus.begin()) {
      return absl::FailedPreconditionError(absl::StrCat(What("cpu-remove", name), ": CPU ", c.physical_id,
                                                        " is its boot CPU, which cannot be removed"));
    }
    f.cpu_remove.push_back(c);
  }
  if (f.cpu_remove.empty()) return absl::OkStatus();
  return Transact(absl::StrCat("cpu-remove ", CpuList(f.cpu_remove), " from"), name, {{f}});
}

absl::Status HostKernel::AddMemory(absl::string_view name, const std::vector<MemoryEntry>& memory) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("memory-add", name));
  for (const MemoryEntry& m : memory) {
    if (info.state == v1::KERNEL_STATE_ACTIVE && (m.base % (128ull << 20) || m.size % (128ull << 20))) {
      return absl::InvalidArgumentError(absl::StrFormat("%s: 0x%x+0x%x: memory added to a running instance must be "
                                                        "128Mi aligned and sized", What("memory-add", name), m.base, m.size));
    }
  }
  Fragment f = Target(name);
  f.memory_add = memory;
  return Transact("memory-add to", name, {{f}});
}

absl::Status HostKernel::RemoveMemory(absl::string_view name, const std::vector<MemoryEntry>& memory) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("memory-remove", name));
  Fragment f = Target(name);
  f.memory_remove = memory;
  return Transact("memory-remove from", name, {{f}});
}

absl::Status HostKernel::AddDevices(absl::string_view name, const std::vector<DeviceEntry>& devices) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("device-add", name));
  Fragment f = Target(name);
  for (const DeviceEntry& d : devices) {
    if (!HasDevice(info, d.pci_id)) f.device_add.push_back(d);
  }
  if (f.device_add.empty()) return absl::OkStatus();
  return Transact("device-add to", name, {{f}});
}

absl::Status HostKernel::RemoveDevices(absl::string_view name, const std::vector<DeviceEntry>& devices) {
  absl::MutexLock lock(&mu_);
  // Devices may also leave a failed instance (failover).
  MK_ASSIGN_OR_RETURN(InstanceInfo info, ForHotplug("device-remove", name, /*allow_failed=*/true));
  Fragment f = Target(name);
  for (const DeviceEntry& d : devices) {
    if (HasDevice(info, d.pci_id)) f.device_remove.push_back(d);
  }
  if (f.device_remove.empty()) return absl::OkStatus();
  return Transact("device-remove from", name, {{f}});
}

absl::Status HostKernel::MoveDevices(absl::string_view from, absl::string_view to, const std::vector<DeviceEntry>& devices) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(InstanceInfo src, Get(from));
  MK_ASSIGN_OR_RETURN(InstanceInfo dst, Get(to));
  MK_RETURN_IF_ERROR(Guard("move devices to", to, dst, {v1::KERNEL_STATE_READY, v1::KERNEL_STATE_LOADED, v1::KERNEL_STATE_ACTIVE}));
  Fragment out = Target(from), in = Target(to);
  for (const DeviceEntry& d : devices) {
    if (HasDevice(dst, d.pci_id)) continue;
    if (HasDevice(src, d.pci_id)) out.device_remove.push_back(d);
    in.device_add.push_back(d);
  }
  if (in.device_add.empty()) return absl::OkStatus();
  Overlay o;
  if (!out.device_remove.empty()) o.fragments.push_back(out);
  o.fragments.push_back(in);
  return Transact(absl::StrCat("move devices from ", from, " to"), to, o);
}

absl::StatusOr<std::vector<MemoryEntry>> HostKernel::FreePoolMemory(uint32_t numa, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  constexpr uint64_t kBlock = 128ull << 20;
  MK_ASSIGN_OR_RETURN(std::string blob, fs_.Read("device_tree"));
  MK_ASSIGN_OR_RETURN(PoolState pool, DecodePool(blob));
  MK_ASSIGN_OR_RETURN(std::string iomem, fs_.ReadProc("iomem"));
  MK_ASSIGN_OR_RETURN(std::vector<IomemRegion> regions, ParseIomem(iomem));
  PoolRegions pr = FindPoolRegions(regions);
  std::vector<MemoryEntry> out;
  uint64_t left = (bytes + kBlock - 1) / kBlock * kBlock;
  for (const PoolMemory& chunk : pool.memory) {
    if (chunk.numa != numa) continue;
    for (uint64_t b = (chunk.base + kBlock - 1) / kBlock * kBlock; left > 0 && b + kBlock <= chunk.base + chunk.size;
         b += kBlock) {
      bool taken = false;
      for (const auto& ir : pr.instances) taken |= b <= ir.region.end && ir.region.start < b + kBlock;
      if (taken) continue;
      if (!out.empty() && out.back().base + out.back().size == b) {
        out.back().size += kBlock;
      } else {
        out.push_back({b, kBlock, numa});
      }
      left -= kBlock;
    }
  }
  if (left > 0) {
    return absl::ResourceExhaustedError(absl::StrCat(What("memory-add", ""), ": not enough free pool memory on NUMA node ", numa));
  }
  return out;
}

absl::StatusOr<std::vector<MemoryEntry>> HostKernel::MemoryToRelease(absl::string_view name, uint32_t numa, uint64_t bytes) {
  absl::MutexLock lock(&mu_);
  MK_RETURN_IF_ERROR(Get(name).status());
  MK_ASSIGN_OR_RETURN(RegionsByNode regions, InstanceRegions(name));
  // Whole regions, the last added first, never the first (it holds the image).
  std::vector<Region> removable;
  const std::vector<Region>& mine = regions[numa];
  for (auto r = mine.rbegin(); r != mine.rend(); ++r) {
    if (r->index != 0) removable.push_back(*r);
  }
  std::vector<uint64_t> sizes;
  for (const Region& r : removable) sizes.push_back(r.size);
  std::optional<std::vector<size_t>> pick = PickWholeRegions(sizes, bytes);
  if (!pick) {
    return absl::FailedPreconditionError(absl::StrCat(What("memory-remove", name), ": no whole regions adding up to ",
                                                      bytes, " bytes on NUMA node ", numa, " (its first region holds the image)"));
  }
  std::vector<MemoryEntry> out;
  for (size_t i : *pick) out.push_back({removable[i].base, removable[i].size, numa});
  return out;
}

std::string HostKernel::RecordPath(absl::string_view name) const {
  return absl::StrCat(options_.state_dir, "/", name, ".record");
}

v1::InstanceRecord HostKernel::ReadRecord(absl::string_view name) const {
  v1::InstanceRecord record;
  if (options_.state_dir.empty()) return record;
  if (options_.cache_records) {
    absl::MutexLock lock(&records_mu_);
    auto cached = records_.find(name);
    if (cached != records_.end()) return cached->second;
  }
  auto data = ReadFile(RecordPath(name));
  if (data.ok()) {
    record.ParseFromString(*data);
  } else {
    // The first format kept only the provenance, as text.
    auto text = ReadFile(absl::StrCat(options_.state_dir, "/", name, ".provenance"));
    if (text.ok()) google::protobuf::TextFormat::ParseFromString(*text, record.mutable_provenance());
  }
  CacheRecord(name, record);
  return record;
}

void HostKernel::CacheRecord(absl::string_view name, std::optional<v1::InstanceRecord> record) const {
  if (!options_.cache_records) return;
  absl::MutexLock lock(&records_mu_);
  ++records_changed_;
  if (record) {
    records_[std::string(name)] = *std::move(record);
  } else {
    records_.erase(std::string(name));
  }
}

absl::Status HostKernel::WriteRecord(absl::string_view name, const v1::InstanceRecord& record) {
  if (options_.state_dir.empty()) return absl::OkStatus();
  std::error_code ec;
  std::filesystem::create_directories(options_.state_dir, ec);
  CacheRecord(name, std::nullopt);  // read again should the write fail half-way
  // Not synced: a record lives no longer than the instance it describes, and no instance
  // outlives the host kernel. An agent that crashes finds the file in the page cache; a power
  // loss takes the instances too, and a record left without its instance is replaced by the
  // next create of the name or dropped by its remove. (A sync here was two fsyncs per create,
  // load and unload: most of an agent batch's time.)
  MK_RETURN_IF_ERROR(Annotate(WriteFileAtomically(RecordPath(name), record.SerializeAsString(), 0600, /*sync=*/false),
                              What("record owner and provenance of", name)));
  CacheRecord(name, record);
  return absl::OkStatus();
}

void HostKernel::RemoveRecord(absl::string_view name) {
  if (options_.state_dir.empty()) return;
  CacheRecord(name, std::nullopt);
  // Not synced either (see WriteRecord): a record that comes back after a power loss describes
  // an instance that is gone too.
  unlink(RecordPath(name).c_str());
  unlink(absl::StrCat(options_.state_dir, "/", name, ".provenance").c_str());
}

}  // namespace mkfleet::kernel
