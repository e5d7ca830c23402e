// The host ledger: what one host's pool has and what each instance holds of it (CPUs by
// core mode, memory per NUMA node, PCI functions, VFs and NVMe namespaces, L3 cache ways),
// and a Take (what one instance takes on one host, built before anything is committed).
// Internal to the planner (placement.h is its interface). Thread-safety: none; one per
// planning thread.
#ifndef MKFLEET_PLANNER_HOST_LEDGER_H_
#define MKFLEET_PLANNER_HOST_LEDGER_H_

#include <algorithm>
#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "mkfleet/v1/manifest.pb.h"
#include "planner/placement.h"
#include "planner/topology.h"

namespace mkfleet::planner::internal {

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
inline uint64_t LowBits(uint32_t n) { return n >= 64 ? ~0ull : (1ull << n) - 1; }

// The OS indexes of NUMA nodes (topology indexes), comma-separated.
std::string NodeList(const Topology& t, const std::vector<uint32_t>& nodes);

// "Network", "Storage", ... for messages.
std::string ClassName(v1::DeviceClass c);

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


}  // namespace mkfleet::planner::internal

#endif  // MKFLEET_PLANNER_HOST_LEDGER_H_
