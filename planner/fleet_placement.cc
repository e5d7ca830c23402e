#include "planner/fleet_placement.h"

#include <algorithm>
#include <numeric>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "kernel/memory_regions.h"
#include "proto/int_or_percent.h"
#include "manifests/units.h"

namespace mkfleet::planner {
namespace {

namespace v1 = mkfleet::v1;

std::string SelectorText(const v1::LabelSelector& s) {
  if (s.match_labels().empty()) return "{}";
  std::map<std::string, std::string> sorted(s.match_labels().begin(), s.match_labels().end());
  std::vector<std::string> parts;
  for (const auto& [k, v] : sorted) parts.push_back(absl::StrCat(k, "=", v));
  return absl::StrCat("{", absl::StrJoin(parts, ","), "}");
}

std::string MemberName(const std::string& set, const std::string& host, int n) {
  return absl::StrCat(set, "-", host, "-", n);
}

// The member number of `member` = <set>-<host>-<n>, or -1.
int MemberNumber(const std::string& member, const std::string& set, const std::string& host) {
  std::string prefix = absl::StrCat(set, "-", host, "-");
  int n = -1;
  if (!absl::StartsWith(member, prefix) || !absl::SimpleAtoi(member.substr(prefix.size()), &n) || n < 0) return -1;
  return MemberName(set, host, n) == member ? n : -1;
}

// The set's requests: members that stay (existing ones, perHost ones) and how many more
// replicas it needs.
struct SetPlan {
  const v1::InstanceSet* set = nullptr;
  std::vector<InstanceRequest> members;
  uint32_t missing = 0;
  uint32_t draining = 0;  // members on draining hosts, to replace
};

class FleetPlacer {
 public:
  explicit FleetPlacer(const FleetInput& in) : in_(in), engine_(in.hosts) {
    for (const HostInfo& h : in.hosts) host_[h.name] = &h;
  }

  FleetPlacement Run() {
    // Kernels held as they are come first: nothing may be placed on them.
    for (const auto& [name, p] : in_.fixed) {
      std::string why;
      engine_.Hold(name, p, &why);  // a conflict there is the kernel's own: it is reported as is
    }
    std::vector<InstanceRequest> requests = BuildRequests(in_.instances);
    std::vector<SetPlan> sets;
    size_t members = 0;
    for (const v1::InstanceSet& s : in_.sets) {
      sets.push_back(ExpandSet(s));
      members += sets.back().members.size();
    }
    requests.reserve(requests.size() + members);
    engine_.Reserve(requests.capacity() + in_.fixed.size() + in_.after.size());
    for (const SetPlan& sp : sets) {
      for (const InstanceRequest& r : sp.members) {
        out_.member_of.insert_or_assign(out_.member_of.end(), r.name, sp.set->metadata().name());
        requests.push_back(r);
      }
    }
    PlaceRequests(requests);
    out_.requests = std::move(requests);  // (AddReplicas adds its own after them)
    for (SetPlan& sp : sets) AddReplicas(sp);
    if (!in_.after.empty()) {
      PlaceRequests(in_.after);
      out_.requests.insert(out_.requests.end(), in_.after.begin(), in_.after.end());
    }
    std::sort(out_.unschedulable.begin(), out_.unschedulable.end(),
              [](const Unschedulable& a, const Unschedulable& b) { return a.name < b.name; });
    return std::move(out_);
  }

 private:
  std::vector<const HostInfo*> Selected(const v1::InstanceSet& s) const {
    std::vector<const HostInfo*> out;
    for (const HostInfo& h : in_.hosts) {
      if (Matches(s.spec().host_selector(), h.labels)) out.push_back(&h);
    }
    std::sort(out.begin(), out.end(), [](auto* a, auto* b) { return a->name < b->name; });
    return out;
  }

  std::string DomainOf(const v1::InstanceSet& s, const HostInfo* h) const {
    if (s.spec().spread_by().empty()) return "";
    auto it = h->labels.find(s.spec().spread_by());
    return it == h->labels.end() ? "" : it->second;
  }

  InstanceRequest Member(const v1::InstanceSet& s, const std::string& host, int n) const {
    InstanceRequest r;
    r.name = MemberName(s.metadata().name(), host, n);
    r.host = host;
    auto held = in_.member_resources.find(r.name);
    auto set = in_.set_resources.find(s.metadata().name());
    r.resources = held != in_.member_resources.end() ? held->second
                  : set != in_.set_resources.end()   ? set->second
                                                     : s.spec().template_().spec().resources();
    return r;
  }

  SetPlan ExpandSet(const v1::InstanceSet& s) {
    SetPlan sp;
    sp.set = &s;
    const std::string& set = s.metadata().name();
    std::vector<const HostInfo*> selected = Selected(s);
    // The members there are now, by host.
    std::map<const HostInfo*, std::vector<int>> existing;
    for (const auto& [name, p] : in_.current) {
      auto h = host_.find(p.host());
      if (h == host_.end() || !Matches(s.spec().host_selector(), h->second->labels)) continue;
      int n = MemberNumber(name, set, p.host());
      if (n >= 0) existing[h->second].push_back(n);
    }
    for (auto& [h, ns] : existing) std::sort(ns.begin(), ns.end());
    const bool frozen = in_.frozen_sets.count(set) > 0;
    if (s.spec().count_case() == v1::InstanceSetSpec::kPerHost) {
      // Cordoned hosts keep the members they have but get no new ones.
      for (const HostInfo* h : selected) {
        const std::vector<int>& have = existing[h];
        for (uint32_t n = 0; n < s.spec().per_host(); ++n) {
          bool exists = std::count(have.begin(), have.end(), static_cast<int>(n)) > 0;
          if (exists || (!h->cordoned && !frozen)) sp.members.push_back(Member(s, h->name, n));
        }
      }
      if (selected.empty() && s.spec().per_host() > 0) {
        out_.unschedulable.push_back(
            {set, absl::StrCat("InstanceSet selects no Host (hostSelector ", SelectorText(s.spec().host_selector()), ")")});
      }
      return sp;
    }
    struct Kept {
      const HostInfo* host;
      int n;
    };
    std::vector<Kept> kept;
    for (const HostInfo* h : selected) {
      for (int n : existing[h]) kept.push_back({h, n});
    }
    uint32_t replicas = s.spec().replicas();
    if (frozen) {
      replicas = static_cast<uint32_t>(kept.size());
    }
    auto up = [&](const Kept& k) { return !in_.removal_first.count(MemberName(set, k.host->name, k.n)); };
    // Draining hosts: a member that is not up goes at once; the others are replaced first.
    if (!frozen) {
      kept.erase(std::remove_if(kept.begin(), kept.end(), [&](const Kept& k) { return k.host->draining && !up(k); }),
                 kept.end());
    }
    const int64_t max_unavailable = ResolveIntOrPercent(s.spec().rollout().max_unavailable(), replicas, 1, 1);
    int64_t ready = std::count_if(kept.begin(), kept.end(), up);
    // Scale down: draining hosts' members first, then cordoned hosts', then the ones asked to go first, then from
    // the fullest spread domain and host, highest number first.
    while (kept.size() > replicas) {
      std::map<std::string, int> per_domain, per_host;
      for (const Kept& k : kept) {
        ++per_domain[DomainOf(s, k.host)];
        ++per_host[k.host->name];
      }
      auto worse = [&](const Kept& a, const Kept& b) {  // a goes before b
        auto key = [&](const Kept& k) {
          return std::make_tuple(k.host->draining ? 1 : 0, k.host->cordoned ? 1 : 0,
                                 in_.removal_first.count(MemberName(set, k.host->name, k.n)) ? 1 : 0,
                                 per_domain[DomainOf(s, k.host)], per_host[k.host->name], k.n);
        };
        return key(a) > key(b) || (key(a) == key(b) && a.host->name > b.host->name);
      };
      auto victim = std::min_element(kept.begin(), kept.end(), worse);
      if (up(*victim)) {
        // A draining host's member goes only within the set's budget of members down.
        if (victim->host->draining && ready - 1 < static_cast<int64_t>(replicas) - max_unavailable) break;
        --ready;
      }
      kept.erase(victim);
    }
    for (const Kept& k : kept) sp.members.push_back(Member(s, k.host->name, k.n));
    const int64_t draining = std::count_if(kept.begin(), kept.end(), [](const Kept& k) { return k.host->draining; });
    const int64_t total = static_cast<int64_t>(kept.size());
    sp.missing = static_cast<uint32_t>(std::max<int64_t>(0, static_cast<int64_t>(replicas) - total));
    sp.draining = static_cast<uint32_t>(draining);
    if (draining > 0 && !frozen) {
      // Replacements for the members on draining hosts, at most maxSurge beyond replicas.
      const int64_t surge = ResolveIntOrPercent(s.spec().rollout().max_surge(), replicas, 1, 1);
      const int64_t want = static_cast<int64_t>(replicas) - (total - draining);
      sp.missing = static_cast<uint32_t>(std::max<int64_t>(0, std::min(want, replicas + surge - total)));
    }
    return sp;
  }

  // Places `requests` (the caller adds them to out_.requests).
  void PlaceRequests(const std::vector<InstanceRequest>& requests) {
    // Current placements still valid and unchanged, by name.
    std::vector<const InstanceRequest*> changed, fresh;
    std::vector<const InstanceRequest*> by_name;
    by_name.reserve(requests.size());
    for (const InstanceRequest& r : requests) by_name.push_back(&r);
    std::sort(by_name.begin(), by_name.end(), [](auto* a, auto* b) { return a->name < b->name; });
    // Both in name order: `current` is walked once beside them (10,000 names at 1,000 hosts).
    auto cur = in_.current.begin();
    // Those that hold cores whole are kept after the others: a core whose other thread a
    // running instance uses (it got there by hand, or by a pool change) is then kept as
    // shared, whatever the names (kept first, it took the core whole and the other one was
    // moved: sim seed 40107).
    std::vector<std::pair<const InstanceRequest*, const v1::Placement*>> whole;
    auto keep = [&](const InstanceRequest* r, const v1::Placement& current) {
      if (engine_.Keep(*r, current)) {
        v1::Placement p = current;
        p.set_instance_id(r->id);
        out_.placements.insert_or_assign(r->name, std::move(p));
      } else {
        changed.push_back(r);
      }
    };
    for (const InstanceRequest* r : by_name) {
      while (cur != in_.current.end() && cur->first < r->name) ++cur;
      std::string unused;
      if (cur == in_.current.end() || cur->first != r->name) {
        fresh.push_back(r);
      } else if (in_.hold_current.count(r->name) && engine_.Hold(r->name, cur->second, &unused)) {
        out_.placements.insert_or_assign(out_.placements.end(), r->name, cur->second);
      } else if (r->resources.smt() == v1::SMT_WHOLE_CORE) {
        whole.emplace_back(r, &cur->second);
      } else {
        keep(r, cur->second);
      }
    }
    for (const auto& [r, current] : whole) keep(r, *current);
    // Changed ones first hold what they have, all of them: one changed instance never
    // takes what another one still runs on (a running instance's resources are released
    // only once its own new placement is secured).
    for (const InstanceRequest* r : changed) {
      std::string why;
      engine_.Hold(r->name, in_.current.at(r->name), &why);  // not held: placed afresh below
    }
    // Then each grows or shrinks in place (around its own resources); one that cannot
    // keeps what it holds.
    for (const InstanceRequest* r : changed) {
      const v1::Placement& cur = in_.current.at(r->name);
      const bool held = engine_.Holds(r->name);
      v1::Placement p;
      std::string why;
      if (engine_.Place(*r, &cur, &p, &why) && (!held || CanShrinkInPlace(r->name, cur, p, &why))) {
        out_.placements[r->name] = std::move(p);
      } else if (held) {
        std::string unused;
        engine_.Release(r->name);
        engine_.Hold(r->name, cur, &unused);  // what it had a moment ago: free again
        out_.placements[r->name] = cur;
        out_.infeasible[r->name] = why;
      } else {
        out_.unschedulable.push_back({r->name, why});
      }
    }
    // New ones: standbys after their primaries, those that ran before (`previous`) first,
    // larger first, then by name.
    auto size = [](const InstanceRequest* r) { return r->resources.cpus() + r->resources.cpu_set().ids_size(); };
    auto ran = [&](const InstanceRequest* r) { return in_.previous.count(r->name) > 0; };
    std::stable_sort(fresh.begin(), fresh.end(), [&](const InstanceRequest* a, const InstanceRequest* b) {
      bool sa = !a->standby_for.empty(), sb = !b->standby_for.empty();
      if (sa != sb) return sb;
      if (ran(a) != ran(b)) return ran(a);
      if (size(a) != size(b)) return size(a) > size(b);
      return a->name < b->name;
    });
    for (const InstanceRequest* r : fresh) {
      auto prev = in_.previous.find(r->name);
      auto prev_host = prev == in_.previous.end() ? host_.end() : host_.find(prev->second.host());
      if (prev_host != host_.end() && !prev_host->second->cordoned && engine_.Keep(*r, prev->second)) {
        v1::Placement p = prev->second;  // where it ran, free and still fitting
        p.set_instance_id(r->id);
        out_.placements[r->name] = std::move(p);
        continue;
      }
      v1::Placement p;
      std::string why;
      if (engine_.Place(*r, nullptr, &p, &why)) {
        out_.placements[r->name] = std::move(p);
      } else {
        out_.unschedulable.push_back({r->name, why});
      }
    }
  }

  // Whether hot-remove can take `cur` down to `p` on every NUMA node: only whole regions
  // added after creation come back (the first holds the kernel image).
  bool CanShrinkInPlace(const std::string& name, const v1::Placement& cur, const v1::Placement& p, std::string* why) {
    auto removable = in_.removable_memory.find(name);
    if (removable == in_.removable_memory.end()) return true;
    // Moved to another host, or a re-create anyway (the boot CPU goes, or CPUs land on a
    // NUMA node it was not created on): nothing is hot-removed.
    if (p.host() != cur.host()) return true;
    if (std::find(p.cpus().begin(), p.cpus().end(), cur.boot_cpu()) == p.cpus().end()) return true;
    for (uint32_t n : p.numa_nodes()) {
      if (std::find(cur.numa_nodes().begin(), cur.numa_nodes().end(), n) == cur.numa_nodes().end()) return true;
    }
    std::map<uint32_t, uint64_t> have, want;
    for (const auto& m : cur.memory()) have[m.node()] += m.bytes();
    for (const auto& m : p.memory()) want[m.node()] += m.bytes();
    for (const auto& [node, bytes] : have) {
      if (want[node] >= bytes) continue;
      auto sizes = removable->second.find(node);
      std::vector<uint64_t> none;
      const std::vector<uint64_t>& list = sizes == removable->second.end() ? none : sizes->second;
      if (kernel::PickWholeRegions(list, bytes - want[node])) continue;
      std::vector<std::string> parts;
      for (uint64_t b : list) parts.push_back(manifests::FormatBytes(b));
      *why = absl::StrCat("memory on NUMA node ", node, " cannot shrink from ", manifests::FormatBytes(bytes), " to ",
                          manifests::FormatBytes(want[node]), " in place: hot-remove gives back whole regions added after boot (",
                          list.empty() ? "none" : absl::StrJoin(parts, ", "),
                          "), never the first, which holds the kernel image; re-create the instance to shrink it");
      return false;
    }
    return true;
  }

  static std::string DrainNote(const SetPlan& sp) {
    if (sp.draining == 0) return "";
    return absl::StrCat("; ", sp.draining, " member", sp.draining == 1 ? "" : "s",
                        " on draining hosts stay until replaced");
  }

  void AddReplicas(SetPlan& sp) {
    if (sp.missing == 0) return;
    const v1::InstanceSet& s = *sp.set;
    const std::string& set = s.metadata().name();
    std::vector<const HostInfo*> open;
    for (const HostInfo* h : Selected(s)) {
      if (!h->cordoned) open.push_back(h);
    }
    if (open.empty()) {
      out_.unschedulable.push_back({set, absl::StrCat(sp.missing, " of ", s.spec().replicas(),
                                                      " replicas: InstanceSet selects no uncordoned Host "
                                                      "(hostSelector ", SelectorText(s.spec().host_selector()), ")",
                                                      DrainNote(sp))});
      return;
    }
    std::map<std::string, uint32_t> per_domain, per_host;
    std::map<std::string, std::set<int>> used;
    for (const InstanceRequest& m : sp.members) {
      ++per_host[m.host];
      ++per_domain[DomainOf(s, host_.at(m.host))];
      used[m.host].insert(MemberNumber(m.name, set, m.host));
    }
    // Candidates per spread domain, ordered by (members of the set there, name): the next
    // replica goes to the least used domain, then its least used host, then by name.
    using Entry = std::pair<uint32_t, std::string>;
    std::map<std::string, std::set<Entry>> candidates;
    for (const HostInfo* h : open) candidates[DomainOf(s, h)].insert({per_host[h->name], h->name});
    uint32_t placed = 0;
    std::vector<std::string> reasons;
    while (placed < sp.missing) {
      const std::string* domain = nullptr;
      for (const auto& [d, hosts] : candidates) {
        if (hosts.empty()) continue;
        if (domain == nullptr || per_domain[d] < per_domain[*domain] ||
            (per_domain[d] == per_domain[*domain] && *hosts.begin() < *candidates[*domain].begin())) {
          domain = &d;
        }
      }
      if (domain == nullptr) break;  // every host is full
      std::set<Entry>& hosts = candidates[*domain];
      Entry best = *hosts.begin();
      hosts.erase(hosts.begin());
      const std::string& h = best.second;
      int n = 0;
      while (used[h].count(n)) ++n;
      InstanceRequest r = Member(s, h, n);
      v1::Placement p;
      std::string why;
      if (!engine_.Place(r, nullptr, &p, &why)) {
        // Placing only takes resources away: this host will not fit another one either.
        if (reasons.size() < 3) reasons.push_back(why);
        continue;
      }
      out_.placements[r.name] = std::move(p);
      out_.member_of[r.name] = set;
      out_.requests.push_back(r);
      used[h].insert(n);
      ++per_domain[*domain];
      hosts.insert({++per_host[h], h});
      ++placed;
    }
    if (placed < sp.missing) {
      out_.unschedulable.push_back(
          {set, absl::StrCat(sp.missing - placed, " of ", s.spec().replicas(), " replicas fit on no host (",
                             open.size(), " tried)", reasons.empty() ? "" : ": ", absl::StrJoin(reasons, "; "),
                             DrainNote(sp))});
    }
  }

  const FleetInput& in_;
  PlacementEngine engine_;
  std::map<std::string, const HostInfo*> host_;
  FleetPlacement out_;
};

}  // namespace

std::string SetOfMember(const std::string& member, const std::string& host,
                        const std::vector<v1::InstanceSet>& sets) {
  // The longest set name that fits, should one set's name prefix another's.
  std::string best;
  for (const v1::InstanceSet& s : sets) {
    const std::string& name = s.metadata().name();
    if (name.size() > best.size() && MemberNumber(member, name, host) >= 0) best = name;
  }
  return best;
}

FleetPlacement PlaceFleet(const FleetInput& input) { return FleetPlacer(input).Run(); }

}  // namespace mkfleet::planner
