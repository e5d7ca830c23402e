#include "kernel/device_tree.h"

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status_macros.h"

namespace mkfleet::kernel {
namespace {

constexpr char kCompatibleV1[] = "multikernel-v1";
constexpr char kCompatibleLegacy[] = "linux,multikernel-host";

void AddDevices(DtNode& parent, const std::vector<PoolDevice>& devices) {
  if (devices.empty()) return;
  DtNode& node = parent.Add("devices");
  for (const PoolDevice& d : devices) {
    DtNode& dev = node.Add(d.name);
    dev.SetString("device-type", "pci");
    dev.SetString("pci-id", d.pci_id);
    dev.SetU32("vendor-id", d.vendor_id);
    dev.SetU32("device-id", d.device_id);
  }
}

absl::Status ReadDevices(const DtNode& resources, std::vector<PoolDevice>* out) {
  const DtNode* devices = resources.Find("devices");
  if (devices == nullptr) return absl::OkStatus();
  for (const DtNode& dev : devices->children) {
    PoolDevice d;
    d.name = dev.name;
    MK_ASSIGN_OR_RETURN(d.pci_id, dev.String("pci-id"));
    if (dev.Has("vendor-id")) {
      MK_ASSIGN_OR_RETURN(d.vendor_id, dev.U32("vendor-id"));
    }
    if (dev.Has("device-id")) {
      MK_ASSIGN_OR_RETURN(d.device_id, dev.U32("device-id"));
    }
    out->push_back(std::move(d));
  }
  return absl::OkStatus();
}

absl::StatusOr<DtNode> PoolTree(const PoolState& pool, Dialect d, bool read_back) {
  DtNode root;
  root.SetString("compatible", d == Dialect::kV1 ? kCompatibleV1 : kCompatibleLegacy);
  DtNode& res = root.Add("resources");
  res.SetU64s("cpus", pool.cpus);
  if (read_back) res.SetU64s("cpus-available", pool.cpus_available);
  if (d == Dialect::kLegacy) {
    if (pool.memory.size() > 1) {
      return absl::InvalidArgumentError("the legacy dialect takes one contiguous pool memory range");
    }
    if (!pool.memory.empty()) {
      res.SetU64("memory-base", pool.memory[0].base);
      res.SetU64("memory-bytes", pool.memory[0].size);
    }
  } else {
    for (size_t i = 0; i < pool.memory.size(); ++i) {
      const PoolMemory& m = pool.memory[i];
      if (read_back) {
        DtNode& mem = res.Add(absl::StrFormat("memory@%x", m.base));
        mem.SetString("device_type", "memory");
        mem.SetU64s("reg", {m.base, m.size});
        mem.SetU32("numa-node-id", m.numa);
      } else {
        DtNode& mem = res.Add(absl::StrCat("memory@", i));
        mem.SetU64("size", m.size);
        mem.SetU32("numa-node-id", m.numa);
      }
    }
  }
  AddDevices(res, pool.devices);
  if (!read_back && d == Dialect::kV1 && !pool.devices.empty()) {
    DtNode& aliases = root.Add("aliases");
    for (const PoolDevice& dev : pool.devices) aliases.SetString(dev.name, "/resources/devices/" + dev.name);
  }
  return root;
}

void AddCpus(DtNode& parent, const char* op, const std::vector<CpuEntry>& cpus) {
  if (cpus.empty()) return;
  DtNode& node = parent.Add(op);
  for (size_t i = 0; i < cpus.size(); ++i) {
    DtNode& c = node.Add(absl::StrCat("cpu@", i));
    c.SetU64("reg", cpus[i].physical_id);
    c.SetU32("numa-node-id", cpus[i].numa);
    c.SetU32("flags", cpus[i].flags);
  }
}

void AddMemory(DtNode& parent, const char* op, const std::vector<MemoryEntry>& mem, bool pool) {
  if (mem.empty()) return;
  DtNode& node = parent.Add(op);
  for (size_t i = 0; i < mem.size(); ++i) {
    DtNode& m = node.Add(absl::StrCat("memory@", i));
    if (pool) {
      m.SetU64("size", mem[i].size);
      m.SetU32("numa-node-id", mem[i].numa);
    } else {
      m.SetU64s("reg", {mem[i].base, mem[i].size});
    }
  }
}

void AddDeviceOps(DtNode& parent, const char* op, const std::vector<DeviceEntry>& devs, bool pool) {
  if (devs.empty()) return;
  DtNode& node = parent.Add(op);
  for (size_t i = 0; i < devs.size(); ++i) {
    DtNode& d = node.Add(absl::StrCat("pci@", i));
    d.SetString("pci-id", devs[i].pci_id);
    if (pool && !devs[i].alias.empty()) d.SetString("alias", devs[i].alias);
    if (!pool && !devs[i].driver.empty()) d.SetString("driver", devs[i].driver);
    d.SetU32("flags", devs[i].flags);
  }
}

absl::Status ReadCpus(const DtNode* node, std::vector<CpuEntry>* out) {
  if (node == nullptr) return absl::OkStatus();
  for (const DtNode& c : node->children) {
    CpuEntry e;
    MK_ASSIGN_OR_RETURN(e.physical_id, c.U64("reg"));
    if (c.Has("numa-node-id")) {
      MK_ASSIGN_OR_RETURN(e.numa, c.U32("numa-node-id"));
    }
    if (c.Has("flags")) {
      MK_ASSIGN_OR_RETURN(e.flags, c.U32("flags"));
    }
    out->push_back(e);
  }
  return absl::OkStatus();
}

absl::Status ReadMemory(const DtNode* node, std::vector<MemoryEntry>* out) {
  if (node == nullptr) return absl::OkStatus();
  for (const DtNode& m : node->children) {
    MemoryEntry e;
    if (m.Has("reg")) {
      MK_ASSIGN_OR_RETURN(std::vector<uint64_t> reg, m.U64s("reg"));
      if (reg.size() != 2) return absl::InvalidArgumentError(absl::StrCat(m.name, ": reg must be <addr size> (16 bytes)"));
      e.base = reg[0];
      e.size = reg[1];
    } else {
      MK_ASSIGN_OR_RETURN(e.size, m.U64("size"));
      if (m.Has("numa-node-id")) {
      MK_ASSIGN_OR_RETURN(e.numa, m.U32("numa-node-id"));
    }
    }
    out->push_back(e);
  }
  return absl::OkStatus();
}

absl::Status ReadDeviceOps(const DtNode* node, std::vector<DeviceEntry>* out) {
  if (node == nullptr) return absl::OkStatus();
  for (const DtNode& d : node->children) {
    DeviceEntry e;
    MK_ASSIGN_OR_RETURN(e.pci_id, d.String("pci-id"));
    if (d.Has("alias")) {
      MK_ASSIGN_OR_RETURN(e.alias, d.String("alias"));
    }
    if (d.Has("driver")) {
      MK_ASSIGN_OR_RETURN(e.driver, d.String("driver"));
    }
    if (d.Has("flags")) {
      MK_ASSIGN_OR_RETURN(e.flags, d.U32("flags"));
    }
    out->push_back(std::move(e));
  }
  return absl::OkStatus();
}

}  // namespace

const char* DialectName(Dialect d) { return d == Dialect::kV1 ? "v1" : "legacy"; }

bool PoolState::operator==(const PoolState& o) const {
  if (cpus != o.cpus || cpus_available != o.cpus_available || memory.size() != o.memory.size() ||
      devices.size() != o.devices.size()) {
    return false;
  }
  for (size_t i = 0; i < memory.size(); ++i) {
    if (memory[i].base != o.memory[i].base || memory[i].size != o.memory[i].size || memory[i].numa != o.memory[i].numa) {
      return false;
    }
  }
  for (size_t i = 0; i < devices.size(); ++i) {
    if (devices[i].name != o.devices[i].name || devices[i].pci_id != o.devices[i].pci_id ||
        devices[i].vendor_id != o.devices[i].vendor_id || devices[i].device_id != o.devices[i].device_id) {
      return false;
    }
  }
  return true;
}

DtNode InstanceResourcesNode(const InstanceResources& r, Dialect d) {
  DtNode node;
  node.name = "resources";
  if (d == Dialect::kLegacy) node.SetU64("memory-base", r.memory_base);
  node.SetU64("memory-bytes", r.memory_bytes);
  node.SetU64s("cpus", r.cpus);
  if (!r.pool_cpus.empty()) node.SetU64s("pool-cpus", r.pool_cpus);
  if (!r.numa_nodes.empty()) node.SetU32s("numa-nodes", r.numa_nodes);
  if (d == Dialect::kLegacy) {
    std::vector<std::string> names;
    for (const auto& dev : r.devices) names.push_back(dev.pci_id);
    if (!names.empty()) node.SetStrings("device-names", names);
  } else if (!r.devices.empty()) {
    DtNode& devs = node.Add("devices");
    for (size_t i = 0; i < r.devices.size(); ++i) {
      DtNode& dev = devs.Add(absl::StrCat("pci@", i));
      dev.SetString("pci-id", r.devices[i].pci_id);
      if (!r.devices[i].driver.empty()) dev.SetString("driver", r.devices[i].driver);
    }
  }
  if (!r.virtio.empty()) {
    DtNode& v = node.Add("virtio");
    for (const VirtioDevice& dev : r.virtio) {
      DtNode& n = v.Add(dev.name);
      n.SetU32("device-id", dev.device_id);
      n.SetU32("queues", dev.queues);
      n.SetU32("queue-size", dev.queue_size);
    }
  }
  if (r.llc_way_mask) node.SetU32("llc-way-mask", *r.llc_way_mask);
  return node;
}

absl::StatusOr<InstanceResources> ParseInstanceResources(const DtNode& node) {
  InstanceResources r;
  MK_ASSIGN_OR_RETURN(r.memory_bytes, node.U64("memory-bytes"));
  if (node.Has("memory-base")) {
      MK_ASSIGN_OR_RETURN(r.memory_base, node.U64("memory-base"));
    }
  MK_ASSIGN_OR_RETURN(r.cpus, node.U64s("cpus"));
  if (node.Has("pool-cpus")) {
      MK_ASSIGN_OR_RETURN(r.pool_cpus, node.U64s("pool-cpus"));
    }
  if (node.Has("numa-nodes")) {
      MK_ASSIGN_OR_RETURN(r.numa_nodes, node.U32s("numa-nodes"));
    }
  if (node.Has("device-names")) {
    MK_ASSIGN_OR_RETURN(std::vector<std::string> names, node.Strings("device-names"));
    for (auto& n : names) r.devices.push_back({n, ""});
    r.device_names = true;
  }
  if (const DtNode* devs = node.Find("devices")) {
    for (const DtNode& dev : devs->children) {
      InstanceDevice d;
      MK_ASSIGN_OR_RETURN(d.pci_id, dev.String("pci-id"));
      if (dev.Has("driver")) {
      MK_ASSIGN_OR_RETURN(d.driver, dev.String("driver"));
    }
      r.devices.push_back(std::move(d));
    }
  }
  if (const DtNode* v = node.Find("virtio")) {
    for (const DtNode& dev : v->children) {
      VirtioDevice d;
      d.name = dev.name;
      MK_ASSIGN_OR_RETURN(d.device_id, dev.U32("device-id"));
      if (dev.Has("queues")) {
      MK_ASSIGN_OR_RETURN(d.queues, dev.U32("queues"));
    }
      if (dev.Has("queue-size")) {
      MK_ASSIGN_OR_RETURN(d.queue_size, dev.U32("queue-size"));
    }
      r.virtio.push_back(std::move(d));
    }
  }
  if (node.Has("llc-way-mask")) {
    MK_ASSIGN_OR_RETURN(uint32_t mask, node.U32("llc-way-mask"));
    r.llc_way_mask = mask;
  }
  return r;
}

absl::StatusOr<std::string> EncodeBaseline(const PoolState& pool, Dialect d) {
  MK_ASSIGN_OR_RETURN(DtNode root, PoolTree(pool, d, /*read_back=*/false));
  return ToDtb(root);
}

absl::StatusOr<std::string> EncodePoolReadBack(const PoolState& pool, Dialect d) {
  MK_ASSIGN_OR_RETURN(DtNode root, PoolTree(pool, d, /*read_back=*/true));
  return ToDtb(root);
}

absl::StatusOr<PoolState> DecodePool(absl::string_view blob, Dialect* dialect) {
  MK_ASSIGN_OR_RETURN(DtNode root, FromDtb(blob));
  const DtNode* res = root.Find("resources");
  if (res == nullptr) return absl::InvalidArgumentError("pool device tree has no /resources node");
  PoolState pool;
  if (res->Has("cpus")) {
      MK_ASSIGN_OR_RETURN(pool.cpus, res->U64s("cpus"));
    }
  if (res->Has("cpus-available")) {
      MK_ASSIGN_OR_RETURN(pool.cpus_available, res->U64s("cpus-available"));
    }
  Dialect d = Dialect::kV1;
  if (res->Has("memory-base")) {
    d = Dialect::kLegacy;
    PoolMemory m;
    MK_ASSIGN_OR_RETURN(m.base, res->U64("memory-base"));
    MK_ASSIGN_OR_RETURN(m.size, res->U64("memory-bytes"));
    pool.memory.push_back(m);
  }
  if (root.Has("compatible")) {
    auto c = root.String("compatible");
    if (c.ok() && *c == kCompatibleLegacy) d = Dialect::kLegacy;
  }
  for (const DtNode& child : res->children) {
    if (!absl::StartsWith(child.name, "memory@")) continue;
    PoolMemory m;
    if (child.Has("reg")) {
      MK_ASSIGN_OR_RETURN(std::vector<uint64_t> reg, child.U64s("reg"));
      if (reg.size() != 2) return absl::InvalidArgumentError(absl::StrCat(child.name, ": reg must be <addr size>"));
      m.base = reg[0];
      m.size = reg[1];
    } else {
      MK_ASSIGN_OR_RETURN(m.size, child.U64("size"));
    }
    if (child.Has("numa-node-id")) {
      MK_ASSIGN_OR_RETURN(m.numa, child.U32("numa-node-id"));
    }
    pool.memory.push_back(m);
  }
  MK_RETURN_IF_ERROR(ReadDevices(*res, &pool.devices));
  if (dialect != nullptr) *dialect = d;
  return pool;
}

absl::StatusOr<std::string> EncodeInstance(const InstanceResources& r, Dialect d) {
  DtNode root;
  root.children.push_back(InstanceResourcesNode(r, d));
  return ToDtb(root);
}

absl::StatusOr<InstanceResources> DecodeInstance(absl::string_view blob) {
  MK_ASSIGN_OR_RETURN(DtNode root, FromDtb(blob));
  const DtNode* res = root.Find("resources");
  if (res == nullptr) return absl::InvalidArgumentError("instance device tree has no /resources node");
  return ParseInstanceResources(*res);
}

absl::StatusOr<std::string> EncodeOverlay(const Overlay& overlay, Dialect d) {
  if (overlay.fragments.empty()) return absl::InvalidArgumentError("an overlay needs at least one fragment");
  DtNode root;
  for (size_t i = 0; i < overlay.fragments.size(); ++i) {
    const Fragment& f = overlay.fragments[i];
    DtNode& frag = root.Add(absl::StrCat("fragment@", i));
    frag.SetString("target-path", f.target_path);
    DtNode& ov = frag.Add("__overlay__");
    bool pool = f.target_path == "/resources";
    if (pool) {
      // The kernel's order for /resources.
      AddCpus(ov, "cpu-remove", f.cpu_remove);
      AddDeviceOps(ov, "device-remove", f.device_remove, true);
      AddMemory(ov, "memory-remove", f.memory_remove, true);
      AddMemory(ov, "memory-add", f.memory_add, true);
      AddCpus(ov, "cpu-add", f.cpu_add);
      AddDeviceOps(ov, "device-add", f.device_add, true);
      continue;
    }
    // The kernel's order for an instance target.
    if (f.create_name) {
      DtNode& c = ov.Add("instance-create");
      c.SetString("instance-name", *f.create_name);
      if (f.create_id) c.SetU32("id", *f.create_id);
      c.children.push_back(InstanceResourcesNode(f.create_resources, d));
    }
    AddMemory(ov, "memory-remove", f.memory_remove, false);
    AddMemory(ov, "memory-add", f.memory_add, false);
    AddCpus(ov, "cpu-remove", f.cpu_remove);
    AddCpus(ov, "cpu-add", f.cpu_add);
    AddDeviceOps(ov, "device-remove", f.device_remove, false);
    AddDeviceOps(ov, "device-add", f.device_add, false);
    if (f.remove_name) ov.Add("instance-remove").SetString("instance-name", *f.remove_name);
  }
  return ToDtb(root);
}

absl::StatusOr<Overlay> DecodeOverlay(absl::string_view blob) {
  MK_ASSIGN_OR_RETURN(DtNode root, FromDtb(blob));
  Overlay overlay;
  for (const DtNode& frag : root.children) {
    if (!absl::StartsWith(frag.name, "fragment@")) {
      return absl::InvalidArgumentError(absl::StrCat("overlay: unexpected node ", frag.name));
    }
    Fragment f;
    MK_ASSIGN_OR_RETURN(f.target_path, frag.String("target-path"));
    const DtNode* ov = frag.Find("__overlay__");
    if (ov == nullptr) return absl::InvalidArgumentError(absl::StrCat(frag.name, ": no __overlay__ node"));
    if (const DtNode* c = ov->Find("instance-create")) {
      MK_ASSIGN_OR_RETURN(std::string name, c->String("instance-name"));
      f.create_name = name;
      if (c->Has("id")) {
        MK_ASSIGN_OR_RETURN(uint32_t id, c->U32("id"));
        f.create_id = id;
      }
      const DtNode* res = c->Find("resources");
      if (res == nullptr) return absl::InvalidArgumentError("instance-create: no resources node");
      MK_ASSIGN_OR_RETURN(f.create_resources, ParseInstanceResources(*res));
    }
    if (const DtNode* r = ov->Find("instance-remove")) {
      MK_ASSIGN_OR_RETURN(std::string name, r->String("instance-name"));
      f.remove_name = name;
    }
    MK_RETURN_IF_ERROR(ReadCpus(ov->Find("cpu-add"), &f.cpu_add));
    MK_RETURN_IF_ERROR(ReadCpus(ov->Find("cpu-remove"), &f.cpu_remove));
    MK_RETURN_IF_ERROR(ReadMemory(ov->Find("memory-add"), &f.memory_add));
    MK_RETURN_IF_ERROR(ReadMemory(ov->Find("memory-remove"), &f.memory_remove));
    MK_RETURN_IF_ERROR(ReadDeviceOps(ov->Find("device-add"), &f.device_add));
    MK_RETURN_IF_ERROR(ReadDeviceOps(ov->Find("device-remove"), &f.device_remove));
    for (const DtNode& op : ov->children) {
      static const char* kKnown[] = {"instance-create", "instance-remove", "cpu-add",       "cpu-remove",
                                     "memory-add",      "memory-remove",   "device-add",    "device-remove"};
      bool known = false;
      for (const char* k : kKnown) known |= op.name == k;
      if (!known) return absl::InvalidArgumentError(absl::StrCat(frag.name, ": unknown operation ", op.name));
    }
    overlay.fragments.push_back(std::move(f));
  }
  if (overlay.fragments.empty()) return absl::InvalidArgumentError("overlay has no fragment");
  return overlay;
}

}  // namespace mkfleet::kernel
