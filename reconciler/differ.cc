#include "reconciler/differ.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/fnv.h"
#include "proto/morph_phase.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using Kind = InstanceChange::Kind;

class Builder {
 public:
  explicit Builder(std::string host) : host_(std::move(host)) {}

  // Sets the basis of the ids that follow: the kernel's version, or the host's.
  void Basis(int64_t version) { basis_ = version; }

  v1::Action& Add(std::vector<v1::Action>& list, const std::string& instance, int64_t generation,
                  const std::string& step, v1::KernelState expect) {
    v1::Action& a = list.emplace_back();
    a.set_id(absl::StrCat(host_, "/", instance, "/g", generation, "/v", basis_, "/", step));
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
    *c.mutable_create()->mutable_placement() = d.Where();
    c.mutable_create()->set_id(d.Spec().has_id() ? d.Spec().id() : 0);
    c.mutable_create()->set_owner(d.owner);
    if (d.Spec().phase() == v1::PHASE_READY) return;
    Load(d, why, v1::KERNEL_STATE_READY);
    if (d.Spec().phase() == v1::PHASE_RUNNING) Start(d, why);
  }

  void Load(const DesiredInstance& d, const std::string& why, v1::KernelState expect) {
    v1::Action& l = Add(acquires_, d.name, d.generation, why + "-load", expect);
    *l.mutable_load()->mutable_kernel() = d.Spec().kernel();
    if (d.Spec().has_rootfs()) *l.mutable_load()->mutable_rootfs() = d.Spec().rootfs();
  }

  void Start(const DesiredInstance& d, const std::string& why) {
    Add(acquires_, d.name, d.generation, why + "-start", v1::KERNEL_STATE_LOADED).mutable_start();
  }

  std::vector<v1::Action> claims_, releases_, acquires_, additions_;
  std::map<std::string, std::string> notes_;
  std::map<std::string, InstanceChange> changes_;

 private:
  std::string host_;
  int64_t basis_ = 0;
};

std::map<uint32_t, uint64_t> MemoryByNode(const v1::Placement& p) {
  std::map<uint32_t, uint64_t> out;
  for (const auto& m : p.memory()) out[m.node()] += m.bytes();
  return out;
}

std::string Bytes(uint64_t b) {
  if (b % (1ull << 30) == 0) return absl::StrCat(b >> 30, "Gi");
  return absl::StrCat(b >> 20, "Mi");
}

std::string CpuText(const std::vector<uint32_t>& cpus) { return absl::StrJoin(cpus, ","); }

}  // namespace

bool SameKernel(const v1::KernelInstanceSpec& spec, const v1::Provenance& p) {
  const v1::KernelSpec& k = spec.kernel();
  if (p.kernel_path().empty()) return true;  // loaded by someone else: nothing to compare
  return k.image() == p.kernel_path() && k.initrd() == p.initrd_path() && k.cmdline() == p.cmdline() &&
         (k.sha256().empty() || k.sha256() == p.kernel_sha256()) && spec.rootfs().image() == p.rootfs_image();
}

namespace {
std::string RevisionOf(const std::string& image, const std::string& initrd, const std::string& cmdline,
                       const std::string& rootfs) {
  // A pass asks for the revision of every member of a set, which all run one kernel: the
  // last answer is kept (per thread) and given again for the same four strings.
  thread_local struct {
    std::string image, initrd, cmdline, rootfs, revision;
  } last;
  if (!last.revision.empty() && image == last.image && initrd == last.initrd && cmdline == last.cmdline &&
      rootfs == last.rootfs) {
    return last.revision;
  }
  // Over the fields with separators: stable across runs and builds.
  uint64_t h = Fnv1a().Field(image).Field(initrd).Field(cmdline).Field(rootfs).value();
  last = {image, initrd, cmdline, rootfs, absl::StrCat(absl::Hex(static_cast<uint32_t>(h ^ (h >> 32)), absl::kZeroPad8))};
  return last.revision;
}
}  // namespace

std::string KernelRevision(const v1::KernelSpec& k, const std::string& rootfs_image) {
  return RevisionOf(k.image(), k.initrd(), k.cmdline(), rootfs_image);
}

std::string ProvenanceRevision(const v1::Provenance& p) {
  if (p.kernel_path().empty()) return "";
  return RevisionOf(p.kernel_path(), p.initrd_path(), p.cmdline(), p.rootfs_image());
}

const char* ChangeName(InstanceChange::Kind kind) {
  switch (kind) {
    case Kind::kCreate:
      return "create";
    case Kind::kDelete:
      return "delete";
    case Kind::kRecreate:
      return "re-create";
    case Kind::kReplace:
      return "replace";
    case Kind::kResize:
      return "resize";
    case Kind::kPhase:
      return "phase";
    case Kind::kClaim:
      return "claim";
    case Kind::kMorph:
      return "morph";
  }
  return "change";
}

Plan ComputePlan(const std::string& host, const std::vector<DesiredInstance>& desired,
                 const std::vector<v1::ObservedInstance>& observed, int64_t host_version) {
  std::vector<const v1::ObservedInstance*> at;
  at.reserve(observed.size());
  for (const v1::ObservedInstance& o : observed) at.push_back(&o);
  return ComputePlanFor(host, desired, at, host_version);
}

Plan ComputePlanFor(const std::string& host, const std::vector<DesiredInstance>& desired,
                    const std::vector<const v1::ObservedInstance*>& observed, int64_t host_version) {
  const std::string& host_name = host;
  Builder b(host);
  std::map<std::string, const DesiredInstance*> want;
  for (const DesiredInstance& d : desired) want[d.name] = &d;
  std::map<std::string, const v1::ObservedInstance*> have;
  for (const v1::ObservedInstance* o : observed) have[o->name()] = o;

  // The new kernel of a live update that runs is the agent's until the update ends.
  std::set<std::string> morphing;
  for (const v1::ObservedInstance* o : observed) {
    const v1::MorphStatus& m = o->status().morph();
    if (MorphRunning(o->status()) && m.old_kernel() == o->name()) morphing.insert(m.new_kernel());
  }
  // Gone from the desired state: delete.
  for (const auto& [name, o] : have) {
    if (want.count(name) || morphing.count(name)) continue;
    b.Basis(o->version());
    b.Delete(name, o->status().kernel_state(), 0, "delete");
    b.changes_[name] = {Kind::kDelete, false, "delete"};
  }
  for (const auto& [name, d] : want) {
    auto it = have.find(name);
    if (it == have.end()) {
      b.Basis(host_version);
      b.Create(*d, "create");
      b.changes_[name] = {Kind::kCreate, false, "create"};
      continue;
    }
    b.Basis(it->second->version());
    const v1::InstanceStatus& st = it->second->status();
    v1::KernelState state = st.kernel_state();
    if (MorphRunning(st)) {
      // A live update runs: the agent drives it; nothing else is done to the kernel meanwhile
      // (not even a re-create: it waits for the update to end).
      b.changes_[name] = {Kind::kMorph, false,
                          absl::StrCat("live update in progress (", MorphPhaseName(st.morph().phase()), ")")};
      continue;
    }
    const v1::Placement& now = st.placement();
    const v1::Placement& target = d->Where();
    if (it->second->owner() != d->owner && !d->owner.empty()) {
      // Adopted (a kernel that matches by name but was not created for this owner).
      b.Add(b.claims_, name, d->generation, "claim", v1::KERNEL_STATE_UNKNOWN).mutable_claim()->set_owner(d->owner);
      b.changes_[name] = {Kind::kClaim, false,
                          it->second->owner().empty() ? "adopt" : absl::StrCat("adopt from ", it->second->owner())};
    }
    std::set<uint32_t> have_cpus(now.cpus().begin(), now.cpus().end());
    std::set<uint32_t> want_cpus(target.cpus().begin(), target.cpus().end());
    // The boot CPU cannot be hot-removed, and a kernel onlines only CPUs of the NUMA nodes
    // it was created on: either means a re-create.
    // (The NUMA move first: it is the cause when both hold.)
    std::string recreate;
    if (!now.numa_nodes().empty()) {
      std::set<uint32_t> nodes(now.numa_nodes().begin(), now.numa_nodes().end());
      for (uint32_t n : target.numa_nodes()) {
        if (!nodes.count(n)) {
          recreate = absl::StrCat("its CPUs move onto NUMA node ", n, ", which it was not created on");
          break;
        }
      }
    }
    if (recreate.empty() && !now.cpus().empty() && !want_cpus.count(now.boot_cpu())) {
      recreate = absl::StrCat("the boot CPU ", now.boot_cpu(), " is not in the new placement (CPUs ",
                              CpuText({target.cpus().begin(), target.cpus().end()}), ")");
    }
    if (!recreate.empty()) {
      b.Delete(name, state, d->generation, "recreate");
      b.Basis(host_version);
      b.Create(*d, "recreate");
      b.changes_[name] = {Kind::kRecreate, state == v1::KERNEL_STATE_ACTIVE, "re-create: " + recreate};
      continue;
    }
    // Kernel, initrd, command line or rootfs changed.
    bool kernel_changes = (state == v1::KERNEL_STATE_LOADED || state == v1::KERNEL_STATE_ACTIVE) &&
                          !SameKernel(d->Spec(), st.provenance());
    // A live update keeps a kernel running: only one that runs and is to go on running.
    if (kernel_changes && d->Spec().update().strategy() == v1::UPDATE_MORPH && state == v1::KERNEL_STATE_ACTIVE &&
        d->Spec().phase() == v1::PHASE_RUNNING) {
      if (!d->morph_surge) {
        b.notes_[name] = d->morph_blocked.empty() ? "MorphNoSurge: no surge placement" : d->morph_blocked;
        continue;
      }
      const v1::MorphSpec& m = d->Spec().update().morph();
      v1::Action& a = b.Add(b.acquires_, name, d->generation, "morph-start", v1::KERNEL_STATE_ACTIVE);
      v1::MorphStart* ms = a.mutable_morph_start();
      ms->set_morph_id(absl::StrCat(host_name, ".", name, ".g", d->generation, ".v", it->second->version()));
      ms->set_next(d->morph_next);
      *ms->mutable_surge() = *d->morph_surge;
      ms->mutable_surge()->clear_devices();
      *ms->mutable_load()->mutable_kernel() = d->Spec().kernel();
      if (d->Spec().has_rootfs()) *ms->mutable_load()->mutable_rootfs() = d->Spec().rootfs();
      *ms->mutable_target() = target;
      ms->set_manual_commit(m.commit() == v1::MORPH_COMMIT_MANUAL);
      ms->set_timeout_ms(m.timeout() > 0 ? m.timeout() : 60000);
      ms->set_owner(d->owner);
      ms->set_revision(d->revision);
      ms->set_previous_revision(ProvenanceRevision(st.provenance()));
      b.changes_[name] = {Kind::kMorph, false,
                          absl::StrCat("live update (morph) to ", d->Spec().kernel().image(), ", revision ", d->revision,
                                       ", beside it as ", d->morph_next)};
      continue;
    }
    // A kernel change under Morph on a kernel that does not run (or is not to run on) has
    // nothing to keep alive: it is replaced below.
    std::vector<std::string> resize;  // what hot-plug changes, for people
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
      resize.push_back(absl::StrCat("-", cpu_remove.size(), " CPUs"));
    }
    // Memory per NUMA node, by target: what each node should hold after the change.
    std::map<uint32_t, uint64_t> mem_have = MemoryByNode(now), mem_want = MemoryByNode(target);
    std::set<uint32_t> nodes;
    for (const auto& [n, bytes] : mem_have) nodes.insert(n);
    for (const auto& [n, bytes] : mem_want) nodes.insert(n);
    v1::MemoryChange shrink, grow;
    for (uint32_t n : nodes) {
      uint64_t h = mem_have[n], w = mem_want[n];
      if (w == h) continue;
      v1::NodeBytes* t = (w < h ? shrink : grow).add_target();
      t->set_node(n);
      t->set_bytes(w);
      resize.push_back(absl::StrCat(w < h ? "-" : "+", Bytes(w < h ? h - w : w - h), " on node ", n));
    }
    if (shrink.target_size() > 0) {
      *b.Add(b.releases_, name, d->generation, "memory-remove", v1::KERNEL_STATE_UNKNOWN).mutable_memory_remove() =
          shrink;
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
      resize.push_back(absl::StrCat("-devices ", absl::StrJoin(dev_remove, ",")));
    }
    // Phase and kernel.
    v1::KernelState after = state;
    std::string phase_change;
    if (kernel_changes) {
      if (state == v1::KERNEL_STATE_ACTIVE) {
        b.Add(b.releases_, name, d->generation, "replace-halt", v1::KERNEL_STATE_ACTIVE).mutable_halt();
      }
      b.Add(b.releases_, name, d->generation, "replace-unload", v1::KERNEL_STATE_LOADED).mutable_unload();
      after = v1::KERNEL_STATE_READY;
    }
    v1::Phase phase = d->Spec().phase();
    if (after == v1::KERNEL_STATE_FAILED) {
      b.Add(b.releases_, name, d->generation, "rescue-force-halt", v1::KERNEL_STATE_FAILED).mutable_halt()->set_force(true);
      after = v1::KERNEL_STATE_LOADED;
      phase_change = "rescue a failed kernel";
    }
    if (after == v1::KERNEL_STATE_ACTIVE && phase != v1::PHASE_RUNNING) {
      b.Add(b.releases_, name, d->generation, "halt", v1::KERNEL_STATE_ACTIVE).mutable_halt();
      after = v1::KERNEL_STATE_LOADED;
      phase_change = "halt";
    }
    if (after == v1::KERNEL_STATE_LOADED && phase == v1::PHASE_READY) {
      b.Add(b.releases_, name, d->generation, "unload", v1::KERNEL_STATE_LOADED).mutable_unload();
      after = v1::KERNEL_STATE_READY;
      phase_change = "unload";
    }
    if (after == v1::KERNEL_STATE_READY && phase != v1::PHASE_READY) {
      b.Load(*d, kernel_changes ? "replace" : "phase", v1::KERNEL_STATE_READY);
      after = v1::KERNEL_STATE_LOADED;
      phase_change = "load";
    }
    if (after == v1::KERNEL_STATE_LOADED && phase == v1::PHASE_RUNNING) {
      b.Start(*d, kernel_changes ? "replace" : "phase");
      phase_change = phase_change.empty() ? "start" : phase_change + " and start";
    }
    if (!cpu_add.empty()) {
      v1::Action& a = b.Add(b.additions_, name, d->generation, "cpu-add", v1::KERNEL_STATE_UNKNOWN);
      for (uint32_t c : cpu_add) a.mutable_cpu_add()->add_cpus(c);
      resize.push_back(absl::StrCat("+", cpu_add.size(), " CPUs"));
    }
    if (grow.target_size() > 0) {
      *b.Add(b.additions_, name, d->generation, "memory-add", v1::KERNEL_STATE_UNKNOWN).mutable_memory_add() = grow;
    }
    if (!dev_add.empty()) {
      v1::Action& a = b.Add(b.additions_, name, d->generation, "device-add", v1::KERNEL_STATE_UNKNOWN);
      for (const auto& p : dev_add) a.mutable_device_add()->add_devices()->set_pci(p);
      resize.push_back(absl::StrCat("+devices ", absl::StrJoin(dev_add, ",")));
    }
    if (kernel_changes) {
      b.changes_[name] = {Kind::kReplace, state == v1::KERNEL_STATE_ACTIVE,
                          absl::StrCat("replace the kernel (", st.provenance().kernel_path(), " -> ",
                                       d->Spec().kernel().image(), ")")};
    } else if (!resize.empty()) {
      b.changes_[name] = {Kind::kResize, false, "hot-plug " + absl::StrJoin(resize, ", ")};
    } else if (!phase_change.empty()) {
      b.changes_[name] = {Kind::kPhase, false, phase_change};
    }
  }
  Plan plan;
  for (auto* list : {&b.claims_, &b.releases_, &b.acquires_, &b.additions_}) {
    for (auto& a : *list) plan.actions.push_back(std::move(a));
  }
  plan.notes = std::move(b.notes_);
  plan.changes = std::move(b.changes_);
  return plan;
}

std::string Plan::DebugString() const {
  std::vector<std::string> lines;
  for (const auto& a : actions) lines.push_back(a.ShortDebugString());
  for (const auto& [kernel, n] : notes) lines.push_back(absl::StrCat("note: ", kernel, ": ", n));
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
