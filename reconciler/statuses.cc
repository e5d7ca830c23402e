#include "reconciler/statuses.h"

#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/morph_phase.h"
#include "reconciler/objects.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

v1::Condition Cond(const std::string& type, bool ok, const std::string& reason, const std::string& message) {
  v1::Condition c;
  c.set_type(type);
  c.set_status(ok ? v1::CONDITION_TRUE : v1::CONDITION_FALSE);
  c.set_reason(reason);
  c.set_message(message);
  return c;
}

std::string PhaseFor(v1::KernelState want) {
  return want == v1::KERNEL_STATE_ACTIVE ? "Running" : want == v1::KERNEL_STATE_LOADED ? "Loaded" : "Ready";
}

const v1::Condition* Find(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions, const std::string& type) {
  for (const v1::Condition& c : conditions) {
    if (c.type() == type) return &c;
  }
  return nullptr;
}

bool IsConverged(const v1::InstanceStatus& st) {
  const v1::Condition* ready = Find(st.conditions(), "Ready");
  return ready != nullptr && ready->status() == v1::CONDITION_TRUE;
}

void Stamp(google::protobuf::RepeatedPtrField<v1::Condition>* conditions, int64_t generation) {
  for (v1::Condition& c : *conditions) c.set_observed_generation(generation);
}

v1::SourceRef RefOf(const v1::ObjectMeta& meta) {
  v1::SourceRef ref;
  ref.set_source(meta.source());
  ref.set_commit(meta.source_commit());
  ref.set_path(meta.source_path());
  return ref;
}

class Builder {
 public:
  explicit Builder(const PassInputs& in) : in_(in) {
    for (const v1::KernelInstance& ki : in_.instances) source_of_["KernelInstance/" + ki.metadata().name()] = RefOf(ki.metadata());
    for (const v1::InstanceSet& s : in_.sets) source_of_["InstanceSet/" + s.metadata().name()] = RefOf(s.metadata());
  }

  StatusUpdate Run() {
    Instances();
    Hosts();
    if (in_.local) return std::move(out_);
    Sets();
    Policies();
    return std::move(out_);
  }

 private:
  // Records `m` at `key` if it changed; returns the previous value ("" if none), or null
  // when unchanged.
  const std::string* Put(const std::string& key, const google::protobuf::Message& m) {
    std::string value = m.SerializeAsString();
    const std::string* before = Current(key);
    if (before != nullptr && *before == value) return nullptr;
    out_.writes[key] = std::move(value);
    return before != nullptr ? before : &kEmpty;
  }
  // The value at `key` as this pass leaves it so far.
  const std::string* Current(const std::string& key) const {
    auto w = out_.writes.find(key);
    if (w != out_.writes.end()) return &w->second;
    auto p = in_.previous.find(key);
    return p != in_.previous.end() ? &p->second : nullptr;
  }

  v1::InstanceStatus InstanceStatus(const std::string& name, const PlannedInstance& p) {
    const v1::KernelState want = WantedKernelState(p.spec->phase());
    v1::InstanceStatus st;
    st.set_owner(p.owner);
    st.set_kernel(p.kernel);
    if (in_.member_revisions != nullptr) {
      auto r = in_.member_revisions->find(name);
      if (r != in_.member_revisions->end()) {
        st.set_rollout_owner(r->second.first);
        st.set_rollout_revision(r->second.second);
      }
    } else if (in_.local && !p.owner.empty()) {
      // A local pass changes no set member: it runs the revision recorded last.
      const std::string* before = Current(StatusKey("KernelInstance", name));
      v1::InstanceStatus old;
      if (before != nullptr && old.ParseFromString(*before)) {
        st.set_rollout_owner(old.rollout_owner());
        st.set_rollout_revision(old.rollout_revision());
      }
    }
    const std::string& host = p.host;
    *st.add_conditions() = Cond("Scheduled", true, "Placed", absl::StrCat("on ", host));
    const HostView& view = in_.views.at(host);
    auto outcome = in_.outcomes.find(host);
    static const HostOutcome kNone;
    const HostOutcome& o = outcome != in_.outcomes.end() ? outcome->second : kNone;
    auto observed = view.instances.find(p.kernel);
    std::string crash_loop;
    if (observed != view.instances.end()) {
      const v1::InstanceStatus& seen = observed->second.status();
      st.set_kernel_state(seen.kernel_state());
      *st.mutable_placement() = seen.placement();
      *st.mutable_provenance() = seen.provenance();
      st.set_restart_count(seen.restart_count());
      st.set_role(seen.role());
      if (seen.has_morph()) *st.mutable_morph() = seen.morph();
      st.set_revision(ServingRevision(seen));
      st.set_previous_revision(seen.previous_revision());
      const v1::Condition* degraded = Find(seen.conditions(), "Degraded");
      if (degraded != nullptr && degraded->status() == v1::CONDITION_TRUE) crash_loop = degraded->message();
    } else {
      st.set_kernel_state(v1::KERNEL_STATE_ABSENT);
      *st.mutable_placement() = in_.fleet.placements.at(name);
    }
    const bool acting = o.in_plan.count(p.kernel) > 0;
    // The plan still has something to do to it (sent or held back): not as the spec says.
    bool pending = false;
    auto host_plan = in_.fleet.hosts.find(host);
    if (host_plan != in_.fleet.hosts.end()) {
      for (const v1::Action& a : host_plan->second.actions) pending |= a.instance() == p.kernel;
    }
    // What holds it back: an update strategy not supported yet, the rollout budget.
    std::string blocked;
    auto plan = in_.fleet.hosts.find(host);
    if (plan != in_.fleet.hosts.end()) {
      auto note = plan->second.notes.find(p.kernel);
      if (note != plan->second.notes.end()) blocked = note->second;
    }
    auto deferred = in_.fleet.deferred.find(name);
    const bool waiting = deferred != in_.fleet.deferred.end();
    if (waiting) blocked = deferred->second;
    auto drift_held = in_.fleet.drift_held.find(name);
    const bool drifted = drift_held != in_.fleet.drift_held.end();
    if (drifted) blocked = drift_held->second;
    // A live update that cannot start (no surge room, a held revision) is progress withheld,
    // not a fault: Progressing=False with the reason.
    std::string morph_reason, morph_message;
    for (const char* kind : {"MorphNoSurge", "MorphHeld", "MorphBlocked"}) {
      if (absl::StartsWith(blocked, absl::StrCat(kind, ": "))) {
        morph_reason = kind == std::string("MorphHeld") ? "MorphRolledBack" : kind;
        morph_message = blocked.substr(strlen(kind) + 2);
      }
    }
    const v1::MorphPhase morph_phase = st.morph().phase();
    const bool morphing = MorphRunning(st);
    // Why it is not as wanted, most telling first.
    std::string degraded_reason, degraded_message;
    if (o.failed.count(p.kernel)) {
      degraded_reason = "ActionFailed";
      degraded_message = o.failed.at(p.kernel);
    } else if (o.held_back.count(p.kernel)) {
      degraded_reason = "ActionFailed";
      degraded_message = o.held_back.at(p.kernel);
    } else if (st.kernel_state() == v1::KERNEL_STATE_FAILED) {
      degraded_reason = "KernelFailed";
      degraded_message = "the kernel reports the instance failed (a halt could not quiesce it)";
    } else if (!crash_loop.empty()) {
      degraded_reason = "CrashLoop";
      degraded_message = crash_loop;
    } else if (!o.sent.ok() && acting) {
      degraded_reason = "HostError";
      degraded_message = std::string(o.sent.message());
    } else if (!blocked.empty() && !waiting && !drifted && morph_reason.empty()) {
      degraded_reason = "UpdateNotSupported";
      degraded_message = blocked;
    }
    const bool connected = view.connected;
    // A live update that runs, or a kernel other than the spec's, is not there yet.
    const bool converged = connected && !acting && !pending && st.kernel_state() == want && blocked.empty() &&
                           !morphing && (observed == view.instances.end() || SameKernel(*p.spec, st.provenance()));
    const bool failed = degraded_reason == "ActionFailed" || degraded_reason == "KernelFailed" ||
                        degraded_reason == "CrashLoop";
    st.set_phase(failed && !converged ? "Failed" : converged ? PhaseFor(want) : "Creating");
    std::string reason, message;
    if (converged) {
      reason = "Converged";
    } else if (!connected) {
      reason = "HostUnreachable";
      message = absl::StrCat("host ", host, ": ", view.error);
    } else if (waiting) {
      reason = "RolloutWaiting";
      message = blocked;
    } else if (drifted) {
      reason = "Drifted";
      message = blocked;
    } else if (!degraded_reason.empty()) {
      reason = degraded_reason == "UpdateNotSupported" ? "UpdateBlocked" : degraded_reason;
      message = degraded_message;
    } else if (morphing) {
      reason = "Morphing";
      message = absl::StrCat("live update ", MorphPhaseName(morph_phase), "; the old kernel serves until the commit");
    } else if (!morph_reason.empty()) {
      reason = morph_reason;
      message = absl::StrCat("serving the previous kernel (revision ", st.revision(), "); ", morph_message);
    } else {
      reason = "Converging";
      message = absl::StrCat("kernel state ", v1::KernelState_Name(st.kernel_state()), ", want ",
                             v1::KernelState_Name(want));
    }
    *st.add_conditions() = Cond("Ready", converged, reason, message);
    if (morphing) {
      *st.add_conditions() = Cond("Progressing", true, absl::StrCat("Morph", MorphPhaseName(morph_phase)),
                                  absl::StrCat("live update to revision ", st.morph().revision(), " (", st.morph().new_kernel(),
                                               " beside ", st.morph().old_kernel(), ")",
                                               st.morph().manual() && morph_phase == v1::MORPH_VALIDATING
                                                   ? ": validated, waiting for `mkapply morph commit`"
                                                   : ""));
    } else if (!morph_reason.empty()) {
      *st.add_conditions() = Cond("Progressing", false, morph_reason, morph_message);
    } else {
      *st.add_conditions() =
          Cond("Progressing", acting || waiting, acting ? "ActionsSent" : waiting ? "RollingOut" : "Idle", "");
    }
    if (!degraded_reason.empty()) *st.add_conditions() = Cond("Degraded", true, degraded_reason, degraded_message);
    if (drifted) *st.add_conditions() = Cond("Drifted", true, "DriftReported", blocked);
    auto infeasible = in_.fleet.infeasible.find(name);
    if (infeasible != in_.fleet.infeasible.end()) {
      // Like Kubernetes' in-place resize: it keeps running as it is.
      *st.add_conditions() = Cond("Resized", false, "Infeasible",
                                  absl::StrCat("kept on its current placement: ", infeasible->second));
    }
    if (converged || infeasible != in_.fleet.infeasible.end()) st.set_observed_generation(p.generation);
    return st;
  }

  void Record(const std::string& name, const std::string& host, v1::InstanceStatus st, int64_t generation) {
    Stamp(st.mutable_conditions(), generation);
    // A set member's spec comes from its set.
    auto from = source_of_.find(st.owner().empty() ? "KernelInstance/" + name : st.owner());
    if (from != source_of_.end()) *st.mutable_applied_from() = from->second;
    const std::string* before = Put(StatusKey("KernelInstance", name), st);
    if (before == nullptr) return;
    v1::InstanceStatus old;
    old.ParseFromString(*before);
    const v1::Condition& scheduled = st.conditions(0);
    if (scheduled.status() == v1::CONDITION_FALSE) {
      if (old.conditions_size() == 0 || old.conditions(0).message() != scheduled.message()) {
        out_.events.push_back(MakeEvent("KernelInstance", name, host, true, scheduled.reason(), scheduled.message()));
      }
      return;
    }
    if (IsConverged(st) && st.observed_generation() == generation &&
        !(IsConverged(old) && old.observed_generation() == generation && old.phase() == st.phase())) {
      out_.events.push_back(MakeEvent("KernelInstance", name, host, false, "Ready", absl::StrCat(st.phase(), " on ", host)));
    }
    const v1::Condition* resized = Find(st.conditions(), "Resized");
    const v1::Condition* was = Find(old.conditions(), "Resized");
    if (resized != nullptr && (was == nullptr || was->message() != resized->message())) {
      out_.events.push_back(MakeEvent("KernelInstance", name, host, true, "ResizeInfeasible", resized->message()));
    }
  }

  void Instances() {
    std::map<std::string, std::string> unschedulable;
    for (const auto& u : in_.fleet.unschedulable) unschedulable[u.name] = u.reason;
    for (const v1::KernelInstance& ki : in_.instances) {
      const std::string& name = ki.metadata().name();
      keep_.insert(StatusKey("KernelInstance", name));
      auto u = unschedulable.find(name);
      auto w = in_.fleet.waiting.find(name);
      if (u == unschedulable.end() && w == in_.fleet.waiting.end()) continue;
      v1::InstanceStatus st;
      st.set_phase("Pending");
      *st.add_conditions() = u != unschedulable.end()
                                 ? Cond("Scheduled", false, "Unschedulable", u->second)
                                 : Cond("Scheduled", false, "HostNotAvailable", w->second);
      Record(name, ki.spec().host(), st, ki.metadata().generation());
    }
    for (const auto& [name, p] : in_.fleet.planned) {
      if (!p.standby_for.empty()) continue;
      keep_.insert(StatusKey("KernelInstance", name));
      if (!in_.batch.count(p.host) || p.spec == nullptr) continue;
      Record(name, p.host, InstanceStatus(name, p), p.generation);
    }
    // Set members neither planned nor running anywhere are gone; so are the statuses of
    // deleted KernelInstances.
    if (in_.local) return;
    std::set<std::string> running;
    for (const auto& [h, v] : in_.views) {
      for (const auto& [k, ob] : v.instances) running.insert(k);
    }
    const std::string prefix = StatusKey("KernelInstance", "");
    for (const auto& [key, value] : in_.previous) {
      if (!absl::StartsWith(key, prefix) || keep_.count(key)) continue;
      if (running.count(key.substr(prefix.size()))) continue;
      out_.deletes.push_back(key);
    }
  }

  void Hosts() {
    for (const v1::Host& h : in_.hosts) {
      const std::string& name = h.metadata().name();
      if (!in_.batch.count(name)) continue;
      auto vi = in_.views.find(name);
      static const HostView kNoView;
      const HostView& v = vi != in_.views.end() ? vi->second : kNoView;
      v1::HostStatus st;
      *st.mutable_applied_from() = RefOf(h.metadata());
      st.set_reachable(v.connected);
      st.set_dialect(v.inventory.dialect());
      st.set_agent_version(v.inventory.agent_version());
      *st.mutable_pool() = v.pool;
      const bool deleting = h.metadata().deletion_unix_ms() != 0;
      st.set_phase(deleting ? "Terminating" : "Ready");
      auto unmanaged = in_.fleet.unmanaged.find(name);
      if (unmanaged != in_.fleet.unmanaged.end()) {
        for (const v1::KernelRef& k : unmanaged->second) *st.add_unmanaged() = k;
      }
      if (in_.drift != nullptr) {
        auto drift = in_.drift->find(name);
        if (drift != in_.drift->end()) {
          for (const v1::Drift& d : drift->second) *st.add_drift() = d;
        }
      }
      *st.add_conditions() = Cond("Reachable", v.connected,
                                  v.connected ? "Connected" : v.reachable ? "Connecting" : "Unreachable", v.error);
      auto problem = in_.fleet.host_problems.find(name);
      const std::string pool_problem = problem != in_.fleet.host_problems.end() ? problem->second : "";
      *st.add_conditions() =
          Cond("PoolValid", pool_problem.empty(), pool_problem.empty() ? "Valid" : "Invalid", pool_problem);
      if (v.connected && pool_problem.empty() && !deleting) {
        // Whether the agent lends the pool the spec asks for (a change is sent otherwise).
        bool synced = !in_.fleet.pool_changes.count(name);
        auto outcome = in_.outcomes.find(name);
        std::string note = outcome != in_.outcomes.end() ? outcome->second.pool_note : "";
        *st.add_conditions() = Cond("PoolSynced", synced, synced ? "Synced" : note.empty() ? "Changing" : "InUse",
                                    synced ? "" : note.empty() ? "a pool change was sent to the agent" : note);
      }
      if (v.connected && pool_problem.empty()) st.set_observed_generation(h.metadata().generation());
      Stamp(st.mutable_conditions(), h.metadata().generation());
      const std::string* before = Put(StatusKey("Host", name), st);
      if (before == nullptr) continue;
      v1::HostStatus old;
      old.ParseFromString(*before);
      if (old.reachable() != st.reachable() && !(before->empty() && !v.connected)) {
        out_.events.push_back(MakeEvent("Host", name, name, !v.connected, v.connected ? "Connected" : "Disconnected",
                                        v.connected ? absl::StrCat("agent ", st.agent_version(), ", dialect ", st.dialect())
                                                    : v.error));
      }
      // (New unmanaged kernels are events of the drift tracker: DriftDetected, field unmanaged.)
      if (deleting && !old.phase().empty() && old.phase() != "Terminating") {
        out_.events.push_back(MakeEvent("Host", name, name, false, "Terminating", "deleting its instances first"));
      }
    }
  }

  void Sets() {
    struct Count {
      uint32_t members = 0, ready = 0, updated = 0, failed = 0;
      std::string first_failure;  // "member: cause"
    };
    std::map<std::string, Count> counts;
    for (const auto& [name, p] : in_.fleet.planned) {
      if (p.owner.empty() || !p.standby_for.empty()) continue;
      Count& c = counts[p.owner.substr(p.owner.find('/') + 1)];
      ++c.members;
      // Only what a connected host shows counts (a down agent's members are not known).
      auto view = in_.views.find(p.host);
      if (view == in_.views.end() || !view->second.connected) continue;
      const std::string* value = Current(StatusKey("KernelInstance", name));
      if (value == nullptr) continue;
      v1::InstanceStatus st;
      st.ParseFromString(*value);
      if (st.phase() == "Failed") {
        ++c.failed;
        const v1::Condition* why = Find(st.conditions(), "Degraded");
        if (c.first_failure.empty()) c.first_failure = absl::StrCat(name, ": ", why != nullptr ? why->message() : "failed");
      }
      if (st.observed_generation() != p.generation) continue;
      ++c.updated;
      if (IsConverged(st)) ++c.ready;
    }
    for (const v1::InstanceSet& s : in_.sets) {
      const std::string& name = s.metadata().name();
      v1::InstanceSetStatus st;
      *st.mutable_applied_from() = RefOf(s.metadata());
      std::vector<std::string> problems;
      const std::string prefix = name + "-";
      for (const auto& u : in_.fleet.unschedulable) {
        if (u.name == name || absl::StartsWith(u.name, prefix)) problems.push_back(absl::StrCat(u.name, ": ", u.reason));
      }
      const Count& c = counts[name];
      // The count the spec asks for (perHost: the members it has on its hosts).
      uint32_t want = s.spec().count_case() == v1::InstanceSetSpec::kReplicas ? s.spec().replicas() : c.members;
      st.set_replicas(want);
      st.set_ready_replicas(c.ready);
      st.set_updated_replicas(c.updated);
      // The rollout: members updated are those running the newest revision; the set is not
      // Ready while one is under way, stopped or held.
      const v1::RolloutStatus* rollout = nullptr;
      if (in_.rollouts != nullptr) {
        auto r = in_.rollouts->find(name);
        if (r != in_.rollouts->end()) rollout = &r->second;
      }
      bool rolled = true;
      if (rollout != nullptr) {
        *st.mutable_rollout() = *rollout;
        st.set_current_revision(rollout->stable());
        st.set_update_revision(rollout->revision());
        uint32_t updated = 0;
        for (const v1::WaveStatus& w : rollout->waves()) {
          if (w.value() != "canary" || rollout->waves_size() == 1) updated += w.updated();
        }
        st.set_updated_replicas(std::min(updated, c.updated));
        // A rolled-back set serves its stable revision everywhere: Ready (its Progressing
        // condition says the newest revision failed and is held).
        rolled = rollout->phase() == "Complete" || rollout->phase() == "RolledBack";
      }
      bool frozen = in_.fleet.frozen_sets.count(name) > 0;
      bool all = problems.empty() && !frozen && c.members == want && c.ready == want && rolled;
      *st.add_conditions() = Cond("Scheduled", problems.empty(), problems.empty() ? "Placed" : "Unschedulable",
                                  absl::StrJoin(problems, "; "));
      *st.add_conditions() =
          Cond("Ready", all, all ? "AllReady" : frozen ? "HostsConnecting" : "Converging",
               absl::StrCat(c.ready, "/", want, " ready",
                            frozen ? "; waiting for every selected host to connect before changing members" : ""));
      if (rollout != nullptr && rollout->phase() != "Complete") {
        const std::string& phase = rollout->phase();
        const bool stopped = phase == "Failed" || phase == "RollingBack" || phase == "RolledBack";
        *st.add_conditions() =
            Cond("Progressing", !stopped, stopped ? "RolloutFailed" : phase == "Paused" ? "RolloutPaused" : "RollingOut",
                 absl::StrCat("revision ", rollout->revision(), ": ", rollout->message()));
      }
      if (c.failed > 0) {
        *st.add_conditions() = Cond("Degraded", true, "MembersFailed",
                                    absl::StrCat(c.failed, " failed; first ", c.first_failure));
      }
      if (all) st.set_observed_generation(s.metadata().generation());
      Stamp(st.mutable_conditions(), s.metadata().generation());
      const std::string* before = Put(StatusKey("InstanceSet", name), st);
      if (before != nullptr && all) {
        v1::InstanceSetStatus old;
        old.ParseFromString(*before);
        if (old.observed_generation() != s.metadata().generation()) {
          out_.events.push_back(MakeEvent("InstanceSet", name, "", false, "Ready",
                                          absl::StrCat(st.ready_replicas(), "/", st.replicas(), " ready")));
        }
      }
    }
  }

  void Policies() {
    if (in_.policies == nullptr || in_.policy_statuses == nullptr) return;
    for (const v1::RolloutPolicy& p : *in_.policies) {
      const std::string& name = p.metadata().name();
      auto computed = in_.policy_statuses->find(name);
      if (computed == in_.policy_statuses->end()) continue;
      v1::RolloutPolicyStatus st = computed->second;
      *st.mutable_applied_from() = RefOf(p.metadata());
      const v1::RolloutStatus& rollout = st.rollout();
      const std::string& phase = rollout.phase();
      // Ready once every instance runs the newest revision, or the stable one after a
      // rollback (Progressing then says the newest failed and is held).
      const bool ready = phase == "Complete" || phase == "RolledBack";
      *st.add_conditions() = Cond("Ready", ready, ready ? (phase == "Complete" ? "AllUpdated" : "RolledBack") : "RollingOut",
                                  absl::StrCat(st.members(), " instance(s); revision ",
                                               ready ? rollout.stable() : rollout.revision(), ": ", rollout.message()));
      if (phase != "Complete") {
        const bool stopped = phase == "Failed" || phase == "RollingBack" || phase == "RolledBack";
        *st.add_conditions() =
            Cond("Progressing", !stopped, stopped ? "RolloutFailed" : phase == "Paused" ? "RolloutPaused" : "RollingOut",
                 absl::StrCat("revision ", rollout.revision(), ": ", rollout.message()));
      }
      if (st.conflicts_size() > 0) {
        *st.add_conditions() = Cond("Conflict", true, "SelectedByAnother",
                                    absl::StrCat("another policy paces ", absl::StrJoin(st.conflicts(), ", ")));
      }
      if (ready) st.set_observed_generation(p.metadata().generation());
      Stamp(st.mutable_conditions(), p.metadata().generation());
      Put(StatusKey("RolloutPolicy", name), st);
    }
  }

  static const std::string kEmpty;
  const PassInputs& in_;
  StatusUpdate out_;
  std::map<std::string, v1::SourceRef> source_of_;  // "KernelInstance/x", "InstanceSet/s" -> where its spec came from
  std::set<std::string> keep_;  // status keys of instances that exist
};

const std::string Builder::kEmpty;

}  // namespace

v1::Event MakeEvent(const std::string& kind, const std::string& name, const std::string& host, bool warning,
                    const std::string& reason, const std::string& message) {
  v1::Event e;
  e.set_kind(kind);
  e.set_name(name);
  e.set_host(host);
  e.set_type(warning ? "Warning" : "Normal");
  e.set_reason(reason);
  e.set_message(message);
  return e;
}

StatusUpdate ComputeStatuses(const PassInputs& in) { return Builder(in).Run(); }

}  // namespace mkfleet::reconciler
