// EmulatedKernel's overlay transactions: one fragment applied to the state (the pool,
// instance create/remove, hot-plug), with what it changed journaled for a rollback.
#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/emulated_kernel_internal.h"
#include "kernel/emulator/first_fit.h"
#include "kernel/errno_status.h"

namespace mkfleet::kernel {

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
    hit |= f.remove_name.has_value() && *f.remove_name == b;  // a busy instance cannot go
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


}  // namespace mkfleet::kernel
