#include "planner/placement.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner {
namespace {

namespace v1 = mkfleet::v1;

enum CoreMode : uint8_t {
  kFree = 0,     // every PU in the pool and free
  kWhole = 1,    // held whole by one instance
  kShared = 2,   // single CPUs given to smt: Any instances
  kPartial = 3,  // some PUs outside the pool: only smt: Any may use the rest
};

struct DeviceState {
  int whole_owner = -1;  // instance holding the whole function
  std::vector<int> vf_owner;
  std::vector<int> ns_owner;
  bool Untouched() const {
    return whole_owner < 0 &&
           std::all_of(vf_owner.begin(), vf_owner.end(), [](int o) { return o < 0; }) &&
           std::all_of(ns_owner.begin(), ns_owner.end(), [](int o) { return o < 0; });
  }
  int FreeVfs() const { return static_cast<int>(std::count(vf_owner.begin(), vf_owner.end(), -1)); }
  int FreeNs() const { return static_cast<int>(std::count(ns_owner.begin(), ns_owner.end(), -1)); }
};

// What one instance takes on one host, built before anything is committed.
struct Take {
  std::vector<uint32_t> cpus;        // boot CPU first
  std::vector<uint32_t> whole_cores;  // cores held whole
  std::vector<std::pair<uint32_t, uint64_t>> memory;  // (numa index, bytes), ascending
  struct Dev {
    std::string name;
    int pci;  // index into Topology::pci
    int vf = -1;
    int ns = -1;
  };
  std::vector<Dev> devices;
  int64_t llc_mask = -1;
};

// The widest way mask the kernel takes (llc-way-mask is a u32).
constexpr uint32_t kMaxLlcWays = 32;

// The `n` low bits set (n up to 64), without shifting by the word width.
uint64_t LowBits(uint32_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

std::string NodeList(const Topology& t, const std::vector<uint32_t>& nodes) {
  std::vector<uint32_t> os;
  for (uint32_t n : nodes) os.push_back(t.numa[n].os_index);
  return absl::StrJoin(os, ",");
}

std::string ClassName(v1::DeviceClass c) {
  switch (c) {
    case v1::DEVICE_CLASS_NETWORK:
      return "Network";
    case v1::DEVICE_CLASS_STORAGE:
      return "Storage";
    case v1::DEVICE_CLASS_GPU:
      return "GPU";
    case v1::DEVICE_CLASS_ACCELERATOR:
      return "Accelerator";
    default:
      return "PCI";
  }
}

class HostState {
 public:
  explicit HostState(const HostInfo& info) : info_(info), t_(*info.topology) {
    uint32_t max_cpu = 0;
    for (const Core& c : t_.cores) max_cpu = std::max(max_cpu, c.pus.back());
    in_pool_.assign(max_cpu + 1, 0);
    owner_.assign(max_cpu + 1, -1);
    for (uint32_t cpu : info.pool.cpus) {
      if (cpu <= max_cpu) in_pool_[cpu] = 1;
    }
    mode_.assign(t_.cores.size(), kFree);
    for (uint32_t c = 0; c < t_.cores.size(); ++c) {
      for (uint32_t pu : t_.cores[c].pus) {
        if (!in_pool_[pu]) mode_[c] = kPartial;
        else ++free_pus_;
      }
    }
    free_whole_node_.assign(t_.numa.size(), 0);
    for (uint32_t c = 0; c < t_.cores.size(); ++c) {
      if (mode_[c] == kFree) {
        ++free_whole_;
        ++free_whole_node_[t_.cores[c].numa];
      }
    }
    mem_free_.assign(t_.numa.size(), 0);
    for (const auto& [node, bytes] : info.pool.memory) {
      mem_free_[node] = bytes;
      mem_free_total_ += bytes;
    }
    for (int d : info.pool.devices) {
      DeviceState s;
      s.vf_owner.assign(t_.pci[d].vf_bdfs.size(), -1);
      s.ns_owner.assign(t_.pci[d].nvme_namespaces, -1);
      devices_[d] = std::move(s);
    }
    ways_used_.assign(t_.l3.size(), 0);
  }

  const HostInfo& info() const { return info_; }
  const Topology& topology() const { return t_; }
  int64_t free_pus() const { return free_pus_; }
  uint64_t mem_free_total() const { return mem_free_total_; }
  // What a whole-core request with local memory can still use: memory on nodes that have
  // free whole cores, and CPUs of free whole cores on nodes that have free memory.
  uint64_t UsableMemory() const {
    uint64_t sum = 0;
    for (uint32_t n = 0; n < mem_free_.size(); ++n) sum += free_whole_node_[n] > 0 ? mem_free_[n] : 0;
    return sum;
  }
  int64_t UsableCpus() const {
    int64_t sum = 0;
    for (uint32_t n = 0; n < mem_free_.size(); ++n) {
      sum += mem_free_[n] >= kMemoryBlock ? int64_t{free_whole_node_[n]} * t_.smt_width : 0;
    }
    return sum;
  }

  // A necessary condition for `req` to fit, in O(devices): enough free CPUs or whole
  // cores, memory and device capacity on the whole host.
  bool MayFit(const InstanceRequest& req) const {
    const v1::Resources& r = req.resources;
    uint32_t cpus = r.cpu_request_case() == v1::Resources::kCpuSet ? r.cpu_set().ids_size() : r.cpus();
    if (cpus > free_pus_) return false;
    if (r.smt() == v1::SMT_WHOLE_CORE && (cpus + t_.smt_width - 1) / t_.smt_width > free_whole_) return false;
    if (r.memory() > mem_free_total_) return false;
    if (r.smt() == v1::SMT_WHOLE_CORE && r.memory_policy() != v1::MEMORY_INTERLEAVE && r.numa_nodes_size() == 0) {
      // Local memory lives on nodes that still have free cores.
      uint64_t near = 0;
      for (uint32_t n = 0; n < mem_free_.size(); ++n) near += free_whole_node_[n] > 0 ? mem_free_[n] : 0;
      if (r.memory() > near) return false;
    }
    for (const v1::DeviceRequest& d : r.devices()) {
      bool any = false;
      for (const auto& [pci, s] : devices_) {
        if (s.whole_owner >= 0) continue;
        if (d.source_case() == v1::DeviceRequest::kPci ? t_.pci[pci].bdf != d.pci()
                                                        : ClassOf(t_.pci[pci].class_id) != d.select().device_class()) {
          continue;
        }
        if (d.share_case() == v1::DeviceRequest::kVfs ? s.FreeVfs() >= static_cast<int>(d.vfs())
            : d.share_case() == v1::DeviceRequest::kNamespaces ? s.FreeNs() >= static_cast<int>(d.namespaces())
                                                               : s.Untouched()) {
          any = true;
          break;
        }
      }
      if (!any) return false;
    }
    return true;
  }

  bool WholeCoreFree(uint32_t c) const { return mode_[c] == kFree; }
  bool PuFreeForAny(uint32_t pu) const {
    return pu < in_pool_.size() && in_pool_[pu] && owner_[pu] < 0 && mode_[t_.core_of_pu.at(pu)] != kWhole;
  }
  bool InPool(uint32_t pu) const { return pu < in_pool_.size() && in_pool_[pu]; }
  int OwnerOf(uint32_t pu) const { return pu < owner_.size() ? owner_[pu] : -1; }
  uint64_t MemFree(uint32_t n) const { return mem_free_[n]; }
  const DeviceState* Device(int pci) const {
    auto it = devices_.find(pci);
    return it == devices_.end() ? nullptr : &it->second;
  }
  const std::map<int, DeviceState>& devices() const { return devices_; }
  uint64_t WaysUsed(uint32_t l3) const { return ways_used_[l3]; }

  // Free whole cores (or free CPUs for smt Any) per NUMA index.
  std::vector<uint32_t> Capacity(bool whole) const {
    if (whole) return free_whole_node_;
    std::vector<uint32_t> cap(t_.numa.size(), 0);
    for (uint32_t c = 0; c < t_.cores.size(); ++c) {
      if (mode_[c] != kWhole) {
        for (uint32_t pu : t_.cores[c].pus) cap[t_.cores[c].numa] += in_pool_[pu] && owner_[pu] < 0;
      }
    }
    return cap;
  }

  void Commit(const Take& take, int inst) {
    for (uint32_t c : take.whole_cores) SetMode(c, kWhole);
    for (uint32_t pu : take.cpus) {
      owner_[pu] = inst;
      uint32_t c = t_.core_of_pu.at(pu);
      if (mode_[c] == kFree) SetMode(c, kShared);
    }
    // PUs of whole cores that the instance does not use are no longer free either.
    for (uint32_t c : take.whole_cores) {
      for (uint32_t pu : t_.cores[c].pus) free_pus_ -= in_pool_[pu];
    }
    for (uint32_t pu : take.cpus) {
      if (mode_[t_.core_of_pu.at(pu)] != kWhole) --free_pus_;
    }
    for (const auto& [n, bytes] : take.memory) {
      mem_free_[n] -= bytes;
      mem_free_total_ -= bytes;
    }
    for (const Take::Dev& d : take.devices) {
      DeviceState& s = devices_.at(d.pci);
      if (d.vf >= 0) s.vf_owner[d.vf] = inst;
      else if (d.ns >= 0) s.ns_owner[d.ns] = inst;
      else s.whole_owner = inst;
    }
    if (take.llc_mask >= 0) {
      for (uint32_t l3 : L3sOf(take.cpus)) ways_used_[l3] |= take.llc_mask;
    }
  }

  // Undoes Commit(take, ...).
  void Release(const Take& take) {
    for (uint32_t pu : take.cpus) {
      owner_[pu] = -1;
      if (mode_[t_.core_of_pu.at(pu)] != kWhole) ++free_pus_;
    }
    for (uint32_t c : take.whole_cores) {
      SetMode(c, kShared);  // settled below
      for (uint32_t pu : t_.cores[c].pus) free_pus_ += in_pool_[pu];
    }
    std::set<uint32_t> touched(take.whole_cores.begin(), take.whole_cores.end());
    for (uint32_t pu : take.cpus) touched.insert(t_.core_of_pu.at(pu));
    for (uint32_t c : touched) {
      bool partial = false, owned = false;
      for (uint32_t pu : t_.cores[c].pus) {
        partial |= !in_pool_[pu];
        owned |= owner_[pu] >= 0;
      }
      SetMode(c, partial ? kPartial : owned ? kShared : kFree);
    }
    for (const auto& [n, bytes] : take.memory) {
      mem_free_[n] += bytes;
      mem_free_total_ += bytes;
    }
    for (const Take::Dev& d : take.devices) {
      DeviceState& s = devices_.at(d.pci);
      if (d.vf >= 0) s.vf_owner[d.vf] = -1;
      else if (d.ns >= 0) s.ns_owner[d.ns] = -1;
      else s.whole_owner = -1;
    }
    if (take.llc_mask >= 0) {
      for (uint32_t l3 : L3sOf(take.cpus)) ways_used_[l3] &= ~static_cast<uint64_t>(take.llc_mask);
    }
  }

  std::vector<uint32_t> L3sOf(const std::vector<uint32_t>& cpus) const {
    std::set<uint32_t> l3;
    for (uint32_t pu : cpus) l3.insert(t_.cores[t_.core_of_pu.at(pu)].l3);
    return {l3.begin(), l3.end()};
  }

 private:
  const HostInfo& info_;
  const Topology& t_;
  std::vector<uint8_t> in_pool_;
  std::vector<int32_t> owner_;
  std::vector<uint8_t> mode_;
  std::vector<uint64_t> mem_free_;
  std::map<int, DeviceState> devices_;
  std::vector<uint64_t> ways_used_;
  int64_t free_pus_ = 0;
  uint32_t free_whole_ = 0;                // cores in mode kFree
  std::vector<uint32_t> free_whole_node_;  // the same, per NUMA index
  uint64_t mem_free_total_ = 0;

  void SetMode(uint32_t c, uint8_t mode) {
    uint32_t n = t_.cores[c].numa;
    if (mode_[c] == kFree) {
      --free_whole_;
      --free_whole_node_[n];
    }
    if (mode == kFree) {
      ++free_whole_;
      ++free_whole_node_[n];
    }
    mode_[c] = mode;
  }
};

// Places one instance on one host. Fails with the most telling reason.
class Placer {
 public:
  // With `explain` false, failures skip building their message (the fast path when many
  // hosts are tried).
  Placer(HostState& h, const InstanceRequest& req, const v1::Placement* prev,
         const std::vector<std::string>& names, bool explain = true)
      : h_(h), t_(h.topology()), req_(req), r_(req.resources), prev_(prev), names_(names), explain_(explain) {}

  bool Run(Take* out, std::string* why) {
    whole_ = r_.smt() == v1::SMT_WHOLE_CORE;
    if (!ResolveAllowed(why)) return false;
    if (r_.cpu_request_case() == v1::Resources::kCpuSet) return RunExact(out, why);
    need_ = r_.cpus();
    // NearDevices: the devices decide the nodes.
    std::vector<uint32_t> device_nodes;
    if (r_.placement() == v1::PLACEMENT_NEAR_DEVICES) {
      Take probe;
      if (!PickDevices(nullptr, &probe, why)) return false;
      device_nodes = DeviceNodes();
    }
    cap_ = h_.Capacity(whole_);
    std::string first_failure;
    int best_stage = -1;
    // Cheap candidates first (current nodes, single nodes); node combinations only when
    // those fail.
    for (int round = 0; round < 2; ++round) {
      for (const std::vector<uint32_t>& nodes :
           round == 0 ? FirstNodeSets(device_nodes) : MoreNodeSets(device_nodes)) {
        Take take;
        std::string reason;
        int stage = TryNodes(nodes, &take, &reason);
        if (stage == kDone) {
          *out = std::move(take);
          return true;
        }
        if (stage > best_stage) {
          best_stage = stage;
          first_failure = std::move(reason);
        }
      }
    }
    if (explain_) *why = best_stage >= 0 ? first_failure : CpuShortage(device_nodes);
    return false;
  }

 private:
  enum Stage { kCpus = 0, kMemory = 1, kDevices = 2, kWays = 3, kDone = 4 };

  bool ResolveAllowed(std::string* why) {
    if (r_.numa_nodes_size() == 0) {
      for (uint32_t n = 0; n < t_.numa.size(); ++n) allowed_.push_back(n);
    } else {
      for (uint32_t os : r_.numa_nodes()) {
        auto it = t_.numa_by_os.find(os);
        if (it == t_.numa_by_os.end()) {
          if (explain_) *why = absl::StrCat("numaNodes: node ", os, " does not exist on ", h_.info().name);
          return false;
        }
        allowed_.push_back(it->second);
      }
      std::sort(allowed_.begin(), allowed_.end());
    }
    for (uint32_t n : allowed_) {
      if (t_.numa[n].has_cpus) cpu_nodes_.push_back(n);
    }
    if (cpu_nodes_.empty()) {
      if (explain_) *why = absl::StrCat("numaNodes ", NodeList(t_, allowed_), " have no CPUs");
      return false;
    }
    return true;
  }

  uint32_t CoresNeeded() const { return (need_ + t_.smt_width - 1) / t_.smt_width; }

  // Capacity of a node set in the request's unit (whole cores or CPUs), and the units needed.
  uint64_t CapOf(const std::vector<uint32_t>& nodes) const {
    uint64_t sum = 0;
    for (uint32_t n : nodes) sum += cap_[n];
    return sum;
  }
  uint64_t Units() const { return whole_ ? CoresNeeded() : need_; }

  std::vector<uint32_t> Base(const std::vector<uint32_t>& device_nodes) const {
    if (r_.placement() == v1::PLACEMENT_NEAR_DEVICES && !device_nodes.empty()) return device_nodes;
    return cpu_nodes_;
  }

  std::vector<std::vector<uint32_t>> FirstNodeSets(const std::vector<uint32_t>& device_nodes) {
    std::vector<std::vector<uint32_t>> out;
    std::vector<uint32_t> base = Base(device_nodes);
    // A resized instance first tries the nodes it is on.
    if (prev_ != nullptr) {
      std::set<uint32_t> prev_nodes;
      for (uint32_t cpu : prev_->cpus()) {
        if (t_.core_of_pu.contains(cpu)) prev_nodes.insert(t_.cores[t_.core_of_pu.at(cpu)].numa);
      }
      std::vector<uint32_t> pn;
      for (uint32_t n : prev_nodes) {
        if (std::count(base.begin(), base.end(), n)) pn.push_back(n);
      }
      if (!pn.empty()) {
        out.push_back(pn);
        // Growing onto one more node keeps every current CPU (hot-plug, no re-create).
        if (r_.placement() != v1::PLACEMENT_SINGLE_NUMA) {
          std::vector<uint32_t> others;
          for (uint32_t n : base) {
            if (!prev_nodes.count(n) && cap_[n] > 0) others.push_back(n);
          }
          std::stable_sort(others.begin(), others.end(), [&](uint32_t a, uint32_t b) { return cap_[a] > cap_[b]; });
          for (uint32_t n : others) {
            std::vector<uint32_t> grown = pn;
            grown.push_back(n);
            std::sort(grown.begin(), grown.end());
            out.push_back(grown);
          }
        }
      }
    }
    // Singletons, best fit first.
    std::vector<uint32_t> singles;
    for (uint32_t n : base) {
      if (cap_[n] >= Units()) singles.push_back(n);
    }
    std::sort(singles.begin(), singles.end(), [&](uint32_t a, uint32_t b) {
      return cap_[a] != cap_[b] ? cap_[a] < cap_[b] : a < b;
    });
    if (r_.placement() == v1::PLACEMENT_SPREAD && base.size() > 1 && CapOf(base) >= Units()) {
      out.push_back(base);
    }
    for (uint32_t n : singles) out.push_back({n});
    return out;
  }

  std::vector<std::vector<uint32_t>> MoreNodeSets(const std::vector<uint32_t>& device_nodes) {
    std::vector<std::vector<uint32_t>> out;
    if (r_.placement() == v1::PLACEMENT_SINGLE_NUMA) return out;
    std::vector<uint32_t> base = Base(device_nodes);
    // Several nodes: every subset on small hosts (fewest nodes, nearest first), else one
    // greedy union of the largest nodes.
    if (base.size() > 1 && base.size() <= 8) {
      std::vector<std::vector<uint32_t>> subsets;
      for (uint32_t mask = 1; mask < (1u << base.size()); ++mask) {
        if (__builtin_popcount(mask) < 2) continue;
        std::vector<uint32_t> s;
        for (uint32_t i = 0; i < base.size(); ++i) {
          if (mask & (1u << i)) s.push_back(base[i]);
        }
        if (CapOf(s) >= Units()) subsets.push_back(std::move(s));
      }
      auto dist = [&](const std::vector<uint32_t>& s) {
        uint64_t d = 0;
        for (uint32_t a : s) {
          for (uint32_t b : s) {
            if (!t_.numa[a].distances.empty()) d += t_.numa[a].distances[b];
          }
        }
        return d;
      };
      std::stable_sort(subsets.begin(), subsets.end(), [&](const auto& a, const auto& b) {
        if (a.size() != b.size()) return a.size() < b.size();
        uint64_t da = dist(a), db = dist(b);
        if (da != db) return da < db;
        return CapOf(a) < CapOf(b);
      });
      for (auto& s : subsets) out.push_back(std::move(s));
    } else if (base.size() > 8) {
      std::vector<uint32_t> by_cap = base;
      std::sort(by_cap.begin(), by_cap.end(), [&](uint32_t a, uint32_t b) {
        return cap_[a] != cap_[b] ? cap_[a] > cap_[b] : a < b;
      });
      std::vector<uint32_t> s;
      for (uint32_t n : by_cap) {
        s.push_back(n);
        if (CapOf(s) >= Units()) break;
      }
      out.push_back(s);
      out.push_back(base);
    }
    return out;
  }

  std::string CpuShortage(const std::vector<uint32_t>& device_nodes) const {
    std::vector<std::string> per_node;
    const std::vector<uint32_t>& nodes =
        r_.placement() == v1::PLACEMENT_NEAR_DEVICES && !device_nodes.empty() ? device_nodes : cpu_nodes_;
    for (uint32_t n : nodes) per_node.push_back(absl::StrCat("node", t_.numa[n].os_index, "=", cap_[n]));
    std::string where;
    if (r_.placement() == v1::PLACEMENT_SINGLE_NUMA) where = " on one NUMA node";
    else if (r_.placement() == v1::PLACEMENT_NEAR_DEVICES && !device_nodes.empty())
      where = absl::StrCat(" on NUMA node ", NodeList(t_, device_nodes), " (near its devices)");
    else if (r_.numa_nodes_size() > 0) where = absl::StrCat(" on NUMA nodes ", NodeList(t_, cpu_nodes_));
    if (whole_) {
      return absl::StrCat("needs ", CoresNeeded(), " whole cores", where, "; free whole cores: ",
                          absl::StrJoin(per_node, ", "));
    }
    return absl::StrCat("needs ", need_, " CPUs", where, "; free CPUs: ", absl::StrJoin(per_node, ", "));
  }

  // Tries CPUs on `nodes`, then memory, devices and cache ways. Returns the stage reached.
  int TryNodes(const std::vector<uint32_t>& nodes, Take* take, std::string* why) {
    // Cheap necessary conditions first: memory on these nodes, local devices there.
    if (!explain_) {
      uint64_t mem = 0;
      if (r_.memory_policy() == v1::MEMORY_INTERLEAVE) {
        for (uint32_t n : allowed_) mem += h_.MemFree(n);
      } else {
        for (uint32_t n : nodes) mem += h_.MemFree(n);
        if (r_.numa_nodes_size() > 0) {
          for (uint32_t n : allowed_) mem += t_.numa[n].has_cpus ? 0 : h_.MemFree(n);
        }
      }
      if (mem < r_.memory()) return kMemory;
      for (const v1::DeviceRequest& d : r_.devices()) {
        if (d.source_case() != v1::DeviceRequest::kSelect || !d.select().numa_local()) continue;
        bool found = false;
        for (int p : h_.info().pool.devices) {
          int n = t_.pci[p].numa;
          if (n >= 0 && std::count(nodes.begin(), nodes.end(), static_cast<uint32_t>(n)) && Serves(d, p)) {
            found = true;
            break;
          }
        }
        if (!found) return kDevices;
      }
    }
    if (!PickCpus(nodes, take)) {
      if (explain_) *why = CpuShortage({});
      return -1;
    }
    if (!PickMemory(take, why)) return kMemory;
    std::set<uint32_t> local;
    for (uint32_t pu : take->cpus) local.insert(t_.cores[t_.core_of_pu.at(pu)].numa);
    if (!PickDevices(&local, take, why)) return kDevices;
    if (!PickWays(take, why)) return kWays;
    return kDone;
  }

  // Cores of the previous placement (boot core first) that are usable again.
  std::vector<uint32_t> PreviousCores() const {
    std::vector<uint32_t> cores;
    if (prev_ == nullptr) return cores;
    for (uint32_t cpu : prev_->cpus()) {
      if (!t_.core_of_pu.contains(cpu)) continue;
      uint32_t core = t_.core_of_pu.at(cpu);
      if (std::find(cores.begin(), cores.end(), core) == cores.end()) cores.push_back(core);
    }
    return cores;
  }

  bool PickCpus(const std::vector<uint32_t>& nodes, Take* take) {
    std::vector<uint32_t> chosen_cores;
    std::vector<uint8_t> chosen(t_.cores.size(), 0);
    uint32_t got = 0;
    auto in_nodes = [&](uint32_t c) {
      return std::find(nodes.begin(), nodes.end(), t_.cores[c].numa) != nodes.end();
    };
    if (whole_) {
      auto add = [&](uint32_t c) {
        chosen_cores.push_back(c);
        chosen[c] = 1;
        got += t_.cores[c].pus.size();
      };
      for (uint32_t c : PreviousCores()) {
        if (got < need_ && in_nodes(c) && h_.WholeCoreFree(c)) add(c);
      }
      if (r_.placement() == v1::PLACEMENT_SPREAD && nodes.size() > 1) {
        // Round-robin over the nodes, one core at a time.
        std::vector<std::vector<uint32_t>> per_node(nodes.size());
        for (uint32_t c = 0; c < t_.cores.size(); ++c) {
          if (!h_.WholeCoreFree(c) || chosen[c]) continue;
          for (size_t i = 0; i < nodes.size(); ++i) {
            if (t_.cores[c].numa == nodes[i]) per_node[i].push_back(c);
          }
        }
        std::vector<size_t> next(nodes.size(), 0);
        bool progress = true;
        while (got < need_ && progress) {
          progress = false;
          for (size_t i = 0; i < nodes.size() && got < need_; ++i) {
            if (next[i] < per_node[i].size()) {
              add(per_node[i][next[i]++]);
              progress = true;
            }
          }
        }
      } else {
        // Compact: nodes with the most free cores first; within a node, the L3 domain that
        // fits the rest most tightly, else the largest.
        std::vector<uint32_t> order = nodes;
        std::stable_sort(order.begin(), order.end(),
                         [&](uint32_t a, uint32_t b) { return cap_[a] > cap_[b]; });
        // A set of several nodes means every one of them: each gets a core first (else the
        // set is really one of its subsets, tried on its own).
        if (order.size() > 1) {
          for (uint32_t n : order) {
            for (uint32_t c = 0; c < t_.cores.size(); ++c) {
              if (t_.cores[c].numa == n && h_.WholeCoreFree(c) && !chosen[c]) {
                if (got < need_) add(c);
                break;
              }
            }
          }
        }
        for (uint32_t n : order) {
          if (got >= need_) break;
          // L3 groups of this node: the one that fits the rest most tightly, else the
          // largest, until the request is met.
          const auto& groups = t_.l3_groups[n];
          std::vector<uint8_t> used_group(groups.size(), 0);
          while (got < need_) {
            uint32_t rest = need_ - got;
            int pick = -1;
            uint32_t pick_pus = 0;
            for (size_t g = 0; g < groups.size(); ++g) {
              if (used_group[g]) continue;
              uint32_t pus = 0;
              for (uint32_t c : groups[g].second) {
                if (h_.WholeCoreFree(c) && !chosen[c]) pus += t_.cores[c].pus.size();
              }
              if (pus == 0) continue;
              bool fits = pus >= rest, pick_fits = pick_pus >= rest;
              if (pick < 0 || (fits && (!pick_fits || pus < pick_pus)) || (!fits && !pick_fits && pus > pick_pus)) {
                pick = static_cast<int>(g);
                pick_pus = pus;
              }
            }
            if (pick < 0) break;
            used_group[pick] = 1;
            for (uint32_t c : groups[pick].second) {
              if (got >= need_) break;
              if (h_.WholeCoreFree(c) && !chosen[c]) add(c);
            }
          }
        }
      }
      if (got < need_) return false;
      take->whole_cores = chosen_cores;
      for (uint32_t c : chosen_cores) {
        for (uint32_t pu : t_.cores[c].pus) {
          if (take->cpus.size() < need_) take->cpus.push_back(pu);
        }
      }
    } else {
      std::vector<uint32_t> pus;
      std::set<uint32_t> taken;
      auto add = [&](uint32_t pu) {
        if (taken.insert(pu).second) pus.push_back(pu);
      };
      if (prev_ != nullptr) {
        for (uint32_t cpu : prev_->cpus()) {
          if (pus.size() < need_ && t_.core_of_pu.contains(cpu) && in_nodes(t_.core_of_pu.at(cpu)) &&
              h_.PuFreeForAny(cpu)) {
            add(cpu);
          }
        }
      }
      // CPUs of already shared cores first (keeps whole cores whole), then free cores.
      for (int pass = 0; pass < 2 && pus.size() < need_; ++pass) {
        if (r_.placement() == v1::PLACEMENT_SPREAD && nodes.size() > 1) {
          std::vector<std::vector<uint32_t>> per_node(nodes.size());
          for (uint32_t c = 0; c < t_.cores.size(); ++c) {
            bool shared = !h_.WholeCoreFree(c);
            if (shared != (pass == 0)) continue;
            for (size_t i = 0; i < nodes.size(); ++i) {
              if (t_.cores[c].numa != nodes[i]) continue;
              for (uint32_t pu : t_.cores[c].pus) {
                if (h_.PuFreeForAny(pu)) per_node[i].push_back(pu);
              }
            }
          }
          std::vector<size_t> next(nodes.size(), 0);
          bool progress = true;
          while (pus.size() < need_ && progress) {
            progress = false;
            for (size_t i = 0; i < nodes.size() && pus.size() < need_; ++i) {
              while (next[i] < per_node[i].size() && taken.count(per_node[i][next[i]])) ++next[i];
              if (next[i] < per_node[i].size()) {
                add(per_node[i][next[i]++]);
                progress = true;
              }
            }
          }
        } else {
          for (uint32_t n : nodes) {
            for (uint32_t c = 0; c < t_.cores.size() && pus.size() < need_; ++c) {
              if (t_.cores[c].numa != n || (!h_.WholeCoreFree(c)) != (pass == 0)) continue;
              for (uint32_t pu : t_.cores[c].pus) {
                if (pus.size() < need_ && h_.PuFreeForAny(pu)) add(pu);
              }
            }
          }
        }
      }
      if (pus.size() < need_) return false;
      take->cpus = pus;
    }
    // Boot CPU first, the rest ascending.
    std::sort(take->cpus.begin() + 1, take->cpus.end());
    return true;
  }

  bool RunExact(Take* out, std::string* why) {
    const auto& ids = r_.cpu_set().ids();
    std::set<uint32_t> want(ids.begin(), ids.end());
    std::set<uint32_t> cores;
    for (uint32_t cpu : want) {
      if (!t_.core_of_pu.contains(cpu) || !h_.InPool(cpu)) {
        if (explain_) *why = absl::StrCat("cpuSet: CPU ", cpu, " is not in the pool of ", h_.info().name);
        return false;
      }
      int owner = h_.OwnerOf(cpu);
      if (owner >= 0 || (!whole_ && !h_.PuFreeForAny(cpu))) {
        if (explain_) *why = absl::StrCat("cpuSet: CPU ", cpu, " is in use",
                            owner >= 0 ? absl::StrCat(" by ", names_[owner]) : " (its core is held whole)");
        return false;
      }
      uint32_t core = t_.core_of_pu.at(cpu);
      if (!std::count(allowed_.begin(), allowed_.end(), t_.cores[core].numa)) {
        if (explain_) *why = absl::StrCat("cpuSet: CPU ", cpu, " is not on NUMA nodes ", NodeList(t_, allowed_));
        return false;
      }
      cores.insert(core);
    }
    if (whole_) {
      for (uint32_t c : cores) {
        for (uint32_t pu : t_.cores[c].pus) {
          if (!want.count(pu)) {
            if (explain_) *why = absl::StrCat("cpuSet: splits the core of CPUs ", manifests::FormatCpuList(t_.cores[c].pus),
                                " (smt: WholeCore takes whole cores; add CPU ", pu, " or use smt: Any)");
            return false;
          }
        }
        if (!h_.WholeCoreFree(c)) {
          if (explain_) *why = absl::StrCat("cpuSet: the core of CPUs ", manifests::FormatCpuList(t_.cores[c].pus),
                              " is not wholly free");
          return false;
        }
      }
      out->whole_cores.assign(cores.begin(), cores.end());
    }
    std::set<uint32_t> nodes;
    for (uint32_t c : cores) nodes.insert(t_.cores[c].numa);
    if (r_.placement() == v1::PLACEMENT_SINGLE_NUMA && nodes.size() > 1) {
      if (explain_) *why = "cpuSet: spans several NUMA nodes but placement is SingleNuma";
      return false;
    }
    out->cpus.assign(want.begin(), want.end());
    if (!PickMemory(out, why)) return false;
    std::set<uint32_t> local(nodes.begin(), nodes.end());
    if (!PickDevices(&local, out, why)) return false;
    return PickWays(out, why);
  }

  bool PickMemory(Take* take, std::string* why) {
    const bool interleave = r_.memory_policy() == v1::MEMORY_INTERLEAVE;
    const uint64_t need_blocks = r_.memory() / kMemoryBlock;
    const size_t numa = t_.numa.size();
    std::vector<uint32_t> cpus_on(numa, 0);
    for (uint32_t pu : take->cpus) ++cpus_on[t_.cores[t_.core_of_pu.at(pu)].numa];
    std::vector<uint32_t> nodes;  // candidate nodes, in preference order
    if (interleave) {
      for (uint32_t n : allowed_) {
        if (h_.MemFree(n) > 0 || cpus_on[n]) nodes.push_back(n);
      }
    } else {
      for (uint32_t n = 0; n < numa; ++n) {
        if (cpus_on[n]) nodes.push_back(n);
      }
      // Memory-only nodes named in numaNodes may hold memory too.
      if (r_.numa_nodes_size() > 0) {
        for (uint32_t n : allowed_) {
          if (!t_.numa[n].has_cpus) nodes.push_back(n);
        }
      }
    }
    std::vector<uint64_t> blocks(numa, 0);
    uint64_t got = 0;
    auto room = [&](uint32_t n) { return h_.MemFree(n) / kMemoryBlock - blocks[n]; };
    auto give = [&](uint32_t n, uint64_t want) {
      uint64_t g = std::min(want, room(n));
      blocks[n] += g;
      got += g;
    };
    // A resized instance keeps its memory where it is.
    if (prev_ != nullptr) {
      for (const auto& m : prev_->memory()) {
        auto it = t_.numa_by_os.find(m.node());
        if (it == t_.numa_by_os.end() || !std::count(nodes.begin(), nodes.end(), it->second)) continue;
        give(it->second, std::min<uint64_t>(m.bytes() / kMemoryBlock, need_blocks - got));
      }
    }
    // Target shares: by CPUs per node (Local, Bind) or even (Interleave); then fill up.
    uint64_t rest = need_blocks - got;
    if (rest > 0) {
      uint64_t weight_total = 0;
      size_t last = 0;
      for (size_t i = 0; i < nodes.size(); ++i) {
        uint64_t w = interleave ? 1 : cpus_on[nodes[i]];
        weight_total += w;
        if (w > 0) last = i;
      }
      uint64_t assigned = 0;
      for (size_t i = 0; i < nodes.size() && weight_total > 0; ++i) {
        uint64_t w = interleave ? 1 : cpus_on[nodes[i]];
        if (w == 0) continue;
        uint64_t target = i == last ? rest - assigned : rest * w / weight_total;
        give(nodes[i], target);
        assigned += target;
      }
      for (uint32_t n : nodes) {
        if (got >= need_blocks) break;
        give(n, need_blocks - got);
      }
    }
    if (got < need_blocks) {
      if (explain_) {
        std::vector<std::string> free;
        for (uint32_t n : nodes) {
          free.push_back(absl::StrCat("node", t_.numa[n].os_index, "=", manifests::FormatBytes(h_.MemFree(n))));
        }
        *why = absl::StrCat("needs ", manifests::FormatBytes(r_.memory()), " of memory on NUMA node",
                            nodes.size() == 1 ? " " : "s ", NodeList(t_, nodes), "; free memory: ",
                            free.empty() ? "none" : absl::StrJoin(free, ", "));
      }
      return false;
    }
    for (uint32_t n = 0; n < numa; ++n) {
      if (blocks[n] > 0) take->memory.emplace_back(n, blocks[n] * kMemoryBlock);
    }
    return true;
  }

  // The allowed nodes with CPUs that hold a function able to serve one of the device
  // requests (NearDevices places CPUs there).
  std::vector<uint32_t> DeviceNodes() const {
    std::set<uint32_t> nodes;
    for (const v1::DeviceRequest& d : r_.devices()) {
      for (int p : h_.info().pool.devices) {
        const PciFunction& f = t_.pci[p];
        if (f.numa < 0 || !t_.numa[f.numa].has_cpus || !std::count(allowed_.begin(), allowed_.end(), f.numa)) continue;
        if (!Serves(d, p)) continue;
        nodes.insert(f.numa);
      }
    }
    return {nodes.begin(), nodes.end()};
  }

  // Whether function `p` matches request `d` and has room for it now.
  bool Serves(const v1::DeviceRequest& d, int p) const {
    const PciFunction& f = t_.pci[p];
    if (d.source_case() == v1::DeviceRequest::kPci) {
      if (f.bdf != d.pci()) return false;
    } else {
      if (ClassOf(f.class_id) != d.select().device_class()) return false;
      if (!d.select().vendor().empty() &&
          absl::StrFormat("0x%04x", f.vendor_id) != absl::AsciiStrToLower(d.select().vendor())) {
        return false;
      }
    }
    const DeviceState* s = h_.Device(p);
    if (s == nullptr || s->whole_owner >= 0) return false;
    if (d.share_case() == v1::DeviceRequest::kVfs) return s->FreeVfs() >= static_cast<int>(d.vfs());
    if (d.share_case() == v1::DeviceRequest::kNamespaces) return s->FreeNs() >= static_cast<int>(d.namespaces());
    return s->Untouched();
  }

  // Devices; `local` (when known) are the instance's CPU nodes.
  bool PickDevices(const std::set<uint32_t>* local, Take* take, std::string* why) {
    // What this instance already took, per function (several VFs of one function).
    std::map<int, std::pair<int, int>> used_here;  // pci -> (vfs, namespaces) taken here
    std::set<int> whole_here;
    for (int i = 0; i < r_.devices_size(); ++i) {
      const v1::DeviceRequest& d = r_.devices(i);
      int count = d.share_case() == v1::DeviceRequest::kVfs ? d.vfs()
                  : d.share_case() == v1::DeviceRequest::kNamespaces ? d.namespaces() : 0;
      bool vfs = d.share_case() == v1::DeviceRequest::kVfs;
      bool ns = d.share_case() == v1::DeviceRequest::kNamespaces;
      auto fits = [&](int pci) {
        const DeviceState* s = h_.Device(pci);
        if (s == nullptr || s->whole_owner >= 0 || whole_here.count(pci)) return false;
        if (vfs) return s->FreeVfs() - used_here[pci].first >= count;
        if (ns) return s->FreeNs() - used_here[pci].second >= count;
        return s->Untouched() && used_here[pci] == std::make_pair(0, 0);
      };
      std::vector<int> candidates;
      if (d.source_case() == v1::DeviceRequest::kPci) {
        int pci = -1;
        for (int p : h_.info().pool.devices) {
          if (t_.pci[p].bdf == d.pci()) pci = p;
        }
        if (pci < 0) {
          if (explain_) *why = absl::StrCat("device ", d.name(), ": ", d.pci(), " is not in the pool of ", h_.info().name);
          return false;
        }
        if (!fits(pci)) {
          if (explain_) *why = absl::StrCat("device ", d.name(), ": ", Busy(pci, vfs, ns));
          return false;
        }
        candidates.push_back(pci);
      } else {
        const v1::DeviceSelector& sel = d.select();
        std::vector<int> matching;  // of the class (and vendor)
        std::vector<int> far;       // of those, not on the instance's nodes when numaLocal
        for (int p : h_.info().pool.devices) {
          const PciFunction& f = t_.pci[p];
          if (ClassOf(f.class_id) != sel.device_class()) continue;
          if (!sel.vendor().empty() && absl::StrFormat("0x%04x", f.vendor_id) != absl::AsciiStrToLower(sel.vendor())) continue;
          if (sel.numa_local() && local != nullptr && (f.numa < 0 || !local->count(f.numa))) {
            far.push_back(p);
            continue;
          }
          matching.push_back(p);
        }
        // Local functions first, then the rest; NearDevices (no CPUs yet) prefers nodes
        // with the most free CPUs.
        std::stable_sort(matching.begin(), matching.end(), [&](int a, int b) {
          auto score = [&](int p) {
            int n = t_.pci[p].numa;
            if (local != nullptr) return (n >= 0 && local->count(n)) ? 1 : 0;
            return n >= 0 && std::count(cpu_nodes_.begin(), cpu_nodes_.end(), n) ? 1 : 0;
          };
          return score(a) > score(b);
        });
        for (int p : matching) {
          if (fits(p)) {
            candidates.push_back(p);
            break;
          }
        }
        if (candidates.empty()) {
          std::string what = absl::StrCat("no free ", ClassName(sel.device_class()), " function");
          if (vfs) absl::StrAppend(&what, " with ", count, count == 1 ? " free VF" : " free VFs");
          if (ns) absl::StrAppend(&what, " with ", count, count == 1 ? " free namespace" : " free namespaces");
          if (sel.numa_local() && local != nullptr) {
            absl::StrAppend(&what, " on NUMA node", local->size() == 1 ? " " : "s ",
                            NodeList(t_, std::vector<uint32_t>(local->begin(), local->end())));
          }
          std::vector<std::string> states;
          for (size_t k = 0; k < matching.size() && k < 3; ++k) states.push_back(Busy(matching[k], vfs, ns));
          for (size_t k = 0; k < far.size() && states.size() < 3; ++k) {
            int n = t_.pci[far[k]].numa;
            states.push_back(absl::StrCat(t_.pci[far[k]].bdf, " is on ",
                                          n < 0 ? "an unknown NUMA node" : absl::StrCat("NUMA node ", t_.numa[n].os_index)));
          }
          if (explain_) *why = absl::StrCat("device ", d.name(), ": ", what, " (",
                              states.empty() ? absl::StrCat("the pool of ", h_.info().name, " has none")
                                             : absl::StrJoin(states, "; "),
                              ")");
          return false;
        }
      }
      int pci = candidates.front();
      const DeviceState* s = h_.Device(pci);
      if (vfs) {
        int taken = 0;
        for (int v = 0; v < static_cast<int>(s->vf_owner.size()) && taken < count; ++v) {
          if (s->vf_owner[v] >= 0 || TakenHere(*take, pci, v, -1)) continue;
          take->devices.push_back({d.name(), pci, v, -1});
          ++taken;
        }
        used_here[pci].first += count;
      } else if (ns) {
        int taken = 0;
        for (int v = 0; v < static_cast<int>(s->ns_owner.size()) && taken < count; ++v) {
          if (s->ns_owner[v] >= 0 || TakenHere(*take, pci, -1, v)) continue;
          take->devices.push_back({d.name(), pci, -1, v});
          ++taken;
        }
        used_here[pci].second += count;
      } else {
        take->devices.push_back({d.name(), pci, -1, -1});
        whole_here.insert(pci);
      }
    }
    return true;
  }

  static bool TakenHere(const Take& take, int pci, int vf, int ns) {
    for (const auto& d : take.devices) {
      if (d.pci == pci && ((vf >= 0 && d.vf == vf) || (ns >= 0 && d.ns == ns))) return true;
    }
    return false;
  }

  std::string Busy(int pci, bool vfs, bool ns) const {
    const DeviceState* s = h_.Device(pci);
    const PciFunction& f = t_.pci[pci];
    if (vfs) return absl::StrCat(f.bdf, " has ", s->FreeVfs(), " of ", s->vf_owner.size(), " VFs free");
    if (ns) return absl::StrCat(f.bdf, " has ", s->FreeNs(), " of ", s->ns_owner.size(), " namespaces free");
    if (s->whole_owner >= 0) return absl::StrCat(f.bdf, " is in use by ", names_[s->whole_owner]);
    return absl::StrCat(f.bdf, " has VFs or namespaces in use");
  }

  bool PickWays(Take* take, std::string* why) {
    if (!r_.has_llc_ways()) return true;
    uint32_t w = r_.llc_ways();
    std::vector<uint32_t> l3s = h_.L3sOf(take->cpus);
    uint64_t used = 0;
    // The kernel's way mask is a u32 (kernel-abi.md section 3): no more than 32 ways count.
    uint32_t ways = kMaxLlcWays;
    for (uint32_t l3 : l3s) {
      used |= h_.WaysUsed(l3);
      ways = std::min(ways, t_.l3[l3].ways);
    }
    if (w > ways) {
      if (explain_) *why = absl::StrFormat("needs %d cache ways; the L3 has %d", w, ways);
      return false;
    }
    const uint64_t want = LowBits(w);
    // A resized instance keeps its mask when it still fits.
    if (prev_ != nullptr && prev_->has_llc_mask() && __builtin_popcountll(prev_->llc_mask()) == static_cast<int>(w) &&
        (prev_->llc_mask() & used) == 0 && (prev_->llc_mask() & ~LowBits(ways)) == 0) {
      take->llc_mask = prev_->llc_mask();
      return true;
    }
    for (uint32_t start = 0; start + w <= ways; ++start) {
      uint64_t mask = want << start;
      if ((mask & used) == 0) {
        take->llc_mask = static_cast<int64_t>(mask);
        return true;
      }
    }
    std::vector<uint32_t> ids(l3s.begin(), l3s.end());
    if (explain_) *why = absl::StrFormat("needs %d contiguous free cache ways in L3 domain %s (%d ways, in use 0x%x)", w,
                           absl::StrJoin(ids, ","), ways, used);
    return false;
  }

  HostState& h_;
  const Topology& t_;
  const InstanceRequest& req_;
  const v1::Resources& r_;
  const v1::Placement* prev_;
  const std::vector<std::string>& names_;
  const bool explain_;
  bool whole_ = true;
  uint32_t need_ = 0;
  std::vector<uint32_t> allowed_;    // NUMA indexes the request may use
  std::vector<uint32_t> cpu_nodes_;  // those with CPUs
  std::vector<uint32_t> cap_;
};

v1::Placement ToPlacement(const HostState& h, const InstanceRequest& req, const Take& take) {
  const Topology& t = h.topology();
  v1::Placement p;
  p.set_host(h.info().name);
  std::set<uint32_t> nodes;
  for (uint32_t cpu : take.cpus) {
    p.add_cpus(cpu);
    auto it = t.physical_ids.find(cpu);
    p.add_physical_cpus(it != t.physical_ids.end() ? it->second : cpu);
    nodes.insert(t.numa[t.cores[t.core_of_pu.at(cpu)].numa].os_index);
  }
  p.set_boot_cpu(take.cpus.front());
  for (uint32_t n : nodes) p.add_numa_nodes(n);
  std::map<uint32_t, uint64_t> by_os;
  for (const auto& [n, bytes] : take.memory) by_os[t.numa[n].os_index] = bytes;
  for (const auto& [os, bytes] : by_os) {
    auto* m = p.add_memory();
    m->set_node(os);
    m->set_bytes(bytes);
  }
  for (const Take::Dev& d : take.devices) {
    auto* pd = p.add_devices();
    pd->set_name(d.name);
    const PciFunction& f = t.pci[d.pci];
    if (d.vf >= 0) {
      pd->set_pci(f.vf_bdfs[d.vf]);
      pd->set_vf(d.vf);
    } else {
      pd->set_pci(f.bdf);
      if (d.ns >= 0) pd->set_namespace_(d.ns + 1);  // NVMe namespace ids start at 1
    }
  }
  for (const auto& v : req.resources.virtio()) {
    auto* pv = p.add_virtio();
    pv->set_type(v.type() == v1::VIRTIO_NET ? "net" : v.type() == v1::VIRTIO_BLK ? "blk"
                 : v.type() == v1::VIRTIO_CONSOLE ? "console" : "vsock");
    pv->set_uplink(v.uplink());
    pv->set_queues(v.queues() == 0 ? 1 : v.queues());
  }
  if (take.llc_mask >= 0) p.set_llc_mask(static_cast<uint32_t>(take.llc_mask));
  p.set_instance_id(req.id);
  return p;
}

// Rebuilds a Take from a current placement when it is still valid on `h` and still what
// `req` asks for; returns false otherwise (the instance is then placed again).
bool StillValid(const HostState& h, const InstanceRequest& req, const v1::Placement& p, Take* take) {
  const Topology& t = h.topology();
  const v1::Resources& r = req.resources;
  if (p.cpus_size() == 0) return false;
  bool whole = r.smt() == v1::SMT_WHOLE_CORE;
  if (r.cpu_request_case() == v1::Resources::kCpuSet) {
    std::set<uint32_t> a(r.cpu_set().ids().begin(), r.cpu_set().ids().end());
    std::set<uint32_t> b(p.cpus().begin(), p.cpus().end());
    if (a != b) return false;
  } else if (static_cast<uint32_t>(p.cpus_size()) != r.cpus()) {
    return false;
  }
  std::set<uint32_t> cores, nodes;
  std::set<uint32_t> allowed;
  for (uint32_t os : r.numa_nodes()) {
    auto it = t.numa_by_os.find(os);
    if (it == t.numa_by_os.end()) return false;
    allowed.insert(it->second);
  }
  // A running instance keeps its CPUs even when a core it holds whole has since got
  // another tenant on a sibling thread (a kernel started by hand, a pool that changed):
  // that core is then held as shared, and the instance is not moved for it.
  std::set<uint32_t> shared;
  for (uint32_t cpu : p.cpus()) {
    if (!t.core_of_pu.contains(cpu) || !h.InPool(cpu) || h.OwnerOf(cpu) >= 0) return false;
    uint32_t core = t.core_of_pu.at(cpu);
    if (!h.PuFreeForAny(cpu)) return false;
    if (whole && !h.WholeCoreFree(core)) shared.insert(core);
    cores.insert(core);
    nodes.insert(t.cores[core].numa);
    take->cpus.push_back(cpu);
  }
  for (uint32_t c : shared) cores.erase(c);
  if (!allowed.empty()) {
    for (uint32_t n : nodes) {
      if (!allowed.count(n)) return false;
    }
  }
  if (r.placement() == v1::PLACEMENT_SINGLE_NUMA && nodes.size() != 1) return false;
  if (whole) take->whole_cores.assign(cores.begin(), cores.end());
  uint64_t total = 0;
  for (const auto& m : p.memory()) {
    auto it = t.numa_by_os.find(m.node());
    if (it == t.numa_by_os.end() || h.MemFree(it->second) < m.bytes() || m.bytes() % kMemoryBlock) return false;
    for (const auto& [n, b] : take->memory) {
      if (n == it->second) return false;  // a node listed twice
    }
    take->memory.emplace_back(it->second, m.bytes());
    total += m.bytes();
  }
  if (total != r.memory()) return false;
  // Devices: every request satisfied by the placed entries of its name.
  for (const auto& d : r.devices()) {
    int want = d.share_case() == v1::DeviceRequest::kVfs ? d.vfs()
               : d.share_case() == v1::DeviceRequest::kNamespaces ? d.namespaces() : 1;
    int have = 0;
    for (const auto& pd : p.devices()) {
      if (pd.name() != d.name()) continue;
      // Find the function (the PF for a VF).
      int pci = -1;
      int vf = -1;
      for (int f : h.info().pool.devices) {
        if (t.pci[f].bdf == pd.pci()) pci = f;
        for (size_t v = 0; v < t.pci[f].vf_bdfs.size(); ++v) {
          if (t.pci[f].vf_bdfs[v] == pd.pci()) {
            pci = f;
            vf = v;
          }
        }
      }
      const DeviceState* s = h.Device(pci);
      if (s == nullptr || s->whole_owner >= 0) return false;
      bool wants_vf = d.share_case() == v1::DeviceRequest::kVfs;
      bool wants_ns = d.share_case() == v1::DeviceRequest::kNamespaces;
      if (wants_vf != (vf >= 0) || wants_ns != pd.has_namespace_()) return false;
      if (d.source_case() == v1::DeviceRequest::kPci && t.pci[pci].bdf != d.pci()) return false;
      if (d.source_case() == v1::DeviceRequest::kSelect &&
          ClassOf(t.pci[pci].class_id) != d.select().device_class()) {
        return false;
      }
      int ns = wants_ns ? static_cast<int>(pd.namespace_()) - 1 : -1;
      if (vf >= 0 && s->vf_owner[vf] >= 0) return false;
      if (ns >= 0 && (ns >= static_cast<int>(s->ns_owner.size()) || s->ns_owner[ns] >= 0)) return false;
      if (!wants_vf && !wants_ns && !s->Untouched()) return false;
      take->devices.push_back({d.name(), pci, vf, ns});
      ++have;
    }
    if (have != want) return false;
  }
  if (p.devices_size() != static_cast<int>(take->devices.size())) return false;
  if (r.has_llc_ways() != p.has_llc_mask()) return false;
  if (p.has_llc_mask()) {
    if (__builtin_popcount(p.llc_mask()) != static_cast<int>(r.llc_ways())) return false;
    for (uint32_t l3 : h.L3sOf(take->cpus)) {
      if (h.WaysUsed(l3) & p.llc_mask()) return false;
    }
    take->llc_mask = p.llc_mask();
  }
  return true;
}

std::string SelectorText(const v1::LabelSelector& s) {
  if (s.match_labels().empty()) return "{}";
  std::vector<std::string> parts;
  std::map<std::string, std::string> sorted(s.match_labels().begin(), s.match_labels().end());
  for (const auto& [k, v] : sorted) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

}  // namespace

bool Matches(const v1::LabelSelector& selector, const std::map<std::string, std::string>& labels) {
  for (const auto& [k, v] : selector.match_labels()) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
}

// ---------------------------------------------------------------------------- engine

// Hosts by an integer key (usable CPUs, usable GiB), scanned from the largest key down.
// Buckets with swap-removal: O(1) updates, deterministic for the same sequence of calls.
class BucketIndex {
 public:
  explicit BucketIndex(size_t hosts) : where_(hosts, {-1, -1}) {}

  void Insert(int64_t key, int host) {
    if (key < 0) key = 0;
    if (static_cast<size_t>(key) >= buckets_.size()) buckets_.resize(key + 1);
    where_[host] = {key, static_cast<int64_t>(buckets_[key].size())};
    buckets_[key].push_back(host);
    top_ = std::max(top_, key);
    ++size_;
  }
  void Erase(int host) {
    auto [key, pos] = where_[host];
    if (key < 0) return;
    std::vector<int>& b = buckets_[key];
    int moved = b.back();
    b[pos] = moved;
    where_[moved].second = pos;
    b.pop_back();
    where_[host] = {-1, -1};
    --size_;
  }
  size_t size() const { return size_; }
  // Hosts with a key of at least `min`, largest first.
  template <typename F>
  void Scan(int64_t min, F&& visit) const {
    for (int64_t key = top_; key >= std::max<int64_t>(min, 0); --key) {
      for (int host : buckets_[key]) {
        if (visit(host)) return;
      }
    }
  }
  // How many hosts have a key below `min`.
  size_t CountBelow(int64_t min) const {
    size_t n = 0;
    for (int64_t key = 0; key < min && key < static_cast<int64_t>(buckets_.size()); ++key) n += buckets_[key].size();
    return n;
  }

 private:
  std::vector<std::vector<int>> buckets_;
  std::vector<std::pair<int64_t, int64_t>> where_;  // host -> (key, position), key -1 if absent
  int64_t top_ = 0;
  size_t size_ = 0;
};

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

std::vector<InstanceRequest> BuildRequests(const std::vector<v1::KernelInstance>& instances) {
  std::vector<InstanceRequest> out;
  for (const auto& ki : instances) {
    InstanceRequest r;
    r.name = ki.metadata().name();
    r.host = ki.spec().host();
    r.selector = ki.spec().host_selector();
    r.resources = ki.spec().resources();
    r.id = ki.spec().has_id() ? ki.spec().id() : 0;
    out.push_back(r);
    if (ki.spec().failover().policy() == v1::FAILOVER_STANDBY) {
      InstanceRequest standby;
      standby.name = absl::StrCat(r.name, "-standby");
      standby.standby_for = r.name;
      standby.resources.set_cpus(ki.spec().failover().standby().cpus());
      standby.resources.set_memory(ki.spec().failover().standby().memory());
      standby.resources.set_smt(r.resources.smt());
      out.push_back(std::move(standby));
    }
  }
  return out;
}

}  // namespace mkfleet::planner
