// A test host: an emulated kernel built from a synthetic topology, the driver over it, a
// journal in a temp directory, and an ELF stand-in for kernel images.
#ifndef MKFLEET_AGENTS_TESTING_AGENT_FIXTURE_H_
#define MKFLEET_AGENTS_TESTING_AGENT_FIXTURE_H_

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <memory>
#include <string>

#include "agents/action_journal.h"
#include "common/testing/simulated_clock.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology_source.h"

namespace mkfleet::agents {

struct TestHost {
  explicit TestHost(const std::string& name, absl::Duration boot_time = absl::ZeroDuration()) {
    dir = std::filesystem::path(::testing::TempDir()) / (name + "-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir);
    std::filesystem::create_directories(dir);
    vmlinux = (dir / "vmlinux").string();
    std::ofstream(vmlinux, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
    topology = std::make_shared<const planner::Topology>(
        *planner::NewSyntheticTopologySource("pack:2 numa:1(memory=16GiB) core:8 pu:2",
                                             planner::TopologyOptions{12, 0})
             ->Load());
    kernel::EmulatorOptions o = kernel::MachineFromTopology(*topology);
    o.pci_devices = {"0000:04:00.0", "0000:04:00.1"};
    o.clock = &clock;
    o.boot_time = boot_time;
    emu = std::make_unique<kernel::EmulatedKernel>(o);
    kernel::HostKernelOptions ho;
    ho.host = name;
    ho.state_dir = (dir / "state").string();
    ho.clock = &clock;
    ho.images.dirs = {dir.string()};  // where vmlinux is
    emu->TrackChanges(ho);  // as mkagent does: unchanged observations are not read
    hk = std::make_unique<kernel::HostKernel>(*emu, *emu, ho);
    kernel::PoolState pool;
    for (size_t i = 2; i < o.cpus.size(); ++i) pool.cpus.push_back(o.cpus[i]);
    for (const auto& m : o.memory) pool.memory.push_back({0, 8ull << 30, m.numa});
    pool.devices = {{"nic0", "0000:04:00.0", 0, 0}, {"nic1", "0000:04:00.1", 0, 0}};
    EXPECT_TRUE(hk->SetPool(pool).ok());
    journal = *ActionJournal::Open((dir / "journal").string());
  }
  ~TestHost() { std::filesystem::remove_all(dir); }

  std::filesystem::path dir;
  std::string vmlinux;
  SimulatedClock clock;
  std::shared_ptr<const planner::Topology> topology;
  std::unique_ptr<kernel::EmulatedKernel> emu;
  std::unique_ptr<kernel::HostKernel> hk;
  std::unique_ptr<ActionJournal> journal;
};

// create + load + start of `name` on logical `cpus` (512Mi on node 0, `device` if given),
// action ids "<name>-create", "-load", "-start".
inline mkfleet::v1::ActionBatch BootBatch(const std::string& name, const std::vector<uint32_t>& cpus,
                                          const std::string& vmlinux, const std::string& device = "") {
  mkfleet::v1::ActionBatch b;
  mkfleet::v1::Action* c = b.add_actions();
  c->set_id(name + "-create");
  c->set_instance(name);
  mkfleet::v1::Placement* p = c->mutable_create()->mutable_placement();
  for (uint32_t cpu : cpus) p->add_cpus(cpu);
  p->add_numa_nodes(0);
  auto* m = p->add_memory();
  m->set_node(0);
  m->set_bytes(512ull << 20);
  if (!device.empty()) p->add_devices()->set_pci(device);
  mkfleet::v1::Action* l = b.add_actions();
  l->set_id(name + "-load");
  l->set_instance(name);
  l->mutable_load()->mutable_kernel()->set_image(vmlinux);
  mkfleet::v1::Action* s = b.add_actions();
  s->set_id(name + "-start");
  s->set_instance(name);
  s->mutable_start();
  return b;
}

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_TESTING_AGENT_FIXTURE_H_
