// mkfleet_sim: runs the deterministic fleet simulation (sim/fleet_sim.h).
//   mkfleet_sim --seed N [--hosts H --steps S --verbose]   replays one seed
//   mkfleet_sim --soak [--from N --duration 30m]            seeds one after another until a
//                                                           violation, the duration, or SIGINT
// Exit 0 when every run held its invariants, 1 on a violation (with the replay command).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "CLI/CLI.hpp"
#include "absl/strings/str_join.h"
#include "sim/fleet_sim.h"

namespace {
std::atomic<bool> stop{false};
}

int main(int argc, char** argv) {
  CLI::App app{"mkfleet_sim: the deterministic fleet simulation (controller, agents, emulated kernels, faults)."};
  mkfleet::sim::SimOptions o;
  bool soak = false, no_faults = false, no_early = false;
  int minutes = 0;
  app.add_option("--seed", o.seed, "the seed to run (default 1); with --soak, the first");
  auto* hosts_opt = app.add_option("--hosts", o.hosts, "hosts (default 3; --soak varies it, 2 to 5, unless given)");
  auto* steps_opt = app.add_option("--steps", o.steps, "workload steps (default 600; --soak: 1800 on 5 hosts, unless given)");
  app.add_flag("--verbose", o.verbose, "print the trace");
  app.add_option("--shards", o.shards,
                 "> 0: a sharded control plane (this many shards) of the controller and a peer member (default 0)")
      ->check(CLI::Range(0, 4096));
  app.add_flag("--no-faults", no_faults, "no crashes and no network faults");
  app.add_flag("--no-early-send", no_early, "the controller plans the whole fleet before every send (no early sends)");
  app.add_flag("--soak", soak, "run seed after seed until a violation, --minutes, or Ctrl-C");
  app.add_option("--minutes", minutes, "with --soak: stop after this many minutes (0: until stopped)");
  CLI11_PARSE(app, argc, argv);
  o.faults = !no_faults;
  o.early_send = !no_early;
  signal(SIGINT, [](int) { stop = true; });
  auto start = std::chrono::steady_clock::now();
  int64_t runs = 0, steps = 0, faults = 0, ops = 0, actions = 0, early = 0, local = 0;
  std::string base = (std::filesystem::temp_directory_path() / ("mkfleet-sim-" + std::to_string(getpid()))).string();
  const int given_hosts = o.hosts, given_steps = o.steps;
  while (true) {
    if (soak) {
      // Fleets of several sizes, unless told: what a seed ran is in its replay command.
      o.hosts = hosts_opt->count() > 0 ? given_hosts : 2 + static_cast<int>(o.seed % 4);
      o.steps = steps_opt->count() > 0 ? given_steps : (o.hosts == 5 ? 1800 : 600);
    }
    o.dir = base + "-" + std::to_string(o.seed);
    mkfleet::sim::SimResult r = mkfleet::sim::RunFleetSim(o);
    std::filesystem::remove_all(o.dir);
    ++runs;
    steps += r.steps;
    faults += r.faults;
    ops += r.user_ops;
    actions += r.actions;
    early += r.early_sends;
    local += r.local_passes;
    if (!r.status.ok()) {
      std::cout << "seed " << o.seed << ": " << r.status.message() << "\n  last lines of the trace:\n    "
                << absl::StrJoin(r.tail, "\n    ") << "\n  replay: " << mkfleet::sim::ReplayCommand(o) << std::endl;
      return 1;
    }
    double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!soak) {
      std::cout << "seed " << o.seed << ": ok, " << r.steps << " steps, " << r.user_ops << " user operations, "
                << r.faults << " faults (" << r.drift_changes << " out-of-band changes), " << r.actions << " actions (" << r.early_sends << " batches sent early, " << r.local_passes << " local passes), trace " << std::hex << r.trace_hash << std::dec
                << std::endl;
      return 0;
    }
    if (runs % 10 == 0 || stop) {
      std::cout << "soak: " << runs << " seeds (" << o.seed << " last), " << steps << " steps, " << ops
                << " user operations, " << faults << " faults, " << actions << " actions (" << early << " batches sent early, " << local << " local passes), " << static_cast<int>(elapsed)
                << " s, no violation" << std::endl;
    }
    if (stop || (minutes > 0 && elapsed >= minutes * 60.0)) {
      std::cout << "soak: done: " << runs << " seeds, " << steps << " steps, " << ops << " user operations, " << faults
                << " faults injected, " << actions << " actions (" << early << " batches sent early, " << local << " local passes), " << static_cast<int>(elapsed) << " s, no violation"
                << std::endl;
      return 0;
    }
    ++o.seed;
  }
}
