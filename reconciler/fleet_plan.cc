#include "reconciler/fleet_plan.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

struct Owner {
  const v1::KernelInstanceSpec* spec = nullptr;
  int64_t generation = 0;
};

}  // namespace

absl::StatusOr<planner::HostInfo> HostInfoFromView(const v1::Host& host, const HostView& view,
                                                   std::vector<std::string>* warnings) {
  const std::string& name = host.metadata().name();
  if (view.topology == nullptr) return absl::UnavailableError(absl::StrCat("Host/", name, ": not connected yet"));
  const planner::Topology& t = *view.topology;
  planner::HostInfo info;
  info.name = name;
  info.topology = view.topology;
  info.labels = std::map<std::string, std::string>(host.metadata().labels().begin(), host.metadata().labels().end());
  for (uint32_t cpu : view.pool.cpus()) {
    if (!t.core_of_pu.contains(cpu)) {
      return absl::InvalidArgumentError(absl::StrCat("Host/", name, ": pool.cpus: CPU ", cpu, " is not in the topology"));
    }
    info.pool.cpus.push_back(cpu);
  }
  std::sort(info.pool.cpus.begin(), info.pool.cpus.end());
  for (const v1::NodeBytes& m : view.pool.memory()) {
    auto it = t.numa_by_os.find(m.node());
    if (it == t.numa_by_os.end()) {
      return absl::InvalidArgumentError(absl::StrCat("Host/", name, ": pool.memory: no NUMA node ", m.node()));
    }
    info.pool.memory[it->second] += m.bytes() / planner::kMemoryBlock * planner::kMemoryBlock;
  }
  for (const std::string& bdf : view.pool.devices()) {
    int d = t.FindPci(bdf);
    if (d < 0) {
      // The agent lends it, but the planner cannot place what the topology lacks.
      if (warnings != nullptr) {
        warnings->push_back(absl::StrCat("Host/", name, ": pool.devices: ", bdf, " is not in the topology; not placed"));
      }
      continue;
    }
    info.pool.devices.push_back(d);
  }
  std::sort(info.pool.devices.begin(), info.pool.devices.end());
  return info;
}

FleetPlan PlanFleet(const std::vector<v1::Host>& hosts, const std::map<std::string, HostView>& views,
                    const std::vector<v1::KernelInstance>& instances, const std::vector<v1::InstanceSet>& sets) {
  FleetPlan out;
  std::vector<planner::HostInfo> infos;
  std::set<std::string> known, reachable;
  std::map<std::string, std::string> left_out;  // host -> why
  std::map<std::string, v1::Placement> current;
  std::map<std::string, std::vector<v1::ObservedInstance>> observed;
  for (const v1::Host& h : hosts) {
    const std::string& name = h.metadata().name();
    auto v = views.find(name);
    if (v == views.end() || v->second.topology == nullptr) continue;
    auto info = HostInfoFromView(h, v->second, &out.problems);
    if (!info.ok()) {
      out.problems.push_back(std::string(info.status().message()));
      left_out[name] = std::string(info.status().message());
      continue;
    }
    infos.push_back(*std::move(info));
    known.insert(name);
    if (v->second.connected) reachable.insert(name);
    for (const auto& [iname, in] : v->second.instances) {
      observed[name].push_back(in);
      if (in.status().has_placement() && in.status().placement().cpus_size() > 0) {
        v1::Placement p = in.status().placement();
        p.set_host(name);
        current[iname] = std::move(p);
      }
    }
  }

  // Instances fixed to a host that takes no part wait for it (they are not unschedulable).
  std::vector<v1::KernelInstance> plannable;
  for (const v1::KernelInstance& ki : instances) {
    const std::string& host = ki.spec().host();
    if (!host.empty() && !known.count(host)) {
      auto why = left_out.find(host);
      out.waiting.push_back(why != left_out.end() ? absl::StrCat(ki.metadata().name(), ": ", why->second)
                                                  : absl::StrCat(ki.metadata().name(), ": host ", host,
                                                                 " is not connected yet"));
      continue;
    }
    plannable.push_back(ki);
  }
  std::vector<planner::InstanceRequest> requests =
      planner::BuildRequests(plannable, sets, infos, current, &out.unschedulable);
  planner::PlacementResult placed = planner::Place(infos, requests, current);
  out.unschedulable.insert(out.unschedulable.end(), placed.unschedulable.begin(), placed.unschedulable.end());
  out.placements = placed.placements;

  // What each request runs: its instance's spec, its primary's (standby), or its set's template.
  std::map<std::string, Owner> by_instance;
  for (const v1::KernelInstance& ki : plannable) {
    by_instance[ki.metadata().name()] = {&ki.spec(), ki.metadata().generation()};
  }
  auto set_owner = [&](const std::string& request) -> Owner {
    for (const v1::InstanceSet& s : sets) {
      const std::string prefix = s.metadata().name() + "-";
      if (!absl::StartsWith(request, prefix)) continue;
      for (const planner::HostInfo& h : infos) {
        if (absl::StartsWith(request.substr(prefix.size()), h.name + "-")) {
          return {&s.spec().template_().spec(), s.metadata().generation()};
        }
      }
    }
    return {};
  };
  std::map<std::string, std::vector<DesiredInstance>> desired;
  for (const planner::InstanceRequest& r : requests) {
    auto p = placed.placements.find(r.name);
    if (p == placed.placements.end()) continue;
    Owner owner;
    auto it = by_instance.find(r.standby_for.empty() ? r.name : r.standby_for);
    if (it != by_instance.end()) {
      owner = it->second;
    } else {
      owner = set_owner(r.name);
    }
    if (owner.spec == nullptr) continue;
    DesiredInstance d;
    d.name = r.name;
    d.generation = owner.generation;
    d.spec = *owner.spec;
    d.placement = p->second;
    desired[p->second.host()].push_back(std::move(d));
  }
  for (const std::string& host : reachable) {
    out.hosts[host] = ComputePlan(host, desired[host], observed[host]);
  }
  return out;
}

}  // namespace mkfleet::reconciler
