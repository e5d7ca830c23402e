#include "reconciler/reconciler.h"

#include <iostream>

#include "absl/strings/str_cat.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {
namespace {
namespace v1 = mkfleet::v1;
}  // namespace

Reconciler::Reconciler(Store& store, Objects& objects, Clock& clock, ReconcilerOptions options)
    : store_(store), objects_(objects), clock_(clock), options_(options), queue_(clock) {}

Reconciler::~Reconciler() { Stop(); }

void Reconciler::Start() {
  SyncConnections();
  watcher_ = std::thread([this] { WatchStore(); });
  worker_ = std::thread([this] { Work(); });
}

void Reconciler::Stop() {
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stopping_ = true;
  }
  queue_.ShutDown();
  if (watcher_.joinable()) watcher_.join();
  if (worker_.joinable()) worker_.join();
  std::map<std::string, std::pair<std::string, std::unique_ptr<HostConnection>>> connections;
  {
    absl::MutexLock lock(&mu_);
    connections.swap(connections_);
  }
  for (auto& [host, c] : connections) c.second->Stop();
}

void Reconciler::SyncConnections() {
  auto hosts = objects_.List("Host");
  if (!hosts.ok()) return;
  std::map<std::string, std::string> wanted;
  for (const v1::Object& o : *hosts) wanted[o.host().metadata().name()] = o.host().spec().agent();
  std::vector<std::unique_ptr<HostConnection>> closed;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    for (auto it = connections_.begin(); it != connections_.end();) {
      auto w = wanted.find(it->first);
      if (w == wanted.end() || w->second != it->second.first) {
        closed.push_back(std::move(it->second.second));
        it = connections_.erase(it);
      } else {
        ++it;
      }
    }
    for (const auto& [host, address] : wanted) {
      if (connections_.count(host) || address.empty()) continue;
      HostConnectionOptions o;
      o.unreachable_after = options_.unreachable_after;
      o.on_change = [this](const std::string& h) { queue_.Add(h); };
      auto c = std::make_unique<HostConnection>(host, address, clock_, o);
      c->Start();
      connections_[host] = {address, std::move(c)};
    }
  }
  for (auto& c : closed) c->Stop();
  for (const auto& [host, address] : wanted) queue_.Add(host);
}

void Reconciler::WatchStore() {
  auto rev = store_.Revision();
  int64_t seen = rev.ok() ? *rev : 0;
  absl::Duration last_resync = clock_.Monotonic();
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    auto next = store_.WaitForRevision(seen, absl::Milliseconds(200));
    bool resync = clock_.Monotonic() - last_resync >= options_.resync;
    if ((next.ok() && *next > seen) || resync) {
      if (next.ok()) seen = std::max(seen, *next);
      if (resync) last_resync = clock_.Monotonic();
      SyncConnections();
    }
  }
}

void Reconciler::Work() {
  while (true) {
    std::string host;
    if (!queue_.Get(&host, absl::Milliseconds(200))) {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      continue;
    }
    absl::Status s = ReconcileHost(host);
    if (s.ok()) {
      queue_.Forget(host);
    } else {
      // Logged once per failure; the backoff bounds how often.
      std::cerr << "reconcile " << host << ": " << s.message() << " (retry " << queue_.Failures(host) + 1 << ")\n";
      queue_.AddRateLimited(host);
    }
    queue_.Done(host);
  }
}

absl::Status Reconciler::ReconcileHost(const std::string& host) {
  ++passes_;
  auto host_objects = objects_.List("Host");
  if (!host_objects.ok()) return host_objects.status();
  auto instance_objects = objects_.List("KernelInstance");
  if (!instance_objects.ok()) return instance_objects.status();
  auto set_objects = objects_.List("InstanceSet");
  if (!set_objects.ok()) return set_objects.status();
  std::vector<v1::Host> hosts;
  for (const v1::Object& o : *host_objects) hosts.push_back(o.host());
  std::vector<v1::KernelInstance> instances;
  for (const v1::Object& o : *instance_objects) instances.push_back(o.kernel_instance());
  std::vector<v1::InstanceSet> sets;
  for (const v1::Object& o : *set_objects) sets.push_back(o.instance_set());

  std::map<std::string, HostView> views;
  HostConnection* target = nullptr;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [name, c] : connections_) {
      views[name] = c.second->View();
      if (name == host) target = c.second.get();
    }
  }
  if (target == nullptr) return absl::OkStatus();  // deleted meanwhile
  FleetPlan fleet = PlanFleet(hosts, views, instances, sets);
  auto plan = fleet.hosts.find(host);
  if (plan == fleet.hosts.end()) {
    return views[host].connected ? absl::OkStatus()
                                 : absl::UnavailableError(absl::StrCat("host ", host, ": ", views[host].error));
  }
  if (plan->second.actions.empty()) return absl::OkStatus();
  v1::ActionBatch batch;
  for (const v1::Action& a : plan->second.actions) *batch.add_actions() = a;
  actions_sent_ += batch.actions_size();
  auto response = target->Execute(batch);
  if (!response.ok()) return response.status();
  for (const v1::ActionResult& r : response->results()) {
    if (r.code() != 0) return absl::AbortedError(absl::StrCat("host ", host, ": action ", r.id(), ": ", r.message()));
  }
  return absl::OkStatus();
}

}  // namespace mkfleet::reconciler
