#include "reconciler/differ.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

class Builder {
 public:
  explicit Builder(std::string host) : host_(std::move(host)) {}

  v1::Action& Add(std::vector<v1::Action>& list, const std::string& instance, int64_t generation,
                  const std::string& step, v1::KernelState expect) {
    v1::Action& a = list.emplace_back();
    a.set_id(absl::StrCat(host_, "/", instance, "/g", generation, "/", step));
    a.set_instance(instance);
    a.set_expect(expect);
    return a;
  }

  // Takes an instance from its state down to gone.
  void Delete(const std::string& name, v1::KernelState state, int64_t generation, const std::string& why) {
    if (state == v1::KERNEL_STATE_ACTIVE) {
      Add(releases_, name, generation, why + "-halt", v1::KERNEL_STATE_ACTIVE).mutable_halt();
      state = v1::KERNEL_STATE_LOADED;
    }
    if (state == v1::KERNEL_STATE_FAILED) {
      Add(releases_, name, generation, why + "-force-halt", v1::KERNEL_STATE_FAILED).mutable_halt()->set_force(true);
      state = v1::KERNEL_STATE_LOADED;
    }
    if (state == v1::KERNEL_STATE_LOADED) {
      Add(releases_, name, generation, why + "-unload", v1::KERNEL_STATE_LOADED).mutable_unload();
    }
    Add(releases_, name, generation, why + "-remove", v1::KERNEL_STATE_UNKNOWN).mutable_remove();
  }

  // Brings a new instance up to its desired phase.
  void Create(const DesiredInstance& d, const std::string& why) {
    v1::Action& c = Add(acquires_, d.name, d.generation, why + "-create", v1::KERNEL_STATE_ABSENT);
    *c.mutable_create()->mutable_placement() = d.placement;
    c.mutable_create()->set_id(d.spec.has_id() ? d.spec.id() : 0);
    if (d.spec.phase() == v1::PHASE_READY) return;
    Load(d, why, v1::KERNEL_STATE_READY);
    if (d.spec.phase() == v1::PHASE_RUNNING) Start(d, why);
  }

  void Load(const DesiredInstance& d, const std::string& why, v1::KernelState expect) {
    v1::Action& l = Add(acquires_, d.name, d.generation, why + "-load", expect);
    *l.mutable_load()->mutable_kernel() = d.spec.kernel();
    if (d.spec.has_rootfs()) *l.mutable_load()->mutable_rootfs() = d.spec.rootfs();
  }

  void Start(const DesiredInstance& d, const std::string& why) {
    Add(acquires_, d.name, d.generation, why + "-start", v1::KERNEL_STATE_LOADED).mutable_start();
  }

  std::vector<v1::Action> releases_, acquires_, additions_;
  std::vector<std::string> notes_;

 private:
  std::string host_;
};

// Whether the loaded kernel is the one the spec asks for.
bool SameKernel(const v1::KernelInstanceSpec& spec, const v1::Provenance& p) {
  const v1::KernelSpec& k = spec.kernel();
  if (p.kernel_path().empty()) return true;  // loaded by someone else: nothing to compare
  return k.image() == p.kernel_path() && k.initrd() == p.initrd_path() && k.cmdline() == p.cmdline() &&
         (k.sha256().empty() || k.sha256() == p.kernel_sha256()) && spec.rootfs().image() == p.rootfs_image();
}

uint64_t TotalMemory(const v1::Placement& p) {
  uint64_t total = 0;
  for (const auto& m : p.memory()) total += m.bytes();
  return total;
}

}  // namespace

Plan ComputePlan(const std::string& host, const std::vector<DesiredInstance>& desired,
                 const std::vector<v1::ObservedInstance>& observed) {
  Builder b(host);
  std::map<std::string, const DesiredInstance*> want;
  for (const DesiredInstance& d : desired) want[d.name] = &d;
  std::map<std::string, const v1::ObservedInstance*> have;
  for (const v1::ObservedInstance& o : observed) have[o.name()] = &o;

  // Gone from the desired state: delete.
  for (const auto& [name, o] : have) {
    if (!want.count(name)) b.Delete(name, o->status().kernel_state(), 0, "delete");
  }
  for (const auto& [name, d] : want) {
    auto it = have.find(name);
    if (it == have.end()) {
      b.Create(*d, "create");
      continue;
    }
    const v1::InstanceStatus& st = it->second->status();
    v1::KernelState state = st.kernel_state();
    const v1::Placement& now = st.placement();
    const v1::Placement& target = d->placement;
    // The boot CPU cannot be hot-removed: a different boot CPU means a re-create.
    std::set<uint32_t> have_cpus(now.cpus().begin(), now.cpus().end());
    std::set<uint32_t> want_cpus(target.cpus().begin(), target.cpus().end());
    bool boot_moves = !now.cpus().empty() && !want_cpus.count(now.boot_cpu());
    if (boot_moves) {
      b.Delete(name, state, d->generation, "recreate");
      b.Create(*d, "recreate");
      continue;
    }
    // Kernel, initrd, command line or rootfs changed.
    bool kernel_changes = (state == v1::KERNEL_STATE_LOADED || state == v1::KERNEL_STATE_ACTIVE) &&
                          !SameKernel(d->spec, st.provenance());
    if (kernel_changes && d->spec.update().strategy() == v1::UPDATE_MORPH) {
      b.notes_.push_back(absl::StrCat(name, ": update strategy Morph (live update) is not supported yet; "
                                            "use Replace"));
      kernel_changes = false;
    }
    // Hot-plug: removals first (releases), additions after everything else is freed.
    std::vector<uint32_t> cpu_remove, cpu_add;
    for (uint32_t c : have_cpus) {
      if (!want_cpus.count(c)) cpu_remove.push_back(c);
    }
    for (uint32_t c : want_cpus) {
      if (!have_cpus.count(c)) cpu_add.push_back(c);
    }
    if (!cpu_remove.empty()) {
      v1::Action& a = b.Add(b.releases_, name, d->generation, "cpu-remove", v1::KERNEL_STATE_UNKNOWN);
      for (uint32_t c : cpu_remove) a.mutable_cpu_remove()->add_cpus(c);
    }
    uint64_t mem_have = TotalMemory(now), mem_want = TotalMemory(target);
    if (mem_want < mem_have) {
      v1::Action& a = b.Add(b.releases_, name, d->generation, "memory-remove", v1::KERNEL_STATE_UNKNOWN);
      auto* m = a.mutable_memory_remove()->add_memory();
      m->set_node(now.memory().empty() ? 0 : now.memory(0).node());
      m->set_bytes(mem_have - mem_want);
    }
    std::set<std::string> have_dev, want_dev;
    for (const auto& dev : now.devices()) have_dev.insert(dev.pci());
    for (const auto& dev : target.devices()) want_dev.insert(dev.pci());
    std::vector<std::string> dev_remove, dev_add;
    for (const auto& p : have_dev) {
      if (!want_dev.count(p)) dev_remove.push_back(p);
    }
    for (const auto& p : want_dev) {
      if (!have_dev.count(p)) dev_add.push_back(p);
    }
    if (!dev_remove.empty()) {
      v1::Action& a = b.Add(b.releases_, name, d->generation, "device-remove", v1::KERNEL_STATE_UNKNOWN);
      for (const auto& p : dev_remove) a.mutable_device_remove()->add_devices()->set_pci(p);
    }
    // Phase and kernel.
    v1::KernelState after = state;
    if (kernel_changes) {
      if (state == v1::KERNEL_STATE_ACTIVE) {
        b.Add(b.releases_, name, d->generation, "replace-halt", v1::KERNEL_STATE_ACTIVE).mutable_halt();
      }
      b.Add(b.releases_, name, d->generation, "replace-unload", v1::KERNEL_STATE_LOADED).mutable_unload();
      after = v1::KERNEL_STATE_READY;
    }
    v1::Phase phase = d->spec.phase();
    if (after == v1::KERNEL_STATE_FAILED) {
      b.Add(b.releases_, name, d->generation, "rescue-force-halt", v1::KERNEL_STATE_FAILED).mutable_halt()->set_force(true);
      after = v1::KERNEL_STATE_LOADED;
    }
    if (after == v1::KERNEL_STATE_ACTIVE && phase != v1::PHASE_RUNNING) {
      b.Add(b.releases_, name, d->generation, "halt", v1::KERNEL_STATE_ACTIVE).mutable_halt();
      after = v1::KERNEL_STATE_LOADED;
    }
    if (after == v1::KERNEL_STATE_LOADED && phase == v1::PHASE_READY) {
      b.Add(b.releases_, name, d->generation, "unload", v1::KERNEL_STATE_LOADED).mutable_unload();
      after = v1::KERNEL_STATE_READY;
    }
    if (after == v1::KERNEL_STATE_READY && phase != v1::PHASE_READY) {
      b.Load(*d, kernel_changes ? "replace" : "phase", v1::KERNEL_STATE_READY);
      after = v1::KERNEL_STATE_LOADED;
    }
    if (after == v1::KERNEL_STATE_LOADED && phase == v1::PHASE_RUNNING) {
      b.Start(*d, kernel_changes ? "replace" : "phase");
    }
    if (!cpu_add.empty()) {
      v1::Action& a = b.Add(b.additions_, name, d->generation, "cpu-add", v1::KERNEL_STATE_UNKNOWN);
      for (uint32_t c : cpu_add) a.mutable_cpu_add()->add_cpus(c);
    }
    if (mem_want > mem_have) {
      v1::Action& a = b.Add(b.additions_, name, d->generation, "memory-add", v1::KERNEL_STATE_UNKNOWN);
      auto* m = a.mutable_memory_add()->add_memory();
      m->set_node(target.memory().empty() ? 0 : target.memory(0).node());
      m->set_bytes(mem_want - mem_have);
    }
    if (!dev_add.empty()) {
      v1::Action& a = b.Add(b.additions_, name, d->generation, "device-add", v1::KERNEL_STATE_UNKNOWN);
      for (const auto& p : dev_add) a.mutable_device_add()->add_devices()->set_pci(p);
    }
  }
  Plan plan;
  for (auto* list : {&b.releases_, &b.acquires_, &b.additions_}) {
    for (auto& a : *list) plan.actions.push_back(std::move(a));
  }
  plan.notes = std::move(b.notes_);
  return plan;
}

std::string Plan::DebugString() const {
  std::vector<std::string> lines;
  for (const auto& a : actions) lines.push_back(a.ShortDebugString());
  for (const auto& n : notes) lines.push_back("note: " + n);
  return absl::StrJoin(lines, "\n");
}

bool Plan::operator==(const Plan& o) const {
  if (actions.size() != o.actions.size() || notes != o.notes) return false;
  for (size_t i = 0; i < actions.size(); ++i) {
    if (actions[i].SerializeAsString() != o.actions[i].SerializeAsString()) return false;
  }
  return true;
}

}  // namespace mkfleet::reconciler
