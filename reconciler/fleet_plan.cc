#include "reconciler/fleet_plan.h"

#include <algorithm>
#include <iterator>
#include <set>


#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

struct Owner {
  const v1::KernelInstanceSpec* spec = nullptr;
  int64_t generation = 0;
  std::string set;
};

const std::string kStandbySuffix = "-standby";

bool SamePool(const planner::Pool& a, const planner::Pool& b) {
  return a.cpus == b.cpus && a.memory == b.memory && a.devices == b.devices;
}

planner::Pool Intersect(const planner::Pool& a, const planner::Pool& b) {
  planner::Pool out;
  std::set_intersection(a.cpus.begin(), a.cpus.end(), b.cpus.begin(), b.cpus.end(), std::back_inserter(out.cpus));
  std::set_intersection(a.devices.begin(), a.devices.end(), b.devices.begin(), b.devices.end(),
                        std::back_inserter(out.devices));
  for (const auto& [node, bytes] : a.memory) {
    auto it = b.memory.find(node);
    if (it != b.memory.end()) out.memory[node] = std::min(bytes, it->second);
  }
  return out;
}

// The action that moves a host's pool to `wanted`. Its id changes with the Host's
// generation and with the pool the agent has now, so a change left partial (resources in
// use) is tried again once the pool has moved, and never twice for the same pool.
v1::Action PoolChangeAction(const std::string& host, int64_t generation, const planner::Topology& t,
                            const planner::Pool& wanted, const v1::PoolUsage& now) {
  v1::Action a;
  v1::PoolChange* c = a.mutable_pool_change();
  for (uint32_t cpu : wanted.cpus) c->add_cpus(cpu);
  for (const auto& [node, bytes] : wanted.memory) {
    v1::NodeBytes* m = c->add_memory();
    m->set_node(t.numa[node].os_index);
    m->set_bytes(bytes);
  }
  for (int d : wanted.devices) c->add_devices(t.pci[d].bdf);
  v1::PoolUsage basis;
  *basis.mutable_cpus() = now.cpus();
  *basis.mutable_memory() = now.memory();
  *basis.mutable_devices() = now.devices();
  // FNV-1a: stable across runs (a restarted controller sends the same id).
  uint64_t hash = 1469598103934665603ull;
  for (const std::string& part : {basis.SerializeAsString(), c->SerializeAsString()}) {
    for (unsigned char ch : part) hash = (hash ^ ch) * 1099511628211ull;
  }
  a.set_id(absl::StrCat(host, "/pool/g", generation, "/pool-change-", absl::Hex(hash)));
  return a;
}

v1::KernelState WantedState(v1::Phase phase) {
  return phase == v1::PHASE_READY ? v1::KERNEL_STATE_READY
         : phase == v1::PHASE_LOADED ? v1::KERNEL_STATE_LOADED
                                     : v1::KERNEL_STATE_ACTIVE;
}

bool Disruptive(const v1::Action& a) {
  const std::string step = a.id().substr(a.id().rfind('/') + 1);
  return absl::StartsWith(step, "replace-") || absl::StartsWith(step, "recreate-");
}

void LimitRollouts(const std::vector<v1::InstanceSet>& sets,
                   const std::map<std::string, std::vector<v1::ObservedInstance>>& observed, FleetPlan* out) {
  std::map<std::string, const v1::InstanceSet*> by_name;
  for (const v1::InstanceSet& s : sets) by_name["InstanceSet/" + s.metadata().name()] = &s;
  std::map<std::string, std::map<std::string, v1::KernelState>> state;  // host -> kernel -> state
  for (const auto& [host, list] : observed) {
    for (const v1::ObservedInstance& o : list) state[host][o.name()] = o.status().kernel_state();
  }
  struct Tally {
    uint32_t replicas = 0, down = 0;
    std::vector<std::string> disrupted;  // members whose plan takes them down, by name
  };
  std::map<std::string, Tally> tally;
  for (const auto& [name, p] : out->planned) {
    if (p.owner.empty() || !p.standby_for.empty() || p.spec == nullptr) continue;
    Tally& t = tally[p.owner];
    ++t.replicas;
    bool disrupt = false;
    auto plan = out->hosts.find(p.host);
    if (plan != out->hosts.end()) {
      for (const v1::Action& a : plan->second.actions) disrupt |= a.instance() == p.kernel && Disruptive(a);
    }
    auto h = state.find(p.host);
    bool up = h != state.end() && h->second.count(p.kernel) && h->second.at(p.kernel) == WantedState(p.spec->phase());
    // A member already down goes ahead (updating it costs nothing) and counts as down.
    if (!up) {
      ++t.down;
    } else if (disrupt) {
      t.disrupted.push_back(name);
    }
  }
  for (auto& [owner, t] : tally) {
    if (t.disrupted.empty()) continue;
    uint32_t limit = 1;
    auto set = by_name.find(owner);
    if (set != by_name.end() && set->second->spec().has_rollout()) {
      const v1::IntOrPercent& m = set->second->spec().rollout().max_unavailable();
      if (m.value_case() == v1::IntOrPercent::kCount) limit = m.count();
      if (m.value_case() == v1::IntOrPercent::kPercent) limit = (t.replicas * m.percent() + 99) / 100;
      limit = std::max<uint32_t>(limit, 1);
    }
    uint32_t budget = limit > t.down ? limit - t.down : 0;
    std::sort(t.disrupted.begin(), t.disrupted.end());
    for (size_t i = budget; i < t.disrupted.size(); ++i) {
      const PlannedInstance& p = out->planned.at(t.disrupted[i]);
      auto& actions = out->hosts[p.host].actions;
      actions.erase(std::remove_if(actions.begin(), actions.end(),
                                   [&](const v1::Action& a) { return a.instance() == p.kernel; }),
                    actions.end());
      out->deferred[t.disrupted[i]] =
          absl::StrCat("rollout: waiting; ", t.down + std::min<size_t>(budget, t.disrupted.size()), " of ", t.replicas,
                       " members of ", owner, " are down or updating (maxUnavailable ", limit, ")");
    }
  }
}

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
  info.cordoned = host.spec().cordoned();
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
  std::set<std::string> known, reachable, swapped;
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
    // The pool the Host asks for: sent as a PoolChange when the agent's differs, and
    // meanwhile only what both have is planned with (nothing lands on resources leaving).
    // A Host without a pool spec (only possible through the API) lends what its agent has.
    absl::StatusOr<planner::Pool> wanted = info->pool;
    if (h.spec().pool().ByteSizeLong() > 0) wanted = planner::DerivePool(name, *v->second.topology, h.spec().pool());
    if (!wanted.ok()) {
      out.problems.push_back(absl::StrCat("Host/", name, ": ", wanted.status().message()));
    } else if (!SamePool(info->pool, *wanted)) {
      v1::Action a = PoolChangeAction(name, h.metadata().generation(), *v->second.topology, *wanted, v->second.pool);
      out.pool_changes[name] = a;
      info->pool = Intersect(info->pool, *wanted);
    }
    infos.push_back(*std::move(info));
    known.insert(name);
    if (v->second.connected) reachable.insert(name);
    const auto& seen = v->second.instances;
    for (const auto& [iname, in] : seen) {
      observed[name].push_back(in);
      // After a takeover X-standby (role primary) serves X, and X (role standby) serves
      // X-standby: each request's current placement is that of the kernel serving it.
      std::string request = iname;
      if (absl::EndsWith(iname, kStandbySuffix) && in.status().role() == "primary") {
        std::string base = iname.substr(0, iname.size() - kStandbySuffix.size());
        auto b = seen.find(base);
        if (b != seen.end() && b->second.status().role() == "standby") {
          request = base;
          swapped.insert(base);
        }
      } else if (in.status().role() == "standby") {
        auto s = seen.find(iname + kStandbySuffix);
        if (s != seen.end() && s->second.status().role() == "primary") request = iname + kStandbySuffix;
      }
      if (in.status().has_placement() && in.status().placement().cpus_size() > 0) {
        v1::Placement p = in.status().placement();
        p.set_host(name);
        current[request] = std::move(p);
      }
    }
  }
  auto kernel_of = [&](const std::string& request, const std::string& standby_for) {
    if (standby_for.empty()) return swapped.count(request) ? request + kStandbySuffix : request;
    return swapped.count(standby_for) ? standby_for : request;
  };

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
  // After a takeover the kernel now standing by is the former primary: its request takes
  // the primary's size, so it is not shrunk (the kernel forbids taking back the memory
  // that holds its image); the new primary grows to the primary's size by hot-plug.
  if (!swapped.empty()) {
    std::map<std::string, const planner::InstanceRequest*> by_name;
    for (const planner::InstanceRequest& r : requests) by_name[r.name] = &r;
    for (planner::InstanceRequest& r : requests) {
      if (r.standby_for.empty() || !swapped.count(r.standby_for) || !by_name.count(r.standby_for)) continue;
      const v1::Resources& primary = by_name[r.standby_for]->resources;
      r.resources.set_cpus(primary.cpus());
      r.resources.set_memory(primary.memory());
    }
  }
  planner::PlacementResult placed = planner::Place(infos, requests, current);
  out.unschedulable.insert(out.unschedulable.end(), placed.unschedulable.begin(), placed.unschedulable.end());
  out.placements = placed.placements;

  // What each request runs: its instance's spec, its primary's (standby), or its set's template.
  std::map<std::string, Owner> by_instance;
  // Pointing into the caller's `instances` (PlannedInstance::spec outlives this call).
  for (const v1::KernelInstance& ki : instances) {
    by_instance[ki.metadata().name()] = {&ki.spec(), ki.metadata().generation(), ""};
  }
  // Set members are named <set>-<host>-<n> and placed on <host>.
  auto set_owner = [&](const std::string& request, const std::string& host) -> Owner {
    for (const v1::InstanceSet& s : sets) {
      const std::string& set = s.metadata().name();
      if (request.size() > set.size() + host.size() + 2 && absl::StartsWith(request, set) &&
          request[set.size()] == '-' && request.compare(set.size() + 1, host.size(), host) == 0 &&
          request[set.size() + 1 + host.size()] == '-') {
        return {&s.spec().template_().spec(), s.metadata().generation(), set};
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
      owner = set_owner(r.name, p->second.host());
    }
    if (owner.spec == nullptr) continue;
    DesiredInstance d;
    d.name = kernel_of(r.name, r.standby_for);
    PlannedInstance& planned = out.planned[r.name];
    planned.host = p->second.host();
    planned.kernel = d.name;
    planned.owner = owner.set.empty() ? "" : "InstanceSet/" + owner.set;
    planned.standby_for = r.standby_for;
    planned.generation = owner.generation;
    planned.spec = owner.spec;
    d.generation = owner.generation;
    d.spec = *owner.spec;
    d.placement = p->second;
    desired[p->second.host()].push_back(std::move(d));
  }
  for (const std::string& host : reachable) {
    out.hosts[host] = ComputePlan(host, desired[host], observed[host]);
  }
  LimitRollouts(sets, observed, &out);
  for (const std::string& host : reachable) {
    auto pool = out.pool_changes.find(host);
    if (pool != out.pool_changes.end()) {
      // First: what is added may be what the plan's other actions take next time.
      auto& actions = out.hosts[host].actions;
      actions.insert(actions.begin(), pool->second);
    }
  }
  return out;
}

}  // namespace mkfleet::reconciler
