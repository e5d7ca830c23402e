// Pool: what one host lends to spawn kernels, derived from a Host's spec.pool and its
// Topology (kernel-abi.md section 1). Pure; thread-safe.
#ifndef MKFLEET_PLANNER_POOL_H_
#define MKFLEET_PLANNER_POOL_H_

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "mkfleet/v1/manifest.pb.h"
#include "planner/topology.h"

namespace mkfleet::planner {

struct Pool {
  std::vector<uint32_t> cpus;                  // logical, ascending
  std::map<uint32_t, uint64_t> memory;         // NUMA index -> bytes (multiple of 128Mi)
  std::vector<int> devices;                    // indexes into Topology::pci, ascending
};

// Derives the pool. `hostReserved`: the host keeps `cores` whole cores of NUMA node 0
// (always including the core of CPU 0) and `memory` bytes (from node 0 first); the rest
// is pooled. Explicit form: exactly the listed CPUs, memory per node and devices.
// InvalidArgument names the host and field: CPUs, nodes or devices the topology lacks, more
// memory than a node has, or a pool that would leave the host no CPU or memory.
absl::StatusOr<Pool> DerivePool(absl::string_view host, const Topology& topology,
                                const mkfleet::v1::Pool& spec);

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_POOL_H_
