// mkagent: the per-host agent. Parses flags and wires the kernel backend, the driver, the
// journal, the agent core and its gRPC server; SIGTERM/SIGINT stop it cleanly.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "CLI/CLI.hpp"
#include "agents/action_journal.h"
#include "agents/agent.h"
#include "agents/agent_service.h"
#include "agents/liveness.h"
#include "common/clock.h"
#include "common/grpc_server.h"
#include "common/version.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "kernel/kernel_fs.h"
#include "kernel/syscalls.h"
#include "manifests/units.h"
#include "planner/pool.h"
#include "planner/topology_source.h"

namespace {

int Fail(const std::string& message) {
  std::cerr << "mkagent: " << message << "\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  using namespace mkfleet;
  // SIGTERM/SIGINT are taken by one thread (sigwait below); blocked before any thread exists
  // so that every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  CLI::App app{"mkagent: the mkfleet per-host agent. Drives this host's multikernel kernel (or an emulated one)\n"
               "and serves the Agent gRPC service to mkcontroller."};
  app.set_version_flag("--version", std::string("mkagent ") + kVersion);
  std::string kernel_kind = "emulated", topology_spec, listen = "127.0.0.1:7101", state_dir, host;
  std::string boot_time = "0ms", halt_time = "0ms", reserve_memory = "0";
  uint32_t vfs_per_nic = 0, reserve_cores = 0, vsock_port = 1023;
  bool faults = false;
  app.add_option("--kernel", kernel_kind, "emulated (default) or sysfs (a real multikernel host)")
      ->check(CLI::IsMember({"emulated", "sysfs"}));
  app.add_option("--topology", topology_spec, "live, FILE.xml or synthetic:STRING")->required();
  app.add_option("--listen", listen, "gRPC address (default 127.0.0.1:7101; port 0 picks one and prints it)");
  app.add_option("--state-dir", state_dir, "journal, policies, provenance (and the emulated kernel's state)")->required();
  app.add_option("--host", host, "this host's name in events (default: the hostname)");
  app.add_option("--boot-time", boot_time, "emulated: how long a boot takes (e.g. 300ms)");
  app.add_option("--halt-time", halt_time, "emulated: how long a graceful halt takes");
  app.add_option("--vfs-per-nic", vfs_per_nic, "SR-IOV VFs per NIC for XML/synthetic topologies");
  app.add_option("--reserve-cores", reserve_cores,
                 "if set, write a pool at start (while no instance exists): the host keeps this many cores");
  app.add_option("--reserve-memory", reserve_memory, "with --reserve-cores: memory the host keeps (e.g. 4Gi)");
  app.add_option("--vsock-port", vsock_port, "sysfs: liveness probe port (CID = instance id)");
  app.add_flag("--enable-fault-injection", faults, "emulated: allow the InjectFault debug RPC");
  CLI11_PARSE(app, argc, argv);

  if (host.empty()) {
    char buf[256] = {0};
    gethostname(buf, sizeof(buf) - 1);
    host = buf;
  }
  auto boot = manifests::ParseDurationMs(boot_time);
  auto halt = manifests::ParseDurationMs(halt_time);
  if (!boot.ok()) return Fail(std::string("--boot-time: ") + std::string(boot.status().message()));
  if (!halt.ok()) return Fail(std::string("--halt-time: ") + std::string(halt.status().message()));
  auto reserve_mem = manifests::ParseBytes(reserve_memory);
  if (!reserve_mem.ok()) return Fail(std::string("--reserve-memory: ") + std::string(reserve_mem.status().message()));

  planner::TopologyOptions topo_options;
  topo_options.vfs_per_network_function = vfs_per_nic;
  auto topo = planner::TopologySourceFromSpec(topology_spec, "", topo_options)->Load();
  if (!topo.ok()) return Fail(std::string(topo.status().message()));
  auto topology = std::make_shared<const planner::Topology>(*std::move(topo));
  std::filesystem::create_directories(state_dir);

  std::unique_ptr<kernel::EmulatedKernel> emulator;
  std::unique_ptr<kernel::KernelFs> fs;
  std::unique_ptr<kernel::Syscalls> sys;
  std::unique_ptr<agents::LivenessProbe> probe;
  kernel::KernelFs* fs_ptr;
  kernel::Syscalls* sys_ptr;
  if (kernel_kind == "emulated") {
    kernel::EmulatorOptions eo = kernel::MachineFromTopology(*topology);
    eo.boot_time = absl::Milliseconds(*boot);
    eo.halt_time = absl::Milliseconds(*halt);
    eo.state_file = state_dir + "/emulated-kernel.state";
    emulator = std::make_unique<kernel::EmulatedKernel>(eo);
    fs_ptr = emulator.get();
    sys_ptr = emulator.get();
    probe = agents::NewEmulatorProbe(*emulator);
  } else {
    fs = kernel::NewPosixKernelFs();
    sys = kernel::NewLinuxSyscalls();
    fs_ptr = fs.get();
    sys_ptr = sys.get();
    probe = agents::NewVsockProbe(vsock_port);
  }
  kernel::HostKernelOptions ho;
  ho.host = host;
  ho.lock_path = state_dir + "/kernel.lock";
  ho.kerf_lock_path = kernel_kind == "sysfs" ? "/var/run/kerf.lock" : state_dir + "/kerf.lock";
  ho.state_dir = state_dir + "/provenance";
  kernel::HostKernel hk(*fs_ptr, *sys_ptr, ho);

  if (reserve_cores > 0) {
    v1::Pool spec;
    spec.mutable_host_reserved()->set_cores(reserve_cores);
    spec.mutable_host_reserved()->set_memory(*reserve_mem);
    for (const auto& f : topology->pci) spec.add_devices(f.bdf);
    auto pool = planner::DerivePool(host, *topology, spec);
    if (!pool.ok()) return Fail(std::string(pool.status().message()));
    kernel::PoolState ps;
    for (uint32_t cpu : pool->cpus) ps.cpus.push_back(topology->physical_ids.at(cpu));
    for (const auto& [n, bytes] : pool->memory) ps.memory.push_back({0, bytes, topology->numa[n].os_index});
    for (int d : pool->devices) ps.devices.push_back({"dev" + std::to_string(d), topology->pci[d].bdf,
                                                      topology->pci[d].vendor_id, topology->pci[d].device_id});
    auto obs = hk.Observe();
    if (obs.ok() && obs->instances.empty()) {
      absl::Status s = hk.SetPool(ps);
      if (!s.ok()) return Fail(std::string(s.message()));
    }
  }

  auto journal = agents::ActionJournal::Open(state_dir + "/journal");
  if (!journal.ok()) return Fail(std::string(journal.status().message()));
  agents::AgentOptions ao;
  ao.host = host;
  ao.state_dir = state_dir;
  ao.version = kVersion;
  agents::Agent agent(ao, hk, topology, **journal, *probe, Clock::Real());
  agents::AgentService service(agent, emulator.get(), faults);
  int port = 0;
  auto server = agents::StartAgentServer(service, listen, &port);
  if (server == nullptr || port == 0) return Fail("cannot listen on " + listen);

  agent.Start();
  std::cout << "mkagent " << kVersion << ": host " << host << ", " << topology->Summary() << ", kernel " << kernel_kind
            << ", listening on port " << port << std::endl;
  ServeUntilSignal(*server, set, "mkagent");
  agent.Stop();
  std::cout << "mkagent: stopped" << std::endl;
  return 0;
}
