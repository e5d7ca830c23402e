// The multikernel device-tree shapes of docs/kernel-abi.md section 3, as C++ values, with
// their encoders and decoders for both dialects:
//  - kV1: the newest kernel (memory@N pool chunks, target-path fragments, device-add);
//  - kLegacy: kerf 0.1 (memory-base/memory-bytes, one contiguous pool range).
// CPUs are u64 physical ids; an instance's first CPU is its boot CPU.
// Thread-safety: plain values and pure functions.
#ifndef MKFLEET_KERNEL_DEVICE_TREE_H_
#define MKFLEET_KERNEL_DEVICE_TREE_H_

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "kernel/fdt.h"

namespace mkfleet::kernel {

enum class Dialect { kV1, kLegacy };
const char* DialectName(Dialect d);

struct PoolMemory {
  uint64_t base = 0;  // read-back only (the kernel places pool chunks)
  uint64_t size = 0;
  uint32_t numa = 0;
};

struct PoolDevice {
  std::string name;    // node and alias name, e.g. "nic0"
  std::string pci_id;  // DDDD:BB:SS.F
  uint32_t vendor_id = 0;
  uint32_t device_id = 0;
};

// What the pool holds (the baseline written to device_tree), and what reading it back
// shows (with cpus_available and the chunks' bases).
struct PoolState {
  std::vector<uint64_t> cpus;
  std::vector<uint64_t> cpus_available;  // read-back only
  std::vector<PoolMemory> memory;        // kLegacy: exactly one range
  std::vector<PoolDevice> devices;
  bool operator==(const PoolState& o) const;
};

struct InstanceDevice {
  std::string pci_id;
  std::string driver;  // e.g. "vfio-pci"
  bool operator==(const InstanceDevice& o) const { return pci_id == o.pci_id && driver == o.driver; }
};

struct VirtioDevice {
  std::string name;  // node name, e.g. "net0"
  uint32_t device_id = 0;  // 1 net, 2 blk, 3 console, 19 vsock
  uint32_t queues = 1;
  uint32_t queue_size = 256;
  bool operator==(const VirtioDevice& o) const {
    return name == o.name && device_id == o.device_id && queues == o.queues && queue_size == o.queue_size;
  }
};

// An instance's resources (instance-create, and the instance's device_tree read-back).
struct InstanceResources {
  uint64_t memory_bytes = 0;
  uint64_t memory_base = 0;          // kLegacy only: user-chosen base
  std::vector<uint64_t> cpus;        // boot CPU first
  std::vector<uint64_t> pool_cpus;   // every CPU the instance might be handed (hot-plug)
  std::vector<uint32_t> numa_nodes;
  std::vector<InstanceDevice> devices;
  std::vector<VirtioDevice> virtio;
  std::optional<uint32_t> llc_way_mask;
  bool device_names = false;  // devices came as the older dialect's device-names list
  bool operator==(const InstanceResources& o) const {
    return memory_bytes == o.memory_bytes && memory_base == o.memory_base && cpus == o.cpus &&
           pool_cpus == o.pool_cpus && numa_nodes == o.numa_nodes && devices == o.devices && virtio == o.virtio &&
           llc_way_mask == o.llc_way_mask && device_names == o.device_names;
  }
};

struct CpuEntry {
  uint64_t physical_id = 0;
  uint32_t numa = 0;
  uint32_t flags = 0;
};

struct MemoryEntry {
  uint64_t base = 0;  // instance form: reg = <addr size>
  uint64_t size = 0;
  uint32_t numa = 0;  // pool form: size + numa-node-id
};

struct DeviceEntry {
  std::string pci_id;
  std::string alias;   // pool form only
  std::string driver;  // instance form only
  uint32_t flags = 0;
};

// One fragment: what to do at `target_path` ("/instances", "/instances/<name>",
// "/resources"). Operations are applied in the kernel's fixed order, whatever the order of
// fields here.
struct Fragment {
  std::string target_path;
  // /instances
  std::optional<std::string> create_name;
  std::optional<uint32_t> create_id;
  InstanceResources create_resources;
  std::optional<std::string> remove_name;
  // /instances/<name> and /resources
  std::vector<CpuEntry> cpu_add, cpu_remove;
  std::vector<MemoryEntry> memory_add, memory_remove;
  std::vector<DeviceEntry> device_add, device_remove;
};

struct Overlay {
  std::vector<Fragment> fragments;
};

DtNode InstanceResourcesNode(const InstanceResources& r, Dialect d);
absl::StatusOr<InstanceResources> ParseInstanceResources(const DtNode& node);

absl::StatusOr<std::string> EncodeBaseline(const PoolState& pool, Dialect d);
absl::StatusOr<std::string> EncodePoolReadBack(const PoolState& pool, Dialect d);
// Reads a pool read-back (or a baseline) of either dialect; sets `dialect` when non-null.
absl::StatusOr<PoolState> DecodePool(absl::string_view blob, Dialect* dialect = nullptr);

absl::StatusOr<std::string> EncodeInstance(const InstanceResources& r, Dialect d);
absl::StatusOr<InstanceResources> DecodeInstance(absl::string_view blob);

absl::StatusOr<std::string> EncodeOverlay(const Overlay& overlay, Dialect d);
absl::StatusOr<Overlay> DecodeOverlay(absl::string_view blob);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_DEVICE_TREE_H_
