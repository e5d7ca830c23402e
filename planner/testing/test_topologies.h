// Helpers for planner tests: hosts from the shared topologies or synthetic strings, and
// requests written as compact resource specs.
#ifndef MKFLEET_PLANNER_TESTING_TEST_TOPOLOGIES_H_
#define MKFLEET_PLANNER_TESTING_TEST_TOPOLOGIES_H_

#include <memory>
#include <string>

#include "gtest/gtest.h"
#include "planner/placement.h"
#include "planner/pool.h"
#include "planner/topology_source.h"

namespace mkfleet::planner {

inline std::shared_ptr<const Topology> XmlTopology(const std::string& file, TopologyOptions options = {}) {
  auto t = NewXmlTopologySource("testdata/topologies/" + file, options)->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  return std::make_shared<const Topology>(t.ok() ? *t : Topology{});
}

inline std::shared_ptr<const Topology> SyntheticTopology(const std::string& desc, TopologyOptions options = {}) {
  auto t = NewSyntheticTopologySource(desc, options)->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  return std::make_shared<const Topology>(t.ok() ? *t : Topology{});
}

// A host whose pool is everything but the core of CPU 0 and `reserved` bytes, plus every
// PCI function of the topology.
inline HostInfo WholeHost(const std::string& name, std::shared_ptr<const Topology> t,
                          uint64_t reserved = 128ull << 20) {
  mkfleet::v1::Pool spec;
  spec.mutable_host_reserved()->set_cores(1);
  spec.mutable_host_reserved()->set_memory(reserved);
  for (const PciFunction& f : t->pci) spec.add_devices(f.bdf);
  auto pool = DerivePool(name, *t, spec);
  EXPECT_TRUE(pool.ok()) << pool.status();
  HostInfo h;
  h.name = name;
  h.topology = std::move(t);
  h.pool = pool.ok() ? *pool : Pool{};
  return h;
}

inline InstanceRequest Request(const std::string& name, const std::string& host, uint32_t cpus,
                               uint64_t memory_mib = 1024) {
  InstanceRequest r;
  r.name = name;
  r.host = host;
  r.resources.set_cpus(cpus);
  r.resources.set_memory(memory_mib << 20);
  return r;
}

}  // namespace mkfleet::planner

#endif  // MKFLEET_PLANNER_TESTING_TEST_TOPOLOGIES_H_
