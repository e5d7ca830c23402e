// FleetSim: the deterministic fleet simulation, in the spirit of FoundationDB's simulation
// and TigerBeetle's VOPR. mkcontroller's loop (Reconciler, driven by Step), N agents and
// their emulated kernels run in one thread on one simulated clock; the network between
// controller and agents drops, delays, duplicates and reorders calls and breaks watch
// streams; the controller and the agents crash and restart at random points (an agent also
// in the middle of a batch, between a kernel change and its journal record). A random
// workload of user operations runs against it: apply, change, resize (also beyond what a
// host has), delete and re-create the same names, scale sets up and down, cordon and delete
// hosts, bad kernels, panics and hangs, kernel changes by live update (Morph: the agents run
// their morphs inline against in-process guests, sim/sim_guests.h; a morph meets the same
// crashes, faults and concurrent spec changes, and (a) catches a kernel it leaves behind);
// and attacks: hostile applies (cpus 0, names that are
// no DNS label, id 9999, unknown enums, relative kernel paths) through the controller's
// checks, hostile batches (../../ names, 4 KiB ids, 1,101 actions, relative images) through
// the agent's.
//
// After every step it checks invariants:
//  (b) a running kernel is stopped by an action only when a change that requires it was
//      asked for since it last started (or a fault hit it);
//  (c) no CPU or memory block is held by two kernels, and no plan places two requests on
//      one CPU;
//  (d) no action id takes effect in a kernel twice;
//  (h) every attack is refused and changes nothing, and every batch the controller sends
//      passes the agent's checks;
//  (l) the controller is a member of a control plane (reconciler/election.h, lease 2 s):
//      cut off from the store it steps down before its lease can expire, a rival member
//      campaigns now and then; never two leaders, and no batch or policy reaches an agent
//      from a controller that is not the leader;
//  (m) sharded (`shards` > 0): a second member, the peer, sends to the hosts the ring gives
//      it what the leader publishes (reconciler/shards.h); it is killed and cut off from the
//      store now and then. At no step do two members own one host, and no batch or policy
//      reaches an agent from a member that does not own its host;
//  (n) a change sent early (Reconciler's early send: pinned instances on a settled fleet)
//      is what the whole fleet's plan sends those hosts (checked at every early send);
//  (p) no member sends a host actions while the host's watch stream has not yet brought it
//      the last batch the host answered it (the batch's mark), unless 5 s passed since
//      that answer (an agent restarted at once has lower marks): a plan from a view
//      without the host's last batch sends it again, or actions the agent refuses;
// and, once faults stop, that the fleet converges within a bounded number of steps and a
// further pass sends nothing (f), and then:
//  (a) every kernel belongs to exactly one object, or its host reports it unmanaged;
//  (b') every KernelInstance that ran, still exists and wants Running, runs;
//  (e) every status that says Ready matches the kernel and the spec;
//  (o) no member of a replicas set runs on a draining host (Host spec.drain) unless the set
//      says it cannot be placed (Scheduled False).
// The same seed gives the same trace (its hash is part of the result).
// Thread-safety: single-threaded.
#ifndef MKFLEET_SIM_FLEET_SIM_H_
#define MKFLEET_SIM_FLEET_SIM_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace mkfleet::sim {

struct SimOptions {
  uint64_t seed = 1;
  int hosts = 3;
  int steps = 600;          // steps of workload and faults
  int settle_steps = 1200;  // the bound for convergence once faults stop
  bool faults = true;       // network faults and crashes
  bool early_send = true;   // the controller's early sends (reconciler.h); (n) checks each
  std::string dir;          // scratch directory (state dirs, kernel images); required
  bool verbose = false;     // print the trace as it goes
  int shards = 0;           // > 0: a sharded control plane of the controller and a peer
};

struct SimResult {
  absl::Status status;  // the first invariant violated, with its step
  uint64_t trace_hash = 0;
  int64_t steps = 0;
  int64_t user_ops = 0;
  int64_t faults = 0;
  int64_t drift_changes = 0;  // out-of-band changes made to managed kernels (kerf-*)
  int64_t actions = 0;  // actions the controller sent
  int64_t early_sends = 0;  // batches the controller sent early (each checked by (n))
  int64_t local_passes = 0;  // local passes (each checked by (n) against the whole pass after it)
  std::vector<std::string> tail;  // the last lines of the trace
};

SimResult RunFleetSim(const SimOptions& options);

// The command that replays `options`.
std::string ReplayCommand(const SimOptions& options);

}  // namespace mkfleet::sim

#endif  // MKFLEET_SIM_FLEET_SIM_H_
