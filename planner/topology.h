// Topology: one host's hardware as the planner sees it. A plain value, built by a
// TopologySource (topology_source.h) from hwloc, or by hand in tests.
//
// CPU numbers are logical (OS) numbers, as `lstopo -p` prints them; `physical_id` carries
// the id the multikernel kernel speaks (APIC id on x86). Only online, allowed PUs appear.
// Thread-safety: immutable after construction; share it freely (const).
#ifndef MKFLEET_PLANNER_TOPOLOGY_H_
#define MKFLEET_PLANNER_TOPOLOGY_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"

namespace mkfleet::planner {

inline constexpr uint64_t kMemoryBlock = 128ull << 20;  // the hot-plug memory block

struct NumaNode {
  uint32_t os_index = 0;
  uint64_t memory_bytes = 0;
  bool has_cpus = false;           // false for memory-only nodes (e.g. MCDRAM, CXL)
  std::vector<uint32_t> distances;  // to every node, by index into Topology::numa; may be empty
};

struct L3Domain {
  uint32_t ways = 0;  // cache ways (CAT capacity bits)
  uint64_t bytes = 0;
};

struct Core {
  uint32_t package = 0;  // index into packages
  uint32_t numa = 0;     // index into Topology::numa
  uint32_t l3 = 0;       // index into Topology::l3
  std::vector<uint32_t> pus;  // logical CPU numbers, ascending, at least one
};

struct PciFunction {
  std::string bdf;  // DDDD:BB:SS.F
  uint32_t class_id = 0;  // 16-bit class/subclass, e.g. 0x0200 Ethernet
  uint32_t vendor_id = 0;
  uint32_t device_id = 0;
  int numa = -1;  // index into Topology::numa, -1 when unknown
  std::vector<std::string> names;    // netdev / block / GPU names
  std::vector<std::string> vf_bdfs;  // SR-IOV virtual functions
  uint32_t nvme_namespaces = 0;
};

// The device class of a PCI class id (0x02xx Network, 0x01xx Storage, 0x03xx GPU,
// 0x12xx / 0x0b40 Accelerator), DEVICE_CLASS_UNSPECIFIED otherwise.
mkfleet::v1::DeviceClass ClassOf(uint32_t class_id);

// Logical CPU -> index of its core: a dense array (the hot lookup of placement).
class CoreIndex {
 public:
  bool contains(uint32_t pu) const { return pu < core_.size() && core_[pu] >= 0; }
  // REQUIRES: contains(pu).
  uint32_t at(uint32_t pu) const { return static_cast<uint32_t>(core_[pu]); }
  void set(uint32_t pu, uint32_t core) {
    if (pu >= core_.size()) core_.resize(pu + 1, -1);
    core_[pu] = static_cast<int32_t>(core);
  }
  void clear() { core_.clear(); }

 private:
  std::vector<int32_t> core_;
};

struct Topology {
  uint32_t packages = 0;
  std::vector<NumaNode> numa;
  std::vector<L3Domain> l3;
  std::vector<Core> cores;  // ascending by first PU
  std::vector<PciFunction> pci;
  absl::flat_hash_map<uint32_t, uint64_t> physical_ids;  // logical CPU -> physical id

  // Derived lookups (filled by Finish()).
  CoreIndex core_of_pu;
  absl::flat_hash_map<uint32_t, uint32_t> numa_by_os;  // NUMA os_index -> index
  uint32_t smt_width = 1;  // the most PUs of any core
  // Per NUMA index: (L3 index, cores) groups, cores ascending.
  std::vector<std::vector<std::pair<uint32_t, std::vector<uint32_t>>>> l3_groups;

  // Fills the derived lookups and sorts cores; call after building by hand.
  void Finish();

  size_t pu_count() const;
  // Index of the PCI function with this BDF or device name, or -1.
  int FindPci(absl::string_view bdf_or_name) const;
  // "2 packages, 2 NUMA nodes, 16 cores, 32 CPUs, 12 PCI functions"
  std::string Summary() const;
  mkfleet::v1::TopologyInfo ToProto() const;
};

// The inverse of Topology::ToProto (what an agent's Inventory carries), checked: every
// core names a known NUMA node and has PUs, no PU is in two cores, PCI functions name
// known nodes. InvalidArgument names the field ("topology.cores[3].numa_node: ...").
absl::StatusOr<Topology> TopologyFromProto(const mkfleet::v1::TopologyInfo& info);
// The same, shared: hosts whose agents report the same topology (a fleet of one server
// model) get one parsed copy while any of them holds it (the controller holds one per host:
// about 25 KiB each for a 64-PU server, 1,000 hosts alike were 25 MiB). Thread-safe.
absl::StatusOr<std::shared_ptr<const Topology>> SharedTopologyFromProto(const mkfleet::v1::TopologyInfo& info);

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_TOPOLOGY_H_
