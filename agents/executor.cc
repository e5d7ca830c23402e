#include "agents/executor.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/container/flat_hash_map.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status_macros.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;

uint32_t VirtioDeviceId(const std::string& type) {
  if (type == "net") return 1;
  if (type == "blk") return 2;
  if (type == "console") return 3;
  if (type == "vsock") return 19;
  return 0;
}

}  // namespace

v1::KernelState StateAfter(const v1::Action& a) {
  switch (a.op_case()) {
    case v1::Action::kCreate:
      return v1::KERNEL_STATE_READY;
    case v1::Action::kLoad:
      return v1::KERNEL_STATE_LOADED;
    case v1::Action::kStart:
      return v1::KERNEL_STATE_ACTIVE;
    case v1::Action::kHalt:
      return v1::KERNEL_STATE_LOADED;
    case v1::Action::kUnload:
      return v1::KERNEL_STATE_READY;
    case v1::Action::kRemove:
      return v1::KERNEL_STATE_ABSENT;
    default:
      return v1::KERNEL_STATE_UNKNOWN;
  }
}

kernel::KernelImage KernelImageOf(const v1::LoadKernel& load) {
  kernel::KernelImage image;
  image.kernel_path = load.kernel().image();
  image.initrd_path = load.kernel().initrd();
  image.cmdline = load.kernel().cmdline();
  image.sha256 = load.kernel().sha256();
  image.rootfs_image = load.rootfs().image();
  return image;
}

bool ValidInstanceName(const std::string& name) {
  if (name.empty() || name.size() > 63) return false;
  for (char c : name) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return name.front() != '-' && name.back() != '-';
}

Executor::Executor(kernel::HostKernel& kernel, ActionJournal& journal, std::shared_ptr<const planner::Topology> topology)
    : kernel_(kernel), journal_(journal), topology_(std::move(topology)) {}

absl::Status Executor::Preflight(const v1::ActionBatch& batch, const std::string& instance) {
  bool down = false, removed = false;
  // Other instances the batch removes before this one's create (their resources count as free).
  std::set<std::string> freed;
  const v1::Action* create = nullptr;
  for (const v1::Action& a : batch.actions()) {
    if (a.instance() != instance) {
      if (down && a.has_remove() && create == nullptr) freed.insert(a.instance());
      continue;
    }
    if (a.has_halt() || a.has_unload() || a.has_remove()) {
      // Already done (a re-sent batch): the kernel is down; nothing left to protect.
      if (!down && journal_.Lookup(a.id())) return absl::OkStatus();
      down = true;
    }
    removed |= down && a.has_remove();
    if (removed && a.has_create() && create == nullptr && !journal_.Lookup(a.id())) create = &a;
    if (a.has_load() && down && !journal_.Lookup(a.id())) {
      absl::Status s = kernel_.CheckImage(instance, KernelImageOf(a.load()));
      if (!s.ok()) {
        return absl::Status(s.code(), absl::StrCat("not taken down: its new kernel would not load: ", s.message()));
      }
      break;
    }
  }
  return create != nullptr ? CheckFits(instance, *create, freed) : absl::OkStatus();
}

absl::Status Executor::CheckFits(const std::string& instance, const v1::Action& create,
                                 const std::set<std::string>& freed) {
  MK_ASSIGN_OR_RETURN(kernel::InstanceResources r, Resources(create.create()));
  MK_ASSIGN_OR_RETURN(kernel::HostObservation seen, kernel_.Observe());
  auto refuse = [&](const std::string& why) {
    return absl::ResourceExhaustedError(absl::StrCat("not taken down: its new placement would not fit: ", why));
  };
  std::map<uint64_t, std::string> cpu_holder;
  std::map<std::string, std::string> device_holder;
  std::map<uint32_t, uint64_t> used;  // per NUMA node (OS index), by the instances that stay
  for (const kernel::InstanceInfo& in : seen.instances) {
    if (in.name == instance || freed.count(in.name)) continue;
    for (uint64_t cpu : in.resources.cpus) cpu_holder[cpu] = in.name;
    for (const kernel::InstanceDevice& d : in.resources.devices) device_holder[d.pci_id] = in.name;
    for (const auto& [node, bytes] : in.memory_by_node) used[node] += bytes;
  }
  for (uint64_t cpu : r.cpus) {
    if (auto h = cpu_holder.find(cpu); h != cpu_holder.end()) return refuse(absl::StrCat("CPU ", cpu, " is ", h->second, "'s"));
  }
  for (const kernel::InstanceDevice& d : r.devices) {
    auto h = device_holder.find(d.pci_id);
    if (h != device_holder.end()) return refuse(absl::StrCat("device ", d.pci_id, " is ", h->second, "'s"));
  }
  std::map<uint32_t, uint64_t> pool;
  for (const kernel::PoolMemory& m : seen.pool.memory) pool[m.numa] += m.size;
  for (const v1::NodeBytes& m : create.create().placement().memory()) {
    const uint64_t total = pool[m.node()], taken = used[m.node()];
    const uint64_t left = total > taken ? total - taken : 0;
    if (m.bytes() > left) {
      return refuse(absl::StrCat("NUMA node ", m.node(), " has ", left >> 20, " MiB for it (its own and the free), it needs ",
                                 m.bytes() >> 20, " MiB"));
    }
  }
  return absl::OkStatus();
}

absl::StatusOr<v1::ExecuteResponse> Executor::Execute(const v1::ActionBatch& batch) {
  absl::MutexLock run(&run_mu_);
  const v1::Fence& fence = batch.fence();
  if (fence.epoch() != 0 || fence.sequence() != 0) {
    v1::Fence taken = journal_.fence();
    if (FenceBefore(fence, taken)) {
      return absl::AbortedError(absl::StrCat("stale batch: fence ", fence.epoch(), ".", fence.sequence(),
                                             " is older than ", taken.epoch(), ".", taken.sequence(),
                                             " already taken; plan again"));
    }
    absl::Status s = journal_.RecordFence(fence);
    if (!s.ok()) return s;
  }
  v1::ExecuteResponse response;
  // Per instance: the action that failed, so its later actions are not run.
  std::map<std::string, std::string> failed;
  std::set<std::string> checked;
  for (const v1::Action& action : batch.actions()) {
    v1::ActionResult* r = response.add_results();
    r->set_id(action.id());
    const std::string& instance = action.instance();
    auto f = failed.find(instance);
    if (f != failed.end()) {
      r->set_code(static_cast<int>(absl::StatusCode::kAborted));
      r->set_message(absl::StrCat("not run: ", f->second, " of ", instance.empty() ? "the pool" : instance,
                                  " failed earlier in the batch"));
      continue;
    }
    if (auto recorded = journal_.Lookup(action.id())) {
      *r = *recorded;
      r->set_replayed(true);
      if (recorded->code() != 0) failed[instance] = action.id();
      continue;
    }
    absl::Status s;
    if (!instance.empty() && checked.insert(instance).second) s = Preflight(batch, instance);
    note_.clear();
    if (s.ok()) s = Run(action);
    r->set_code(static_cast<int>(s.code()));
    r->set_message(s.ok() ? note_ : std::string(s.message()));
    // Only successes are recorded: a failed action changed nothing (every kernel change is
    // one transaction or one system call, and guards fail first), so re-sending it later
    // runs it again, e.g. once the pool or the state allows it.
    if (s.ok()) {
      // Written now (a killed agent keeps it), synced once per batch below.
      absl::Status j = journal_.Record(*r, /*sync=*/false);
      if (!j.ok()) {
        r->set_code(static_cast<int>(absl::StatusCode::kInternal));
        r->set_message(absl::StrCat("ran, but the journal failed: ", j.message()));
      }
    }
    if (observer_) observer_(action, *r);
    if (r->code() != 0) failed[instance] = action.id();
  }
  // One fdatasync per batch. Should the machine lose power before it, the actions re-run
  // when re-sent and find their effect already there (HostKernel is idempotent).
  absl::Status sync = journal_.Sync();
  if (!sync.ok()) {
    for (auto& r : *response.mutable_results()) {
      if (r.code() == 0 && !r.replayed()) {
        r.set_code(static_cast<int>(absl::StatusCode::kInternal));
        r.set_message(absl::StrCat("ran, but the journal failed: ", sync.message()));
      }
    }
  }
  return response;
}

absl::Status Executor::Run(const v1::Action& a) {
  const std::string& name = a.instance();
  if (a.id().empty()) return absl::InvalidArgumentError("action without an id");
  if (a.op_case() != v1::Action::kPoolChange && !ValidInstanceName(name)) {
    return absl::InvalidArgumentError(absl::StrCat("action ", a.id(), ": instance name \"", name,
                                                   "\" is not a DNS label (a-z, 0-9, '-', at most 63)"));
  }
  // The precondition: the state the controller expects, or the state the action leads to
  // (it already happened: nothing to do, and HostKernel will find it so).
  if (a.expect() != v1::KERNEL_STATE_UNKNOWN) {
    MK_ASSIGN_OR_RETURN(v1::KernelState state, kernel_.StateOf(name));
    v1::KernelState after = StateAfter(a);
    if (state != a.expect() && (after == v1::KERNEL_STATE_UNKNOWN || state != after)) {
      return absl::FailedPreconditionError(absl::StrCat("action ", a.id(), " on ", name, ": expected the instance ",
                                                        kernel::KernelStateName(a.expect()), ", it is ",
                                                        kernel::KernelStateName(state)));
    }
  }
  switch (a.op_case()) {
    case v1::Action::kCreate: {
      MK_ASSIGN_OR_RETURN(kernel::InstanceResources r, Resources(a.create()));
      MK_RETURN_IF_ERROR(InPool(a.id(), r.cpus));
      std::optional<uint32_t> id;
      if (a.create().id() != 0) id = a.create().id();
      // The kernel takes an instance's memory from its first NUMA node; the other nodes'
      // shares join it in the same transaction.
      std::vector<kernel::MemoryEntry> extra;
      const v1::Placement& p = a.create().placement();
      if (kernel_.StateOf(name).value_or(v1::KERNEL_STATE_UNKNOWN) == v1::KERNEL_STATE_ABSENT) {
        for (const auto& m : p.memory()) {
          if (r.numa_nodes.empty() || m.node() == r.numa_nodes[0] || m.bytes() == 0) continue;
          MK_ASSIGN_OR_RETURN(auto blocks, kernel_.FreePoolMemory(m.node(), m.bytes()));
          extra.insert(extra.end(), blocks.begin(), blocks.end());
        }
      }
      return kernel_.Create(name, id, r, a.create().owner(), extra);
    }
    case v1::Action::kClaim:
      return kernel_.SetOwner(name, a.claim().owner());
    case v1::Action::kMorphStart:
    case v1::Action::kMorphCommit:
    case v1::Action::kMorphRollback:
      if (morph_ == nullptr) return absl::UnimplementedError(absl::StrCat("action ", a.id(), ": this agent runs no live updates"));
      if (a.has_morph_start()) return morph_->Start(name, a.morph_start());
      if (a.has_morph_commit()) return morph_->Commit(name);
      return morph_->Rollback(name, a.morph_rollback().reason());
    case v1::Action::kLoad: {
      kernel::KernelImage image = KernelImageOf(a.load());
      if (image.kernel_path.empty()) return absl::InvalidArgumentError(absl::StrCat("action ", a.id(), ": no kernel image"));
      return kernel_.Load(name, image);
    }
    case v1::Action::kStart:
      return kernel_.Start(name);
    case v1::Action::kHalt:
      return kernel_.Halt(name, a.halt().force());
    case v1::Action::kUnload:
      return kernel_.Unload(name);
    case v1::Action::kRemove:
      return kernel_.Remove(name);
    case v1::Action::kCpuAdd: {
      std::vector<kernel::CpuEntry> cpus = Cpus(a.cpu_add());
      std::vector<uint64_t> ids;
      for (const auto& c : cpus) ids.push_back(c.physical_id);
      MK_RETURN_IF_ERROR(InPool(a.id(), ids));
      return kernel_.AddCpus(name, cpus);
    }
    case v1::Action::kCpuRemove:
      return kernel_.RemoveCpus(name, Cpus(a.cpu_remove()));
    case v1::Action::kMemoryAdd: {
      MK_ASSIGN_OR_RETURN(auto delta, MemoryDelta(name, a.memory_add(), /*add=*/true));
      std::vector<kernel::MemoryEntry> mem;
      for (const auto& want : delta) {
        MK_ASSIGN_OR_RETURN(auto blocks, kernel_.FreePoolMemory(want.node(), want.bytes()));
        mem.insert(mem.end(), blocks.begin(), blocks.end());
      }
      if (mem.empty()) return absl::OkStatus();
      return kernel_.AddMemory(name, mem);
    }
    case v1::Action::kMemoryRemove: {
      MK_ASSIGN_OR_RETURN(auto delta, MemoryDelta(name, a.memory_remove(), /*add=*/false));
      std::vector<kernel::MemoryEntry> mem;
      for (const auto& give : delta) {
        MK_ASSIGN_OR_RETURN(auto regions, kernel_.MemoryToRelease(name, give.node(), give.bytes()));
        mem.insert(mem.end(), regions.begin(), regions.end());
      }
      if (mem.empty()) return absl::OkStatus();
      return kernel_.RemoveMemory(name, mem);
    }
    case v1::Action::kDeviceAdd:
    case v1::Action::kDeviceRemove: {
      const v1::DeviceChange& c = a.op_case() == v1::Action::kDeviceAdd ? a.device_add() : a.device_remove();
      std::vector<kernel::DeviceEntry> devs;
      for (const auto& d : c.devices()) devs.push_back({d.pci(), "", "vfio-pci", 0});
      return a.op_case() == v1::Action::kDeviceAdd ? kernel_.AddDevices(name, devs) : kernel_.RemoveDevices(name, devs);
    }
    case v1::Action::kPoolChange: {
      const v1::PoolChange& c = a.pool_change();
      kernel::PoolState target;
      std::map<uint64_t, uint32_t> cpu_numa;
      for (uint32_t cpu : c.cpus()) {
        auto it = topology_->physical_ids.find(cpu);
        if (it == topology_->physical_ids.end() || !topology_->core_of_pu.contains(cpu)) {
          return absl::InvalidArgumentError(absl::StrCat("action ", a.id(), ": CPU ", cpu, " is not on this host"));
        }
        target.cpus.push_back(it->second);
        cpu_numa[it->second] = topology_->numa[topology_->cores[topology_->core_of_pu.at(cpu)].numa].os_index;
      }
      std::sort(target.cpus.begin(), target.cpus.end());
      for (const auto& m : c.memory()) target.memory.push_back({0, m.bytes(), m.node()});
      for (const std::string& bdf : c.devices()) {
        int d = topology_->FindPci(bdf);
        if (d < 0) return absl::InvalidArgumentError(absl::StrCat("action ", a.id(), ": no PCI function ", bdf));
        target.devices.push_back({absl::StrCat("dev", d), bdf, topology_->pci[d].vendor_id, topology_->pci[d].device_id});
      }
      std::vector<std::string> kept;
      MK_RETURN_IF_ERROR(kernel_.ChangePool(target, cpu_numa, &kept));
      note_ = absl::StrJoin(kept, "; ");
      return absl::OkStatus();
    }
    default:
      return absl::InvalidArgumentError(absl::StrCat("action ", a.id(), ": no operation"));
  }
}

absl::StatusOr<std::vector<v1::NodeBytes>> Executor::MemoryDelta(const std::string& instance,
                                                                 const v1::MemoryChange& change, bool add) {
  if (change.target().empty()) return std::vector<v1::NodeBytes>(change.memory().begin(), change.memory().end());
  MK_ASSIGN_OR_RETURN(auto now, kernel_.InstanceMemory(instance));
  std::vector<v1::NodeBytes> out;
  for (const v1::NodeBytes& t : change.target()) {
    uint64_t have = now.count(t.node()) ? now.at(t.node()) : 0;
    uint64_t diff = add ? (t.bytes() > have ? t.bytes() - have : 0) : (have > t.bytes() ? have - t.bytes() : 0);
    if (diff == 0) continue;
    v1::NodeBytes nb;
    nb.set_node(t.node());
    nb.set_bytes(diff);
    out.push_back(nb);
  }
  return out;
}

absl::Status Executor::InPool(const std::string& id, const std::vector<uint64_t>& physical) {
  MK_ASSIGN_OR_RETURN(std::vector<uint64_t> pool, kernel_.PoolCpus());
  absl::flat_hash_map<uint64_t, uint32_t> logical;
  for (const auto& [l, p] : topology_->physical_ids) logical[p] = l;
  for (uint64_t p : physical) {
    if (!std::binary_search(pool.begin(), pool.end(), p)) {
      return absl::FailedPreconditionError(absl::StrCat("action ", id, ": CPU ", logical.count(p) ? logical[p] : p,
                                                        " (physical id ", p, ") is not in this host's pool"));
    }
  }
  return absl::OkStatus();
}

std::vector<kernel::CpuEntry> Executor::Cpus(const v1::CpuChange& change) const {
  std::vector<kernel::CpuEntry> out;
  for (uint32_t cpu : change.cpus()) {
    auto it = topology_->physical_ids.find(cpu);
    uint32_t numa = topology_->core_of_pu.contains(cpu)
                        ? topology_->numa[topology_->cores[topology_->core_of_pu.at(cpu)].numa].os_index
                        : 0;
    out.push_back({it != topology_->physical_ids.end() ? it->second : cpu, numa, 0});
  }
  return out;
}

absl::StatusOr<kernel::InstanceResources> Executor::Resources(const v1::CreateInstance& create) const {
  return PlacementResources(*topology_, create.placement());
}

absl::StatusOr<kernel::InstanceResources> PlacementResources(const planner::Topology& topology, const v1::Placement& p,
                                                             const std::set<uint32_t>& also_nodes) {
  const planner::Topology* topology_ = &topology;
  kernel::InstanceResources r;
  for (int i = 0; i < p.cpus_size(); ++i) {
    uint32_t cpu = p.cpus(i);
    if (!topology_->core_of_pu.contains(cpu)) {
      return absl::InvalidArgumentError(absl::StrCat("placement: CPU ", cpu, " is not a CPU of this host"));
    }
    auto it = topology_->physical_ids.find(cpu);
    r.cpus.push_back(it != topology_->physical_ids.end() ? it->second : cpu);
  }
  if (r.cpus.empty()) return absl::InvalidArgumentError("placement: no CPUs");
  // The CPUs it may later be handed by hot-plug (a kernel onlines only CPUs it enumerated
  // at boot): every CPU of its NUMA nodes. Growing onto another node means a re-create.
  std::set<uint32_t> nodes = also_nodes;
  for (uint32_t cpu : p.cpus()) nodes.insert(topology_->cores[topology_->core_of_pu.at(cpu)].numa);
  for (const planner::Core& core : topology_->cores) {
    if (!nodes.count(core.numa)) continue;
    for (uint32_t pu : core.pus) {
      auto it = topology_->physical_ids.find(pu);
      r.pool_cpus.push_back(it != topology_->physical_ids.end() ? it->second : pu);
    }
  }
  std::sort(r.pool_cpus.begin(), r.pool_cpus.end());
  r.numa_nodes.assign(p.numa_nodes().begin(), p.numa_nodes().end());
  if (!p.memory().empty()) {
    // The node with most of its memory first: the kernel allocates memory-bytes there; the
    // other nodes' shares are added in the create's transaction (Run).
    auto most = std::max_element(p.memory().begin(), p.memory().end(),
                                 [](const auto& a, const auto& b) { return a.bytes() < b.bytes(); });
    r.numa_nodes.erase(std::remove(r.numa_nodes.begin(), r.numa_nodes.end(), most->node()), r.numa_nodes.end());
    r.numa_nodes.insert(r.numa_nodes.begin(), most->node());
    r.memory_bytes = most->bytes();
  }
  if (r.memory_bytes == 0) return absl::InvalidArgumentError("placement: no memory");
  for (const auto& d : p.devices()) r.devices.push_back({d.pci(), "vfio-pci"});
  std::map<std::string, int> per_type;
  for (const auto& v : p.virtio()) {
    r.virtio.push_back({absl::StrCat(v.type(), per_type[v.type()]++), VirtioDeviceId(v.type()), v.queues(), 256});
  }
  if (p.has_llc_mask()) r.llc_way_mask = p.llc_mask();
  return r;
}

}  // namespace mkfleet::agents
