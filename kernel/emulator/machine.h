// The emulated machine of a planner Topology: its CPUs by physical id, its RAM per NUMA
// node (laid out one node after another from address 0), and its PCI functions and VFs.
#ifndef MKFLEET_KERNEL_EMULATOR_MACHINE_H_
#define MKFLEET_KERNEL_EMULATOR_MACHINE_H_

#include "kernel/emulator/emulated_kernel.h"
#include "planner/topology.h"

namespace mkfleet::kernel {

EmulatorOptions MachineFromTopology(const planner::Topology& topology);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_EMULATOR_MACHINE_H_
