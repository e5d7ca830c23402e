#include "reconciler/drift.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"
#include "proto/morph_phase.h"
#include "reconciler/differ.h"
#include "reconciler/objects.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

namespace {

std::string StateName(v1::KernelState s) {
  switch (s) {
    case v1::KERNEL_STATE_ACTIVE:
      return "active";
    case v1::KERNEL_STATE_LOADED:
      return "loaded (halted)";
    case v1::KERNEL_STATE_READY:
      return "ready (no kernel)";
    case v1::KERNEL_STATE_EMPTY:
      return "empty";
    case v1::KERNEL_STATE_FAILED:
      return "failed";
    case v1::KERNEL_STATE_ABSENT:
      return "absent";
    default:
      return "unknown";
  }
}

std::string MemoryText(const google::protobuf::RepeatedPtrField<v1::NodeBytes>& memory) {
  std::map<uint32_t, uint64_t> by_node;
  uint64_t total = 0;
  for (const v1::NodeBytes& m : memory) {
    by_node[m.node()] += m.bytes();
    total += m.bytes();
  }
  std::vector<std::string> parts;
  for (const auto& [node, bytes] : by_node) parts.push_back(absl::StrCat("node", node, " ", manifests::FormatBytes(bytes)));
  return absl::StrCat(manifests::FormatBytes(total), by_node.size() > 1 ? absl::StrCat(" (", absl::StrJoin(parts, ", "), ")") : "");
}

std::string PoolText(const std::vector<uint32_t>& cpus, const google::protobuf::RepeatedPtrField<v1::NodeBytes>& memory,
                     std::vector<std::string> devices) {
  std::sort(devices.begin(), devices.end());
  return absl::StrCat("cpus ", cpus.empty() ? "-" : manifests::FormatCpuList(cpus), ", memory ", MemoryText(memory),
                      ", devices ", devices.empty() ? "-" : absl::StrJoin(devices, ","));
}

v1::Event DriftEvent(const std::string& object, const std::string& host, const std::string& type,
                     const std::string& reason, const std::string& message) {
  v1::Event e;
  size_t slash = object.find('/');
  e.set_kind(object.substr(0, slash));
  e.set_name(object.substr(slash + 1));
  e.set_host(host);
  e.set_type(type);
  e.set_reason(reason);
  e.set_message(message);
  return e;
}

std::string PolicyName(v1::DriftPolicy p) { return p == v1::DRIFT_REPORT ? "Report" : "Correct"; }

// Takes the actions `drop` picks out of `plan`.
template <typename Pred>
void EraseActions(Plan& plan, Pred drop) {
  plan.actions.erase(std::remove_if(plan.actions.begin(), plan.actions.end(), drop), plan.actions.end());
}

// Removes `kernel`'s actions (and what the plan says it would change) from `plan`.
void Withhold(Plan& plan, const std::string& kernel) {
  EraseActions(plan, [&](const v1::Action& a) { return a.instance() == kernel; });
  plan.changes.erase(kernel);
}

// DriftDetected's message: "cpus: wanted 2-3, found 2 (putting it back)".
std::string Detected(const std::string& field, const std::string& wanted, const std::string& found,
                     v1::DriftPolicy policy) {
  return absl::StrCat(field, ": wanted ", wanted, ", found ", found,
                      policy == v1::DRIFT_REPORT ? " (driftPolicy Report: left as found)" : " (putting it back)");
}

// Once nothing is left to do: put back by mkfleet, or as wanted again by other hands.
const char* Ended(bool corrected) { return corrected ? "DriftCorrected" : "DriftResolved"; }

}  // namespace

DriftValues DriftFields(const v1::InstanceStatus& observed) {
  DriftValues f;
  f[0] = StateName(observed.kernel_state());
  f[1] = manifests::FormatCpuList({observed.placement().cpus().begin(), observed.placement().cpus().end()});
  f[2] = MemoryText(observed.placement().memory());
  std::vector<std::string> devices;
  for (const v1::PlacedDevice& d : observed.placement().devices()) devices.push_back(d.pci());
  std::sort(devices.begin(), devices.end());
  f[3] = devices.empty() ? "-" : absl::StrJoin(devices, ",");
  const v1::Provenance& p = observed.provenance();
  f[4] = p.kernel_path().empty() ? "-"
                                 : absl::StrCat(p.kernel_path(), p.kernel_sha256().empty()
                                                                     ? ""
                                                                     : " sha256:" + p.kernel_sha256().substr(0, 12));
  f[5] = p.cmdline().empty() ? "\"\"" : absl::StrCat("\"", p.cmdline(), "\"");
  return f;
}

const std::string& DriftField(const DriftValues& values, absl::string_view field) {
  static const std::string kNone;
  for (size_t i = 0; i < values.size(); ++i) {
    if (field == kDriftFieldNames[i]) return values[i];
  }
  return kNone;
}

v1::DriftPolicy DriftTracker::PolicyOf(const v1::Host& host) const {
  return host.spec().drift_policy() == v1::DRIFT_POLICY_UNSPECIFIED ? default_ : host.spec().drift_policy();
}

DriftPass DriftTracker::Step(const std::set<std::string>& batch, const std::vector<v1::Host>& hosts,
                             const std::map<std::string, HostView>& views,
                             const std::map<std::string, std::string>& statuses, int64_t now_unix_ms,
                             FleetPlan* fleet) {
  DriftPass out;
  std::map<std::string, const v1::Host*> host_of;
  for (const v1::Host& h : hosts) host_of[h.metadata().name()] = &h;
  auto judged = [&](const std::string& host) {
    auto v = views.find(host);
    return batch.count(host) && host_of.count(host) && v != views.end() && v->second.connected &&
           fleet->hosts.count(host);
  };

  // ---- Instances.
  std::set<std::string> seen;
  // The batch's hosts' instances, in name order (not a scan of the whole fleet's).
  std::vector<const std::string*> names;
  for (const std::string& h : batch) {
    auto on = fleet->planned_on.find(h);
    if (on == fleet->planned_on.end() || !judged(h)) continue;
    for (const std::string& name : on->second) names.push_back(&name);
  }
  std::sort(names.begin(), names.end(), [](const std::string* a, const std::string* b) { return *a < *b; });
  for (const std::string* n : names) {
    const std::string& name = *n;
    const PlannedInstance& p = fleet->planned.at(name);
    if (!p.standby_for.empty() || !judged(p.host)) continue;
    seen.insert(name);
    const HostView& view = views.at(p.host);
    Plan& plan = fleet->hosts.at(p.host);
    const v1::Host& host = *host_of.at(p.host);
    const v1::DriftPolicy policy = PolicyOf(host);
    auto observed = view.instances.find(p.kernel);
    const bool present = observed != view.instances.end();
    // mkfleet's own business: a live update, or a kernel other than its own name (after a
    // takeover or an update) serving it.
    const bool own_change = p.kernel != name || (present && MorphRunning(observed->second.status()));
    if (own_change) {
      settled_.erase(name);
      drifted_.erase(name);
      continue;
    }
    bool pending = plan.changes.count(p.kernel) > 0;
    for (const v1::Action& a : plan.actions) pending |= a.instance() == p.kernel;
    const bool elsewhere = fleet->deferred.count(name) || fleet->infeasible.count(name);

    auto base = settled_.find(name);
    if (base == settled_.end() && present) {
      // After a restart: the stored status of a converged instance is the baseline.
      auto stored = statuses.find(StatusKey("KernelInstance", name));
      v1::InstanceStatus st;
      if (stored != statuses.end() && st.ParseFromString(stored->second) && st.phase() == "Running" &&
          st.observed_generation() == p.generation && st.placement().host() == p.host && st.kernel() == name) {
        base = settled_.emplace(name, Baseline{p.generation, p.host, p.kernel, p.recorded_owner, DriftFields(st)}).first;
      }
    }
    if (base != settled_.end() &&
        (base->second.generation != p.generation || base->second.host != p.host || base->second.owner != p.recorded_owner)) {
      settled_.erase(base);  // a new spec, a move, another incarnation: not drift
      drifted_.erase(name);
      base = settled_.end();
    }

    // What the host shows now (once per instance and pass), and what differs from the
    // baseline, field by field.
    DriftValues now;
    if (present) now = DriftFields(observed->second.status());
    std::vector<v1::Drift> items;
    if (base != settled_.end()) {
      const std::string object = "KernelInstance/" + name;
      auto item = [&](const std::string& field, const std::string& wanted, const std::string& found) {
        v1::Drift d;
        d.set_object(object);
        d.set_field(field);
        d.set_wanted(wanted);
        d.set_found(found);
        d.set_policy(PolicyName(policy));
        d.set_since_unix_ms(now_unix_ms);
        items.push_back(std::move(d));
      };
      if (!present) {
        item("instance", absl::StrCat(DriftField(base->second.fields, "state"), " on ", p.host), "missing");
      } else if (observed->second.status().kernel_state() != v1::KERNEL_STATE_FAILED) {  // a crash: failover's
        for (size_t i = 0; i < now.size(); ++i) {
          if (now[i] != base->second.fields[i]) item(kDriftFieldNames[i], base->second.fields[i], now[i]);
        }
      }
    }

    std::vector<v1::Drift>& known = drifted_[name];
    if (!items.empty() && pending) {
      // Drift, still to be put back (Correct) or left as found (Report). While mkfleet puts
      // it back, what it passes through (created, not started yet) is not news.
      const bool correcting = !known.empty() && policy == v1::DRIFT_CORRECT && known.front().policy() == "Correct";
      for (v1::Drift& d : items) {
        // Known since it was found (while correcting: whatever it passes through).
        auto old = std::find_if(known.begin(), known.end(), [&](const v1::Drift& k) {
          return k.field() == d.field() && (correcting || k.found() == d.found());
        });
        if (old != known.end()) {
          d.set_since_unix_ms(old->since_unix_ms());
          continue;
        }
        if (correcting) continue;
        out.events.push_back(
            DriftEvent(d.object(), p.host, "Warning", "DriftDetected", Detected(d.field(), d.wanted(), d.found(), policy)));
      }
      if (!correcting) known = items;  // (while correcting: what was found first, for DriftCorrected)
      if (policy == v1::DRIFT_REPORT) {
        Withhold(plan, p.kernel);
        std::vector<std::string> what;
        for (const v1::Drift& d : items) what.push_back(absl::StrCat(d.field(), " ", d.found(), " (wanted ", d.wanted(), ")"));
        fleet->drift_held[name] = absl::StrCat("changed outside mkfleet: ", absl::StrJoin(what, "; "),
                                               "; left as found (driftPolicy Report)");
      }
      for (const v1::Drift& d : items) out.by_host[p.host].push_back(d);
      continue;
    }
    if (!items.empty() && known.empty()) {
      // Changed outside mkfleet, yet as its spec wants: the new state is kept.
      for (const v1::Drift& d : items) {
        out.events.push_back(DriftEvent(d.object(), p.host, "Warning", "DriftDetected",
                                        absl::StrCat(d.field(), ": was ", d.wanted(), ", found ", d.found(),
                                                     " (still as its spec wants: kept)")));
      }
    }
    if (!known.empty()) {
      // Nothing left to do for it: put back, or as wanted again by other hands.
      std::vector<std::string> fields;
      for (const v1::Drift& d : known) {
        const std::string& value = DriftField(now, d.field() == "instance" ? "state" : d.field());
        fields.push_back(value.empty() ? d.field() : absl::StrCat(d.field(), " ", value));
      }
      const bool corrected = known.front().policy() == "Correct";
      out.events.push_back(DriftEvent(
          "KernelInstance/" + name, p.host, "Normal", Ended(corrected),
          absl::StrCat(corrected ? "put back: " : "as wanted again (not by mkfleet): ", absl::StrJoin(fields, "; "))));
    }
    drifted_.erase(name);
    if (pending || elsewhere || !present) {
      settled_.erase(name);  // mkfleet is changing it (or cannot yet): not a baseline
      continue;
    }
    if (observed->second.status().kernel_state() == WantedKernelState(p.spec->phase())) {
      settled_[name] = Baseline{p.generation, p.host, p.kernel, p.recorded_owner, std::move(now)};
    }
  }
  // Instances gone from the plan (deleted, unscheduled, their host out of the batch): only
  // those the batch covered lose their baseline.
  for (auto it = settled_.begin(); it != settled_.end();) {
    if (!seen.count(it->first) && batch.count(it->second.host)) {
      drifted_.erase(it->first);
      it = settled_.erase(it);
    } else {
      ++it;
    }
  }

  // ---- Pools and unmanaged kernels.
  for (const std::string& h : batch) {
    if (!judged(h)) continue;
    const v1::Host& host = *host_of.at(h);
    const HostView& view = views.at(h);
    Plan& plan = fleet->hosts.at(h);
    const v1::DriftPolicy policy = PolicyOf(host);
    auto change = fleet->pool_changes.find(h);
    auto settled = pool_settled_.find(h);
    if (change == fleet->pool_changes.end()) {
      if (pool_drift_.count(h)) {
        const bool corrected = pool_drift_[h].policy() == "Correct";
        out.events.push_back(DriftEvent("Host/" + h, h, "Normal", Ended(corrected),
                                        corrected ? "pool: put back" : "pool: as wanted again (not by mkfleet)"));
        pool_drift_.erase(h);
      }
      pool_settled_[h] = host.metadata().generation();
    } else if (settled != pool_settled_.end() && settled->second == host.metadata().generation()) {
      const v1::PoolChange& want = change->second.pool_change();
      v1::Drift d;
      d.set_object("Host/" + h);
      d.set_field("pool");
      d.set_wanted(PoolText({want.cpus().begin(), want.cpus().end()}, want.memory(),
                            {want.devices().begin(), want.devices().end()}));
      d.set_found(PoolText({view.pool.cpus().begin(), view.pool.cpus().end()}, view.pool.memory(),
                           {view.pool.devices().begin(), view.pool.devices().end()}));
      d.set_policy(PolicyName(policy));
      d.set_since_unix_ms(now_unix_ms);
      auto old = pool_drift_.find(h);
      if (old != pool_drift_.end() && old->second.found() == d.found()) {
        d.set_since_unix_ms(old->second.since_unix_ms());
      } else {
        out.events.push_back(
            DriftEvent("Host/" + h, h, "Warning", "DriftDetected", Detected("pool", d.wanted(), d.found(), policy)));
      }
      pool_drift_[h] = d;
      out.by_host[h].push_back(d);
      if (policy == v1::DRIFT_REPORT) EraseActions(plan, [](const v1::Action& a) { return a.has_pool_change(); });
    }

    std::map<std::string, int64_t>& known = unmanaged_[h];
    std::map<std::string, int64_t> now;
    const bool remove = host.spec().unmanaged() == v1::UNMANAGED_REMOVE;
    std::vector<v1::ObservedInstance> doomed;
    auto list = fleet->unmanaged.find(h);
    if (list != fleet->unmanaged.end()) {
      for (const v1::KernelRef& k : list->second) {
        auto since = known.find(k.name());
        now[k.name()] = since == known.end() ? now_unix_ms : since->second;
        v1::Drift d;
        d.set_object("Kernel/" + k.name());
        d.set_field("unmanaged");
        d.set_wanted("no kernel that no object owns");
        d.set_found(absl::StrCat(StateName(k.kernel_state()), ", cpus ",
                                 k.placement().cpus().empty()
                                     ? "-"
                                     : manifests::FormatCpuList({k.placement().cpus().begin(), k.placement().cpus().end()}),
                                 ", memory ", MemoryText(k.placement().memory()),
                                 k.owner().empty() ? "" : ", owner " + k.owner()));
        d.set_policy(remove ? "Remove" : "Keep");
        d.set_since_unix_ms(now[k.name()]);
        out.by_host[h].push_back(d);
        if (since == known.end()) {
          out.events.push_back(DriftEvent(d.object(), h, "Warning", "DriftDetected",
                                          absl::StrCat("unmanaged kernel on ", h, ": ", d.found(),
                                                       remove ? " (unmanaged: Remove: deleting it)"
                                                              : " (left alone; the Host's unmanaged: Remove deletes it)")));
        }
        auto o = view.instances.find(k.name());
        if (remove && o != view.instances.end()) doomed.push_back(o->second);
      }
    }
    for (const auto& [kernel, since] : known) {
      if (!now.count(kernel)) {
        out.events.push_back(DriftEvent("Kernel/" + kernel, h, "Normal", Ended(remove),
                                        remove ? "unmanaged kernel deleted" : "unmanaged kernel gone"));
      }
    }
    known = std::move(now);
    if (!doomed.empty()) {
      // Deleted as the differ deletes any kernel nothing wants (halt, unload, remove), before
      // the host's other actions so that what they free is free.
      Plan deletes = ComputePlan(h, {}, doomed, view.state_version);
      std::vector<v1::Action> actions = std::move(deletes.actions);
      for (v1::Action& a : plan.actions) actions.push_back(std::move(a));
      plan.actions = std::move(actions);
    }
  }
  for (auto it = unmanaged_.begin(); it != unmanaged_.end();) {
    it = host_of.count(it->first) ? std::next(it) : unmanaged_.erase(it);
  }
  return out;
}

}  // namespace mkfleet::reconciler
