// EmulatedHost: one host in this process for tests and benchmarks of the controller's loop:
// an emulated multikernel kernel on a topology, the HostKernel driving it, the agent's
// journal (not synced: nothing here survives a machine crash) and the agent, all on one
// injected clock. RestartAgent() stands for the agent process restarting (same state
// directory and kernel, a new Agent object: open streams end, it adopts what runs).
// Thread-safety: as the parts; RestartAgent() only while nothing calls the agent.
#ifndef MKFLEET_AGENTS_TESTING_EMULATED_HOST_H_
#define MKFLEET_AGENTS_TESTING_EMULATED_HOST_H_

#include <filesystem>
#include <memory>
#include <string>

#include "agents/action_journal.h"
#include "agents/agent.h"
#include "agents/liveness.h"
#include "common/clock.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "planner/topology.h"

namespace mkfleet::agents {

struct EmulatedHost {
  // Makes host `name` with its state under `dir`/`name`.
  EmulatedHost(std::string name, const std::string& dir, std::shared_ptr<const planner::Topology> topology,
               Clock& clock)
      : name(std::move(name)), topology(std::move(topology)), clock(clock) {
    const std::string state = dir + "/" + this->name;
    std::filesystem::create_directories(state);
    kernel::EmulatorOptions eo = kernel::MachineFromTopology(*this->topology);
    eo.clock = &clock;
    emu = std::make_unique<kernel::EmulatedKernel>(eo);
    kernel::HostKernelOptions ho;
    ho.host = this->name;
    ho.state_dir = state + "/provenance";
    ho.clock = &clock;
    ho.images.dirs = {dir};  // the tests' kernel images live in `dir`
    emu->TrackChanges(ho);  // as mkagent does: unchanged observations are not read
    hk = std::make_unique<kernel::HostKernel>(*emu, *emu, ho);
    ActionJournal::Options jo;
    jo.sync = false;
    journal = *ActionJournal::Open(state + "/journal", jo);
    probe = NewEmulatorProbe(*emu);
    options.host = this->name;
    options.state_dir = state;
    agent = std::make_unique<Agent>(options, *hk, this->topology, *journal, *probe, clock);
  }

  void RestartAgent() {
    agent.reset();
    agent = std::make_unique<Agent>(options, *hk, topology, *journal, *probe, clock);
  }

  std::string name;
  std::shared_ptr<const planner::Topology> topology;
  Clock& clock;
  std::unique_ptr<kernel::EmulatedKernel> emu;
  std::unique_ptr<kernel::HostKernel> hk;
  std::unique_ptr<ActionJournal> journal;
  std::unique_ptr<LivenessProbe> probe;
  AgentOptions options;
  std::unique_ptr<Agent> agent;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_TESTING_EMULATED_HOST_H_
