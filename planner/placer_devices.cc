// The Placer's PCI functions, SR-IOV VFs and NVMe namespaces (placer.h).
#include "planner/placer.h"

#include <algorithm>
#include <numeric>
#include <optional>
#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::planner::internal {

std::vector<uint32_t> Placer::DeviceNodes() const {
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

bool Placer::Serves(const v1::DeviceRequest& d, int p) const {
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

bool Placer::PickDevices(const std::set<uint32_t>* local, Take* take, std::string* why) {
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

bool Placer::TakenHere(const Take& take, int pci, int vf, int ns) {
  for (const auto& d : take.devices) {
    if (d.pci == pci && ((vf >= 0 && d.vf == vf) || (ns >= 0 && d.ns == ns))) return true;
  }
  return false;
}

std::string Placer::Busy(int pci, bool vfs, bool ns) const {
  const DeviceState* s = h_.Device(pci);
  const PciFunction& f = t_.pci[pci];
  if (vfs) return absl::StrCat(f.bdf, " has ", s->FreeVfs(), " of ", s->vf_owner.size(), " VFs free");
  if (ns) return absl::StrCat(f.bdf, " has ", s->FreeNs(), " of ", s->ns_owner.size(), " namespaces free");
  if (s->whole_owner >= 0) return absl::StrCat(f.bdf, " is in use by ", names_[s->whole_owner]);
  return absl::StrCat(f.bdf, " has VFs or namespaces in use");
}

}  // namespace mkfleet::planner::internal
