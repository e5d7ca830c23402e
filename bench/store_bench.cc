// store_bench: does the controller's store stay bounded under a steady fleet? In one
// process, on a simulated clock: 100 emulated hosts (in-process agents, no gRPC), one
// InstanceSet of perHost 10 (1,000 instances), the Reconciler driven step by step with the
// SQLite store in a file. Once everything runs, it runs PASSES passes (default 10,000) over
// every host. The fleet is steady but not idle: every CHURN passes (default 1) one instance
// crashes and is restarted (status writes and events each time), so the history grows by
// tens of thousands of revisions and the compaction window (10,000) matters.
// It prints the store file's size every 1,000 passes, the bound it keeps, and the mean pass
// time against its floor (one single-key store write, measured in the same run).
// Usage: store_bench [--passes N] [--churn-every N] [--no-compaction] (the history is then
// never compacted, for contrast).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <iostream>
#include <memory>
#include <string>

#include "absl/strings/str_cat.h"
#include "agents/testing/emulated_host.h"
#include "common/testing/simulated_clock.h"
#include "planner/topology_source.h"
#include "reconciler/event_log.h"
#include "reconciler/objects.h"
#include "reconciler/reconciler.h"
#include "reconciler/store.h"
#include "reconciler/testing/in_process_agent_client.h"

namespace {

using namespace mkfleet;
namespace v1 = mkfleet::v1;
using WallClock = std::chrono::steady_clock;

constexpr int kHosts = 100;
constexpr int kPerHost = 10;


double Ms(WallClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

}  // namespace

int main(int argc, char** argv) {
  int passes = 10000;
  int churn_every = 1;
  bool compaction = true;
  const char* usage = "usage: store_bench [--passes N] [--churn-every N] [--no-compaction]\n";
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--passes") && i + 1 < argc) {
      passes = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--churn-every") && i + 1 < argc) {
      churn_every = std::max(1, atoi(argv[++i]));
    } else if (!strcmp(argv[i], "--no-compaction")) {
      compaction = false;
    } else if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
      fputs(usage, stdout);
      return 0;
    } else {
      fprintf(stderr, "store_bench: unknown argument %s\n%s", argv[i], usage);
      return 2;
    }
  }
  std::string dir = (std::filesystem::temp_directory_path() / ("store-bench-" + std::to_string(getpid()))).string();
  std::filesystem::create_directories(dir);
  SimulatedClock clock;
  auto topology = std::make_shared<const planner::Topology>(
      *planner::NewSyntheticTopologySource("pack:2 numa:1(memory=16GiB) core:8 pu:2", {})->Load());
  std::string vmlinux = dir + "/vmlinux";
  { FILE* f = fopen(vmlinux.c_str(), "wb"); fwrite("\x7f" "ELF", 1, 4, f); fclose(f); }
  std::vector<std::unique_ptr<agents::EmulatedHost>> hosts;
  for (int i = 0; i < kHosts; ++i) {
    hosts.push_back(std::make_unique<agents::EmulatedHost>(absl::StrCat("h", i), dir, topology, clock));
  }
  std::string db = dir + "/store.db";
  auto store = *reconciler::OpenSqliteStore(db, clock);
  reconciler::Objects objects(*store);
  auto events = *reconciler::EventLog::Open(*store, clock);
  reconciler::ReconcilerOptions ro;
  ro.resync = absl::Seconds(1);
  ro.parallel_sends = 1;
  ro.history_window = compaction ? 10000 : (int64_t{1} << 60);
  ro.client_factory = [&](const std::string& host, const std::string&) -> std::unique_ptr<reconciler::AgentClient> {
    int i = std::stoi(host.substr(1));
    return std::make_unique<reconciler::InProcessAgentClient>([&hosts, i] { return hosts[i]->agent.get(); });
  };
  reconciler::Reconciler loop(*store, objects, clock, ro, events.get());

  std::vector<v1::Object> fleet;
  for (int i = 0; i < kHosts; ++i) {
    v1::Object o;
    v1::Host* h = o.mutable_host();
    h->mutable_metadata()->set_name(hosts[i]->name);
    h->mutable_spec()->set_agent(hosts[i]->name);
    h->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_cores(1);
    h->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_memory(1ull << 30);
    fleet.push_back(o);
  }
  v1::Object set;
  set.mutable_instance_set()->mutable_metadata()->set_name("s");
  set.mutable_instance_set()->mutable_spec()->set_per_host(kPerHost);
  v1::KernelInstanceSpec* t = set.mutable_instance_set()->mutable_spec()->mutable_template_()->mutable_spec();
  t->mutable_kernel()->set_image(vmlinux);
  t->mutable_resources()->set_cpus(2);
  t->mutable_resources()->set_memory(256ull << 20);
  fleet.push_back(set);
  if (!objects.Apply(fleet, reconciler::ApplyOptions{"bench", false, false}).ok()) return 1;

  auto step = [&] {
    clock.Advance(absl::Milliseconds(100));
    for (auto& h : hosts) h->agent->Tick();
    loop.Step();
  };
  auto ready = [&] {
    auto s = objects.Get("InstanceSet", "s");
    return s.ok() && s->has_value() && (*s)->instance_set().status().ready_replicas() == kHosts * kPerHost;
  };
  auto start = WallClock::now();
  int steps = 0;
  while (!ready() && steps < 2000) {
    step();
    ++steps;
  }
  if (!ready()) {
    std::cerr << "store_bench: the fleet did not converge\n";
    return 1;
  }
  printf("converged: %d instances on %d hosts in %d steps (%.1f s); store %.1f MiB\n", kHosts * kPerHost, kHosts, steps,
         Ms(WallClock::now() - start) / 1000, *store->SizeBytes() / 1048576.0);
  // The floor: one single-key write of the store.
  auto f0 = WallClock::now();
  for (int i = 0; i < 200; ++i) store->Put("/bench/floor", std::to_string(i)).IgnoreError();
  double floor_ms = Ms(WallClock::now() - f0) / 200;

  std::vector<std::string> all;
  for (auto& h : hosts) all.push_back(h->name);
  int64_t max_size = 0;
  double pass_ms = 0;
  int64_t writes0 = loop.status_writes();
  for (int p = 1; p <= passes; ++p) {
    if (p % churn_every == 0) {
      // Churn: an instance crashes and is restarted.
      int c = p / churn_every;
      agents::EmulatedHost& h = *hosts[c % kHosts];
      h.emu->InjectPanic(absl::StrCat("s-", h.name, "-", (c / kHosts) % kPerHost)).IgnoreError();
    }
    step();
    auto t0 = WallClock::now();
    loop.ReconcileHosts(all);
    pass_ms += Ms(WallClock::now() - t0);
    int64_t size = *store->SizeBytes();
    max_size = std::max(max_size, size);
    if (p % 1000 == 0) {
      printf("  after %5d passes: store %.1f MiB (largest so far %.1f MiB), %lld status writes, revision %lld\n", p,
             size / 1048576.0, max_size / 1048576.0, static_cast<long long>(loop.status_writes() - writes0),
             static_cast<long long>(*store->Revision()));
      fflush(stdout);
    }
  }
  printf("1. store after %d passes of a steady %d-instance fleet (a crash every %d passes): largest %.1f MiB, "
         "final %.1f MiB, %lld revisions (%s)\n",
         passes, kHosts * kPerHost, churn_every, max_size / 1048576.0, *store->SizeBytes() / 1048576.0,
         static_cast<long long>(*store->Revision()), compaction ? "history window 10,000 revisions" : "never compacted");
  printf("2. a pass over all %d hosts: %.2f ms mean; floor (one store write) %.3f ms; %.0fx the floor\n", kHosts,
         pass_ms / passes, floor_ms, pass_ms / passes / floor_ms);
  loop.Stop();
  std::filesystem::remove_all(dir);
  return 0;
}
