// The Placer's the NUMA nodes to try, in order, and the exact cpuSet (placer.h).
#include "planner/placer.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner::internal {

bool Placer::Run(Take* out, std::string* why) {
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

bool Placer::ResolveAllowed(std::string* why) {
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

uint64_t Placer::CapOf(const std::vector<uint32_t>& nodes) const {
  uint64_t sum = 0;
  for (uint32_t n : nodes) sum += cap_[n];
  return sum;
}

std::vector<uint32_t> Placer::Base(const std::vector<uint32_t>& device_nodes) const {
  if (r_.placement() == v1::PLACEMENT_NEAR_DEVICES && !device_nodes.empty()) return device_nodes;
  return cpu_nodes_;
}

std::vector<std::vector<uint32_t>> Placer::FirstNodeSets(const std::vector<uint32_t>& device_nodes) {
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

std::vector<std::vector<uint32_t>> Placer::MoreNodeSets(const std::vector<uint32_t>& device_nodes) {
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

std::string Placer::CpuShortage(const std::vector<uint32_t>& device_nodes) const {
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

int Placer::TryNodes(const std::vector<uint32_t>& nodes, Take* take, std::string* why) {
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

bool Placer::RunExact(Take* out, std::string* why) {
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

}  // namespace mkfleet::planner::internal
