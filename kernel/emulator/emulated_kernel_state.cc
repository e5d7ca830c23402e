// EmulatedKernel's state file: the machine written as a device tree after every change and
// read back at start, so that it outlives the agent process.
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
          static_cast<uint32_t>(c.pool_changes),  static_cast<uint32_t>(c.panics)};
}

void SetCounters(const std::vector<uint32_t>& v, EmulatedKernel::Counters* c) {
  if (v.size() != kCounterCount) return;
  int* fields[] = {&c->overlays, &c->failed_overlays, &c->rollbacks, &c->creates, &c->removes, &c->loads,
                   &c->unloads, &c->starts, &c->halts, &c->force_halts, &c->cpu_adds, &c->cpu_removes,
                   &c->memory_adds, &c->memory_removes, &c->device_adds, &c->device_removes, &c->pool_changes,
                   &c->panics};
  for (size_t i = 0; i < sizeof(fields) / sizeof(fields[0]); ++i) *fields[i] = static_cast<int>(v[i]);
}

}  // namespace

void EmulatedKernel::Save() {
  Changed();
  SyncGuests();
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
    n.SetU32("stops", static_cast<uint32_t>(in.stops));
    n.SetString("guest-profile", in.guest_profile);
    n.SetU32("guest-pid", static_cast<uint32_t>(in.guest_pid));
    if (in.guest_start != 0) n.SetU64s("guest-start", {in.guest_start});
    n.SetU32("hang-on-boot", in.hang_on_boot);
    // Durations in ns, as u64 pairs: presence, value (monotonic time outlives the process).
    auto opt = [](const std::optional<absl::Duration>& d) {
      return std::vector<uint64_t>{d ? 1u : 0u, d ? static_cast<uint64_t>(absl::ToInt64Nanoseconds(*d)) : 0u};
    };
    n.SetU64s("panic-after", opt(in.panic_after));
    n.SetU64s("crash-at", opt(in.crash_at));
  }
  auto blob = ToDtb(root, DtbNames::kRepeated);  // only the emulator reads it: written without a search per name
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
      in.stops = static_cast<int>(u32(n, "stops"));
      in.guest_profile = n.String("guest-profile").value_or("");
      in.hang_on_boot = u32(n, "hang-on-boot") != 0;
      auto opt = [&n](const char* p) -> std::optional<absl::Duration> {
        auto v = n.U64s(p);
        if (!v.ok() || v->size() != 2 || (*v)[0] == 0) return std::nullopt;
        return absl::Nanoseconds(static_cast<int64_t>((*v)[1]));
      };
      in.panic_after = opt("panic-after");
      in.crash_at = opt("crash-at");
      // Adopted only if that process still is this instance's guest (not a reused pid).
      pid_t pid = static_cast<pid_t>(u32(n, "guest-pid"));
      auto start = n.U64s("guest-start");
      uint64_t started = start.ok() && start->size() == 1 ? (*start)[0] : 0;
      if (pid > 0 && guests_.IsGuest(pid, started, in.id)) {
        in.guest_pid = pid;
        in.guest_start = started;
      }
      in.guest_frozen = in.hung && in.guest_pid > 0;
      state_.instances[n.name] = std::move(in);
    }
  }
  return absl::OkStatus();
}

}  // namespace mkfleet::kernel
