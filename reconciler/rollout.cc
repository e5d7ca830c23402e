#include "reconciler/rollout.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/fnv.h"
#include "proto/int_or_percent.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

namespace {

constexpr absl::Duration kDefaultHealthTimeout = absl::Seconds(60);
constexpr size_t kMaxReasons = 10;

// FNV-1a of the parts: the canary order (stable across processes and runs).
uint64_t OrderHash(const std::string& owner, uint32_t revision, const std::string& name) {
  return Fnv1a().Field(owner).Field(std::to_string(revision)).Field(name).value();
}

int64_t Ms(absl::Time t) { return absl::ToUnixMillis(t); }

}  // namespace

const char* RolloutPhaseName(v1::RolloutPhase phase) {
  switch (phase) {
    case v1::ROLLOUT_COMPLETE:
      return "Complete";
    case v1::ROLLOUT_PROGRESSING:
      return "Progressing";
    case v1::ROLLOUT_PAUSED:
      return "Paused";
    case v1::ROLLOUT_FAILED:
      return "Failed";
    case v1::ROLLOUT_ROLLING_BACK:
      return "RollingBack";
    case v1::ROLLOUT_ROLLED_BACK:
      return "RolledBack";
    default:
      return "Unknown";
  }
}

uint32_t Resolve(const v1::IntOrPercent& v, uint32_t total, uint32_t fallback, uint32_t min) {
  return ResolveIntOrPercent(v, total, fallback, min);
}

uint32_t StableFor(const v1::RolloutProgress& progress, uint32_t target) {
  if (progress.revision() == 0) return target;
  if (progress.revision() != target && progress.phase() == v1::ROLLOUT_COMPLETE) return progress.revision();
  return progress.stable();
}

RolloutStep StepRollout(const RolloutView& view, v1::RolloutProgress* progress) {
  RolloutStep out;
  v1::RolloutProgress& p = *progress;
  const std::string before = p.SerializeAsString();
  const v1::Rollout& policy = view.policy;
  const uint32_t total = static_cast<uint32_t>(view.members.size());
  auto event = [&](const std::string& reason, const std::string& message) { out.events.emplace_back(reason, message); };
  static const std::string kNone;
  // The KernelRevision of `revision` for member `m` (its own with a RolloutPolicy).
  auto kernel_at = [&](const RolloutMember& m, uint32_t revision) -> const std::string& {
    const auto& of = m.kernels.empty() ? view.kernel_of_revision : m.kernels;
    auto it = of.find(revision);
    return it == of.end() ? kNone : it->second;
  };
  auto target_of = [&](const RolloutMember& m) -> const std::string& {
    return m.kernels.empty() ? view.target_kernel : kernel_at(m, view.target);
  };

  // A new revision starts a rollout from the last one that completed.
  if (p.revision() == 0) {
    p.set_revision(view.target);
    p.set_stable(view.target);
    p.set_phase(v1::ROLLOUT_COMPLETE);
    p.set_canary_passed(true);
  } else if (p.revision() != view.target) {
    const uint32_t stable = StableFor(p, view.target);
    bool paused = p.paused();
    p.Clear();
    p.set_revision(view.target);
    p.set_stable(stable);
    p.set_paused(paused);
    p.set_phase(paused ? v1::ROLLOUT_PAUSED : v1::ROLLOUT_PROGRESSING);
    p.set_started_unix_ms(Ms(view.now));
    event("RolloutStarted", absl::StrCat("revision ", view.target, " (from revision ", stable, ")"));
  }
  // The rollout stops at a failure: back to the stable revision (autoRollback, the default),
  // or held as it is.
  auto stop = [&](const std::string& why) {
    const bool rollback = !policy.has_auto_rollback() || policy.auto_rollback();
    p.set_phase(rollback ? v1::ROLLOUT_ROLLING_BACK : v1::ROLLOUT_FAILED);
    if (rollback) p.set_rolling_back_unix_ms(Ms(view.now));
    event("RolloutFailed", absl::StrCat("revision ", view.target, ": ", why,
                                        rollback ? absl::StrCat("; rolling back to revision ", p.stable())
                                                 : "; stopped (autoRollback off)"));
  };

  // Members by name, and their classification against the stored progress.
  std::map<std::string, const RolloutMember*> members;
  for (const RolloutMember& m : view.members) members[m.name] = &m;
  // Members let move and not seen now may be being re-created, unless the last pass did not
  // place them: then they are gone for good.
  auto gone_for_good = [&](const std::string& name) { return view.placed.has_value() && !view.placed->count(name); };
  const absl::Duration min_ready = absl::Milliseconds(policy.min_ready());
  const absl::Duration health_timeout =
      policy.health_timeout() > 0 ? absl::Milliseconds(policy.health_timeout()) : kDefaultHealthTimeout;
  const bool rolling = !view.frozen && (p.phase() == v1::ROLLOUT_PROGRESSING || p.phase() == v1::ROLLOUT_PAUSED);

  if (rolling) {
    // New members, and members already at the target, take part at once (no budget: they
    // are being created, or already there).
    for (const RolloutMember& m : view.members) {
      if (p.members().count(m.name)) continue;
      if (m.kernel.empty() || m.kernel == target_of(m)) {
        (*p.mutable_members())[m.name].set_admitted_unix_ms(Ms(view.now));
      }
    }
    // Health of every admitted member.
    // (In name order: the reasons kept are the same on every run.)
    for (const auto& [name, member] : members) {
      auto found = p.mutable_members()->find(name);
      if (found == p.mutable_members()->end()) continue;  // not let move
      v1::MemberProgress& mp = found->second;
      const RolloutMember& m = *member;
      // A member done at the target that goes down again (a kernel that crashes some time
      // after its boot) is not done any more: it must be Ready again within healthTimeout.
      const std::string& target_kernel = target_of(m);
      if (mp.done() && mp.failed().empty() && m.kernel == target_kernel && !m.up) {
        mp.set_done(false);
        mp.set_ready_since_unix_ms(0);
        mp.set_admitted_unix_ms(Ms(view.now));
        event("MemberRegressed", absl::StrCat(name, " at revision ", view.target, " is down again after it was Ready"));
      }
      if (mp.admitted_unix_ms() == 0 || mp.done() || !mp.failed().empty()) continue;
      const bool at_target = m.kernel == target_kernel;
      std::string failed;
      if (!m.failure.empty() && (m.failed_kernel.empty() || m.failed_kernel == target_kernel)) {
        failed = m.failure;
      } else if (at_target && m.up) {
        if (mp.ready_since_unix_ms() == 0) mp.set_ready_since_unix_ms(Ms(view.now));
        if (view.now - absl::FromUnixMillis(mp.ready_since_unix_ms()) >= min_ready) mp.set_done(true);
      } else {
        mp.set_ready_since_unix_ms(0);
        if (view.now - absl::FromUnixMillis(mp.admitted_unix_ms()) >= health_timeout) {
          failed = absl::StrCat("not Ready within healthTimeout ", absl::FormatDuration(health_timeout));
        }
      }
      if (!failed.empty()) {
        mp.set_failed(failed);
        p.set_failures(p.failures() + 1);
        if (static_cast<size_t>(p.reasons_size()) < kMaxReasons) p.add_reasons(absl::StrCat(name, ": ", failed));
        event("MemberFailed", absl::StrCat(name, " at revision ", view.target, ": ", failed));
      }
    }
    const uint32_t max_failures = Resolve(policy.max_failures(), total, 1, 1);
    if (p.failures() >= max_failures) {
      stop(absl::StrCat(p.failures(), " member(s) failed (", absl::StrJoin(p.reasons(), "; "), ")"));
    }
  }

  // The waves' order: the policy's list first, then the other values sorted.
  std::vector<std::string> wave_order;
  {
    std::set<std::string> values;
    for (const RolloutMember& m : view.members) values.insert(m.wave);
    for (const std::string& v : policy.waves().order()) {
      if (values.erase(v)) wave_order.push_back(v);
    }
    wave_order.insert(wave_order.end(), values.begin(), values.end());
  }
  // Members in the order they move: by wave, then by hash.
  std::map<std::string, size_t> wave_index;
  for (size_t i = 0; i < wave_order.size(); ++i) wave_index[wave_order[i]] = i;
  // (Each member's key computed once: a set of 6,000 members sorts in ~80,000 comparisons.)
  struct Keyed {
    size_t wave;
    uint64_t hash;
    const RolloutMember* member;
  };
  std::vector<Keyed> keyed;
  keyed.reserve(view.members.size());
  for (const RolloutMember& m : view.members) {
    keyed.push_back({wave_index[m.wave], OrderHash(view.owner, view.target, m.name), &m});
  }
  std::sort(keyed.begin(), keyed.end(), [](const Keyed& a, const Keyed& b) {
    if (a.wave != b.wave) return a.wave < b.wave;
    return a.hash != b.hash ? a.hash < b.hash : a.member->name < b.member->name;
  });
  std::vector<const RolloutMember*> order;
  order.reserve(keyed.size());
  for (const Keyed& k : keyed) order.push_back(k.member);
  auto progress_of = [&](const std::string& name) -> const v1::MemberProgress* {
    auto it = p.members().find(name);
    return it == p.members().end() ? nullptr : &it->second;
  };
  auto finished = [&](const std::string& name) {
    const v1::MemberProgress* mp = progress_of(name);
    return mp != nullptr && (mp->done() || !mp->failed().empty());
  };

  // The budget: Replace, members down (for any reason) or admitted and not done; Morph,
  // members admitted and not done. An admitted member counts until it is done (Ready for
  // minReady), as Kubernetes counts a pod unavailable until ready for minReadySeconds.
  struct Load {
    uint32_t limit = 0, busy = 0, failed_down = 0, moving = 0;
    bool all_finished = true;
  };
  auto load = [&] {
    Load l;
    l.limit = view.morph ? Resolve(policy.max_surge(), total, 1, 1) : Resolve(policy.max_unavailable(), total, 1, 1);
    for (const RolloutMember& m : view.members) {
      const v1::MemberProgress* mp = progress_of(m.name);
      const bool admitted = mp != nullptr && mp->admitted_unix_ms() > 0;
      const bool failed = admitted && !mp->failed().empty();
      const bool settled = admitted && (mp->done() || failed);
      l.busy += view.morph ? admitted && !settled : !m.up || (admitted && !settled);
      l.failed_down += failed && !m.up;
      l.moving += admitted && !settled;
      l.all_finished &= settled;
    }
    // Members being created (placed, not seen yet, never let move) are down (Replace).
    if (!view.morph) {
      for (const std::string& name : view.creating) {
        const v1::MemberProgress* mp = progress_of(name);
        if (!members.count(name) && (mp == nullptr || mp->admitted_unix_ms() == 0)) ++l.busy;
      }
    }
    // Members let move that are not seen now are being re-created (a Replace): down, for as
    // long as they could still come back Ready (healthTimeout); after that they are gone
    // (their host or the set shrank) and hold nothing.
    for (const auto& [name, mp] : p.members()) {
      if (members.count(name) || gone_for_good(name) || mp.admitted_unix_ms() == 0 || mp.done() ||
          !mp.failed().empty()) {
        continue;
      }
      if (view.now - absl::FromUnixMillis(mp.admitted_unix_ms()) < health_timeout) {
        ++l.busy;
        ++l.moving;
      }
    }
    return l;
  };
  if (rolling && (p.phase() == v1::ROLLOUT_PROGRESSING || p.phase() == v1::ROLLOUT_PAUSED)) {
    const uint32_t canaries = policy.has_canary() ? Resolve(policy.canary(), total, 0, 0) : 0;
    if (canaries == 0) p.set_canary_passed(true);  // no canary step
    // The canaries: kept once one has moved; until then chosen each pass (below).
    if (canaries > 0 && !p.canary_passed()) {
      // Canaries gone before they were let move (their host or the set shrank) are chosen
      // anew; so are all of them while none has moved: a member that went down meanwhile
      // becomes the canary (moving it takes no budget; else, down and never let move, it
      // would hold the budget the canary waits for: sim seed 42014).
      bool any_moved = false;
      for (const auto& [name, mp] : p.members()) any_moved |= mp.canary() && mp.admitted_unix_ms() > 0;
      std::vector<std::string> again;
      for (const auto& [name, mp] : p.members()) {
        if (mp.canary() && mp.admitted_unix_ms() == 0 && (!any_moved || !members.count(name))) again.push_back(name);
      }
      for (const std::string& name : again) p.mutable_members()->erase(name);
      uint32_t chosen = 0;
      for (const auto& [name, mp] : p.members()) chosen += mp.canary();
      if (chosen == 0) {
        // The first wave with a member to move, that of a member down if one is; in it, the
        // members down first, then in order.
        auto to_move = [&](const RolloutMember& m) { return m.kernel != target_of(m) && !m.kernel.empty(); };
        const RolloutMember* first = nullptr;
        for (const RolloutMember* m : order) {
          if (!to_move(*m)) continue;
          if (first == nullptr) first = m;
          if (!m->up) {
            first = m;
            break;
          }
        }
        std::vector<const RolloutMember*> candidates;
        for (const RolloutMember* m : order) {
          if (first != nullptr && m->wave == first->wave && to_move(*m) && !p.members().count(m->name)) {
            candidates.push_back(m);
          }
        }
        std::stable_partition(candidates.begin(), candidates.end(), [](const RolloutMember* m) { return !m->up; });
        for (const RolloutMember* m : candidates) {
          if (chosen >= canaries) break;
          (*p.mutable_members())[m->name].set_canary(true);
          ++chosen;
        }
        if (chosen == 0) p.set_canary_passed(true);  // nothing to move: no canary step
      }
    }
    const Load now = load();
    const uint32_t limit = now.limit, failed_down = now.failed_down;
    const uint32_t budget = now.limit > now.busy ? now.limit - now.busy : 0;
    // Failed members that hold the whole budget (down after a Replace) leave nothing to go on
    // with: the rollout stops rather than stall below maxFailures.
    if (budget == 0 && now.moving == 0 && failed_down >= limit && !now.all_finished) {
      if (static_cast<size_t>(p.reasons_size()) < kMaxReasons) {
        p.add_reasons(absl::StrCat(failed_down, " failed member(s) are down and hold the whole budget (", limit, ")"));
      }
      stop(absl::StrCat(failed_down, " failed member(s) are down and hold the whole budget"));
    }
  }
  if (rolling && (p.phase() == v1::ROLLOUT_PROGRESSING || p.phase() == v1::ROLLOUT_PAUSED)) {
    const Load now = load();
    uint32_t budget = now.limit > now.busy ? now.limit - now.busy : 0;
    // (Replace: a member that is down counts against the budget already, so moving it takes
    // nothing from it; else one down and not yet let move would hold the budget for good.)
    auto admit = [&](const RolloutMember& m) {
      const bool free = !view.morph && !m.up;
      if (budget == 0 && !free) return false;
      v1::MemberProgress& mp = (*p.mutable_members())[m.name];
      if (mp.admitted_unix_ms() > 0) return false;
      mp.set_admitted_unix_ms(Ms(view.now));
      if (!free) --budget;
      return true;
    };
    const bool user_paused = p.paused();
    if (!p.canary_passed()) {
      bool all_done = true;
      for (const auto& [name, mp] : p.members()) {
        // (One let move and gone counts as long as it could come back: see load().)
        bool present = members.count(name) > 0 ||
                       (!gone_for_good(name) && mp.admitted_unix_ms() > 0 &&
                        view.now - absl::FromUnixMillis(mp.admitted_unix_ms()) < health_timeout);
        if (mp.canary() && present && !(mp.done() || !mp.failed().empty())) all_done = false;
      }
      if (all_done) {
        p.set_canary_passed(true);
        if (policy.pause_after_canary()) {
          p.set_paused(true);
          event("CanaryPassed", absl::StrCat("revision ", view.target,
                                             ": the canaries are Ready; paused (`mkapply rollout resume`)"));
        } else {
          event("CanaryPassed", absl::StrCat("revision ", view.target, ": the canaries are Ready"));
        }
      } else if (!user_paused) {
        for (const RolloutMember* m : order) {
          const v1::MemberProgress* mp = progress_of(m->name);
          if (mp != nullptr && mp->canary()) admit(*m);
        }
      }
    }
    if (p.canary_passed() && !p.paused()) {
      // The current wave: the first with a member not finished.
      std::string wave;
      bool any = false;
      for (const RolloutMember* m : order) {
        if (!finished(m->name)) {
          wave = m->wave;
          any = true;
          break;
        }
      }
      if (any) {
        if (wave != p.wave() && !policy.waves().by().empty()) {
          event("WaveStarted", absl::StrCat("revision ", view.target, ": wave ", policy.waves().by(), "=", wave));
        }
        p.set_wave(wave);
        for (const RolloutMember* m : order) {
          if (m->wave == wave && m->kernel != target_of(*m)) admit(*m);
        }
      }
    }
    p.set_phase(p.paused() ? v1::ROLLOUT_PAUSED : v1::ROLLOUT_PROGRESSING);
    // Complete: every member finished (done, or failed below maxFailures).
    bool complete = true;
    for (const RolloutMember& m : view.members) complete &= finished(m.name);
    if (complete && p.canary_passed()) {
      p.set_phase(v1::ROLLOUT_COMPLETE);
      p.set_stable(view.target);
      p.set_finished_unix_ms(Ms(view.now));
      p.set_paused(false);
      p.clear_members();
      p.set_wave("");
      event("RolloutComplete", absl::StrCat("revision ", view.target, ": every member (", total, ") updated",
                                            p.failures() > 0 ? absl::StrCat(", ", p.failures(), " failed") : ""));
    }
  }

  if (!view.frozen && p.phase() == v1::ROLLOUT_ROLLING_BACK) {
    // Back once every member let move runs the stable revision again and is Ready; or, for
    // one that cannot be (its stable revision does not come up either), once healthTimeout
    // has passed since the rollback started: its own status says why.
    bool back = true;
    std::vector<std::string> not_back;
    for (const RolloutMember& m : view.members) {
      const v1::MemberProgress* mp = progress_of(m.name);
      if (mp == nullptr || mp->admitted_unix_ms() == 0) continue;
      // (A policy's instance new since the stable revision has none to go back to.)
      const std::string& stable_kernel = kernel_at(m, p.stable());
      if (!m.kernels.empty() && stable_kernel.empty()) continue;
      if (m.kernel != stable_kernel || !m.up) {
        back = false;
        not_back.push_back(m.name);
      }
    }
    const bool timed_out = p.rolling_back_unix_ms() > 0 &&
                           view.now - absl::FromUnixMillis(p.rolling_back_unix_ms()) >= health_timeout;
    if (back || timed_out) {
      p.set_phase(v1::ROLLOUT_ROLLED_BACK);
      p.set_finished_unix_ms(Ms(view.now));
      event("RolledBack", absl::StrCat("revision ", view.target, " rolled back to revision ", p.stable(),
                                       back ? "" : absl::StrCat(" (not Ready at it: ", absl::StrJoin(not_back, ", "), ")"),
                                       "; held until a new change or `mkapply rollout undo`"));
    }
  }

  // What each member runs.
  const bool held_back = p.phase() == v1::ROLLOUT_ROLLING_BACK || p.phase() == v1::ROLLOUT_ROLLED_BACK;
  out.default_revision = held_back ? p.stable() : view.target;
  // A member not let move runs the revision of its kernel (the newest with it); a new one, or
  // one whose kernel is no revision's, the default.
  // The stable revision first when its kernel is the member's: a member the rollout has not
  // let move stays at the spec it was last brought to (the sim's seed 1083: one rolled back
  // to the stable revision was moved to a newer revision with the same kernel but another
  // size when the next change restarted the rollout, outside the budget).
  auto unmoved = [&](const RolloutMember& m) -> uint32_t {
    if (m.kernel.empty()) return out.default_revision;
    if (kernel_at(m, p.stable()) == m.kernel) return p.stable();
    if (!m.kernels.empty()) {
      for (auto it = m.kernels.rbegin(); it != m.kernels.rend(); ++it) {
        if (it->second == m.kernel) return it->first;
      }
      return out.default_revision;
    }
    auto it = view.revision_of_kernel.find(m.kernel);
    return it != view.revision_of_kernel.end() ? it->second : out.default_revision;
  };
  for (const RolloutMember& m : view.members) {
    const v1::MemberProgress* mp = progress_of(m.name);
    const bool admitted = mp != nullptr && mp->admitted_unix_ms() > 0;
    uint32_t revision;
    switch (p.phase()) {
      case v1::ROLLOUT_COMPLETE:
        revision = view.target;
        break;
      case v1::ROLLOUT_ROLLING_BACK:
      case v1::ROLLOUT_ROLLED_BACK:
        revision = admitted ? p.stable() : unmoved(m);
        break;
      default:  // Progressing, Paused, Failed (held as it is)
        revision = admitted ? view.target : unmoved(m);
        break;
    }
    if (revision != out.default_revision) out.revision_of[m.name] = revision;
  }

  // Status: the canaries, then each wave.
  v1::RolloutStatus& st = out.status;
  st.set_revision(p.revision());
  st.set_stable(p.stable());
  st.set_phase(RolloutPhaseName(p.phase()));
  st.set_paused(p.paused());
  st.set_current_wave(p.wave());
  st.set_failures(p.failures());
  *st.mutable_reasons() = p.reasons();
  std::map<std::string, v1::WaveStatus> waves;
  v1::WaveStatus canary;
  canary.set_value("canary");
  for (const RolloutMember& m : view.members) {
    const v1::MemberProgress* mp = progress_of(m.name);
    const bool updated = m.kernel == target_of(m) && !m.kernel.empty();
    const bool ready = p.phase() == v1::ROLLOUT_COMPLETE ? (updated && m.up) : (mp != nullptr && mp->done());
    const bool failed = mp != nullptr && !mp->failed().empty();
    for (v1::WaveStatus* w : {&waves[m.wave], mp != nullptr && mp->canary() ? &canary : nullptr}) {
      if (w == nullptr) continue;
      w->set_total(w->total() + 1);
      w->set_updated(w->updated() + updated);
      w->set_ready(w->ready() + ready);
      w->set_failed(w->failed() + failed);
    }
  }
  if (canary.total() > 0) *st.add_waves() = canary;
  for (const std::string& w : wave_order) {
    v1::WaveStatus& ws = waves[w];
    ws.set_value(w);
    *st.add_waves() = ws;
  }
  switch (p.phase()) {
    case v1::ROLLOUT_COMPLETE:
      st.set_message(absl::StrCat("revision ", p.revision(), " everywhere"));
      break;
    case v1::ROLLOUT_PAUSED:
      st.set_message(!p.canary_passed() || p.members().empty()
                         ? "paused by the user (`mkapply rollout resume`)"
                         : "paused (`mkapply rollout resume` goes on)");
      break;
    case v1::ROLLOUT_PROGRESSING:
      st.set_message(!p.canary_passed() ? "updating the canaries"
                                        : policy.waves().by().empty()
                                              ? "updating"
                                              : absl::StrCat("updating wave ", policy.waves().by(), "=", p.wave()));
      break;
    case v1::ROLLOUT_FAILED:
      st.set_message(absl::StrCat("stopped: ", p.failures(), " member(s) failed; autoRollback is off"));
      break;
    case v1::ROLLOUT_ROLLING_BACK:
      st.set_message(absl::StrCat("rolling back to revision ", p.stable()));
      break;
    case v1::ROLLOUT_ROLLED_BACK:
      st.set_message(absl::StrCat("revision ", p.revision(), " failed and is held; revision ", p.stable(),
                                  " runs (a new change or `mkapply rollout undo` starts a new rollout)"));
      break;
    default:
      break;
  }
  if (view.frozen && p.phase() != v1::ROLLOUT_COMPLETE) {
    st.set_message(absl::StrCat("waiting for every host the set selects to connect (", st.message(), ")"));
  }
  out.changed = p.SerializeAsString() != before;
  return out;
}

}  // namespace mkfleet::reconciler
