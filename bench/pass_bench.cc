// pass_bench: the controller's pass steps (PlanFleet, the rollouts' step, drift) on
// fleet_bench's fleet, without processes: 1,000 hosts (2 packages x 16 cores x 2 PUs, 64 GiB per node), InstanceSets
// web (6 per host) and cache (4 per host): 10,000 members, every one running where it was
// placed. It prints
//   1. a plan from scratch (every member placed);
//   2. a steady pass (every member runs; nothing to do): what every reconcile pass pays;
//   3. a pass after one member's spec changed (the one-instance change);
//   4. the rollouts' step (Rollouts::Step, records in a SQLite store on /dev/shm or the
//      temp dir) and the drift step (DriftTracker::Step, every host in the batch) of a
//      steady pass: what a pass does besides PlanFleet;
// each as the median of several runs, and as a multiple of the floor measured in the same
// run: one deep copy of every instance the agents report (10,000 protos at 1,000 hosts).
//
//   pass_bench [--hosts N] [--runs N]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstring>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "bench/fleet_harness.h"
#include "planner/pool.h"
#include "planner/topology_source.h"
#include "common/clock.h"
#include "reconciler/drift.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/rollouts.h"
#include "reconciler/store.h"

namespace {

namespace v1 = mkfleet::v1;
using mkfleet::bench::Clock;
using mkfleet::bench::Seconds;
using mkfleet::reconciler::FleetPlan;
using mkfleet::reconciler::HostView;

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

v1::InstanceSet Set(const std::string& name, uint32_t per_host) {
  v1::InstanceSet s;
  s.mutable_metadata()->set_name(name);
  s.mutable_metadata()->set_generation(1);
  s.mutable_spec()->set_per_host(per_host);
  v1::KernelInstanceSpec* spec = s.mutable_spec()->mutable_template_()->mutable_spec();
  spec->mutable_kernel()->set_image("/bench/vmlinux");
  spec->mutable_kernel()->set_cmdline("console=mktty0");
  spec->mutable_resources()->set_cpus(2);
  spec->mutable_resources()->set_memory(1ull << 30);
  return s;
}

}  // namespace

int main(int argc, char** argv) {
  int host_count = 1000, runs = 7;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--hosts") && i + 1 < argc) {
      host_count = std::max(1, atoi(argv[++i]));
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = std::max(1, atoi(argv[++i]));
    } else {
      const bool help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
      std::fprintf(help ? stdout : stderr, "usage: pass_bench [--hosts N] [--runs N]\n");
      return help ? 0 : 2;
    }
  }
  auto topology = mkfleet::planner::NewSyntheticTopologySource("pack:2 numa:1(memory=64GiB) core:16 pu:2")->Load();
  if (!topology.ok()) {
    std::fprintf(stderr, "pass_bench: %s\n", std::string(topology.status().message()).c_str());
    return 1;
  }
  auto topo = std::make_shared<const mkfleet::planner::Topology>(*std::move(topology));
  std::vector<v1::Host> hosts;
  std::map<std::string, HostView> views;
  for (int i = 0; i < host_count; ++i) {
    v1::Host h;
    h.mutable_metadata()->set_name(mkfleet::bench::HostName(i + 1));
    h.mutable_metadata()->set_generation(1);
    (*h.mutable_metadata()->mutable_labels())["rack"] = absl::StrCat("r", i % 20);
    // As fleet_bench's Hosts: hostReserved one core and 4Gi; the agent lends that pool.
    h.mutable_spec()->mutable_pool()->mutable_host_reserved()->set_cores(1);
    h.mutable_spec()->mutable_pool()->mutable_host_reserved()->set_memory(4ull << 30);
    auto pool = mkfleet::planner::DerivePool(h.metadata().name(), *topo, h.spec().pool());
    if (!pool.ok()) {
      std::fprintf(stderr, "pass_bench: %s\n", std::string(pool.status().message()).c_str());
      return 1;
    }
    HostView v;
    v.connected = v.reachable = true;
    v.topology = topo;
    for (uint32_t pu : pool->cpus) v.pool.add_cpus(pu);
    for (const auto& [node, bytes] : pool->memory) {
      auto* m = v.pool.add_memory();
      m->set_node(topo->numa[node].os_index);
      m->set_bytes(bytes);
    }
    views[h.metadata().name()] = std::move(v);
    hosts.push_back(std::move(h));
  }
  std::vector<v1::InstanceSet> sets = {Set("web", 6), Set("cache", 4)};
  const std::vector<v1::KernelInstance> instances;

  auto t = Clock::now();
  FleetPlan first = mkfleet::reconciler::PlanFleet(hosts, views, instances, sets);
  const double scratch = Seconds(Clock::now() - t);
  // Every member runs where it was placed.
  for (const auto& [name, p] : first.planned) {
    v1::ObservedInstance o;
    o.set_name(p.kernel);
    o.set_owner(p.recorded_owner);
    o.mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
    *o.mutable_status()->mutable_placement() = first.placements.at(name);
    o.mutable_status()->mutable_provenance()->set_kernel_path("/bench/vmlinux");
    o.mutable_status()->mutable_provenance()->set_cmdline("console=mktty0");
    views[p.host].instances[p.kernel] = std::move(o);
  }
  for (auto& [name, v] : views) v.state_version = 1;

  std::vector<double> floor, steady, change;
  size_t actions = 0, changed_actions = 0;
  for (int r = 0; r < runs; ++r) {
    t = Clock::now();
    FleetPlan p = mkfleet::reconciler::PlanFleet(hosts, views, instances, sets);
    steady.push_back(Seconds(Clock::now() - t));
    actions = 0;
    for (const auto& [h, plan] : p.hosts) actions += plan.actions.size();
  }
  // One member's spec changes (a rollout holds it at its own spec: member_specs).
  v1::KernelInstanceSpec changed = sets[0].spec().template_().spec();
  changed.mutable_kernel()->set_cmdline("console=mktty0 changed");
  const std::string member = first.planned_on.begin()->second.front();
  for (int r = 0; r < runs; ++r) {
    t = Clock::now();
    FleetPlan p = mkfleet::reconciler::PlanFleet(hosts, views, instances, sets, {}, {}, {{member, &changed}});
    change.push_back(Seconds(Clock::now() - t));
    changed_actions = 0;
    for (const auto& [h, plan] : p.hosts) changed_actions += plan.actions.size();
  }
  // The other steps of a steady pass: the rollouts' (their records in a store) and drift's.
  const std::string store_path =
      absl::StrCat(access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp", "/pass_bench-", getpid(), ".db");
  auto store = mkfleet::reconciler::OpenSqliteStore(store_path, mkfleet::Clock::Real());
  if (!store.ok()) {
    std::fprintf(stderr, "pass_bench: %s\n", std::string(store.status().message()).c_str());
    return 1;
  }
  mkfleet::reconciler::Rollouts rollouts(**store, mkfleet::Clock::Real());
  std::map<std::string, std::pair<std::string, std::string>> serving;
  for (const auto& [name, p] : first.planned) serving[name] = {p.host, p.kernel};
  std::set<std::string> batch;
  for (const auto& [name, v] : views) batch.insert(name);
  mkfleet::reconciler::DriftTracker drift;
  const std::map<std::string, std::string> no_statuses;
  std::vector<double> rollout_step, drift_step;
  bool held = false;
  for (int r = 0; r < runs + 1; ++r) {  // (the first writes the sets' records)
    t = Clock::now();
    mkfleet::reconciler::RolloutPass pass = rollouts.Step(hosts, sets, instances, {}, views, serving, 1);
    if (r > 0) rollout_step.push_back(Seconds(Clock::now() - t));
    held |= !pass.member_specs.empty() || !pass.held.empty();
    FleetPlan p = mkfleet::reconciler::PlanFleet(hosts, views, instances, sets);
    t = Clock::now();
    drift.Step(batch, hosts, views, no_statuses, 1, &p);
    if (r > 0) drift_step.push_back(Seconds(Clock::now() - t));
  }
  store->reset();
  for (const char* suffix : {"", "-wal", "-shm", ".lock"}) unlink((store_path + suffix).c_str());
  for (int r = 0; r < runs; ++r) {
    t = Clock::now();
    std::vector<v1::ObservedInstance> copy;
    copy.reserve(first.planned.size());
    for (const auto& [host, v] : views) {
      for (const auto& [name, in] : v.instances) copy.push_back(in);
    }
    floor.push_back(Seconds(Clock::now() - t));
  }
  const double f = Median(floor);
  std::printf("fleet: %d hosts, %zu set members; floor: one deep copy of every reported instance %.2f ms (median of %d)\n",
              host_count, first.planned.size(), f * 1000, runs);
  std::printf("1. plan from scratch: %.1f ms (%zu placed, %zu unschedulable)\n", scratch * 1000, first.planned.size(),
              first.unschedulable.size());
  std::printf("2. steady pass (all running, nothing to do): %.1f ms median of %d, %.1fx the floor; %zu actions (must be 0)\n",
              Median(steady) * 1000, runs, Median(steady) / f, actions);
  std::printf("3. pass after one member's spec changed: %.1f ms median of %d, %.1fx the floor; %zu actions\n",
              Median(change) * 1000, runs, Median(change) / f, changed_actions);
  std::printf("4. the other steps of a steady pass: rollouts %.1f ms (%.1fx the floor), drift on every host %.1f ms "
              "(%.1fx the floor), medians of %d%s\n",
              Median(rollout_step) * 1000, Median(rollout_step) / f, Median(drift_step) * 1000, Median(drift_step) / f,
              runs, held ? "; SOME MEMBER HELD BACK (must be none)" : "");
  return actions == 0 && changed_actions > 0 && !held ? 0 : 1;
}
