// Out-of-band changes to a host's kernel, made the way an operator's `kerf` would on a real
// host: straight through the multikernel interface (kernel/host_kernel.h, with its own lock
// and no records of mkfleet's), never through the agent's executor or journal. For drift
// tests and demos (mkfault kerf-*), and for the fleet simulation's out-of-band faults.
//
//   kerf-halt INSTANCE          halt it (forced)
//   kerf-remove INSTANCE        halt, unload and remove it
//   kerf-cpu-remove INSTANCE    hot-remove one CPU (RESOURCE: its physical id; default the
//                               last one that is not the boot CPU)
//   kerf-memory-remove INSTANCE hot-remove one memory region it can give back (not the
//                               one holding its kernel)
//   kerf-create INSTANCE        create an instance no object owns: one free pool CPU
//                               (RESOURCE: its physical id) and 128Mi
#ifndef MKFLEET_AGENTS_KERF_OPS_H_
#define MKFLEET_AGENTS_KERF_OPS_H_

#include <string>

#include "absl/status/status.h"
#include "kernel/host_kernel.h"

namespace mkfleet::agents {

// True for the operation names above.
bool IsKerfOperation(const std::string& op);
// Runs `op` on `instance` through `kerf` (a HostKernel of its own over the host's kernel).
absl::Status KerfOperation(kernel::HostKernel& kerf, const std::string& op, const std::string& instance,
                           const std::string& resource);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_KERF_OPS_H_
