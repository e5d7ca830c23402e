#include "reconciler/dispatch.h"

#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "reconciler/controller_metrics.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

constexpr char kEpochKey[] = "/controller/epoch";

}  // namespace

Dispatcher::Dispatcher(Store& store, Clock& clock, Options options)
    : store_(store), clock_(clock), options_(std::move(options)) {}

void Dispatcher::NewEpoch() {
  absl::MutexLock lock(&mu_);
  epoch_ = 0;
}

int64_t Dispatcher::Epoch() {
  if (epoch_ != 0) return epoch_;
  // One more than any earlier controller on this store: agents refuse their late batches.
  for (int attempt = 0; attempt < 10; ++attempt) {
    auto kv = store_.Get(kEpochKey);
    if (!kv.ok()) break;
    int64_t last = 0;
    if (kv->has_value()) last = std::stoll((*kv)->value);
    auto rev = store_.Txn({{kEpochKey, kv->has_value() ? (*kv)->mod_revision : 0}},
                          {{Op::Type::kPut, kEpochKey, std::to_string(last + 1), 0}});
    if (rev.ok()) {
      epoch_ = last + 1;
      return epoch_;
    }
  }
  return 0;  // unfenced: never refused, and retried next time
}

v1::Fence Dispatcher::NextFence(const std::string& host) {
  absl::MutexLock lock(&mu_);
  v1::Fence f;
  f.set_epoch(Epoch());
  f.set_sequence(++sequence_[host]);
  return f;
}

void Dispatcher::Forget(const std::string& host) {
  absl::MutexLock lock(&mu_);
  policies_sent_.erase(host);
  // The fence sequence stays: the host's agent keeps the highest it took, so a Host applied
  // again in this run must go on above it (sim seed 8331). One integer per host name.
  for (auto b = backoff_.lower_bound(host + "/"); b != backoff_.end() && absl::StartsWith(b->first, host + "/");) {
    b = backoff_.erase(b);
  }
}

HostOutcome Dispatcher::Send(const std::string& host, HostConnection& link, const Plan& plan, const FleetPlan& fleet) {
  return Send(host, link, plan, PoliciesFor(host, fleet));
}

HostOutcome Dispatcher::Send(const std::string& host, HostConnection& link, const Plan& plan,
                             const v1::SetPolicyRequest& policies) {
  HostOutcome out;
  const absl::Duration now = clock_.Monotonic();
  v1::ActionBatch batch;
  absl::Duration retry_in = absl::InfiniteDuration();
  {
    // An instance whose last action failed waits out its backoff before that action is
    // tried again; the host's others go on, and so does a new plan for it (another intent:
    // e.g. deleting what failed to load).
    absl::MutexLock lock(&mu_);
    std::set<std::string> retried;  // instances whose plan still holds the failed action
    for (const v1::Action& a : plan.actions) {
      auto b = backoff_.find(absl::StrCat(host, "/", a.instance()));
      if (b != backoff_.end() && b->second.failed_id == a.id()) retried.insert(a.instance());
    }
    for (const v1::Action& a : plan.actions) {
      auto b = backoff_.find(absl::StrCat(host, "/", a.instance()));
      if (b != backoff_.end() && !retried.count(a.instance())) {
        backoff_.erase(b);
        b = backoff_.end();
      }
      if (b != backoff_.end() && b->second.next > now) {
        out.held_back[a.instance()] = absl::StrCat(b->second.why, " (retry ", b->second.failures + 1, " in ",
                                                    absl::FormatDuration(absl::Ceil(b->second.next - now, absl::Milliseconds(1))), ")");
        retry_in = std::min(retry_in, b->second.next - now);
        continue;
      }
      *batch.add_actions() = a;
      out.in_plan.insert(a.instance());
    }
  }
  if (retry_in != absl::InfiniteDuration() && options_.retry_after) options_.retry_after(host, retry_in);
  if (batch.actions_size() > 0) {
    if (options_.may_send && !options_.may_send(host)) {
      out.sent = absl::UnavailableError(absl::StrCat("this controller may not act on host ", host, " now: nothing sent"));
      return out;
    }
    *batch.mutable_fence() = NextFence(host);
    actions_sent_ += batch.actions_size();
    metrics::ActionsSent(batch);
    auto response = link.Execute(batch);
    metrics::ActionResults(batch, response);
    if (!response.ok()) {
      out.sent = response.status();
      out.events.push_back(MakeEvent("Host", host, host, true, "HostError", std::string(out.sent.message())));
    } else {
      std::map<std::string, std::string> instance_of;
      std::map<std::string, std::string> failed_ids;  // instance -> its failed action
      for (const v1::Action& a : batch.actions()) instance_of[a.id()] = a.instance();
      for (const v1::ActionResult& r : response->results()) {
        const std::string& instance = instance_of[r.id()];
        if (instance.empty() && r.code() == 0) out.pool_note = r.message();  // the pool change
        if (!r.replayed()) {
          std::string step = r.id().substr(r.id().rfind('/') + 1);
          if (instance.empty()) step = step.substr(0, step.rfind('-'));  // "pool-change"
          out.events.push_back(MakeEvent(instance.empty() ? "Host" : "KernelInstance", instance.empty() ? host : instance,
                                         host, r.code() != 0, r.code() == 0 ? "ActionDone" : "ActionFailed",
                                         r.code() == 0 ? (r.message().empty() ? step : absl::StrCat(step, ": ", r.message()))
                                                       : absl::StrCat(step, ": ", r.message())));
        }
        // The first failure of an instance is its cause; what it skipped follows from it.
        if (r.code() != 0 && !out.failed.count(instance)) {
          out.failed.emplace(instance, absl::StrCat(r.id(), ": ", r.message()));
          failed_ids[instance] = r.id();
        }
      }
      absl::MutexLock lock(&mu_);
      for (const std::string& instance : out.in_plan) {
        const std::string key = absl::StrCat(host, "/", instance);
        auto failed = out.failed.find(instance);
        if (failed == out.failed.end()) {
          backoff_.erase(key);
          continue;
        }
        Backoff& b = backoff_[key];
        absl::Duration delay =
            std::min(options_.backoff_base * (int64_t{1} << std::min(b.failures, 40)), options_.backoff_max);
        ++b.failures;
        b.next = now + delay;
        b.why = failed->second;
        b.failed_id = failed_ids[instance];
        retry_in = std::min(retry_in, delay);
      }
    }
    if (retry_in != absl::InfiniteDuration() && options_.retry_after) options_.retry_after(host, retry_in);
  }
  if (out.sent.ok()) SendPolicies(host, link, policies, &out);
  return out;
}

v1::SetPolicyRequest PoliciesFor(const std::string& host, const FleetPlan& fleet) {
  v1::SetPolicyRequest policies;
  policies.set_replace(true);
  static const std::vector<std::string> kNone;
  auto on = fleet.planned_on.find(host);
  for (const std::string& name : on != fleet.planned_on.end() ? on->second : kNone) {
    const PlannedInstance& p = fleet.planned.at(name);
    if (p.host != host || !p.standby_for.empty() || p.spec == nullptr) continue;
    v1::LocalPolicy* lp = policies.add_policies();
    lp->set_instance(p.kernel);
    *lp->mutable_failover() = p.spec->failover();
    if (p.spec->failover().policy() == v1::FAILOVER_STANDBY) {
      auto standby = fleet.planned.find(name + "-standby");
      if (standby != fleet.planned.end()) {
        lp->set_standby_instance(standby->second.kernel);
      } else {
        // No standby placed (yet): the watchdog restarts it instead.
        lp->mutable_failover()->set_policy(v1::FAILOVER_RESTART);
      }
    }
  }
  return policies;
}

void Dispatcher::SendPolicies(const std::string& host, HostConnection& link, v1::SetPolicyRequest policies,
                              HostOutcome* out) {
  policies.clear_fence();
  std::string wire = policies.SerializeAsString();
  {
    absl::MutexLock lock(&mu_);
    auto sent = policies_sent_.find(host);
    if (sent != policies_sent_.end() ? sent->second == wire : policies.policies_size() == 0) return;
  }
  if (options_.may_send && !options_.may_send(host)) return;
  *policies.mutable_fence() = NextFence(host);
  absl::Status s = link.SetPolicy(policies);
  if (s.ok()) {
    absl::MutexLock lock(&mu_);
    policies_sent_[host] = wire;
  } else {
    out->sent = s;
    out->events.push_back(MakeEvent("Host", host, host, true, "PolicyFailed", std::string(s.message())));
  }
}

}  // namespace mkfleet::reconciler
