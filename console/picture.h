// Pictures of one host: who owns each CPU and PCI function, drawn from the topology its
// agent reported (packages -> NUMA nodes -> L3 domains -> cores -> CPUs, PCI functions
// beside their node) and the placements of the instances on it. Two renderings: a text
// map for the terminal (`mkapply describe host --topology`) and an SVG picture (the
// console's host page, the demo's saved picture).
// Thread-safety: pure functions over values.
#ifndef MKFLEET_CONSOLE_PICTURE_H_
#define MKFLEET_CONSOLE_PICTURE_H_

#include <cstdint>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"

namespace mkfleet::console {

// A kernel that owns CPUs or devices on the host.
struct Owner {
  std::string name;    // the KernelInstance's, or an unmanaged kernel's
  std::string phase;   // the instance's phase; "unmanaged" for a kernel no object owns
  std::string colour;  // "#rrggbb", distinct on the host (see BuildPicture)
  char letter = '?';   // its mark in the text map, unique on the host
  int cpus = 0;        // CPUs of this host it holds
};

struct HostPicture {
  std::string host;
  mkfleet::v1::TopologyInfo topology;
  std::vector<Owner> owners;             // by name
  std::map<uint32_t, int> cpu_owner;     // CPU -> index into owners
  std::map<std::string, int> pci_owner;  // BDF (a VF's own too) -> index into owners
  std::set<uint32_t> pool;               // the CPUs lent to spawn kernels (the others are the host kernel's)
};

// `instances`: KernelInstance objects (others are skipped); those placed on `host` own
// what their placement holds; the host's unmanaged kernels own theirs. Colours: each owner
// (by name) takes the slot of a 19-colour palette of well-told-apart colours that a hash of
// its name picks, the next free one when taken (a name keeps its colour while the host's
// other owners do not clash with it); past 19 owners, OwnerColour.
HostPicture BuildPicture(const std::string& host, const mkfleet::v1::TopologyInfo& topology,
                         const mkfleet::v1::HostStatus& status, const std::vector<mkfleet::v1::Object>& instances);

// A colour for any name: a hue from a hash of it.
std::string OwnerColour(const std::string& name);
inline constexpr char kHostColour[] = "#9e9e9e";  // CPUs outside the pool: the host kernel's
inline constexpr char kFreeColour[] = "#ffffff";  // pool CPUs and devices nobody holds

// "Network", "Storage", "GPU", "Accelerator", "Bridge", ... or "class 0xCCCC".
std::string PciClassName(uint32_t class_id);

// The terminal's map: NUMA nodes as rows, cores as cells of one letter per CPU (the
// owner's letter, '.' free, '-' the host kernel's), '|' between L3 domains, then the PCI
// functions with their owners and a legend.
std::string TextMap(const HostPicture& picture);

// A self-contained SVG document: one <rect class="pu"> per CPU (data-cpu, data-owner,
// filled with the owner's colour), one <rect class="dev"> per PCI function, a legend of
// <g class="legend-item" data-owner> entries. Readable up to 768 CPUs.
std::string Svg(const HostPicture& picture);

}  // namespace mkfleet::console

#endif  // MKFLEET_CONSOLE_PICTURE_H_
