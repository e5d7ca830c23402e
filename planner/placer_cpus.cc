// The Placer's CPUs: whole cores or single PUs (placer.h).
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

std::vector<uint32_t> Placer::PreviousCores() const {
  std::vector<uint32_t> cores;
  if (prev_ == nullptr) return cores;
  for (uint32_t cpu : prev_->cpus()) {
    if (!t_.core_of_pu.contains(cpu)) continue;
    uint32_t core = t_.core_of_pu.at(cpu);
    if (std::find(cores.begin(), cores.end(), core) == cores.end()) cores.push_back(core);
  }
  return cores;
}

bool Placer::PickCpus(const std::vector<uint32_t>& nodes, Take* take) {
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

}  // namespace mkfleet::planner::internal
