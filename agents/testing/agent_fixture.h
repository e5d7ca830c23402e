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
#include "planner/topology_source.h"

namespace mkfleet::agents {

struct TestHost {
  explicit TestHost(const std::string& name) {
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
    emu = std::make_unique<kernel::EmulatedKernel>(o);
    kernel::HostKernelOptions ho;
    ho.host = name;
    ho.state_dir = (dir / "state").string();
    ho.clock = &clock;
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

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_TESTING_AGENT_FIXTURE_H_
