#include "planner/host_ledger.h"

#include "absl/strings/str_join.h"

namespace mkfleet::planner::internal {

std::string NodeList(const Topology& t, const std::vector<uint32_t>& nodes) {
  std::vector<uint32_t> os;
  for (uint32_t n : nodes) os.push_back(t.numa[n].os_index);
  return absl::StrJoin(os, ",");
}

std::string ClassName(v1::DeviceClass c) {
  switch (c) {
    case v1::DEVICE_CLASS_NETWORK:
      return "Network";
    case v1::DEVICE_CLASS_STORAGE:
      return "Storage";
    case v1::DEVICE_CLASS_GPU:
      return "GPU";
    case v1::DEVICE_CLASS_ACCELERATOR:
      return "Accelerator";
    default:
      return "PCI";
  }
}

}  // namespace mkfleet::planner::internal
