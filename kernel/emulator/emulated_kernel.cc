#include "kernel/emulator/emulated_kernel.h"

#include "kernel/emulator/first_fit.h"

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

// The inverse of a transaction: fragments to apply, last first, to roll it back.
struct EmulatedKernel::Undo {
  std::vector<Fragment> inverse;
};

struct EmulatedKernel::Journal {
  bool pool_saved = false;
  std::vector<uint64_t> pool_cpus;
  std::vector<Region> pool_memory;
  std::vector<PoolDevice> pool_devices;
  std::map<std::string, std::optional<Instance>> instances;  // the original, or absent

  void SavePool(const State& s) {
    if (pool_saved) return;
    pool_saved = true;
    pool_cpus = s.pool_cpus;
    pool_memory = s.pool_memory;
    pool_devices = s.pool_devices;
  }
  void SaveInstance(const State& s, const std::string& name) {
    if (instances.count(name)) return;
    auto it = s.instances.find(name);
    instances[name] = it == s.instances.end() ? std::nullopt : std::optional<Instance>(it->second);
  }
  void Restore(State& s) {
    if (pool_saved) {
      s.pool_cpus = std::move(pool_cpus);
      s.pool_memory = std::move(pool_memory);
      s.pool_devices = std::move(pool_devices);
    }
    for (auto& [name, original] : instances) {
      if (original) {
        s.instances[name] = std::move(*original);
      } else {
        s.instances.erase(name);
      }
    }
  }
};

namespace {
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
}
}  // namespace

namespace {

constexpr uint64_t kBlock = 128ull << 20;
constexpr uint64_t kPage = 4096;

bool Contains(const std::vector<uint64_t>& v, uint64_t x) { return std::find(v.begin(), v.end(), x) != v.end(); }

absl::Status Busy(absl::string_view what, absl::string_view detail) { return ErrnoStatus(EBUSY, what, detail); }
absl::Status Inval(absl::string_view what, absl::string_view detail) { return ErrnoStatus(EINVAL, what, detail); }

bool Overlaps(uint64_t a, uint64_t asz, uint64_t b, uint64_t bsz) { return a < b + bsz && b < a + asz; }

}  // namespace

EmulatedKernel::EmulatedKernel(EmulatorOptions options)
    : options_(std::move(options)), clock_(options_.clock != nullptr ? options_.clock : &Clock::Real()) {
  absl::MutexLock lock(&mu_);
  load_status_ = Load();
}

namespace {

constexpr int kCounterCount = 18;

std::vector<uint32_t> CounterList(const EmulatedKernel::Counters& c) {
  return {static_cast<uint32_t>(c.overlays),      static_cast<uint32_t>(c.failed_overlays),
          static_cast<uint32_t>(c.rollbacks),     static_cast<uint32_t>(c.creates),
          static_cast<uint32_t>(c.removes),       static_cast<uint32_t>(c.loads),
          static_cast<uint32_t>(c.unloads),       static_cast<uint32_t>(c.starts),
          static_cast<uint32_t>(c.halts),         static_cast<uint32_t>(c.force_halts),
          static_cast<uint32_t>(c.cpu_adds),      static_cast<uint32_t>(c.cpu_removes),
          static_cast<uint32_t>(c.memory_adds),   static_cast<uint32_t>(c.memory_removes),
          static_cast<uint32_t>(c.device_adds),   static_cast<uint32_t>(c.device_removes),
          static_cast<uint32_t>(c.pool_changes),  0};
}

void SetCounters(const std::vector<uint32_t>& v, EmulatedKernel::Counters* c) {
  if (v.size() != kCounterCount) return;
  int* fields[] = {&c->overlays, &c->failed_overlays, &c->rollbacks, &c->creates, &c->removes, &c->loads,
                   &c->unloads, &c->starts, &c->halts, &c->force_halts, &c->cpu_adds, &c->cpu_removes,
                   &c->memory_adds, &c->memory_removes, &c->device_adds, &c->device_removes, &c->pool_changes};
  for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) *fields[i] = static_cast<int>(v[i]);
}

}  // namespace

void EmulatedKernel::Save() {
  if (options_.state_file.empty()) return;
  DtNode root;
  root.SetU32("next-tx", next_tx_);
  root.SetU32("has-pool", state_.has_pool);
  root.SetU32s("counters", CounterList(counters_));
  DtNode& pool = root.Add("pool");
  pool.SetU64s("cpus", state_.pool_cpus);
  std::vector<uint64_t> mem;
  for (const Region& r : state_.pool_memory) mem.insert(mem.end(), {r.base, r.size, r.numa});
  pool.SetU64s("memory", mem);
  for (size_t i = 0; i < state_.pool_devices.size(); ++i) {
    const PoolDevice& d = state_.pool_devices[i];
    DtNode& n = pool.Add(absl::StrCat("dev@", i));
    n.SetString("name", d.name);
    n.SetString("pci", d.pci_id);
    n.SetU32("vendor", d.vendor_id);
    n.SetU32("device", d.device_id);
  }
  DtNode& instances = root.Add("instances");
  for (const auto& [name, in] : state_.instances) {
    DtNode& n = instances.Add(name);
    n.SetU32("id", in.id);
    n.SetString("status", in.active_at ? "active" : in.halted_at ? (in.fail_next_halt ? "failed" : "loaded") : in.status);
    n.props.emplace_back("resources", InstanceBlob(in));
    std::vector<uint64_t> regions;
    for (const Region& r : in.memory) regions.insert(regions.end(), {r.base, r.size, r.numa});
    n.SetU64s("memory", regions);
    n.SetString("cmdline", in.cmdline);
    n.SetU32("segments", in.segments);
    n.SetU32("has-image", in.has_image);
    n.SetU32("hung", in.hung);
  }
  auto blob = ToDtb(root);
  if (!blob.ok()) return;
  // The emulated kernel's memory dies with the machine, as a real kernel's does: the file
  // only has to survive the agent process, so it is replaced atomically but not synced.
  WriteFileAtomically(options_.state_file, *blob, 0600, /*sync=*/false).IgnoreError();
}

absl::Status EmulatedKernel::Load() {
  if (options_.state_file.empty()) return absl::OkStatus();
  auto data = ReadFile(options_.state_file, /*follow_symlinks=*/false);
  if (absl::IsNotFound(data.status())) return absl::OkStatus();  // a fresh kernel
  if (!data.ok()) return data.status();
  auto root = FromDtb(*data);
  if (!root.ok()) return root.status();
  auto u32 = [](const DtNode& node, const char* p) { auto v = node.U32(p); return v.ok() ? *v : 0u; };
  next_tx_ = std::max(1u, u32(*root, "next-tx"));
  state_.has_pool = u32(*root, "has-pool") != 0;
  if (auto c = root->U32s("counters"); c.ok()) SetCounters(*c, &counters_);
  if (const DtNode* pool = root->Find("pool")) {
    if (auto cpus = pool->U64s("cpus"); cpus.ok()) state_.pool_cpus = *cpus;
    if (auto mem = pool->U64s("memory"); mem.ok()) {
      for (size_t i = 0; i + 3 <= mem->size(); i += 3) {
        state_.pool_memory.push_back({(*mem)[i], (*mem)[i + 1], static_cast<uint32_t>((*mem)[i + 2])});
      }
    }
    for (const DtNode& d : pool->children) {
      PoolDevice dev;
      dev.name = d.String("name").value_or("");
      dev.pci_id = d.String("pci").value_or("");
      dev.vendor_id = u32(d, "vendor");
      dev.device_id = u32(d, "device");
      state_.pool_devices.push_back(dev);
    }
  }
  if (const DtNode* instances = root->Find("instances")) {
    for (const DtNode& n : instances->children) {
      Instance in;
      in.id = u32(n, "id");
      in.status = n.String("status").value_or("ready");
      if (const std::string* raw = n.Raw("resources")) {
        auto r = DecodeInstance(*raw);
        if (r.ok()) in.resources = *r;
      }
      if (auto mem = n.U64s("memory"); mem.ok()) {
        for (size_t i = 0; i + 3 <= mem->size(); i += 3) {
          in.memory.push_back({(*mem)[i], (*mem)[i + 1], static_cast<uint32_t>((*mem)[i + 2])});
        }
      }
      in.cmdline = n.String("cmdline").value_or("");
      in.segments = u32(n, "segments");
      in.has_image = u32(n, "has-image") != 0;
      in.hung = u32(n, "hung") != 0;
      state_.instances[n.name] = std::move(in);
    }
  }
  return absl::OkStatus();
}

EmulatedKernel::Counters EmulatedKernel::counters() const {
  absl::MutexLock lock(&mu_);
  return counters_;
}

void EmulatedKernel::Advance(State& s) {
  absl::Duration now = Now();
  for (auto& [name, in] : s.instances) {
    if (in.active_at && now >= *in.active_at) {
      in.active_at.reset();
      in.status = "active";
    }
    if (in.halted_at && now >= *in.halted_at) {
      in.halted_at.reset();
      in.status = in.fail_next_halt ? "failed" : "loaded";
      in.fail_next_halt = false;
      in.halt_delay = absl::ZeroDuration();
    }
  }
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
      if (parts[2] == "status") return absl::StrCat(in.status, "\n");
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
struct EmulatedKernel::Holdings {
  const State& s;
  const std::string* LentCpu(uint64_t c) const {
    for (const auto& [name, in] : s.instances) {
      if (Contains(in.resources.cpus, c)) return &name;
    }
    return nullptr;
  }
  const std::string* LentDevice(const std::string& pci) const {
    for (const auto& [name, in] : s.instances) {
      for (const auto& d : in.resources.devices) {
        if (d.pci_id == pci) return &name;
      }
    }
    return nullptr;
  }
  bool PoolHasDevice(const std::string& pci) const {
    for (const PoolDevice& d : s.pool_devices) {
      if (d.pci_id == pci) return true;
    }
    return false;
  }
  // Inside the pool and no instance's.
  absl::Status RangeFree(uint64_t base, uint64_t size) const {
    bool in_pool = false;
    for (const Region& c : s.pool_memory) in_pool |= base >= c.base && base + size <= c.base + c.size;
    if (!in_pool) return Inval("memory", absl::StrFormat("0x%x+0x%x is not inside the pool", base, size));
    for (const auto& [name, in] : s.instances) {
      for (const Region& r : in.memory) {
        if (Overlaps(base, size, r.base, r.size)) {
          return Busy("memory", absl::StrFormat("0x%x+0x%x overlaps memory of %s", base, size, name));
        }
      }
    }
    return absl::OkStatus();
  }
  uint32_t NumaOf(uint64_t base) const {
    for (const Region& c : s.pool_memory) {
      if (base >= c.base && base < c.base + c.size) return c.numa;
    }
    return 0;
  }
};

absl::Status EmulatedKernel::CheckBusy(const Fragment& f) const {
  for (const std::string& b : busy_) {
    auto touches = [&](const std::vector<CpuEntry>& cpus) {
      for (const CpuEntry& c : cpus) {
        if (absl::StrCat(c.physical_id) == b) return true;
      }
      return false;
    };
    auto touches_dev = [&](const std::vector<DeviceEntry>& devs) {
      for (const DeviceEntry& d : devs) {
        if (d.pci_id == b) return true;
      }
      return false;
    };
    bool hit = touches(f.cpu_add) || touches(f.cpu_remove) || touches_dev(f.device_add) || touches_dev(f.device_remove);
    for (uint64_t c : f.create_resources.cpus) hit |= absl::StrCat(c) == b;
    for (const auto& d : f.create_resources.devices) hit |= d.pci_id == b;
    if (hit) return Busy("overlay", absl::StrCat(b, " is busy"));
  }
  return absl::OkStatus();
}

absl::Status EmulatedKernel::ApplyFragment(const Fragment& f, State& s, Journal& journal, Counters& delta, Undo& undo,
                                           std::string* instance) {
  if (absl::Status b = CheckBusy(f); !b.ok()) return b;
  if (f.target_path == "/resources") return ApplyPoolFragment(f, s, journal, delta, undo);
  if (f.target_path == "/instances") return ApplyInstancesFragment(f, s, journal, delta, undo, instance);
  return ApplyHotplugFragment(f, s, journal, delta, undo, instance);
}

// /resources: the pool grows or shrinks (what is lent out cannot leave it).
absl::Status EmulatedKernel::ApplyPoolFragment(const Fragment& f, State& s, Journal& journal, Counters& delta,
                                               Undo& undo) {
  const Holdings h{s};

  if (!s.has_pool) return ErrnoStatus(EPERM, "/resources", "no pool baseline was written");
  journal.SavePool(s);
  Fragment inv;
  inv.target_path = "/resources";
  for (const CpuEntry& c : f.cpu_remove) {
    if (!Contains(s.pool_cpus, c.physical_id))
      return Inval("cpu-remove", absl::StrCat("CPU ", c.physical_id, " is not in the pool"));
    if (const std::string* who = h.LentCpu(c.physical_id))
      return Busy("cpu-remove", absl::StrCat("CPU ", c.physical_id, " is lent to ", *who));
    s.pool_cpus.erase(std::find(s.pool_cpus.begin(), s.pool_cpus.end(), c.physical_id));
    inv.cpu_add.push_back(c);
  }
  for (const DeviceEntry& d : f.device_remove) {
    if (!h.PoolHasDevice(d.pci_id)) return Inval("device-remove", absl::StrCat(d.pci_id, " is not in the pool"));
    if (const std::string* who = h.LentDevice(d.pci_id))
      return Busy("device-remove", absl::StrCat(d.pci_id, " is lent to ", *who));
    s.pool_devices.erase(std::remove_if(s.pool_devices.begin(), s.pool_devices.end(),
                                        [&](const PoolDevice& p) { return p.pci_id == d.pci_id; }),
                         s.pool_devices.end());
    inv.device_add.push_back(d);
  }
  for (const MemoryEntry& m : f.memory_remove) {
    // A free chunk of exactly that size on that node.
    auto it = std::find_if(s.pool_memory.begin(), s.pool_memory.end(), [&](const Region& r) {
      return r.size == m.size && r.numa == m.numa && h.RangeFree(r.base, r.size).ok();
    });
    if (it == s.pool_memory.end())
      return Busy("memory-remove", absl::StrCat("no free pool chunk of ", m.size, " bytes on node ", m.numa));
    s.pool_memory.erase(it);
    inv.memory_add.push_back(m);
  }
  for (const MemoryEntry& m : f.memory_add) {
    if (m.size == 0 || m.size % kPage) return Inval("memory-add", "size must be page aligned");
    const MachineMemory* node = nullptr;
    for (const MachineMemory& mm : options_.memory) {
      if (mm.numa == m.numa) node = &mm;
    }
    if (node == nullptr) return Inval("memory-add", absl::StrCat("NUMA node ", m.numa, " has no memory"));
    uint64_t low = node->base + node->size;
    for (const Region& r : s.pool_memory) {
      if (r.numa == m.numa) low = std::min(low, r.base);
    }
    if (low < node->base + m.size + kBlock) return ErrnoStatus(ENOMEM, "memory-add", "the node has no more memory");
    s.pool_memory.push_back({low - m.size, m.size, m.numa});
    // The base is not recorded: rolling back a pool memory-add does nothing.
  }
  for (const CpuEntry& c : f.cpu_add) {
    if (!Contains(options_.cpus, c.physical_id) || c.physical_id == 0)
      return Inval("cpu-add", absl::StrCat("CPU ", c.physical_id, " cannot join the pool"));
    if (Contains(s.pool_cpus, c.physical_id))
      return Busy("cpu-add", absl::StrCat("CPU ", c.physical_id, " is already in the pool"));
    s.pool_cpus.push_back(c.physical_id);
    inv.cpu_remove.push_back(c);
  }
  for (const DeviceEntry& d : f.device_add) {
    if (std::find(options_.pci_devices.begin(), options_.pci_devices.end(), d.pci_id) == options_.pci_devices.end()) {
      return Inval("device-add", absl::StrCat("no PCI function ", d.pci_id));
    }
    if (h.PoolHasDevice(d.pci_id)) return Busy("device-add", absl::StrCat(d.pci_id, " is already in the pool"));
    s.pool_devices.push_back({d.alias.empty() ? d.pci_id : d.alias, d.pci_id, 0, 0});
    inv.device_remove.push_back(d);
  }
  undo.inverse.push_back(inv);
  ++delta.pool_changes;
  return absl::OkStatus();
}

// /instances: instance-create and instance-remove.
absl::Status EmulatedKernel::ApplyInstancesFragment(const Fragment& f, State& s, Journal& journal, Counters& delta,
                                                    Undo& undo, std::string* instance) {
  const bool v1 = options_.dialect == Dialect::kV1;
  const Holdings h{s};

  if (f.create_name) {
    const std::string& name = *f.create_name;
    *instance = name;
    if (name.empty() || name.size() > 63) return Inval("instance-create", "bad instance name");
    if (s.instances.count(name)) return ErrnoStatus(EEXIST, "instance-create", absl::StrCat(name, " exists"));
    const InstanceResources& r = f.create_resources;
    Instance in;
    if (f.create_id) {
      if (*f.create_id < 1 || *f.create_id > 511) return Inval("instance-create", "id must be 1..511");
      for (const auto& [n, other] : s.instances) {
        if (other.id == *f.create_id)
          return Busy("instance-create", absl::StrCat("id ", *f.create_id, " is used by ", n));
      }
      in.id = *f.create_id;
    } else {
      std::set<uint32_t> used;
      for (const auto& [n, other] : s.instances) used.insert(other.id);
      for (in.id = 1; used.count(in.id); ++in.id) {
      }
      if (in.id > 511) return ErrnoStatus(ENOSPC, "instance-create", "no free instance id");
    }
    if (r.memory_bytes == 0 || r.memory_bytes % kPage)
      return Inval("instance-create", "memory-bytes must be page aligned and non-zero");
    if (r.cpus.empty()) return Inval("instance-create", "no CPUs");
    std::set<uint64_t> seen;
    for (uint64_t c : r.cpus) {
      if (!seen.insert(c).second) return Inval("instance-create", absl::StrCat("CPU ", c, " listed twice"));
      if (!Contains(s.pool_cpus, c)) return Busy("instance-create", absl::StrCat("CPU ", c, " is not in the pool"));
      if (const std::string* who = h.LentCpu(c))
        return Busy("instance-create", absl::StrCat("CPU ", c, " is lent to ", *who));
    }
    if (v1 && r.device_names) return Inval("instance-create", "device-names: assign devices with device-add");
    if (v1 && r.memory_base != 0)
      return Inval("instance-create", "memory-base: this kernel allocates instance memory itself");
    for (const auto& d : r.devices) {
      if (!h.PoolHasDevice(d.pci_id)) return Busy("instance-create", absl::StrCat(d.pci_id, " is not in the pool"));
      if (const std::string* who = h.LentDevice(d.pci_id))
        return Busy("instance-create", absl::StrCat(d.pci_id, " is lent to ", *who));
    }
    if (r.virtio.size() > 16) return Inval("instance-create", "at most 16 virtio devices");
    for (const auto& v : r.virtio) {
      if (v.queues < 1 || v.queues > 8)
        return Inval("instance-create", absl::StrCat("virtio ", v.name, ": queues must be 1..8"));
    }
    if (r.llc_way_mask) {
      uint32_t all = options_.llc_ways >= 32 ? ~0u : ((1u << options_.llc_ways) - 1);
      if (*r.llc_way_mask == 0 || (*r.llc_way_mask & ~all))
        return Inval("instance-create", "llc-way-mask must be a non-zero subset of the baseline mask");
      for (const auto& [n, other] : s.instances) {
        if (other.resources.llc_way_mask && (*other.resources.llc_way_mask & *r.llc_way_mask)) {
          return Busy("instance-create", absl::StrCat("llc-way-mask overlaps ", n));
        }
      }
    }
    // Memory.
    if (!v1) {
      absl::Status free = h.RangeFree(r.memory_base, r.memory_bytes);
      if (!free.ok()) return free;
      in.memory.push_back({r.memory_base, r.memory_bytes, h.NumaOf(r.memory_base)});
    } else {
      // First fit, 128Mi aligned, in the pool chunks of the first NUMA node asked for
      // (any node when none is), split over several chunks when needed.
      std::vector<MemRange> chunks, used;
      for (const Region& c : s.pool_memory) chunks.push_back({c.base, c.size, c.numa});
      for (const auto& [n, other] : s.instances) {
        for (const Region& reg : other.memory) used.push_back({reg.base, reg.size, reg.numa});
      }
      std::optional<uint32_t> node;
      if (!r.numa_nodes.empty()) node = r.numa_nodes[0];
      auto placed = FirstFit(std::move(chunks), std::move(used), r.memory_bytes, node, kBlock);
      if (!placed) return Busy("instance-create", "not enough free pool memory");
      for (const MemRange& m : *placed) in.memory.push_back({m.base, m.size, m.numa});
    }
    in.resources = r;
    in.status = "ready";
    journal.SaveInstance(s, name);
    s.instances[name] = std::move(in);
    Fragment inv;
    inv.target_path = "/instances";
    inv.remove_name = name;
    undo.inverse.push_back(inv);
    ++delta.creates;
  }
  if (f.remove_name) {
    *instance = *f.remove_name;
    auto it = s.instances.find(*f.remove_name);
    if (it == s.instances.end())
      return ErrnoStatus(ENOENT, "instance-remove", absl::StrCat("no instance ", *f.remove_name));
    if (it->second.status != "ready" && !it->second.status.empty()) {
      return Busy("instance-remove", absl::StrCat(*f.remove_name, " is ", it->second.status));
    }
    journal.SaveInstance(s, *f.remove_name);
    s.instances.erase(*f.remove_name);
    ++delta.removes;
    // Rolling back an instance-remove does not restore it.
  }
  return absl::OkStatus();
  return Inval("overlay", "an /instances fragment creates or removes an instance");
}

// /instances/<name>: hot-plug of CPUs, memory and devices between the pool and the instance.
absl::Status EmulatedKernel::ApplyHotplugFragment(const Fragment& f, State& s, Journal& journal, Counters& delta,
                                                  Undo& undo, std::string* instance) {
  const Holdings h{s};
  if (!absl::StartsWith(f.target_path, "/instances/"))
    return Inval("overlay", absl::StrCat("bad target-path ", f.target_path));
  std::string name = f.target_path.substr(11);
  *instance = name;
  auto it = s.instances.find(name);
  if (it == s.instances.end()) return ErrnoStatus(ENOENT, "overlay", absl::StrCat("no instance ", name));
  journal.SaveInstance(s, name);
  Instance& in = it->second;
  const bool running = in.status == "active" || in.active_at.has_value();
  Fragment inv;
  inv.target_path = f.target_path;
  for (const MemoryEntry& m : f.memory_remove) {
    auto r = std::find_if(in.memory.begin(), in.memory.end(),
                          [&](const Region& x) { return x.base == m.base && x.size == m.size; });
    if (r == in.memory.end())
      return Inval("memory-remove", absl::StrFormat("0x%x+0x%x is not a region of %s", m.base, m.size, name));
    if (in.has_image && r == in.memory.begin()) return Busy("memory-remove", "the range holds the loaded kernel image");
    in.memory.erase(r);
    in.resources.memory_bytes -= m.size;
    inv.memory_add.push_back(m);
    ++delta.memory_removes;
  }
  for (const MemoryEntry& m : f.memory_add) {
    if (m.size == 0 || m.size % kPage) return Inval("memory-add", "size must be page aligned");
    if (running && (m.base % kBlock || m.size % kBlock)) {
      return Inval("memory-add", "memory added to a running instance must be 128Mi aligned and sized");
    }
    absl::Status free = h.RangeFree(m.base, m.size);
    if (!free.ok()) return free;
    in.memory.push_back({m.base, m.size, h.NumaOf(m.base)});
    in.resources.memory_bytes += m.size;
    inv.memory_remove.push_back(m);
    ++delta.memory_adds;
  }
  for (const CpuEntry& c : f.cpu_remove) {
    auto pos = std::find(in.resources.cpus.begin(), in.resources.cpus.end(), c.physical_id);
    if (pos == in.resources.cpus.end())
      return Inval("cpu-remove", absl::StrCat("CPU ", c.physical_id, " is not ", name, "'s"));
    if (pos == in.resources.cpus.begin())
      return Busy("cpu-remove", absl::StrCat("CPU ", c.physical_id, " is the boot CPU of ", name));
    in.resources.cpus.erase(pos);
    inv.cpu_add.push_back(c);
    ++delta.cpu_removes;
  }
  for (const CpuEntry& c : f.cpu_add) {
    if (!Contains(s.pool_cpus, c.physical_id))
      return Busy("cpu-add", absl::StrCat("CPU ", c.physical_id, " is not in the pool"));
    if (const std::string* who = h.LentCpu(c.physical_id))
      return Busy("cpu-add", absl::StrCat("CPU ", c.physical_id, " is lent to ", *who));
    if (running && !Contains(in.resources.pool_cpus, c.physical_id)) {
      return Inval("cpu-add", absl::StrCat("CPU ", c.physical_id, " was not enumerated at boot (not in pool-cpus)"));
    }
    in.resources.cpus.push_back(c.physical_id);
    inv.cpu_remove.push_back(c);
    ++delta.cpu_adds;
  }
  for (const DeviceEntry& d : f.device_remove) {
    auto pos = std::find_if(in.resources.devices.begin(), in.resources.devices.end(),
                            [&](const InstanceDevice& x) { return x.pci_id == d.pci_id; });
    if (pos == in.resources.devices.end())
      return Inval("device-remove", absl::StrCat(d.pci_id, " is not ", name, "'s"));
    in.resources.devices.erase(pos);
    inv.device_add.push_back(d);
    ++delta.device_removes;
  }
  for (const DeviceEntry& d : f.device_add) {
    if (!h.PoolHasDevice(d.pci_id)) return Busy("device-add", absl::StrCat(d.pci_id, " is not in the pool"));
    if (const std::string* who = h.LentDevice(d.pci_id))
      return Busy("device-add", absl::StrCat(d.pci_id, " is lent to ", *who));
    in.resources.devices.push_back({d.pci_id, d.driver});
    inv.device_remove.push_back(d);
    ++delta.device_adds;
  }
  undo.inverse.push_back(inv);
  return absl::OkStatus();
}

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
    ++counters_.unloads;
    Save();
    return absl::OkStatus();
  }
  if (in->status != "ready") return Busy("kexec_file_load", "a kernel is already loaded there");
  char magic[4] = {0, 0, 0, 0};
  if (kernel_fd < 0 || pread(kernel_fd, magic, 4, 0) != 4) return ErrnoStatus(EBADF, "kexec_file_load", "cannot read the kernel");
  if (memcmp(magic, "\x7f" "ELF", 4) != 0) return ErrnoStatus(ENOEXEC, "kexec_file_load", "not an ELF vmlinux");
  if (initrd_fd < 0 && !(flags & kKexecFileNoInitramfs)) return Inval("kexec_file_load", "no initrd and no KEXEC_FILE_NO_INITRAMFS");
  in->status = "loaded";
  in->has_image = true;
  in->cmdline = std::string(cmdline);
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
        in->status = "active";
      } else {
        in->active_at = Now() + options_.boot_time;
      }
      ++counters_.starts;
      Save();
      return absl::OkStatus();
    case kRebootHalt:
      if (in->status != "active" || in->halted_at) return Inval("halt", absl::StrCat("the instance is ", in->status));
      if (in->hung) {
        in->status = "failed";  // it never quiesces: the kernel gives up after 30 s
        return ErrnoStatus(ETIMEDOUT, "halt", "the instance did not shut down");
      }
      ++counters_.halts;
      if (options_.halt_time + in->halt_delay <= absl::ZeroDuration() && !in->fail_next_halt) {
        in->status = "loaded";
      } else {
        in->halted_at = Now() + options_.halt_time + in->halt_delay;
      }
      Save();
      return absl::OkStatus();
    case kRebootForceHalt:
      if (in->status != "active" && in->status != "loaded" && in->status != "failed" && !in->active_at) {
        return Inval("force-halt", absl::StrCat("the instance is ", in->status));
      }
      in->status = "loaded";
      in->active_at.reset();
      in->halted_at.reset();
      in->hung = false;
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
  it->second.status = "loaded";
  it->second.hung = false;
  Save();
  return absl::OkStatus();
}

absl::Status EmulatedKernel::InjectHang(absl::string_view instance) {
  absl::MutexLock lock(&mu_);
  auto it = state_.instances.find(std::string(instance));
  if (it == state_.instances.end()) return absl::NotFoundError(absl::StrCat("no instance ", instance));
  it->second.hung = true;
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
