// Test helpers for the controller's pure planning and status code: a synthetic topology,
// hosts as their agents would report them, instances and sets, and "what the host reports
// once a plan has run".
#ifndef MKFLEET_RECONCILER_TESTING_FLEET_VIEWS_H_
#define MKFLEET_RECONCILER_TESTING_FLEET_VIEWS_H_

#include <algorithm>
#include <memory>
#include <string>
#include <vector>

#include "planner/topology_source.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

inline std::shared_ptr<const planner::Topology> Topo() {
  static auto* t = new std::shared_ptr<const planner::Topology>(std::make_shared<const planner::Topology>(
      *planner::NewSyntheticTopologySource("pack:2 numa:1(memory=16GiB) core:8 pu:2")->Load()));
  return *t;
}

inline v1::Host Host(const std::string& name) {
  v1::Host h;
  h.mutable_metadata()->set_name(name);
  return h;
}

// A connected host whose pool is every CPU but the first core, and 8Gi on each node.
inline HostView Connected() {
  HostView v;
  v.connected = true;
  v.reachable = true;
  v.topology = Topo();
  for (const planner::Core& c : v.topology->cores) {
    if (&c == &v.topology->cores.front()) continue;
    for (uint32_t pu : c.pus) v.pool.add_cpus(pu);
  }
  for (const planner::NumaNode& n : v.topology->numa) {
    auto* m = v.pool.add_memory();
    m->set_node(n.os_index);
    m->set_bytes(8ull << 30);
  }
  return v;
}

inline v1::KernelInstanceSpec Spec(uint32_t cpus) {
  v1::KernelInstanceSpec s;
  s.mutable_kernel()->set_image("/k/vmlinux");
  s.mutable_kernel()->set_cmdline("console=mktty0");
  s.mutable_resources()->set_cpus(cpus);
  s.mutable_resources()->set_memory(1ull << 30);
  return s;
}

inline v1::KernelInstance Instance(const std::string& name, const std::string& host, uint32_t cpus) {
  v1::KernelInstance ki;
  ki.mutable_metadata()->set_name(name);
  ki.mutable_metadata()->set_generation(1);
  *ki.mutable_spec() = Spec(cpus);
  ki.mutable_spec()->set_host(host);
  return ki;
}

inline v1::InstanceSet PerHostSet(const std::string& name, uint32_t per_host) {
  v1::InstanceSet s;
  s.mutable_metadata()->set_name(name);
  s.mutable_metadata()->set_generation(3);
  s.mutable_spec()->set_per_host(per_host);
  *s.mutable_spec()->mutable_template_()->mutable_spec() = Spec(2);
  return s;
}

inline std::vector<std::string> Creates(const Plan& p) {
  std::vector<std::string> out;
  for (const auto& a : p.actions) {
    if (a.has_create()) out.push_back(a.instance());
  }
  std::sort(out.begin(), out.end());
  return out;
}

// What the host would report once `plan`'s instances run where they were placed.
inline void RunAsPlaced(const FleetPlan& plan, const std::string& host, HostView& view) {
  for (const auto& [name, placement] : plan.placements) {
    if (placement.host() != host) continue;
    v1::ObservedInstance o;
    o.set_name(name);
    o.mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
    *o.mutable_status()->mutable_placement() = placement;
    o.mutable_status()->mutable_provenance()->set_kernel_path("/k/vmlinux");
    o.mutable_status()->mutable_provenance()->set_cmdline("console=mktty0");
    o.set_owner(plan.planned.at(name).recorded_owner);
    view.instances[name] = o;
  }
}

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_TESTING_FLEET_VIEWS_H_
