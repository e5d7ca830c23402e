// PlacementEngine (placement.h): the hosts' ledgers, what each instance holds, and an
// index of hosts per selector by usable CPUs and memory, kept between calls so the
// controller adds, resizes or removes one instance without replanning the fleet; Place()
// on top of it.
#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"
#include "planner/host_index.h"
#include "planner/host_ledger.h"
#include "planner/placement.h"
#include "planner/placement_codec.h"
#include "planner/placer.h"
#include "planner/requests.h"

namespace mkfleet::planner {

namespace v1 = mkfleet::v1;
using internal::BucketIndex;
using internal::DeviceState;
using internal::HostState;
using internal::Placer;
using internal::SelectorText;
using internal::StillValid;
using internal::Take;
using internal::ToPlacement;

struct PlacementEngine::Impl {
  std::vector<HostInfo> hosts;
  std::vector<HostState> states;
  absl::flat_hash_map<std::string, int> host_index;
  std::vector<std::string> names;  // instance ids -> names, for "in use by"
  struct Held {
    int host;
    int id;
    Take take;
  };
  absl::flat_hash_map<std::string, Held> held;
  // What a request needs of a device class; hosts without it are skipped while scanning.
  struct DeviceNeed {
    v1::DeviceClass device_class = v1::DEVICE_CLASS_UNSPECIFIED;  // UNSPECIFIED: no device
    int share = 0;  // 0 whole, 1 VF, 2 namespace
  };
  // The uncordoned hosts matching one selector, by usable CPUs and by usable memory.
  struct Index {
    explicit Index(size_t hosts) : by_cpus(hosts), by_memory(hosts) {}
    BucketIndex by_cpus;    // usable CPUs
    BucketIndex by_memory;  // usable GiB
    size_t size() const { return by_cpus.size(); }
  };
  absl::flat_hash_map<std::string, std::unique_ptr<Index>> indexes;
  std::vector<std::vector<Index*>> indexes_of_host;  // every index whose selector matches

  static DeviceNeed NeedOf(const InstanceRequest& req) {
    DeviceNeed need;
    for (const v1::DeviceRequest& d : req.resources.devices()) {
      if (d.source_case() != v1::DeviceRequest::kSelect) continue;
      need.device_class = d.select().device_class();
      need.share = d.share_case() == v1::DeviceRequest::kVfs ? 1 : d.share_case() == v1::DeviceRequest::kNamespaces ? 2 : 0;
      break;
    }
    return need;
  }

  bool Qualifies(int hi, const DeviceNeed& need) const {
    if (need.device_class == v1::DEVICE_CLASS_UNSPECIFIED) return true;
    const HostState& h = states[hi];
    for (const auto& [pci, st] : h.devices()) {
      if (ClassOf(h.topology().pci[pci].class_id) != need.device_class || st.whole_owner >= 0) continue;
      if (need.share == 1 ? st.FreeVfs() > 0 : need.share == 2 ? st.FreeNs() > 0 : st.Untouched()) return true;
    }
    return false;
  }
  // Requests that fit on no host, by selector and shape (everything but the CPU count and
  // memory size). Placing only ever takes resources away, so a request at least as large
  // as one that failed fails too; a release forgets them all.
  struct Failed {
    uint32_t cpus;
    uint64_t memory;
    std::string why;
  };
  absl::flat_hash_map<std::string, std::vector<Failed>> failed;

  static std::string Shape(const InstanceRequest& req, const std::string& selector) {
    const v1::Resources& r = req.resources;
    std::string key = absl::StrCat(selector, "|", r.smt(), r.placement(), r.memory_policy(), "|",
                                   absl::StrJoin(r.numa_nodes(), ","), "|", r.has_llc_ways() ? r.llc_ways() : 0);
    for (const v1::DeviceRequest& d : r.devices()) {
      absl::StrAppend(&key, "|", d.pci(), ":", d.select().device_class(), ":", d.select().vendor(), ":",
                      d.select().numa_local(), ":", d.vfs(), ":", d.namespaces());
    }
    return key;
  }

  double avg_pool_cpus = 1, avg_pool_memory = 1;

  explicit Impl(std::vector<HostInfo> h) : hosts(std::move(h)) {
    states.reserve(hosts.size());
    double cpus = 0, memory = 0;
    for (size_t i = 0; i < hosts.size(); ++i) {
      states.emplace_back(hosts[i]);
      host_index[hosts[i].name] = static_cast<int>(i);
      cpus += hosts[i].pool.cpus.size();
      for (const auto& [n, bytes] : hosts[i].pool.memory) memory += bytes;
    }
    if (!hosts.empty() && cpus > 0 && memory > 0) {
      avg_pool_cpus = cpus / hosts.size();
      avg_pool_memory = memory / hosts.size();
    }
    indexes_of_host.resize(hosts.size());
  }

  // One index per selector; device needs are checked while scanning it.
  Index& IndexFor(const InstanceRequest& req, std::string* key_out) {
    std::string key = SelectorText(req.selector);
    *key_out = key;
    auto [it, inserted] = indexes.try_emplace(key);
    if (inserted) {
      it->second = std::make_unique<Index>(states.size());
      for (size_t k = 0; k < states.size(); ++k) {
        if (hosts[k].cordoned || !Matches(req.selector, hosts[k].labels)) continue;
        indexes_of_host[k].push_back(it->second.get());
        Insert(*it->second, k);
      }
    }
    return *it->second;
  }

  int IdFor(const std::string& name) {
    names.push_back(name);
    return static_cast<int>(names.size() - 1);
  }

  // Index keys: usable CPUs and usable GiB (HostState::UsableCpus/UsableMemory).
  void Insert(Index& index, int hi) {
    index.by_cpus.Insert(states[hi].UsableCpus(), hi);
    index.by_memory.Insert(static_cast<int64_t>(states[hi].UsableMemory() >> 30), hi);
  }

  // Commits or releases on a host, keeping the indexes in order.
  template <typename F>
  void Change(int hi, F&& f) {
    f(states[hi]);
    for (Index* index : indexes_of_host[hi]) {
      index->by_cpus.Erase(hi);
      index->by_memory.Erase(hi);
      Insert(*index, hi);
    }
  }

  void Hold(const std::string& name, int hi, Take take) {
    int id = IdFor(name);
    Change(hi, [&](HostState& h) { h.Commit(take, id); });
    held[name] = Held{hi, id, std::move(take)};
  }
};

PlacementEngine::PlacementEngine(std::vector<HostInfo> hosts) : impl_(std::make_unique<Impl>(std::move(hosts))) {}

void PlacementEngine::Reserve(size_t instances) {
  impl_->held.reserve(instances);
  impl_->names.reserve(instances);
}
PlacementEngine::~PlacementEngine() = default;

bool PlacementEngine::Keep(const InstanceRequest& req, const v1::Placement& placement) {
  Impl& m = *impl_;
  if (m.held.count(req.name)) return false;
  auto hi = m.host_index.find(placement.host());
  if (hi == m.host_index.end()) return false;
  if (!req.host.empty() && req.host != placement.host()) return false;
  HostState& h = m.states[hi->second];
  if (req.host.empty() && req.standby_for.empty() && !Matches(req.selector, h.info().labels)) return false;
  Take take;
  if (!StillValid(h, req, placement, &take)) return false;
  m.Hold(req.name, hi->second, std::move(take));
  return true;
}

bool PlacementEngine::Holds(const std::string& name) const { return impl_->held.count(name) > 0; }

bool PlacementEngine::Hold(const std::string& name, const v1::Placement& p, std::string* why) {
  Impl& m = *impl_;
  if (m.held.count(name)) {
    *why = "already held";
    return false;
  }
  auto hi = m.host_index.find(p.host());
  if (hi == m.host_index.end()) {
    *why = absl::StrCat("no host ", p.host());
    return false;
  }
  const HostState& h = m.states[hi->second];
  const Topology& t = h.topology();
  Take take;
  std::set<uint32_t> cores;
  for (uint32_t cpu : p.cpus()) {
    if (!t.core_of_pu.contains(cpu) || !h.InPool(cpu)) {
      *why = absl::StrCat("CPU ", cpu, " is not in the pool");
      return false;
    }
    if (h.OwnerOf(cpu) >= 0 || !h.PuFreeForAny(cpu)) {
      *why = absl::StrCat("CPU ", cpu, " is held already");
      return false;
    }
    take.cpus.push_back(cpu);
    cores.insert(t.core_of_pu.at(cpu));
  }
  if (take.cpus.empty()) {
    *why = "no CPUs";
    return false;
  }
  std::set<uint32_t> mine(take.cpus.begin(), take.cpus.end());
  for (uint32_t c : cores) {
    bool all = h.WholeCoreFree(c);
    for (uint32_t pu : t.cores[c].pus) all &= !h.InPool(pu) || mine.count(pu) > 0;
    if (all) take.whole_cores.push_back(c);
  }
  for (const auto& mem : p.memory()) {
    auto it = t.numa_by_os.find(mem.node());
    if (it == t.numa_by_os.end() || h.MemFree(it->second) < mem.bytes()) {
      *why = absl::StrCat("not enough free pool memory on NUMA node ", mem.node());
      return false;
    }
    bool merged = false;
    for (auto& [n, bytes] : take.memory) {
      if (n == it->second) {
        bytes += mem.bytes();
        merged = true;
      }
    }
    if (!merged) take.memory.emplace_back(it->second, mem.bytes());
  }
  std::sort(take.memory.begin(), take.memory.end());
  for (const auto& pd : p.devices()) {
    int pci = -1, vf = -1;
    for (const auto& [f, state] : h.devices()) {
      if (t.pci[f].bdf == pd.pci()) pci = f;
      for (size_t v = 0; v < t.pci[f].vf_bdfs.size(); ++v) {
        if (t.pci[f].vf_bdfs[v] == pd.pci()) {
          pci = f;
          vf = static_cast<int>(v);
        }
      }
    }
    const DeviceState* s = pci >= 0 ? h.Device(pci) : nullptr;
    int ns = pd.has_namespace_() ? static_cast<int>(pd.namespace_()) - 1 : -1;
    bool free = s != nullptr && s->whole_owner < 0 &&
                (vf >= 0 ? s->vf_owner[vf] < 0
                 : ns >= 0 ? ns < static_cast<int>(s->ns_owner.size()) && s->ns_owner[ns] < 0
                           : s->Untouched());
    if (!free) {
      *why = absl::StrCat("device ", pd.pci(), " is not free in the pool");
      return false;
    }
    take.devices.push_back({pd.name(), pci, vf, ns});
  }
  if (p.has_llc_mask()) {
    for (uint32_t l3 : h.L3sOf(take.cpus)) {
      if (h.WaysUsed(l3) & p.llc_mask()) {
        *why = "its cache ways are held already";
        return false;
      }
    }
    take.llc_mask = p.llc_mask();
  }
  m.Hold(name, hi->second, std::move(take));
  return true;
}

void PlacementEngine::Release(const std::string& name) {
  Impl& m = *impl_;
  auto it = m.held.find(name);
  if (it == m.held.end()) return;
  m.failed.clear();
  const Impl::Held& held = it->second;
  m.Change(held.host, [&](HostState& h) { h.Release(held.take); });
  m.held.erase(it);
}

bool PlacementEngine::Place(const InstanceRequest& req, const v1::Placement* prev, v1::Placement* out,
                            std::string* why) {
  Impl& m = *impl_;
  // A held instance is placed again from scratch around its own resources: free them for
  // the attempt, and take them back if nothing fits.
  std::optional<Impl::Held> old;
  if (auto it = m.held.find(req.name); it != m.held.end()) {
    old = it->second;
    Release(req.name);
  }
  auto restore = [&] {
    if (old) {
      m.Change(old->host, [&](HostState& h) { h.Commit(old->take, old->id); });
      m.held[req.name] = *old;
    }
  };
  std::string fixed_host = req.host;
  if (!req.standby_for.empty()) {
    auto primary = m.held.find(req.standby_for);
    if (primary == m.held.end()) {
      *why = absl::StrCat("standby of ", req.standby_for, ", which is not placed");
      restore();
      return false;
    }
    fixed_host = m.hosts[primary->second.host].name;
  }
  auto attempt = [&](int hi, std::string* reason) {
    const v1::Placement* hint = prev != nullptr && prev->host() == m.hosts[hi].name ? prev : nullptr;
    Take take;
    // Without a reason to give, hosts that cannot fit are skipped cheaply.
    if (reason == nullptr && !m.states[hi].MayFit(req)) return false;
    if (!Placer(m.states[hi], req, hint, m.names, reason != nullptr).Run(&take, reason)) return false;
    *out = ToPlacement(m.states[hi], req, take);
    m.Hold(req.name, hi, std::move(take));
    return true;
  };
  if (!fixed_host.empty()) {
    auto hi = m.host_index.find(fixed_host);
    if (hi == m.host_index.end()) {
      *why = absl::StrCat("no Host named \"", fixed_host, "\"");
      restore();
      return false;
    }
    std::string reason;
    if (attempt(hi->second, &reason)) return true;
    *why = absl::StrCat(fixed_host, ": ", reason);
    restore();
    return false;
  }
  std::string index_key;
  Impl::Index& index = m.IndexFor(req, &index_key);
  if (index.size() == 0) {
    *why = absl::StrCat("no uncordoned Host matches hostSelector ", SelectorText(req.selector));
    restore();
    return false;
  }
  const Impl::DeviceNeed device_need = Impl::NeedOf(req);
  const bool cacheable = req.resources.cpu_request_case() == v1::Resources::kCpus && prev == nullptr && !old;
  std::string shape;
  if (cacheable && !m.failed.empty()) {
    shape = Impl::Shape(req, index_key);
    auto f = m.failed.find(shape);
    if (f != m.failed.end()) {
      for (const Impl::Failed& x : f->second) {
        if (x.cpus <= req.resources.cpus() && x.memory <= req.resources.memory()) {
          *why = x.why;
          return false;
        }
      }
    }
  }
  std::vector<std::string> reasons;
  int tried = -1;
  // The previous host first (stability), then the least loaded in the request's dominant
  // resource: most free memory for a request heavier in memory than the average host's
  // shape, most free CPUs otherwise.
  if (prev != nullptr) {
    auto hi = m.host_index.find(prev->host());
    if (hi != m.host_index.end() && !m.hosts[hi->second].cordoned && Matches(req.selector, m.hosts[hi->second].labels)) {
      tried = hi->second;
      std::string reason;
      if (attempt(hi->second, &reason)) return true;
      reasons.push_back(absl::StrCat(m.hosts[hi->second].name, ": ", reason));
    }
  }
  int64_t cpus = req.resources.cpu_request_case() == v1::Resources::kCpuSet ? req.resources.cpu_set().ids_size()
                                                                            : req.resources.cpus();
  bool by_memory = req.resources.memory() / m.avg_pool_memory > cpus / m.avg_pool_cpus;
  const BucketIndex& candidates = by_memory ? index.by_memory : index.by_cpus;
  // Keys are whole GiB for memory: round the need down so no host that fits is passed over.
  int64_t need = by_memory ? static_cast<int64_t>(req.resources.memory() >> 30) : cpus;
  // The keys bound what whole-core requests with local memory can get; others scan on.
  const bool bounded = req.resources.smt() == v1::SMT_WHOLE_CORE && req.resources.numa_nodes_size() == 0 &&
                       req.resources.memory_policy() != v1::MEMORY_INTERLEAVE;
  bool placed = false;
  candidates.Scan(bounded ? need : 0, [&](int hi) {
    if (hi == tried || !m.Qualifies(hi, device_need)) return false;
    std::string reason;
    bool explain = reasons.size() < 3;
    if (attempt(hi, explain ? &reason : nullptr)) return placed = true;
    if (explain) reasons.push_back(absl::StrCat(m.hosts[hi].name, ": ", reason));
    return false;
  });
  if (placed) return true;
  size_t skipped = bounded ? candidates.CountBelow(need) : 0;
  *why = absl::StrCat("no matching host fits (", candidates.size(), " tried",
                      skipped ? absl::StrCat(", ", skipped, " with less than ",
                                             by_memory ? manifests::FormatBytes(req.resources.memory())
                                                       : absl::StrCat(cpus, " CPUs"),
                                             " free")
                              : "",
                      ")");
  if (!reasons.empty()) absl::StrAppend(why, ": ", absl::StrJoin(reasons, "; "));
  if (cacheable) m.failed[shape.empty() ? Impl::Shape(req, index_key) : shape].push_back(
      {req.resources.cpus(), req.resources.memory(), *why});
  restore();
  return false;
}

PlacementResult Place(const std::vector<HostInfo>& hosts, const std::vector<InstanceRequest>& requests,
                      const std::map<std::string, v1::Placement>& current) {
  PlacementResult result;
  PlacementEngine engine(hosts);
  engine.Reserve(requests.size());
  // Phase 1: keep every current placement that is still valid and unchanged, by name.
  std::vector<int> order;
  std::vector<int> rest;
  if (current.empty()) {
    rest.resize(requests.size());
    std::iota(rest.begin(), rest.end(), 0);
  } else {
    order.resize(requests.size());
    std::iota(order.begin(), order.end(), 0);
    std::sort(order.begin(), order.end(), [&](int a, int b) { return requests[a].name < requests[b].name; });
  }
  for (int i : order) {
    auto cur = current.find(requests[i].name);
    if (cur != current.end() && engine.Keep(requests[i], cur->second)) {
      v1::Placement p = cur->second;
      p.set_instance_id(requests[i].id);
      result.placements[requests[i].name] = std::move(p);
    } else {
      rest.push_back(i);
    }
  }
  // Phase 2: changed instances (grow or shrink in place first), then new ones, larger
  // first; standbys after the instances they back.
  std::vector<uint8_t> is_current(requests.size(), 0);
  if (!current.empty()) {
    for (int i : rest) is_current[i] = current.count(requests[i].name) > 0;
  }
  std::sort(rest.begin(), rest.end(), [&](int a, int b) {
    bool sa = !requests[a].standby_for.empty(), sb = !requests[b].standby_for.empty();
    if (sa != sb) return sb;
    if (is_current[a] != is_current[b]) return is_current[a] > is_current[b];
    uint32_t za = requests[a].resources.cpus() + requests[a].resources.cpu_set().ids_size();
    uint32_t zb = requests[b].resources.cpus() + requests[b].resources.cpu_set().ids_size();
    if (za != zb) return za > zb;
    return requests[a].name < requests[b].name;
  });
  for (int i : rest) {
    auto cur = current.find(requests[i].name);
    v1::Placement p;
    std::string why;
    if (engine.Place(requests[i], cur != current.end() ? &cur->second : nullptr, &p, &why)) {
      result.placements[requests[i].name] = std::move(p);
    } else {
      result.unschedulable.push_back({requests[i].name, why});
    }
  }
  std::sort(result.unschedulable.begin(), result.unschedulable.end(),
            [](const Unschedulable& a, const Unschedulable& b) { return a.name < b.name; });
  return result;
}


}  // namespace mkfleet::planner
