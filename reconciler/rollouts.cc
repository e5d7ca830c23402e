#include "reconciler/rollouts.h"

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "common/fnv.h"
#include "common/status_macros.h"
#include "google/protobuf/io/coded_stream.h"
#include "google/protobuf/io/zero_copy_stream_impl_lite.h"
#include "proto/morph_phase.h"
#include "planner/placement.h"
#include "reconciler/differ.h"
#include "reconciler/rollout.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

namespace {

std::string KernelOf(const v1::InstanceTemplate& t) {
  return KernelRevision(t.spec().kernel(), t.spec().rootfs().image());
}

v1::Event SetEvent(const std::string& set, bool warning, const std::string& reason, const std::string& message,
                   absl::Time now) {
  v1::Event e;
  e.set_kind("InstanceSet");
  e.set_name(set);
  e.set_type(warning ? "Warning" : "Normal");
  e.set_reason(reason);
  e.set_message(message);
  e.set_time_unix_ms(absl::ToUnixMillis(now));
  return e;
}

}  // namespace

std::string TemplateHash(const v1::InstanceTemplate& t) {
  std::string bytes;
  {
    google::protobuf::io::StringOutputStream out(&bytes);
    google::protobuf::io::CodedOutputStream coded(&out);
    coded.SetSerializationDeterministic(true);
    t.SerializeToCodedStream(&coded);
  }
  const uint64_t h = Fnv1a().Add(bytes).value();
  char hex[17];
  std::snprintf(hex, sizeof(hex), "%016llx", static_cast<unsigned long long>(h));
  return std::string(hex, 10);
}

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

absl::Status Rollouts::SaveLocked(const std::string& set) {
  auto it = entries_.find(set);
  absl::StatusOr<int64_t> r = it == entries_.end() ? store_.Delete(kRolloutPrefix + set)
                                                   : store_.Put(kRolloutPrefix + set, it->second.record.SerializeAsString());
  if (!r.ok() && !absl::IsNotFound(r.status())) {
    loaded_ = false;  // read back what the store has at the next step
    return r.status();
  }
  return absl::OkStatus();
}

RolloutPass Rollouts::Step(const std::vector<v1::Host>& hosts, const std::vector<v1::InstanceSet>& sets,
                           const std::map<std::string, HostView>& views,
                           const std::map<std::string, std::pair<std::string, std::string>>& serving) {
  RolloutPass out;
  const absl::Time now = clock_.Now();
  absl::MutexLock lock(&mu_);
  if (absl::Status s = LoadLocked(); !s.ok()) {
    // Without the records nothing is held back: the sets' templates apply as they are, as
    // before rollouts existed. Said once per pass as a warning on each set.
    for (const v1::InstanceSet& set : sets) {
      out.events.push_back(SetEvent(set.metadata().name(), true, "RolloutStoreError", std::string(s.message()), now));
    }
    return out;
  }
  std::map<std::string, const v1::Host*> host_by_name;
  for (const v1::Host& h : hosts) host_by_name[h.metadata().name()] = &h;
  // Members of each set as the hosts show them: the kernel that serves each.
  std::map<std::string, std::vector<std::pair<std::string, const v1::ObservedInstance*>>> seen;  // set -> (host, in)
  for (const auto& [host, view] : views) {
    for (const auto& [kernel, in] : view.instances) {
      absl::string_view set = in.owner();
      if (!absl::ConsumePrefix(&set, "InstanceSet/") || absl::EndsWith(kernel, kStandbySuffix)) continue;
      seen[std::string(set)].emplace_back(host, &in);
    }
  }
  std::set<std::string> live;
  for (const v1::InstanceSet& set : sets) {
    const std::string& name = set.metadata().name();
    live.insert(name);
    Entry& e = entries_[name];
    v1::RolloutRecord& rec = e.record;
    bool dirty = false;
    // The revisions: a template not seen before is the newest; one seen before (an undo)
    // moves to the newest with a new number.
    const v1::InstanceTemplate& tmpl = set.spec().template_();
    const std::string hash = TemplateHash(tmpl);
    if (rec.revisions().empty() || rec.revisions().rbegin()->hash() != hash) {
      uint32_t number = rec.revisions().empty() ? 1 : rec.revisions().rbegin()->number() + 1;
      for (int i = 0; i < rec.revisions_size(); ++i) {
        if (rec.revisions(i).hash() == hash && rec.revisions(i).number() != rec.progress().stable()) {
          rec.mutable_revisions()->DeleteSubrange(i, 1);
          break;
        }
      }
      v1::TemplateRevision* r = rec.add_revisions();
      r->set_number(number);
      r->set_hash(hash);
      r->set_change_cause(set.metadata().change_cause());
      r->set_time_unix_ms(absl::ToUnixMillis(now));
      *r->mutable_template_() = tmpl;
      // The oldest go, but never the stable revision (a rollback goes back to it).
      const uint32_t keep = set.spec().has_revision_history_limit() ? set.spec().revision_history_limit()
                                                                    : kDefaultRevisionHistory;
      while (static_cast<uint32_t>(rec.revisions_size()) > keep) {
        int drop = rec.revisions(0).number() == rec.progress().stable() && rec.revisions_size() > 1 ? 1 : 0;
        if (drop == rec.revisions_size() - 1) break;
        rec.mutable_revisions()->DeleteSubrange(drop, 1);
      }
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
    view.owner = "InstanceSet/" + name;
    view.policy = set.spec().rollout();
    view.morph = tmpl.spec().update().strategy() == v1::UPDATE_MORPH;
    view.target = rec.revisions().rbegin()->number();
    view.target_kernel = KernelOf(tmpl);
    view.now = now;
    for (const v1::TemplateRevision& r : rec.revisions()) {
      view.revision_of_kernel[KernelOf(r.template_())] = r.number();
      view.kernel_of_revision[r.number()] = KernelOf(r.template_());
    }
    // One member per logical name: the kernel the last pass said serves it (during and
    // after a live update, "<name>-next" may), else the one named for it.
    std::map<std::string, std::pair<std::string, const v1::ObservedInstance*>> members;
    for (const auto& [host, in] : seen[name]) {
      std::string member = in->name();
      if (absl::EndsWith(member, kNextSuffix)) member = member.substr(0, member.size() - kNextSuffix.size());
      auto s = serving.find(member);
      bool serves = s != serving.end() ? s->second.second == in->name() : in->name() == member;
      if (serves || !members.count(member)) members[member] = {host, in};
    }
    const std::string& wave_key = view.policy.waves().by();
    for (const auto& [member, where] : members) {
      const v1::ObservedInstance& in = *where.second;
      const v1::InstanceStatus& st = in.status();
      RolloutMember m;
      m.name = member;
      if (!wave_key.empty()) {
        auto h = host_by_name.find(where.first);
        if (h != host_by_name.end()) {
          auto l = h->second->metadata().labels().find(wave_key);
          if (l != h->second->metadata().labels().end()) m.wave = l->second;
        }
      }
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
      m.up = st.kernel_state() == WantedKernelState(tmpl.spec().phase()) && !degraded && !MorphRunning(st);
      view.members.push_back(std::move(m));
    }
    RolloutStep step = StepRollout(view, rec.mutable_progress());
    dirty |= step.changed;
    step.status.set_observed_generation(set.metadata().generation());
    e.status = step.status;
    out.statuses[name] = step.status;
    for (const auto& [reason, message] : step.events) {
      bool warning = reason == "RolloutFailed" || reason == "MemberFailed";
      out.events.push_back(SetEvent(name, warning, reason, message, now));
    }
    auto spec_of = [&](uint32_t revision) -> const v1::KernelInstanceSpec* {
      for (const v1::TemplateRevision& r : rec.revisions()) {
        if (r.number() != revision) continue;
        auto [it, fresh] = out.specs.emplace(std::make_pair(name, revision), r.template_().spec());
        return &it->second;
      }
      return nullptr;
    };
    for (const auto& [member, revision] : step.revision_of) {
      if (const v1::KernelInstanceSpec* spec = spec_of(revision)) out.member_specs[member] = spec;
    }
    if (step.default_revision != view.target) {
      if (const v1::KernelInstanceSpec* spec = spec_of(step.default_revision)) out.set_specs[name] = spec;
    }
    const v1::RolloutPhase phase = rec.progress().phase();
    out.active |= phase == v1::ROLLOUT_PROGRESSING || phase == v1::ROLLOUT_ROLLING_BACK;
    if (dirty) {
      if (absl::Status s = SaveLocked(name); !s.ok()) {
        out.events.push_back(SetEvent(name, true, "RolloutStoreError", std::string(s.message()), now));
      }
    }
  }
  // Records of deleted sets go.
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

v1::RolloutResponse Rollouts::ResponseLocked(const Entry& e) const {
  v1::RolloutResponse r;
  *r.mutable_status() = e.status;
  for (const v1::TemplateRevision& rev : e.record.revisions()) {
    v1::RevisionInfo* info = r.add_revisions();
    info->set_number(rev.number());
    info->set_hash(rev.hash());
    info->set_change_cause(rev.change_cause());
    info->set_time_unix_ms(rev.time_unix_ms());
    info->set_kernel(rev.template_().spec().kernel().image());
  }
  return r;
}

absl::StatusOr<v1::RolloutResponse> Rollouts::Status(const std::string& set) {
  absl::MutexLock lock(&mu_);
  MK_RETURN_IF_ERROR(LoadLocked());
  auto it = entries_.find(set);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("InstanceSet/", set, " has no rollout record yet"));
  return ResponseLocked(it->second);
}

absl::StatusOr<v1::RolloutResponse> Rollouts::SetPaused(const std::string& set, bool paused) {
  absl::MutexLock lock(&mu_);
  MK_RETURN_IF_ERROR(LoadLocked());
  auto it = entries_.find(set);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("InstanceSet/", set, " has no rollout record yet"));
  v1::RolloutProgress& p = *it->second.record.mutable_progress();
  v1::RolloutResponse r;
  if (p.paused() == paused) {
    r = ResponseLocked(it->second);
    r.set_message(absl::StrCat("InstanceSet/", set, " is already ", paused ? "paused" : "not paused"));
    return r;
  }
  p.set_paused(paused);
  if (p.phase() == v1::ROLLOUT_PAUSED && !paused) p.set_phase(v1::ROLLOUT_PROGRESSING);
  if (p.phase() == v1::ROLLOUT_PROGRESSING && paused) p.set_phase(v1::ROLLOUT_PAUSED);
  it->second.status.set_paused(paused);
  it->second.status.set_phase(RolloutPhaseName(p.phase()));
  MK_RETURN_IF_ERROR(SaveLocked(set));
  r = ResponseLocked(it->second);
  r.set_message(absl::StrCat("InstanceSet/", set, paused ? " paused" : " resumed"));
  return r;
}

absl::StatusOr<v1::InstanceTemplate> Rollouts::UndoTemplate(const std::string& set, uint32_t to, uint32_t* number) {
  absl::MutexLock lock(&mu_);
  MK_RETURN_IF_ERROR(LoadLocked());
  auto it = entries_.find(set);
  if (it == entries_.end()) return absl::NotFoundError(absl::StrCat("InstanceSet/", set, " has no rollout record yet"));
  const auto& revs = it->second.record.revisions();
  if (to == 0) {
    // The one before the newest; after a held failure, the stable one.
    const v1::RolloutProgress& p = it->second.record.progress();
    if (p.phase() == v1::ROLLOUT_ROLLED_BACK || p.phase() == v1::ROLLOUT_FAILED) {
      to = p.stable();
    } else if (revs.size() >= 2) {
      to = revs[revs.size() - 2].number();
    } else {
      return absl::FailedPreconditionError(absl::StrCat("InstanceSet/", set, " has only one revision: nothing to undo"));
    }
  }
  for (const v1::TemplateRevision& r : revs) {
    if (r.number() == to) {
      if (number != nullptr) *number = to;
      if (r.number() == revs.rbegin()->number()) {
        return absl::FailedPreconditionError(absl::StrCat("InstanceSet/", set, ": revision ", to, " is the newest"));
      }
      return r.template_();
    }
  }
  std::string kept;
  for (const v1::TemplateRevision& r : revs) absl::StrAppend(&kept, kept.empty() ? "" : ", ", r.number());
  return absl::NotFoundError(absl::StrCat("InstanceSet/", set, " has no revision ", to, " (kept: ", kept, ")"));
}

}  // namespace mkfleet::reconciler
