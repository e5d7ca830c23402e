#include "reconciler/rollouts.h"

#include "proto/deterministic.h"

#include <algorithm>
#include <functional>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "common/fnv.h"
#include "common/status_macros.h"
#include "proto/morph_phase.h"
#include "planner/placement.h"
#include "reconciler/differ.h"
#include "reconciler/rollout.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

namespace {

std::string KernelOf(const v1::KernelInstanceSpec& spec) { return KernelRevision(spec.kernel(), spec.rootfs().image()); }
std::string KernelOf(const v1::InstanceTemplate& t) { return KernelOf(t.spec()); }

// "InstanceSet/web" -> ("InstanceSet", "web").
std::pair<std::string, std::string> Split(const std::string& key) {
  size_t slash = key.find('/');
  return {key.substr(0, slash), slash == std::string::npos ? "" : key.substr(slash + 1)};
}

v1::Event OwnerEvent(const std::string& key, bool warning, const std::string& reason, const std::string& message,
                     absl::Time now) {
  v1::Event e;
  auto [kind, name] = Split(key);
  e.set_kind(kind);
  e.set_name(name);
  e.set_type(warning ? "Warning" : "Normal");
  e.set_reason(reason);
  e.set_message(message);
  e.set_time_unix_ms(absl::ToUnixMillis(now));
  return e;
}

// The hex hash of a message's deterministic serialization.
std::string MessageHash(const google::protobuf::Message& m) {
  const uint64_t h = Fnv1a().Add(DeterministicBytes(m)).value();
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return std::string(hex, 10);
}

// Adds revision `hash` as the newest to `revisions` (oldest first), unless it is the newest
// already: one seen before (an undo) moves to the newest with a new number; the oldest go
// beyond `keep`, but never the stable revision (a rollback goes back to it). Returns the new
// revision, or null when `hash` is the newest.
template <typename Revision>
Revision* AddRevision(google::protobuf::RepeatedPtrField<Revision>* revisions, const std::string& hash,
                      uint32_t stable, uint32_t keep, const std::string& cause, absl::Time now) {
  if (!revisions->empty() && revisions->rbegin()->hash() == hash) return nullptr;
  uint32_t number = revisions->empty() ? 1 : revisions->rbegin()->number() + 1;
  for (int i = 0; i < revisions->size(); ++i) {
    if ((*revisions)[i].hash() == hash && (*revisions)[i].number() != stable) {
      revisions->DeleteSubrange(i, 1);
      break;
    }
  }
  Revision* r = revisions->Add();
  r->set_number(number);
  r->set_hash(hash);
  r->set_change_cause(cause);
  r->set_time_unix_ms(absl::ToUnixMillis(now));
  while (static_cast<uint32_t>(revisions->size()) > keep) {
    int drop = (*revisions)[0].number() == stable && revisions->size() > 1 ? 1 : 0;
    if (drop == revisions->size() - 1) break;
    revisions->DeleteSubrange(drop, 1);
  }
  return r;
}

// A member as the engine sees it, from the status of the kernel that serves it. `phase_of`:
// the phase of the newest revision with a KernelRevision (null: none): a member is up when in
// the state its own revision wants (one held at a Loaded revision is not down for the sake
// of a Running one it has not been let move to yet).
RolloutMember MemberOf(const std::string& name, const v1::InstanceStatus& st, v1::Phase target_phase,
                       const std::function<const v1::Phase*(const std::string&)>& phase_of) {
  RolloutMember m;
  m.name = name;
  m.kernel = ServingRevision(st);
  bool degraded = false;
  for (const v1::Condition& c : st.conditions()) {
    if (c.type() == "Degraded" && c.status() == v1::CONDITION_TRUE) {
      degraded = true;
      if (c.reason() == "CrashLoop") {
        m.failure = absl::StrCat("crash loop: ", c.message());
        m.failed_kernel = m.kernel;
      }
    }
  }
  if (st.morph().phase() == v1::MORPH_ROLLED_BACK) {
    m.failure = absl::StrCat("live update rolled back: ", st.morph().reason());
    m.failed_kernel = st.morph().revision();
  }
  const v1::Phase* own = m.kernel.empty() ? nullptr : phase_of(m.kernel);
  m.up = st.kernel_state() == WantedKernelState(own != nullptr ? *own : target_phase) && !degraded && !MorphRunning(st);
  return m;
}

// The value of host label `key` of `host` ("" without one).
std::string LabelOf(const std::map<std::string, const v1::Host*>& hosts, const std::string& host,
                    const std::string& key) {
  if (key.empty()) return "";
  auto h = hosts.find(host);
  if (h == hosts.end()) return "";
  auto l = h->second->metadata().labels().find(key);
  return l != h->second->metadata().labels().end() ? l->second : "";
}

// One member per logical name: the kernel the last pass said serves it (during and after a
// live update, "<name>-next" may), else the one named for it.
void AddServing(std::map<std::string, std::pair<std::string, const v1::ObservedInstance*>>* members,
                const std::string& host, const v1::ObservedInstance* in,
                const std::map<std::string, std::pair<std::string, std::string>>& serving) {
  std::string member = in->name();
  if (absl::EndsWith(member, kNextSuffix)) member.resize(member.size() - kNextSuffix.size());
  auto s = serving.find(member);
  bool serves = s != serving.end() ? s->second.second == in->name() : in->name() == member;
  auto [it, added] = members->try_emplace(std::move(member), host, in);
  if (!added && serves) it->second = {host, in};
}

}  // namespace

std::string TemplateHash(const v1::InstanceTemplate& t) { return MessageHash(t); }

absl::Status Rollouts::LoadLocked() {
  if (loaded_) return absl::OkStatus();
  auto kvs = store_.List(kRolloutPrefix);
  if (!kvs.ok()) return kvs.status();
  entries_.clear();
  for (const KeyValue& kv : *kvs) {
    Entry e;
    if (!e.record.ParseFromString(kv.value)) {
      return absl::DataLossError(absl::StrCat("store: ", kv.key, " is corrupt"));
    }
    entries_[kv.key.substr(sizeof(kRolloutPrefix) - 1)] = std::move(e);
  }
  loaded_ = true;
  return absl::OkStatus();
}

absl::Status Rollouts::SaveLocked(const std::string& key) {
  auto it = entries_.find(key);
  absl::StatusOr<int64_t> r = it == entries_.end() ? store_.Delete(kRolloutPrefix + key)
                                                   : store_.Put(kRolloutPrefix + key, it->second.record.SerializeAsString());
  if (!r.ok() && !absl::IsNotFound(r.status())) {
    loaded_ = false;  // read back what the store has at the next step
    return r.status();
  }
  return absl::OkStatus();
}

RolloutPass Rollouts::Step(const std::vector<v1::Host>& hosts, const std::vector<v1::InstanceSet>& sets,
                           const std::vector<v1::KernelInstance>& instances,
                           const std::vector<v1::RolloutPolicy>& policies, const std::map<std::string, HostView>& views,
                           const std::map<std::string, std::pair<std::string, std::string>>& serving,
                           int64_t objects_revision) {
  RolloutPass out;
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = LoadLocked(); !s.ok()) {
    // Without the records nothing is held back: the sets' templates and the instances' specs
    // apply as they are, as before rollouts existed. Said once per pass as a warning on each.
    for (const v1::InstanceSet& set : sets) {
      out.events.push_back(OwnerEvent("InstanceSet/" + set.metadata().name(), true, "RolloutStoreError",
                                      std::string(s.message()), now));
    }
    for (const v1::RolloutPolicy& policy : policies) {
      out.events.push_back(OwnerEvent("RolloutPolicy/" + policy.metadata().name(), true, "RolloutStoreError",
                                      std::string(s.message()), now));
    }
    return out;
  }
  std::set<std::string> live;
  StepSets(hosts, sets, views, serving, now, &live, &out);
  StepPolicies(hosts, instances, policies, views, serving, now, objects_revision, &live, &out);
  // Records of deleted sets and policies go.
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (live.count(it->first)) {
      ++it;
      continue;
    }
    std::string gone = it->first;
    it = entries_.erase(it);
    (void)SaveLocked(gone);
  }
  return out;
}

void Rollouts::StepSets(const std::vector<v1::Host>& hosts, const std::vector<v1::InstanceSet>& sets,
                        const std::map<std::string, HostView>& views,
                        const std::map<std::string, std::pair<std::string, std::string>>& serving, absl::Time now,
                        std::set<std::string>* live, RolloutPass* out) {
  std::map<std::string, const v1::Host*> host_by_name;
  for (const v1::Host& h : hosts) host_by_name[h.metadata().name()] = &h;
  // Members of each set as the hosts show them: the kernel that serves each.
  // (Found by the set's name as a view into the owner: no string made per member.)
  using Seen = std::vector<std::pair<std::string, const v1::ObservedInstance*>>;  // (host, in)
  std::map<std::string, Seen, std::less<>> seen;
  for (const auto& [host, view] : views) {
    for (const auto& [kernel, in] : view.instances) {
      absl::string_view set = in.owner();
      if (!absl::ConsumePrefix(&set, "InstanceSet/") || absl::EndsWith(kernel, kStandbySuffix)) continue;
      auto it = seen.find(set);
      if (it == seen.end()) it = seen.emplace(std::string(set), Seen()).first;
      it->second.emplace_back(host, &in);
    }
  }
  for (const v1::InstanceSet& set : sets) {
    const std::string& name = set.metadata().name();
    const std::string key = "InstanceSet/" + name;
    live->insert(key);
    Entry& e = entries_[key];
    v1::RolloutRecord& rec = e.record;
    bool dirty = false;
    const v1::InstanceTemplate& tmpl = set.spec().template_();
    const uint32_t keep =
        set.spec().has_revision_history_limit() ? set.spec().revision_history_limit() : kDefaultRevisionHistory;
    if (v1::TemplateRevision* r = AddRevision(rec.mutable_revisions(), TemplateHash(tmpl), rec.progress().stable(),
                                              keep, set.metadata().change_cause(), now)) {
      *r->mutable_template_() = tmpl;
      dirty = true;
    }
    RolloutView view;
    // Frozen while a host the set selects is not connected: its members are not known.
    for (const v1::Host& h : hosts) {
      std::map<std::string, std::string> labels(h.metadata().labels().begin(), h.metadata().labels().end());
      if (!planner::Matches(set.spec().host_selector(), labels)) continue;
      auto v = views.find(h.metadata().name());
      if (v == views.end() || !v->second.connected) view.frozen = true;
    }
    // Members let move that the last pass placed (the others are gone for good).
    view.placed.emplace();
    for (const auto& [member, mp] : rec.progress().members()) {
      if (serving.count(member)) view.placed->insert(member);
    }
    view.owner = key;
    view.policy = set.spec().rollout();
    view.morph = tmpl.spec().update().strategy() == v1::UPDATE_MORPH;
    view.target = rec.revisions().rbegin()->number();
    view.target_kernel = KernelOf(tmpl);
    view.now = now;
    for (const v1::TemplateRevision& r : rec.revisions()) {
      view.revision_of_kernel[KernelOf(r.template_())] = r.number();
      view.kernel_of_revision[r.number()] = KernelOf(r.template_());
    }
    std::map<std::string, std::pair<std::string, const v1::ObservedInstance*>> members;
    if (auto it = seen.find(name); it != seen.end()) {
      for (const auto& [host, in] : it->second) AddServing(&members, host, in, serving);
    }
    // Members the last pass placed that no host shows yet: being created.
    // ("<set>-<host>-<n>": compared in place, there are as many as members in the fleet)
    for (const auto& [member, where] : serving) {
      absl::string_view rest = member;
      if (absl::ConsumePrefix(&rest, name) && absl::ConsumePrefix(&rest, "-") && absl::ConsumePrefix(&rest, where.first) &&
          absl::StartsWith(rest, "-") && !members.count(member)) {
        view.creating.insert(member);
      }
    }
    // The phase a member is judged against: that of the revision it runs (the engine keeps a
    // member not let move at the stable revision when it runs that one's kernel, else at the
    // newest revision with its kernel).
    std::map<std::string, v1::Phase> phase_of_kernel;
    const uint32_t stable = StableFor(rec.progress(), view.target);
    for (const v1::TemplateRevision& r : rec.revisions()) phase_of_kernel[KernelOf(r.template_())] = r.template_().spec().phase();
    for (const v1::TemplateRevision& r : rec.revisions()) {
      if (r.number() == stable) phase_of_kernel[KernelOf(r.template_())] = r.template_().spec().phase();
    }
    auto phase_of = [&](const std::string& kernel) -> const v1::Phase* {
      auto it = phase_of_kernel.find(kernel);
      return it == phase_of_kernel.end() ? nullptr : &it->second;
    };
    for (const auto& [member, where] : members) {
      RolloutMember m = MemberOf(member, where.second->status(), tmpl.spec().phase(), phase_of);
      m.wave = LabelOf(host_by_name, where.first, view.policy.waves().by());
      auto runs = view.revision_of_kernel.find(m.kernel);
      // (Members come in name order, and the sets' names prefix theirs: mostly appended.)
      out->member_revisions.insert_or_assign(out->member_revisions.end(), member,
                                             std::make_pair(key, runs != view.revision_of_kernel.end() ? runs->second : 0));
      view.members.push_back(std::move(m));
    }
    RolloutStep step = StepRollout(view, rec.mutable_progress());
    dirty |= step.changed;
    step.status.set_observed_generation(set.metadata().generation());
    e.status = step.status;
    out->statuses[name] = step.status;
    for (const auto& [reason, message] : step.events) {
      bool warning = reason == "RolloutFailed" || reason == "MemberFailed";
      out->events.push_back(OwnerEvent(key, warning, reason, message, now));
    }
    auto spec_of = [&](uint32_t revision) -> const v1::KernelInstanceSpec* {
      for (const v1::TemplateRevision& r : rec.revisions()) {
        if (r.number() != revision) continue;
        auto [it, fresh] = out->specs.emplace(std::make_pair(name, revision), r.template_().spec());
        return &it->second;
      }
      return nullptr;
    };
    for (const auto& [member, revision] : step.revision_of) {
      if (const v1::KernelInstanceSpec* spec = spec_of(revision)) out->member_specs[member] = spec;
    }
    if (step.default_revision != view.target) {
      if (const v1::KernelInstanceSpec* spec = spec_of(step.default_revision)) out->set_specs[name] = spec;
    }
    const v1::RolloutPhase phase = rec.progress().phase();
    out->active |= phase == v1::ROLLOUT_PROGRESSING || phase == v1::ROLLOUT_ROLLING_BACK;
    out->paused |= phase == v1::ROLLOUT_PAUSED;
    if (dirty) {
      if (absl::Status s = SaveLocked(key); !s.ok()) {
        out->events.push_back(OwnerEvent(key, true, "RolloutStoreError", std::string(s.message()), now));
      }
    }
  }
}

void Rollouts::StepPolicies(const std::vector<v1::Host>& hosts, const std::vector<v1::KernelInstance>& instances,
                            const std::vector<v1::RolloutPolicy>& policies,
                            const std::map<std::string, HostView>& views,
                            const std::map<std::string, std::pair<std::string, std::string>>& serving,
                            absl::Time now, int64_t objects_revision, std::set<std::string>* live,
                            RolloutPass* out) {
  if (policies.empty()) return;
  std::map<std::string, const v1::Host*> host_by_name;
  for (const v1::Host& h : hosts) host_by_name[h.metadata().name()] = &h;
  // Which policy paces each instance: the first by name that selects it.
  std::vector<const v1::RolloutPolicy*> ordered;
  for (const v1::RolloutPolicy& p : policies) ordered.push_back(&p);
  std::sort(ordered.begin(), ordered.end(),
            [](auto* a, auto* b) { return a->metadata().name() < b->metadata().name(); });
  std::map<std::string, std::string> paced_by;  // instance -> policy
  std::map<std::string, std::vector<const v1::KernelInstance*>> selected;  // policy -> its instances, by name
  std::map<std::string, std::vector<std::string>> conflicts;               // policy -> instances another paces
  for (const v1::RolloutPolicy* p : ordered) {
    const std::string& policy = p->metadata().name();
    selected[policy];
    for (const v1::KernelInstance& ki : instances) {
      if (ki.metadata().deletion_unix_ms() != 0) continue;
      std::map<std::string, std::string> labels(ki.metadata().labels().begin(), ki.metadata().labels().end());
      if (!planner::Matches(p->spec().selector(), labels)) continue;
      auto [it, first] = paced_by.emplace(ki.metadata().name(), policy);
      if (first) {
        selected[policy].push_back(&ki);
      } else {
        conflicts[policy].push_back(absl::StrCat(ki.metadata().name(), " (paced by RolloutPolicy/", it->second, ")"));
      }
    }
  }
  // The kernels serving the paced instances, as the hosts show them.
  std::map<std::string, std::vector<std::pair<std::string, const v1::ObservedInstance*>>> seen;  // instance -> (host, in)
  for (const auto& [host, view] : views) {
    for (const auto& [kernel, in] : view.instances) {
      if (absl::EndsWith(kernel, kStandbySuffix) || absl::StartsWith(in.owner(), "InstanceSet/")) continue;
      std::string logical = kernel;
      if (absl::EndsWith(logical, kNextSuffix)) logical = logical.substr(0, logical.size() - kNextSuffix.size());
      if (paced_by.count(logical)) seen[logical].emplace_back(host, &in);
    }
  }
  for (const v1::RolloutPolicy* p : ordered) {
    const std::string& name = p->metadata().name();
    const std::string key = "RolloutPolicy/" + name;
    live->insert(key);
    Entry& e = entries_[key];
    v1::RolloutRecord& rec = e.record;
    bool dirty = false;
    const std::vector<const v1::KernelInstance*>& mine = selected[name];
    // The revision: the selected instances (each incarnation of a name apart: one deleted and
    // applied again is a new instance, never held at the old one's spec) and their specs.
    auto id_of = [](const v1::KernelInstance& ki) {
      return absl::StrCat(ki.metadata().name(), "@", ki.metadata().created_revision());
    };
    std::map<std::string, std::string> spec_hash;  // instance id -> hash of its spec
    Fnv1a whole;
    std::string cause;
    const v1::PolicyRevision* newest = rec.policy_revisions().empty() ? nullptr : &*rec.policy_revisions().rbegin();
    for (const v1::KernelInstance* ki : mine) {
      const std::string instance = id_of(*ki);
      const std::string h = MessageHash(ki->spec());
      spec_hash[instance] = h;
      whole.Field(instance).Field(h);
      // The change cause: the first instance (by name) whose spec changed and says why.
      if (cause.empty() && !ki->metadata().change_cause().empty()) {
        const bool changed = newest == nullptr || !newest->specs().count(instance) || newest->specs().at(instance) != h;
        if (changed) cause = ki->metadata().change_cause();
      }
    }
    char hex[17];
    std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(whole.value()));
    const uint32_t keep = p->spec().has_revision_history_limit() ? p->spec().revision_history_limit()
                                                                  : kDefaultRevisionHistory;
    if (v1::PolicyRevision* r = AddRevision(rec.mutable_policy_revisions(), std::string(hex, 10),
                                            rec.progress().stable(), keep, cause, now)) {
      for (const v1::KernelInstance* ki : mine) {
        (*r->mutable_specs())[id_of(*ki)] = spec_hash[id_of(*ki)];
        (*rec.mutable_specs())[spec_hash[id_of(*ki)]] = ki->spec();
      }
      // The specs no kept revision names go.
      std::set<std::string> used;
      for (const v1::PolicyRevision& pr : rec.policy_revisions()) {
        for (const auto& [instance, h] : pr.specs()) used.insert(h);
      }
      for (auto it = rec.mutable_specs()->begin(); it != rec.mutable_specs()->end();) {
        it = used.count(it->first) ? std::next(it) : rec.mutable_specs()->erase(it);
      }
      dirty = true;
    }
    std::map<std::string, std::string> kernel_of_spec;  // spec hash -> its KernelRevision
    for (const auto& [h, spec] : rec.specs()) kernel_of_spec[h] = KernelOf(spec);
    RolloutView view;
    view.owner = key;
    view.policy = p->spec().rollout();
    view.target = rec.policy_revisions().rbegin()->number();
    view.now = now;
    bool all_morph = !mine.empty();
    std::set<std::string> their_hosts;
    for (const v1::KernelInstance* ki : mine) {
      all_morph &= ki->spec().update().strategy() == v1::UPDATE_MORPH;
      if (ki->spec().target_case() == v1::KernelInstanceSpec::kHost) {
        their_hosts.insert(ki->spec().host());
        continue;
      }
      for (const v1::Host& h : hosts) {
        std::map<std::string, std::string> labels(h.metadata().labels().begin(), h.metadata().labels().end());
        if (planner::Matches(ki->spec().host_selector(), labels)) their_hosts.insert(h.metadata().name());
      }
    }
    view.morph = all_morph;
    // Frozen while a host its instances may run on is not connected.
    for (const std::string& h : their_hosts) {
      auto v = views.find(h);
      if (host_by_name.count(h) && (v == views.end() || !v->second.connected)) view.frozen = true;
    }
    // The members: the instances the change is about, those whose spec differs from the
    // stable revision's (or that it lacks); the others are not part of it (an instance down
    // for its own reasons neither fails nor holds up a change to the others).
    const uint32_t stable = StableFor(rec.progress(), view.target);
    const v1::PolicyRevision* stable_rev = nullptr;
    for (const v1::PolicyRevision& r : rec.policy_revisions()) {
      if (r.number() == stable) stable_rev = &r;
    }
    for (const v1::KernelInstance* ki : mine) {
      const std::string& instance = ki->metadata().name();
      const std::string id = id_of(*ki);
      std::map<std::string, std::pair<std::string, const v1::ObservedInstance*>> found;
      for (const auto& [host, in] : seen[instance]) AddServing(&found, host, in, serving);
      auto where = found.find(instance);
      if (where == found.end()) continue;
      // The phase it is judged against: that of the revision it runs (the stable one when it
      // runs its kernel, else the newest with its kernel), as for sets.
      std::map<std::string, v1::Phase> phase_of_kernel;
      std::map<uint32_t, std::string> kernels;
      for (const v1::PolicyRevision& r : rec.policy_revisions()) {
        auto h = r.specs().find(id);
        if (h == r.specs().end()) continue;
        kernels[r.number()] = kernel_of_spec[h->second];
        phase_of_kernel[kernel_of_spec[h->second]] = rec.specs().at(h->second).phase();
      }
      if (stable_rev != nullptr && stable_rev->specs().count(id)) {
        const std::string& h = stable_rev->specs().at(id);
        phase_of_kernel[kernel_of_spec[h]] = rec.specs().at(h).phase();
      }
      auto phase_of = [&](const std::string& kernel) -> const v1::Phase* {
        auto it = phase_of_kernel.find(kernel);
        return it == phase_of_kernel.end() ? nullptr : &it->second;
      };
      RolloutMember m = MemberOf(instance, where->second.second->status(), ki->spec().phase(), phase_of);
      uint32_t runs = 0;
      for (const auto& [number, kernel] : kernels) {
        if (kernel == m.kernel && !m.kernel.empty()) runs = number;
      }
      out->member_revisions[instance] = {key, runs};
      if (stable_rev != nullptr && stable_rev->specs().count(id) && stable_rev->specs().at(id) == spec_hash[id]) {
        continue;
      }
      m.wave = LabelOf(host_by_name, where->second.first, view.policy.waves().by());
      m.kernels = std::move(kernels);
      view.members.push_back(std::move(m));
    }
    RolloutStep step = StepRollout(view, rec.mutable_progress());
    dirty |= step.changed;
    step.status.set_observed_generation(p->metadata().generation());
    step.status.set_observed_revision(objects_revision);
    e.status = step.status;
    for (const auto& [reason, message] : step.events) {
      bool warning = reason == "RolloutFailed" || reason == "MemberFailed";
      out->events.push_back(OwnerEvent(key, warning, reason, message, now));
    }
    // What each instance runs: its spec in the revision the rollout keeps it at (an instance
    // not seen yet runs the default revision's, when that one has it).
    auto spec_in = [&](const std::string& id, uint32_t revision) -> const v1::KernelInstanceSpec* {
      for (const v1::PolicyRevision& r : rec.policy_revisions()) {
        if (r.number() != revision) continue;
        auto h = r.specs().find(id);
        if (h == r.specs().end()) return nullptr;
        auto spec = rec.specs().find(h->second);
        return spec != rec.specs().end() ? &spec->second : nullptr;
      }
      return nullptr;
    };
    const v1::RolloutPhase phase = rec.progress().phase();
    for (const v1::KernelInstance* ki : mine) {
      const std::string& instance = ki->metadata().name();
      auto r = step.revision_of.find(instance);
      const uint32_t revision = r != step.revision_of.end() ? r->second : step.default_revision;
      if (revision == view.target) continue;
      const v1::KernelInstanceSpec* spec = spec_in(id_of(*ki), revision);
      if (spec == nullptr || spec->SerializeAsString() == ki->spec().SerializeAsString()) continue;
      out->instance_specs[instance] = *spec;
      out->held[instance] =
          absl::StrCat("RolloutPolicy/", name, " holds it at revision ", revision, " (rollout ",
                       RolloutPhaseName(phase), ": ", step.status.message(), ")");
    }
    v1::RolloutPolicyStatus st;
    st.set_members(static_cast<uint32_t>(mine.size()));
    st.set_current_revision(step.status.stable());
    st.set_update_revision(step.status.revision());
    *st.mutable_rollout() = step.status;
    for (const std::string& c : conflicts[name]) st.add_conflicts(c);
    out->policy_statuses[name] = std::move(st);
    out->active |= phase == v1::ROLLOUT_PROGRESSING || phase == v1::ROLLOUT_ROLLING_BACK;
    out->paused |= phase == v1::ROLLOUT_PAUSED;
    if (dirty) {
      if (absl::Status s = SaveLocked(key); !s.ok()) {
        out->events.push_back(OwnerEvent(key, true, "RolloutStoreError", std::string(s.message()), now));
      }
    }
  }
}

v1::RolloutResponse Rollouts::ResponseLocked(const Entry& e) const {
  v1::RolloutResponse r;
  *r.mutable_status() = e.status;
  auto add = [&](const auto& rev) {
    v1::RevisionInfo* info = r.add_revisions();
    info->set_number(rev.number());
    info->set_hash(rev.hash());
    info->set_change_cause(rev.change_cause());
    info->set_time_unix_ms(rev.time_unix_ms());
    return info;
  };
  for (const v1::TemplateRevision& rev : e.record.revisions()) {
    add(rev)->set_kernel(rev.template_().spec().kernel().image());
  }
  for (const v1::PolicyRevision& rev : e.record.policy_revisions()) {
    v1::RevisionInfo* info = add(rev);
    // The kernels of its instances: one image, or how many differ.
    std::set<std::string> images;
    for (const auto& [instance, h] : rev.specs()) {
      auto spec = e.record.specs().find(h);
      if (spec != e.record.specs().end()) images.insert(spec->second.kernel().image());
    }
    info->set_kernel(images.size() == 1 ? *images.begin()
                                        : absl::StrCat(images.size(), " kernels over ", rev.specs_size(), " instances"));
  }
  return r;
}

absl::StatusOr<Rollouts::Entry*> Rollouts::FindLocked(const std::string& kind, const std::string& name) {
  MK_RETURN_IF_ERROR(LoadLocked());
  auto it = entries_.find(kind + "/" + name);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat(kind, "/", name, " has no rollout record yet"));
  return &it->second;
}

absl::StatusOr<v1::RolloutResponse> Rollouts::Status(const std::string& kind, const std::string& name) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(Entry * e, FindLocked(kind, name));
  return ResponseLocked(*e);
}

absl::StatusOr<v1::RolloutResponse> Rollouts::SetPaused(const std::string& kind, const std::string& name, bool paused) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(Entry * e, FindLocked(kind, name));
  const std::string key = kind + "/" + name;
  v1::RolloutProgress& p = *e->record.mutable_progress();
  v1::RolloutResponse r;
  if (p.paused() == paused) {
    r = ResponseLocked(*e);
    r.set_message(absl::StrCat(key, " is already ", paused ? "paused" : "not paused"));
    return r;
  }
  p.set_paused(paused);
  if (p.phase() == v1::ROLLOUT_PAUSED && !paused) p.set_phase(v1::ROLLOUT_PROGRESSING);
  if (p.phase() == v1::ROLLOUT_PROGRESSING && paused) p.set_phase(v1::ROLLOUT_PAUSED);
  e->status.set_paused(paused);
  e->status.set_phase(RolloutPhaseName(p.phase()));
  MK_RETURN_IF_ERROR(SaveLocked(key));
  r = ResponseLocked(*e);
  r.set_message(absl::StrCat(key, paused ? " paused" : " resumed"));
  return r;
}

absl::StatusOr<uint32_t> Rollouts::UndoTargetLocked(const std::string& key, const Entry& e, uint32_t to) {
  std::vector<uint32_t> numbers;
  for (const v1::TemplateRevision& r : e.record.revisions()) numbers.push_back(r.number());
  for (const v1::PolicyRevision& r : e.record.policy_revisions()) numbers.push_back(r.number());
  if (to == 0) {
    // The one before the newest; after a held failure, the stable one.
    const v1::RolloutProgress& p = e.record.progress();
    if (p.phase() == v1::ROLLOUT_ROLLED_BACK || p.phase() == v1::ROLLOUT_FAILED) {
      to = p.stable();
    } else if (numbers.size() >= 2) {
      to = numbers[numbers.size() - 2];
    } else {
      return absl::FailedPreconditionError(absl::StrCat(key, " has only one revision: nothing to undo"));
    }
  }
  if (std::find(numbers.begin(), numbers.end(), to) == numbers.end()) {
    std::string kept;
    for (uint32_t n : numbers) absl::StrAppend(&kept, kept.empty() ? "" : ", ", n);
    return absl::NotFoundError(absl::StrCat(key, " has no revision ", to, " (kept: ", kept, ")"));
  }
  if (to == numbers.back()) return absl::FailedPreconditionError(absl::StrCat(key, ": revision ", to, " is the newest"));
  return to;
}

absl::StatusOr<v1::InstanceTemplate> Rollouts::UndoTemplate(const std::string& set, uint32_t to, uint32_t* number) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(Entry * e, FindLocked("InstanceSet", set));
  MK_ASSIGN_OR_RETURN(uint32_t revision, UndoTargetLocked("InstanceSet/" + set, *e, to));
  if (number != nullptr) *number = revision;
  for (const v1::TemplateRevision& r : e->record.revisions()) {
    if (r.number() == revision) return r.template_();
  }
  return absl::InternalError("unreachable: a revision found is kept");
}

absl::StatusOr<std::map<std::string, v1::KernelInstanceSpec>> Rollouts::UndoSpecs(const std::string& policy,
                                                                                  uint32_t to, uint32_t* number) {
  absl::MutexLock lock(&mu_);
  MK_ASSIGN_OR_RETURN(Entry * e, FindLocked("RolloutPolicy", policy));
  MK_ASSIGN_OR_RETURN(uint32_t revision, UndoTargetLocked("RolloutPolicy/" + policy, *e, to));
  if (number != nullptr) *number = revision;
  std::map<std::string, v1::KernelInstanceSpec> out;
  for (const v1::PolicyRevision& r : e->record.policy_revisions()) {
    if (r.number() != revision) continue;
    for (const auto& [instance, h] : r.specs()) {
      auto spec = e->record.specs().find(h);
      if (spec != e->record.specs().end()) out[instance] = spec->second;
    }
  }
  return out;
}

}  // namespace mkfleet::reconciler
