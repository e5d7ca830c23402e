// TopologySource: where a host's Topology comes from. Three implementations share one
// hwloc conversion: the live host, an hwloc XML export, an hwloc synthetic description
// ("pack:2 numa:2 core:8 pu:2").
//
// hwloc XML and synthetic topologies carry no SR-IOV or APIC information, so
// TopologyOptions fills those in deterministically; the live source reads sysfs and
// /proc/cpuinfo instead. Thread-safety: a source is used by one thread at a time.
#ifndef MKFLEET_PLANNER_TOPOLOGY_SOURCE_H_
#define MKFLEET_PLANNER_TOPOLOGY_SOURCE_H_

#include <memory>
#include <string>

#include "absl/container/flat_hash_map.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "planner/topology.h"

namespace mkfleet::planner {

struct TopologyOptions {
  // L3 ways when hwloc does not know the associativity.
  uint32_t default_llc_ways = 12;
  // XML/synthetic only: SR-IOV VFs to give every Network physical function.
  uint32_t vfs_per_network_function = 0;
};

class TopologySource {
 public:
  virtual ~TopologySource() = default;
  // Reads the topology. InvalidArgument for a malformed description, NotFound for a
  // missing file; the message names the source.
  virtual absl::StatusOr<Topology> Load() = 0;
  // "FILE.xml", "synthetic:...", "live".
  virtual std::string Describe() const = 0;
};

std::unique_ptr<TopologySource> NewXmlTopologySource(std::string path, TopologyOptions options = {});
std::unique_ptr<TopologySource> NewSyntheticTopologySource(std::string description,
                                                           TopologyOptions options = {});
std::unique_ptr<TopologySource> NewLiveTopologySource(TopologyOptions options = {});

// "live", "synthetic:STRING", or a path to an XML file (relative paths resolve against
// `base_dir`, e.g. the directory of the manifest that names it).
std::unique_ptr<TopologySource> TopologySourceFromSpec(absl::string_view spec,
                                                       absl::string_view base_dir = "",
                                                       TopologyOptions options = {});

// Parses /proc/cpuinfo: logical CPU ("processor") -> APIC id ("apicid"). InvalidArgument
// names the line of a malformed entry; a CPU without apicid maps to its own number.
absl::StatusOr<absl::flat_hash_map<uint32_t, uint64_t>> ParseCpuInfoApicIds(absl::string_view text);

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_TOPOLOGY_SOURCE_H_
