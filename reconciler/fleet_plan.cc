#include "reconciler/fleet_plan.h"

#include <algorithm>
#include <iterator>
#include <set>


#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fnv.h"
#include "proto/morph_phase.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;



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
  // Stable across runs (a restarted controller sends the same id).
  uint64_t hash = Fnv1a().Add(basis.SerializeAsString()).Add(c->SerializeAsString()).value();
  a.set_id(absl::StrCat(host, "/pool/g", generation, "/pool-change-", absl::Hex(hash)));
  return a;
}

void LimitRollouts(const std::vector<v1::InstanceSet>& sets,
                   const std::map<std::string, std::vector<const v1::ObservedInstance*>>& observed, FleetPlan* out) {
  // Nothing to hold back unless some plan takes a kernel down (most passes: the tally below
  // reads every member).
  bool any = false;
  for (const auto& [host, plan] : out->hosts) {
    for (const auto& [kernel, change] : plan.changes) any |= change.disruptive;
  }
  if (!any) return;
  std::map<std::string, const v1::InstanceSet*> by_name;
  for (const v1::InstanceSet& s : sets) by_name["InstanceSet/" + s.metadata().name()] = &s;
  std::map<std::string, std::map<std::string, v1::KernelState>> state;  // host -> kernel -> state
  for (const auto& [host, list] : observed) {
    for (const v1::ObservedInstance* o : list) state[host][o->name()] = o->status().kernel_state();
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
      auto change = plan->second.changes.find(p.kernel);
      disrupt = change != plan->second.changes.end() && change->second.disruptive;
    }
    auto h = state.find(p.host);
    bool up = h != state.end() && h->second.count(p.kernel) && h->second.at(p.kernel) == WantedKernelState(p.spec->phase());
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
      Plan& plan = out->hosts[p.host];
      plan.actions.erase(std::remove_if(plan.actions.begin(), plan.actions.end(),
                                        [&](const v1::Action& a) { return a.instance() == p.kernel; }),
                         plan.actions.end());
      plan.changes.erase(p.kernel);
      out->deferred[t.disrupted[i]] =
          absl::StrCat("rollout: waiting; ", t.down + std::min<size_t>(budget, t.disrupted.size()), " of ", t.replicas,
                       " members of ", owner, " are down or updating (maxUnavailable ", limit, ")");
    }
  }
}

// Whether a kernel recorded for nobody is one of ours by name: a KernelInstance (or its
// warm standby) that may run on `host`, or a member of a set on `host`.
bool OursByName(const std::string& kernel, const v1::Host& host,
                const std::map<std::string, const v1::KernelInstance*>& kis, const std::vector<v1::InstanceSet>& sets) {
  const std::string& name = host.metadata().name();
  std::string base = absl::EndsWith(kernel, kStandbySuffix) ? kernel.substr(0, kernel.size() - kStandbySuffix.size()) : "";
  for (const std::string& k : {kernel, base}) {
    auto it = kis.find(k);
    if (it == kis.end()) continue;
    const v1::KernelInstanceSpec& spec = it->second->spec();
    if (spec.host() == name) return true;
    std::map<std::string, std::string> labels(host.metadata().labels().begin(), host.metadata().labels().end());
    if (spec.host().empty() && planner::Matches(spec.host_selector(), labels)) return true;
  }
  return !planner::SetOfMember(kernel, name, sets).empty();
}

// Whether a kernel recording `owner` ("KernelInstance/x@<created revision>") belongs to an
// incarnation of x other than the stored one. Owners without a revision (recorded before
// revisions were) match any.
bool FromAnEarlierIncarnation(const std::string& owner, const std::map<std::string, const v1::KernelInstance*>& kis) {
  constexpr absl::string_view kPrefix = "KernelInstance/";
  if (!absl::StartsWith(owner, kPrefix)) return false;
  const size_t at = owner.rfind('@');
  int64_t revision = 0;
  if (at == std::string::npos || !absl::SimpleAtoi(owner.substr(at + 1), &revision)) return false;
  auto ki = kis.find(owner.substr(kPrefix.size(), at - kPrefix.size()));
  if (ki == kis.end()) return false;
  const int64_t stored = ki->second->metadata().created_revision();
  return stored != 0 && stored != revision;
}

}  // namespace

std::string KernelInstanceOwner(const v1::KernelInstance& ki) {
  const int64_t revision = ki.metadata().created_revision();
  return absl::StrCat("KernelInstance/", ki.metadata().name(), revision > 0 ? absl::StrCat("@", revision) : "");
}

absl::StatusOr<planner::HostInfo> HostInfoFromView(const v1::Host& host, const HostView& view,
                                                   std::vector<std::string>* warnings) {
  const std::string& name = host.metadata().name();
  if (view.topology == nullptr) return absl::UnavailableError(absl::StrCat("Host/", name, ": not connected yet"));
  const planner::Topology& t = *view.topology;
  planner::HostInfo info;
  info.name = name;
  info.topology = view.topology;
  info.labels = std::map<std::string, std::string>(host.metadata().labels().begin(), host.metadata().labels().end());
  info.cordoned = host.spec().cordoned() || host.spec().drain();
  info.draining = host.spec().drain();
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
                    const std::vector<v1::KernelInstance>& instances, const std::vector<v1::InstanceSet>& sets,
                    const std::map<std::string, v1::Placement>& in_flight, const std::set<std::string>& morph_retry,
                    const std::map<std::string, const v1::KernelInstanceSpec*>& member_specs,
                    const std::map<std::string, const v1::KernelInstanceSpec*>& set_specs,
                    const std::set<std::string>& keep_sets, const std::set<std::string>& hold_current,
                    const std::map<std::string, v1::Placement>& previous) {
  FleetPlan out;
  // A set member's spec: the revision its rollout holds it at, else the one the rollout
  // holds the set's other members at, else the set's template.
  auto member_spec = [&](const std::string& member, const v1::InstanceSet& s) {
    auto held = member_specs.find(member);
    if (held != member_specs.end()) return held->second;
    auto set = set_specs.find(s.metadata().name());
    return set != set_specs.end() ? set->second : &s.spec().template_().spec();
  };
  std::map<std::string, std::string> morphed;        // request -> the "-next" kernel serving it
  std::map<std::string, std::string> morph_blocked;  // request -> why no live update starts
  std::set<std::string> surges;                      // requests with a surge request
  std::map<std::string, const v1::InstanceSet*> sets_by_name;
  for (const v1::InstanceSet& s : sets) sets_by_name[s.metadata().name()] = &s;
  planner::FleetInput input;
  input.sets = sets;
  for (const auto& [member, spec] : member_specs) input.member_resources[member] = spec->resources();
  for (const auto& [set, spec] : set_specs) input.set_resources[set] = spec->resources();
  std::set<std::string> known, reachable, swapped, settling;
  std::map<std::string, std::string> unavailable;  // host -> why instances fixed to it wait
  // host -> its managed kernels (where the views hold them)
  std::map<std::string, std::vector<const v1::ObservedInstance*>> managed;
  std::map<std::string, const v1::KernelInstance*> kis;
  for (const v1::KernelInstance& ki : instances) kis[ki.metadata().name()] = &ki;
  for (const v1::Host& h : hosts) {
    const std::string& name = h.metadata().name();
    const bool deleting = h.metadata().deletion_unix_ms() != 0;
    auto v = views.find(name);
    if (deleting) unavailable[name] = absl::StrCat("Host/", name, " is being deleted");
    if (v == views.end() || v->second.topology == nullptr) {
      // Still expected to connect (a restarted controller, a new Host): sets that select
      // it keep their members until it has.
      if (!deleting && (v == views.end() || v->second.reachable)) settling.insert(name);
      if (!unavailable.count(name)) unavailable[name] = absl::StrCat("host ", name, " is not connected yet");
      continue;
    }
    std::vector<std::string> warnings;
    auto info = HostInfoFromView(h, v->second, &warnings);
    for (const std::string& w : warnings) out.host_problems[name] = w;
    if (!info.ok()) {
      out.host_problems[name] = std::string(info.status().message());
      unavailable[name] = std::string(info.status().message());
      continue;
    }
    if (!deleting) {
      // The pool the Host asks for: sent as a PoolChange when the agent's differs, and
      // meanwhile only what both have is planned with (nothing lands on resources leaving).
      // A Host without a pool spec (only possible through the API) lends what its agent has.
      absl::StatusOr<planner::Pool> wanted = info->pool;
      if (h.spec().pool().ByteSizeLong() > 0) wanted = planner::DerivePool(name, *v->second.topology, h.spec().pool());
      if (!wanted.ok()) {
        out.host_problems[name] = absl::StrCat("Host/", name, ": ", wanted.status().message());
      } else if (!SamePool(info->pool, *wanted)) {
        out.pool_changes[name] =
            PoolChangeAction(name, h.metadata().generation(), *v->second.topology, *wanted, v->second.pool);
        info->pool = Intersect(info->pool, *wanted);
      }
    }
    if (v->second.connected) reachable.insert(name);
    const auto& seen = v->second.instances;
    // Live updates: the new kernel of one that runs is the agent's until it ends (held as it
    // is, never planned for).
    std::set<std::string> partners;
    std::map<std::string, const v1::ObservedInstance*> old_of;  // new kernel -> the one it replaces
    for (const auto& [kernel, in] : seen) {
      const v1::MorphStatus& m = in.status().morph();
      if (MorphRunning(in.status()) && m.old_kernel() == kernel && seen.count(m.new_kernel())) {
        partners.insert(m.new_kernel());
        old_of[m.new_kernel()] = &in;
      }
    }
    // After a live update "<R>-next" serves R (the one after goes back to the name R).
    for (const auto& [kernel, in] : seen) {
      if (!absl::EndsWith(kernel, kNextSuffix) || partners.count(kernel)) continue;
      std::string base = kernel.substr(0, kernel.size() - kNextSuffix.size());
      bool known = kis.count(base) > 0 || !planner::SetOfMember(base, name, sets).empty();
      if (known && (!seen.count(base) || partners.count(base))) morphed[base] = kernel;
    }
    for (const auto& [kernel, in] : seen) {
      if (partners.count(kernel)) {
        if (!deleting && in.status().placement().cpus_size() > 0) {
          v1::Placement p = in.status().placement();
          p.set_host(name);
          // The devices it is to take over are reported with it while the old kernel still
          // holds them: they stay the old one's (its request keeps its placement).
          if (auto o = old_of.find(kernel); o != old_of.end()) {
            std::set<std::string> held;
            for (const v1::PlacedDevice& d : o->second->status().placement().devices()) held.insert(d.pci());
            auto* devices = p.mutable_devices();
            devices->erase(std::remove_if(devices->begin(), devices->end(),
                                          [&](const v1::PlacedDevice& d) { return held.count(d.pci()) > 0; }),
                           devices->end());
          }
          input.fixed[absl::StrCat("morph/", name, "/", kernel)] = std::move(p);
        }
        continue;
      }
      if (in.owner().empty() && !OursByName(kernel, h, kis, sets)) {
        // No object owns it: reported, its resources held, never touched.
        v1::KernelRef ref;
        ref.set_name(kernel);
        ref.set_kernel_state(in.status().kernel_state());
        *ref.mutable_placement() = in.status().placement();
        ref.mutable_placement()->set_host(name);
        out.unmanaged[name].push_back(ref);
        if (!deleting) input.fixed[absl::StrCat("unmanaged/", name, "/", kernel)] = ref.placement();
        continue;
      }
      managed[name].push_back(&in);
      if (deleting) continue;
      // After a takeover X-standby (role primary) serves X, and X (role standby) serves
      // X-standby: each request's current placement is that of the kernel serving it.
      std::string request = kernel;
      if (absl::EndsWith(kernel, kNextSuffix)) {
        std::string base = kernel.substr(0, kernel.size() - kNextSuffix.size());
        if (auto m = morphed.find(base); m != morphed.end() && m->second == kernel) request = base;
      }
      // A kernel of an earlier incarnation of the name (deleted, then applied again while
      // this host was out of touch) is not the new object's: it is deleted, never kept, and
      // its roles say nothing of the new object's kernels (a takeover of the old one does not
      // swap the new one's names: sim seed 11139).
      const bool earlier = FromAnEarlierIncarnation(in.owner(), kis);
      if (!earlier && absl::EndsWith(kernel, kStandbySuffix) && in.status().role() == "primary") {
        std::string base = kernel.substr(0, kernel.size() - kStandbySuffix.size());
        // The primary it took over from: "<base>", or "<base>-next" after a live update.
        auto b = seen.find(morphed.count(base) ? morphed.at(base) : base);
        if (b != seen.end() && b->second.status().role() == "standby") {
          request = base;
          swapped.insert(base);
        }
      } else if (!earlier && in.status().role() == "standby") {
        std::string logical = request;
        auto s = seen.find(logical + kStandbySuffix);
        if (s != seen.end() && s->second.status().role() == "primary") request = logical + kStandbySuffix;
      }
      // A running kernel that differs from a spec with update strategy Morph: its live
      // update needs a surge (placed like a warm standby, on its NUMA nodes), unless the
      // same revision rolled back (held until the spec changes or `mkapply morph prepare`).
      const v1::KernelInstanceSpec* spec = nullptr;
      if (auto ki = kis.find(request); ki != kis.end()) {
        spec = &ki->second->spec();
      } else if (std::string set = planner::SetOfMember(request, name, sets); !set.empty()) {
        spec = member_spec(request, *sets_by_name.at(set));
      }
      if (!earlier && !deleting && spec != nullptr && spec->update().strategy() == v1::UPDATE_MORPH &&
          in.status().role() == "primary" && absl::EndsWith(kernel, kStandbySuffix)) {
        // Served by its warm standby after a takeover: the kernels' names are taken.
        morph_blocked[request] = absl::StrCat("MorphBlocked: ", request, " is served by its standby ", kernel,
                                              " after a takeover; a live update waits until it is re-created");
      } else if (!earlier && !deleting && spec != nullptr && spec->update().strategy() == v1::UPDATE_MORPH &&
                 spec->phase() == v1::PHASE_RUNNING &&
          in.status().kernel_state() == v1::KERNEL_STATE_ACTIVE && !MorphRunning(in.status()) &&
          !SameKernel(*spec, in.status().provenance())) {
        const v1::MorphStatus& last = in.status().morph();
        const std::string revision = KernelRevision(spec->kernel(), spec->rootfs().image());
        if (last.phase() == v1::MORPH_ROLLED_BACK && last.revision() == revision && !morph_retry.count(request)) {
          morph_blocked[request] = absl::StrCat("MorphHeld: the live update to revision ", revision, " rolled back (",
                                                last.reason(), "); change the spec, or run `mkapply morph prepare "
                                                "instance ", request, "` to try it again");
        } else {
          planner::InstanceRequest surge;
          surge.name = kSurgePrefix + request;
          surge.standby_for = request;
          const v1::MorphSurge& want = spec->update().morph().surge();
          surge.resources.set_cpus(want.cpus() > 0 ? want.cpus() : 1);
          surge.resources.set_memory(want.memory() > 0 ? want.memory() : 512ull << 20);
          surge.resources.set_smt(spec->resources().smt());
          for (uint32_t n : in.status().placement().numa_nodes()) surge.resources.add_numa_nodes(n);
          input.after.push_back(std::move(surge));
          surges.insert(request);
        }
      }
      // Seen on two hosts (its spec moved it; the old kernel is not deleted yet): the
      // kernel on the host the spec names is the current one (sim seed 27, sharded).
      auto at = input.current.lower_bound(request);  // (one lookup for the test and the insert)
      const bool seen_elsewhere = at != input.current.end() && at->first == request;
      const bool other_is_current =
          seen_elsewhere && spec != nullptr && !spec->host().empty() && at->second.host() == spec->host();
      if (!earlier && !other_is_current && in.status().has_placement() && in.status().placement().cpus_size() > 0) {
        v1::Placement& p = seen_elsewhere ? at->second : input.current.emplace_hint(at, request, v1::Placement())->second;
        p = in.status().placement();
        p.set_host(name);
        if (in.reports_removable_memory()) {
          auto& removable = input.removable_memory[request];
          for (const v1::NodeBytes& r : in.removable_memory()) removable[r.node()].push_back(r.bytes());
        }
        // A member that is not up, or whose host is out of touch (nobody can see whether it
        // is), is the first to go when its set shrinks: never a healthy one in its place.
        if (in.status().kernel_state() != v1::KERNEL_STATE_ACTIVE || !v->second.connected) {
          input.removal_first.insert(request);
        }
      }
    }
    if (deleting) {
      if (v->second.connected && managed[name].empty()) out.drained.insert(name);
      continue;
    }
    input.hosts.push_back(*std::move(info));
    known.insert(name);
  }
  // Sent but not seen yet: where it was sent, on a host that still takes part.
  for (const auto& [request, p] : in_flight) {
    if (input.current.count(request) || !known.count(p.host())) continue;
    input.current[request] = p;
    input.removal_first.insert(request);
  }
  auto kernel_of = [&](const std::string& request, const std::string& standby_for) {
    if (auto m = morphed.find(request); standby_for.empty() && m != morphed.end()) return m->second;
    if (standby_for.empty()) return swapped.count(request) ? request + kStandbySuffix : request;
    if (!swapped.count(standby_for)) return request;
    auto m = morphed.find(standby_for);
    return m != morphed.end() ? m->second : standby_for;
  };
  // Sets that select a host still expected to connect keep exactly their members.
  for (const v1::InstanceSet& s : sets) {
    for (const v1::Host& h : hosts) {
      if (!settling.count(h.metadata().name())) continue;
      std::map<std::string, std::string> labels(h.metadata().labels().begin(), h.metadata().labels().end());
      if (planner::Matches(s.spec().host_selector(), labels)) out.frozen_sets.insert(s.metadata().name());
    }
  }
  input.frozen_sets = out.frozen_sets;
  input.frozen_sets.insert(keep_sets.begin(), keep_sets.end());
  input.hold_current = hold_current;

  // Instances fixed to a host that takes no part wait for it (they are not unschedulable).
  for (const v1::KernelInstance& ki : instances) {
    const std::string& host = ki.spec().host();
    if (!host.empty() && !known.count(host)) {
      auto why = unavailable.find(host);
      out.waiting[ki.metadata().name()] =
          why != unavailable.end() ? why->second : absl::StrCat("no Host named \"", host, "\"");
      continue;
    }
    input.instances.push_back(ki);
  }
  // After a takeover the kernel now standing by is the former primary: its request takes
  // the primary's size, so it is not shrunk (the kernel forbids taking back the memory
  // that holds its image); the new primary grows to the primary's size by hot-plug.
  // The new primary grows only where it stands (hot-plug on its NUMA nodes): a re-create
  // right after a takeover would take down what the takeover kept serving.
  for (v1::KernelInstance& ki : input.instances) {
    if (ki.spec().failover().policy() != v1::FAILOVER_STANDBY || !swapped.count(ki.metadata().name())) continue;
    v1::StandbySpec* standby = ki.mutable_spec()->mutable_failover()->mutable_standby();
    standby->set_cpus(ki.spec().resources().cpus());
    standby->set_memory(ki.spec().resources().memory());
    auto serving = input.current.find(ki.metadata().name());
    if (serving != input.current.end() && serving->second.numa_nodes_size() > 0) {
      v1::Resources* r = ki.mutable_spec()->mutable_resources();
      r->clear_numa_nodes();
      for (uint32_t n : serving->second.numa_nodes()) r->add_numa_nodes(n);
      if (r->placement() == v1::PLACEMENT_NEAR_DEVICES) r->set_placement(v1::PLACEMENT_COMPACT);
    }
  }
  // A KernelInstance planned before whose kernel no host shows now (removed outside mkfleet,
  // lost with its host's kernel): where it ran goes back to it before anything new is
  // placed (sim seed 700037: a pending instance took the room of one removed out of band).
  if (!previous.empty()) {
    for (const v1::KernelInstance& ki : input.instances) {
      const std::string& name = ki.metadata().name();
      auto p = previous.find(name);
      if (p != previous.end() && !input.current.count(name)) input.previous.emplace(name, p->second);
    }
  }
  planner::FleetPlacement placed = planner::PlaceFleet(input);
  // The surges: placed, or why not (they are not instances: never reported unschedulable).
  std::map<std::string, v1::Placement> surge_at;
  for (const std::string& request : surges) {
    auto p = placed.placements.find(kSurgePrefix + request);
    if (p != placed.placements.end()) {
      surge_at[request] = p->second;
      placed.placements.erase(p);
    }
  }
  for (auto it = placed.unschedulable.begin(); it != placed.unschedulable.end();) {
    if (!absl::StartsWith(it->name, kSurgePrefix)) {
      ++it;
      continue;
    }
    morph_blocked[it->name.substr(kSurgePrefix.size())] =
        absl::StrCat("MorphNoSurge: no room for the new kernel beside it: ", it->reason);
    it = placed.unschedulable.erase(it);
  }
  // An instance that may yet go to a host still connecting is not unschedulable yet: it
  // waits for that host.
  for (const planner::Unschedulable& u : placed.unschedulable) {
    auto ki = kis.find(u.name);
    std::vector<std::string> maybe;
    if (ki != kis.end() && ki->second->spec().host().empty()) {
      for (const v1::Host& h : hosts) {
        std::map<std::string, std::string> labels(h.metadata().labels().begin(), h.metadata().labels().end());
        if (settling.count(h.metadata().name()) && planner::Matches(ki->second->spec().host_selector(), labels)) {
          maybe.push_back(h.metadata().name());
        }
      }
    }
    if (maybe.empty()) {
      out.unschedulable.push_back(u);
    } else {
      out.waiting[u.name] = absl::StrCat("waiting for host ", absl::StrJoin(maybe, ", "), " to connect (", u.reason, ")");
    }
  }
  out.infeasible = std::move(placed.infeasible);

  // What each request runs: its instance's spec, its primary's (standby), or its set's template.
  std::map<std::string, const v1::InstanceSet*> set_by_name;
  for (const v1::InstanceSet& s : sets) set_by_name[s.metadata().name()] = &s;
  std::map<std::string, std::vector<DesiredInstance>> desired;
  std::map<const v1::KernelInstanceSpec*, std::string> revisions;
  for (const planner::InstanceRequest& r : placed.requests) {
    if (absl::StartsWith(r.name, kSurgePrefix)) continue;
    auto p = placed.placements.find(r.name);
    if (p == placed.placements.end()) continue;
    PlannedInstance planned;
    auto member = placed.member_of.find(r.name);
    if (member != placed.member_of.end()) {
      const v1::InstanceSet& s = *set_by_name.at(member->second);
      planned.spec = member_spec(r.name, s);
      planned.generation = s.metadata().generation();
      planned.owner = "InstanceSet/" + s.metadata().name();
      planned.recorded_owner = planned.owner;
    } else {
      auto ki = kis.find(r.standby_for.empty() ? r.name : r.standby_for);
      if (ki == kis.end()) continue;
      planned.spec = &ki->second->spec();
      planned.generation = ki->second->metadata().generation();
      planned.recorded_owner = KernelInstanceOwner(*ki->second);
    }
    planned.host = p->second.host();
    planned.kernel = kernel_of(r.name, r.standby_for);
    planned.standby_for = r.standby_for;
    DesiredInstance d;
    d.name = planned.kernel;
    d.owner = planned.recorded_owner;
    d.generation = planned.generation;
    d.spec_of = planned.spec;  // into the inputs, and into `placed` (alive until the plans are made)
    d.placement_of = &p->second;
    auto revision = revisions.find(planned.spec);  // a set's members share one spec
    if (revision == revisions.end()) {
      revision = revisions.emplace(planned.spec, KernelRevision(planned.spec->kernel(), planned.spec->rootfs().image())).first;
    }
    d.revision = revision->second;
    if (r.standby_for.empty()) {
      if (auto surge = surge_at.find(r.name); surge != surge_at.end()) {
        d.morph_surge = surge->second;
        d.morph_next = planned.kernel == r.name ? r.name + kNextSuffix : r.name;
      }
      if (auto why = morph_blocked.find(r.name); why != morph_blocked.end()) d.morph_blocked = why->second;
    }
    desired[planned.host].push_back(std::move(d));
    out.planned[r.name] = std::move(planned);
  }
  for (const auto& [name, p] : out.planned) out.planned_on[p.host].push_back(name);
  for (const std::string& host : reachable) {
    out.hosts[host] = ComputePlanFor(host, desired[host], managed[host], views.at(host).state_version);
  }
  out.placements = std::move(placed.placements);  // (after the plans: `desired` points into it)
  LimitRollouts(sets, managed, &out);
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
