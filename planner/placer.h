// Placer: places one instance on one host's ledger, failing with the most telling reason.
// Its pickers live in one file each: the NUMA nodes to try and the exact cpuSet
// (placer.cc), CPUs (placer_cpus.cc), memory (placer_memory.cc), PCI functions, VFs and
// namespaces (placer_devices.cc), L3 cache ways (placer_ways.cc). Internal to the planner.
// Thread-safety: none; one per placement.
#ifndef MKFLEET_PLANNER_PLACER_H_
#define MKFLEET_PLANNER_PLACER_H_

#include <cstdint>
#include <set>
#include <string>
#include <vector>

#include "planner/host_ledger.h"

namespace mkfleet::planner::internal {

// Places one instance on one host. Fails with the most telling reason.
class Placer {
 public:
  // With `explain` false, failures skip building their message (the fast path when many
  // hosts are tried).
  Placer(HostState& h, const InstanceRequest& req, const v1::Placement* prev,
         const std::vector<std::string>& names, bool explain = true)
      : h_(h), t_(h.topology()), req_(req), r_(req.resources), prev_(prev), names_(names), explain_(explain) {}

  bool Run(Take* out, std::string* why);

 private:
  enum Stage { kCpus = 0, kMemory = 1, kDevices = 2, kWays = 3, kDone = 4 };

  bool ResolveAllowed(std::string* why);

  uint32_t CoresNeeded() const { return (need_ + t_.smt_width - 1) / t_.smt_width; }

  // Capacity of a node set in the request's unit (whole cores or CPUs), and the units needed.
  uint64_t CapOf(const std::vector<uint32_t>& nodes) const;
  uint64_t Units() const { return whole_ ? CoresNeeded() : need_; }

  std::vector<uint32_t> Base(const std::vector<uint32_t>& device_nodes) const;

  std::vector<std::vector<uint32_t>> FirstNodeSets(const std::vector<uint32_t>& device_nodes);

  std::vector<std::vector<uint32_t>> MoreNodeSets(const std::vector<uint32_t>& device_nodes);

  std::string CpuShortage(const std::vector<uint32_t>& device_nodes) const;

  // Tries CPUs on `nodes`, then memory, devices and cache ways. Returns the stage reached.
  int TryNodes(const std::vector<uint32_t>& nodes, Take* take, std::string* why);

  // Cores of the previous placement (boot core first) that are usable again.
  std::vector<uint32_t> PreviousCores() const;

  bool PickCpus(const std::vector<uint32_t>& nodes, Take* take);

  bool RunExact(Take* out, std::string* why);

  bool PickMemory(Take* take, std::string* why);

  // The allowed nodes with CPUs that hold a function able to serve one of the device
  // requests (NearDevices places CPUs there).
  std::vector<uint32_t> DeviceNodes() const;

  // Whether function `p` matches request `d` and has room for it now.
  bool Serves(const v1::DeviceRequest& d, int p) const;

  // Devices; `local` (when known) are the instance's CPU nodes.
  bool PickDevices(const std::set<uint32_t>* local, Take* take, std::string* why);

  static bool TakenHere(const Take& take, int pci, int vf, int ns);

  std::string Busy(int pci, bool vfs, bool ns) const;

  bool PickWays(Take* take, std::string* why);

  HostState& h_;
  const Topology& t_;
  const InstanceRequest& req_;
  const v1::Resources& r_;
  const v1::Placement* prev_;
  const std::vector<std::string>& names_;
  const bool explain_;
  bool whole_ = true;
  uint32_t need_ = 0;
  std::vector<uint32_t> allowed_;    // NUMA indexes the request may use
  std::vector<uint32_t> cpu_nodes_;  // those with CPUs
  std::vector<uint32_t> cap_;
};

}  // namespace mkfleet::planner::internal

#endif  // MKFLEET_PLANNER_PLACER_H_
