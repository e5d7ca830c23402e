#include "agents/kerf_ops.h"

#include <algorithm>
#include <set>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::agents {

namespace v1 = mkfleet::v1;

namespace {

constexpr uint64_t kBlock = 128ull << 20;  // kerf-create's memory

// The instance `name` as the kernel shows it now.
absl::StatusOr<kernel::InstanceInfo> Find(kernel::HostKernel& kerf, const std::string& name) {
  auto obs = kerf.Observe();
  if (!obs.ok()) return obs.status();
  for (kernel::InstanceInfo& i : obs->instances) {
    if (i.name == name) return std::move(i);
  }
  return absl::NotFoundError(absl::StrCat("no instance ", name));
}

absl::Status Remove(kernel::HostKernel& kerf, const std::string& name) {
  // Halt, unload, remove: three calls, not one transaction, so the controller may start it
  // again in between (it puts a halted kernel back): taken from the top, a few times.
  absl::Status last;
  for (int step = 0, failures = 0; step < 20 && failures < 5; ++step) {
    auto state = kerf.StateOf(name);
    if (!state.ok()) return state.status();
    if (*state == v1::KERNEL_STATE_ABSENT) {
      return step == 0 ? absl::NotFoundError(absl::StrCat("no instance ", name)) : absl::OkStatus();
    }
    if (*state == v1::KERNEL_STATE_ACTIVE || *state == v1::KERNEL_STATE_FAILED) {
      last = kerf.Halt(name, /*force=*/true);
    } else if (*state == v1::KERNEL_STATE_LOADED) {
      last = kerf.Unload(name);
    } else {
      last = kerf.Remove(name);
      if (last.ok()) return last;
    }
    if (!last.ok()) ++failures;
  }
  return last.ok() ? absl::AbortedError(absl::StrCat(name, " kept being started again")) : last;
}

absl::Status RemoveCpu(kernel::HostKernel& kerf, const std::string& name, const std::string& resource) {
  auto info = Find(kerf, name);
  if (!info.ok()) return info.status();
  const std::vector<uint64_t>& cpus = info->resources.cpus;
  if (cpus.size() < 2) return absl::FailedPreconditionError(absl::StrCat(name, " has only its boot CPU"));
  uint64_t cpu = cpus.back();
  if (!resource.empty()) {
    if (!absl::SimpleAtoi(resource, &cpu)) return absl::InvalidArgumentError("resource: want a CPU's physical id");
    if (cpu == cpus.front()) return absl::FailedPreconditionError("the boot CPU cannot be hot-removed");
    if (std::find(cpus.begin(), cpus.end(), cpu) == cpus.end()) {
      return absl::NotFoundError(absl::StrCat(name, " does not have CPU ", cpu));
    }
  }
  kernel::CpuEntry entry;
  entry.physical_id = cpu;
  return kerf.RemoveCpus(name, {entry});
}

absl::Status RemoveMemory(kernel::HostKernel& kerf, const std::string& name) {
  // One whole region a hot-remove can give back (the kernel takes regions, not bytes).
  auto info = Find(kerf, name);
  if (!info.ok()) return info.status();
  for (const auto& [node, sizes] : info->removable_by_node) {
    if (sizes.empty()) continue;
    auto release = kerf.MemoryToRelease(name, node, sizes.front());
    if (!release.ok()) return release.status();
    return kerf.RemoveMemory(name, *release);
  }
  return absl::FailedPreconditionError(
      absl::StrCat(name, " has no memory region a hot-remove can give back (only the one holding its kernel)"));
}

absl::Status Create(kernel::HostKernel& kerf, const std::string& name, const std::string& resource) {
  auto obs = kerf.Observe();
  if (!obs.ok()) return obs.status();
  std::set<uint64_t> used;
  for (const kernel::InstanceInfo& i : obs->instances) {
    if (i.name == name) return absl::AlreadyExistsError(absl::StrCat("instance ", name, " exists"));
    used.insert(i.resources.cpus.begin(), i.resources.cpus.end());
  }
  std::optional<uint64_t> cpu;
  if (!resource.empty()) {
    uint64_t wanted = 0;
    if (!absl::SimpleAtoi(resource, &wanted)) return absl::InvalidArgumentError("resource: want a CPU's physical id");
    cpu = wanted;
  } else {
    for (auto it = obs->pool.cpus.rbegin(); it != obs->pool.cpus.rend(); ++it) {
      if (!used.count(*it)) {
        cpu = *it;
        break;
      }
    }
  }
  if (!cpu.has_value()) return absl::ResourceExhaustedError("no free pool CPU");
  if (obs->pool.memory.empty()) return absl::ResourceExhaustedError("the pool has no memory");
  // The kernel takes the memory from the instance's first NUMA node's share of the pool.
  kernel::InstanceResources resources;
  resources.cpus = {*cpu};
  resources.pool_cpus = {*cpu};
  resources.memory_bytes = kBlock;
  resources.numa_nodes = {obs->pool.memory.front().numa};
  return kerf.Create(name, std::nullopt, resources, /*owner=*/"");
}

}  // namespace

bool IsKerfOperation(const std::string& op) {
  return op == "kerf-halt" || op == "kerf-remove" || op == "kerf-cpu-remove" || op == "kerf-memory-remove" ||
         op == "kerf-create";
}

absl::Status KerfOperation(kernel::HostKernel& kerf, const std::string& op, const std::string& instance,
                           const std::string& resource) {
  if (instance.empty()) return absl::InvalidArgumentError(absl::StrCat(op, " needs an instance"));
  if (op == "kerf-halt") return kerf.Halt(instance, /*force=*/true);
  if (op == "kerf-remove") return Remove(kerf, instance);
  if (op == "kerf-cpu-remove") return RemoveCpu(kerf, instance, resource);
  if (op == "kerf-memory-remove") return RemoveMemory(kerf, instance);
  if (op == "kerf-create") return Create(kerf, instance, resource);
  return absl::InvalidArgumentError(absl::StrCat("unknown out-of-band operation \"", op, "\""));
}

}  // namespace mkfleet::agents
