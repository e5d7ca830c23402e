#include "planner/requests.h"

#include <map>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"

namespace mkfleet::planner {

namespace v1 = mkfleet::v1;

namespace internal {

std::string SelectorText(const v1::LabelSelector& s) {
  if (s.match_labels().empty()) return "{}";
  std::vector<std::string> parts;
  std::map<std::string, std::string> sorted(s.match_labels().begin(), s.match_labels().end());
  for (const auto& [k, v] : sorted) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}


}  // namespace internal

bool Matches(const v1::LabelSelector& selector, const std::map<std::string, std::string>& labels) {
  for (const auto& [k, v] : selector.match_labels()) {
    auto it = labels.find(k);
    if (it == labels.end() || it->second != v) return false;
  }
  return true;
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
