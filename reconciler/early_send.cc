// Reconciler's early send (reconciler.h): a change of pinned KernelInstances on a settled
// fleet goes to its hosts before the whole fleet is planned.
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/hash/hash.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "proto/deterministic.h"
#include "reconciler/reconciler.h"
#include "reconciler/rollouts.h"
#include "reconciler/statuses.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

std::vector<std::string> ActionIds(const Plan& plan) {
  std::vector<std::string> ids;
  for (const v1::Action& a : plan.actions) ids.push_back(a.id());
  return ids;
}

std::string ActionsText(const Plan& plan) {
  std::vector<std::string> out;
  for (const v1::Action& a : plan.actions) out.push_back(a.ShortDebugString());
  return absl::StrJoin(out, "; ");
}

// The actions whole (their ids say which step of which change, not on which CPUs).
std::vector<std::string> ActionBytes(const Plan& plan) {
  std::vector<std::string> out;
  for (const v1::Action& a : plan.actions) out.push_back(DeterministicBytes(a));
  return out;
}

size_t Fingerprint(const Plan& plan) {
  size_t h = plan.actions.size();
  for (const v1::Action& a : plan.actions) h = absl::HashOf(h, DeterministicBytes(a));
  return h;
}

}  // namespace

void Reconciler::NoteSettled(const FleetPlan& fleet, const Objects_& objects, const RolloutPass& rollout,
                             const std::map<std::string, HostView>& views, const std::set<std::string>& retry,
                             int64_t read_revision) {
  settled_.valid = false;
  settled_.versions.clear();
  settled_.idle.clear();
  settled_.standby_host.clear();
  if (!options_.early_send || options_.shards != nullptr || read_revision < 0) return;
  // Nothing waits for room, for a host, for a rollout or for a decision of this pass's.
  // (A host's problems, such as a pool device its topology lacks, are its own: a host
  // left out has no plan, and an early send needs one.)
  if (!fleet.unschedulable.empty() || !fleet.infeasible.empty() || !fleet.waiting.empty() || !fleet.deferred.empty() ||
      !fleet.drift_held.empty() || !fleet.pool_changes.empty() || !fleet.frozen_sets.empty() || !fleet.drained.empty()) {
    return;
  }
  // (A paused rollout too: it ends when its members have been Ready for minReady, which
  // only a whole pass sees: sim seed 60022.)
  if (rollout.active || rollout.paused || !rollout.member_specs.empty() || !rollout.set_specs.empty() || !rollout.instance_specs.empty() ||
      !rollout.held.empty() || !objects.policies.empty() || !retry.empty()) {
    return;
  }
  // A set member with something left to do anywhere (a create the host keeps refusing) may
  // move wherever room appears: the sets are not settled (sim seed 42175: a pinned
  // instance's resize freed CPUs and the whole plan moved a replica there).
  std::map<std::string, std::set<std::string>> acting;  // host -> kernels with actions
  for (const auto& [host, plan] : fleet.hosts) {
    for (const v1::Action& a : plan.actions) acting[host].insert(a.instance());
  }
  // Nor one kept on a host out of touch: when it comes back (cordoned meanwhile, say) or is
  // given up, the member may move to a host an early send would plan without it (sim seed
  // 910274 on 4 hosts: a member kept on a restarting host, which came back cordoned).
  std::set<std::string> out_of_touch;
  for (const auto& [host, v] : views) {
    if (!v.connected) out_of_touch.insert(host);
  }
  for (const auto& [request, p] : fleet.planned) {
    if (p.owner.empty()) continue;
    auto a = acting.find(p.host);
    if ((a != acting.end() && a->second.count(p.kernel)) || out_of_touch.count(p.host)) return;
  }
  // The hosts with nothing to do: what an early send may plan anew.
  for (const auto& [host, plan] : fleet.hosts) {
    auto v = views.find(host);
    if (plan.actions.empty() && v != views.end()) {
      settled_.versions.emplace_hint(settled_.versions.end(), host, v->second.state_version);
      settled_.idle.emplace_hint(settled_.idle.end(), host, v->second.state_version);
    }
  }
  // Warm standbys may run on another host than their instance's.
  for (const auto& [request, p] : fleet.planned) {
    if (!p.standby_for.empty()) settled_.standby_host[p.standby_for] = p.host;
  }
  settled_.read_revision = read_revision;
  settled_.valid = true;
}

const HostOutcome* Reconciler::SentEarly(const std::string& host, const Plan& plan) {
  // (Whatever the host reported since: the same actions would be answered from its journal.)
  auto e = early_sent_.find(host);
  if (e == early_sent_.end()) return nullptr;
  return e->second.actions == Fingerprint(plan) ? &e->second.outcome : nullptr;
}

Reconciler::Early Reconciler::EarlySend(const std::vector<std::string>& requested,
                                        std::map<std::string, absl::Status>* result) {
  early_sent_.clear();
  local_check_.clear();
  if (!options_.early_send || !settled_.valid || options_.shards != nullptr || !Leading()) return Early::kNone;
  const absl::StatusOr<int64_t> revision = store_.Revision();
  // Every object change up to now was a pinned instance's put: those the store watcher
  // looked at, and any since (the passes' own status writes move the revision too).
  if (!revision.ok() || nonlocal_revision_.load() > settled_.read_revision) return Early::kNone;
  // A rollout paused, resumed or undone since (its record, not an object) is the whole pass's.
  auto rollouts = store_.EventsSince(settled_.read_revision, kRolloutPrefix);
  if (!rollouts.ok() || !rollouts->empty()) return Early::kNone;
  if (const int64_t classified = classified_revision_.load(); classified < *revision) {
    auto events = store_.EventsSince(classified, "/objects/");
    if (!events.ok()) return Early::kNone;
    for (const Event& e : *events) {
      if (!IsPinnedInstancePut(e)) return Early::kNone;
    }
  }
  {
    absl::MutexLock lock(&served_mu_);
    if (!morph_retry_.empty()) return Early::kNone;
  }
  // The batch hosts, connected, each with only its pinned instances' work left when it was
  // last planned (a whole pass that found it idle, or a local pass).
  std::map<std::string, std::shared_ptr<HostConnection>> links;
  {
    absl::MutexLock lock(&mu_);
    for (const std::string& h : requested) {
      auto c = connections_.find(h);
      if (c == connections_.end()) return Early::kNone;
      links[h] = c->second.link;
    }
  }
  std::map<std::string, HostView> views;
  std::vector<std::string> batch;
  for (const auto& [h, link] : links) {
    HostView v = link->View();
    auto seen = settled_.versions.find(h);
    if (!v.connected || seen == settled_.versions.end()) return Early::kNone;
    if (v.settling) continue;
    views[h] = std::move(v);
    batch.push_back(h);
  }
  // A host whose view does not show its last batch yet gets nothing now: what is planned
  // from that view may be done already, or half done.
  for (const auto& [h, link] : links) {
    if (views.count(h)) continue;
    queue_.AddAfter(h, kSettleRecheck);
    (*result)[h] = absl::OkStatus();
  }
  if (batch.empty()) {
    ++local_passes_;
    return Early::kDone;
  }
  const std::set<std::string> in_batch(batch.begin(), batch.end());
  // A create on its way to a batch host: only once the host shows it (then it is no
  // longer in flight).
  for (auto it = in_flight_.begin(); it != in_flight_.end();) {
    auto v = views.find(it->second.placement.host());
    if (v == views.end()) {
      ++it;
    } else if (v->second.instances.count(it->second.kernel)) {
      it = in_flight_.erase(it);
    } else {
      return Early::kNone;
    }
  }
  auto instance_objects = objects_.ListSpecs("KernelInstance");
  auto set_objects = objects_.ListSpecs("InstanceSet");
  auto policy_objects = objects_.ListSpecs("RolloutPolicy");
  if (!instance_objects.ok() || !set_objects.ok() || !policy_objects.ok() || !policy_objects->empty()) {
    return Early::kNone;
  }
  std::vector<v1::Host> hosts;
  for (const std::string& h : batch) {
    auto o = objects_.Get("Host", h);
    if (!o.ok() || !o->has_value()) return Early::kNone;
    const v1::Host& host = (*o)->host();
    v1::DriftPolicy drift = host.spec().drift_policy() == v1::DRIFT_POLICY_UNSPECIFIED ? options_.drift_policy
                                                                                         : host.spec().drift_policy();
    if (host.metadata().deletion_unix_ms() != 0 || drift == v1::DRIFT_REPORT) return Early::kNone;
    hosts.push_back(host);
  }
  // What was read is the store at `revision`: nothing written meanwhile.
  const absl::StatusOr<int64_t> after = store_.Revision();
  if (!after.ok() || *after != *revision) return Early::kNone;
  std::shared_ptr<const Serving> serving;
  {
    absl::MutexLock lock(&served_mu_);
    serving = serving_;
  }
  // The batch hosts' instances: those pinned there and those running there; one moving
  // between a batch host and another is left to the whole pass.
  std::vector<v1::KernelInstance> instances;
  std::map<std::string, std::string> pinned;  // instance -> its host (a batch host)
  for (v1::Object& o : *instance_objects) {
    v1::KernelInstance& ki = *o.mutable_kernel_instance();
    const std::string& name = ki.metadata().name();
    auto s = serving->find(name);
    const bool runs_here = s != serving->end() && in_batch.count(s->second.first);
    const bool pinned_here = in_batch.count(ki.spec().host()) > 0;
    if (!runs_here && !pinned_here) continue;
    if (s != serving->end() && ki.spec().host() != s->second.first) return Early::kNone;
    // Its standby elsewhere: this part of the fleet cannot see it.
    auto standby = settled_.standby_host.find(name);
    if (standby != settled_.standby_host.end() && !in_batch.count(standby->second)) return Early::kNone;
    if (pinned_here) pinned[name] = ki.spec().host();
    instances.push_back(std::move(ki));
  }
  std::vector<v1::InstanceSet> sets;
  std::set<std::string> keep;
  for (v1::Object& o : *set_objects) {
    keep.insert(o.instance_set().metadata().name());
    sets.push_back(std::move(*o.mutable_instance_set()));
  }
  FleetPlan part = PlanFleet(hosts, views, instances, sets, {}, {}, {}, {}, keep, {}, last_placed_);
  if (!part.unschedulable.empty() || !part.infeasible.empty() || !part.waiting.empty() || !part.deferred.empty() ||
      !part.pool_changes.empty() || !part.drained.empty()) {
    return Early::kNone;
  }
  // The batch hosts' instances as last planned are all still planned there: a set member
  // gone (removed out of band) is the whole pass's to place again.
  for (const auto& [name, where] : *serving) {
    if (in_batch.count(where.first) && !part.planned.count(name)) return Early::kNone;
  }
  // Only the pinned instances' actions go early.
  bool any = false;
  for (const std::string& h : batch) {
    auto plan = part.hosts.find(h);
    if (plan == part.hosts.end()) return Early::kNone;
    std::map<std::string, std::string> kernel_of;  // kernel -> the pinned instance it serves
    for (const std::string& request : part.planned_on[h]) {
      const PlannedInstance& p = part.planned.at(request);
      const std::string& object = p.standby_for.empty() ? request : p.standby_for;
      auto pin = pinned.find(object);
      if (p.owner.empty() && pin != pinned.end() && pin->second == h) kernel_of[p.kernel] = object;
    }
    for (const v1::Action& a : plan->second.actions) {
      if (!kernel_of.count(a.instance())) return Early::kNone;
      any = true;
    }
  }
  if (options_.check_early_sends) {
    // The whole pass's plan from the same store revision and views (a settled fleet: no
    // rollout; what is in flight is on other hosts).
    auto objects = ReadObjects();
    if (!objects.ok()) return Early::kNone;
    std::map<std::string, std::shared_ptr<HostConnection>> all_links;
    std::map<std::string, HostView> all_views = Views(&all_links);
    for (const auto& [h, v] : views) all_views[h] = v;
    FleetPlan whole =
        PlanFleet(objects->hosts, all_views, objects->instances, objects->sets, {}, {}, {}, {}, {}, {}, last_placed_);
    for (const std::string& h : batch) {
      const Plan none;
      auto w = whole.hosts.find(h);
      const Plan& early = part.hosts.at(h);
      const Plan& full = w == whole.hosts.end() ? none : w->second;
      if (ActionBytes(early) == ActionBytes(full)) continue;
      ++early_send_mismatches_;
      Log() << "early send to " << h << " differs from the whole plan: early [" << ActionsText(early) << "], whole ["
            << ActionsText(full) << "]\n";
      return Early::kNone;
    }
  }
  // Changes made outside mkfleet on these hosts (driftPolicy Correct: the plan puts them back).
  LoadStatusCache();
  DriftPass drift = drift_.Step(in_batch, hosts, views, status_cache_, absl::ToUnixMillis(clock_.Now()), &part);
  std::map<std::string, HostOutcome> outcomes;
  std::vector<v1::Event> events;
  for (const std::string& h : batch) {
    const Plan& plan = part.hosts.at(h);
    HostOutcome& o = outcomes[h];
    if (plan.actions.empty()) continue;
    if (options_.check_early_sends) Log() << "early send to " << h << ": " << absl::StrJoin(ActionIds(plan), " ") << "\n";
    o = dispatcher_.Send(h, *links.at(h), plan, part);
    for (v1::Event& e : o.events) events.push_back(std::move(e));
    o.events.clear();
    if (o.sent.ok()) early_sent_[h] = {Fingerprint(plan), o};
  }
  NoteSent(part, views, outcomes);
  if (any) ++early_sends_;
  for (v1::Event& e : drift.events) events.push_back(std::move(e));
  // The batch hosts' own statuses. A set member's that changed needs its set's counted
  // again over the whole fleet: the whole pass follows.
  PassInputs in{in_batch, hosts, instances, sets, part, views, outcomes, status_cache_};
  in.drift = &drift.by_host;
  in.local = true;
  StatusUpdate update = ComputeStatuses(in);
  bool members = false;
  for (const auto& [request, p] : part.planned) {
    members |= !p.owner.empty() && update.writes.count(StatusKey("KernelInstance", request)) > 0;
  }
  if (options_.may_act && !options_.may_act()) return Early::kSent;  // a deposed leader records nothing
  if (members) {
    // (The whole pass computes the same statuses; written then, with the sets'.)
    if (events_ != nullptr && !events.empty()) {
      absl::Status s = events_->RecordAll(std::move(events));
      if (!s.ok()) Log() << "events: " << s.message() << "\n";
    }
    return any ? Early::kSent : Early::kNone;
  }
  WriteStatuses(std::move(update), std::move(events));
  // Where the batch's instances run now, and each host's plan, as the whole pass notes them.
  NoteServing(part, &in_batch);
  for (const std::string& h : batch) {
    const Plan& plan = part.hosts.at(h);
    last_plan_seen_[h] = PlanIds(plan);
    const int64_t version = views.at(h).state_version;
    settled_.versions[h] = version;
    if (plan.actions.empty()) {
      settled_.idle[h] = version;
    } else {
      settled_.idle.erase(h);
    }
    (*result)[h] = outcomes[h].sent;
  }
  ++local_passes_;
  if (options_.check_early_sends) {
    // (A batch that failed is sent again by the whole pass: another outcome to record.)
    bool sent = true;
    for (const auto& [h, o] : outcomes) sent &= o.sent.ok();
    if (sent) {
      for (const std::string& h : batch) local_check_[h] = views.at(h).state_version;
    }
  }
  return Early::kDone;
}

}  // namespace mkfleet::reconciler
