// mkagent: the per-host agent. Parses flags and wires the kernel backend, the driver, the
// journal, the agent core and its gRPC server; SIGTERM/SIGINT stop it cleanly.
#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <fstream>
#include <filesystem>
#include <iostream>
#include <memory>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "common/status_macros.h"
#include "agents/action_journal.h"
#include "agents/agent.h"
#include "agents/agent_router.h"
#include "agents/agent_service.h"
#include "agents/fleet_watchdog.h"
#include "agents/liveness.h"
#include "common/clock.h"
#include "common/file_util.h"
#include "common/grpc_server.h"
#include "common/metrics.h"
#include "common/state_dir.h"
#include "common/version.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/guests.h"
#include "kmp/connection.h"
#include "kmp/frame.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "kernel/image_files.h"
#include "kernel/kernel_fs.h"
#include "kernel/syscalls.h"
#include "manifests/units.h"
#include "planner/pool.h"
#include "planner/topology_source.h"
#include "security/tls.h"

namespace {

using namespace mkfleet;

int Fail(const std::string& message) {
  std::cerr << "mkagent: " << message << "\n";
  return 2;
}

struct Settings {
  std::string kernel_kind;
  absl::Duration boot, halt, poll;
  uint32_t reserve_cores = 0;
  uint64_t reserve_memory = 0;
  uint32_t vsock_port = 1023;
  bool faults = false;
  bool lean = false;   // one of many hosts in this process: the shared watchdog drives it
  bool bench = false;  // --bench: the action journal is not fdatasync'd
  std::shared_ptr<agents::RequestLog> request_log;  // --request-log
  security::TlsOptions tls;
  kernel::ImageDirs images;
  bool require_digest = false;
  std::string guest_binary;  // emulated: the mkguest it runs ("" none)
  std::string guest_hooks;   // emulated: PROFILE's hooks are <this>/PROFILE ("" <state>/guest-hooks)
};

// The mkguest beside this program (installed) or in the build tree (bazel-bin/guest).
std::string DefaultGuestBinary() {
  std::error_code ec;
  std::filesystem::path self = std::filesystem::read_symlink("/proc/self/exe", ec);
  if (ec) return "";
  for (const auto& candidate : {self.parent_path() / "mkguest", self.parent_path().parent_path() / "guest" / "mkguest"}) {
    if (access(candidate.c_str(), X_OK) == 0) return candidate.string();
  }
  return "";
}

// Test hook: MKAGENT_TEST_KILL_AT_MORPH_PHASE=Transferring makes the agent SIGKILL itself
// when a morph enters that phase (the process tests' "agent killed in each phase").
std::function<void(v1::MorphPhase)> KillAtPhaseHook() {
  const char* at = getenv("MKAGENT_TEST_KILL_AT_MORPH_PHASE");
  if (at == nullptr || *at == '\0') return nullptr;
  std::string phase = at;
  return [phase](v1::MorphPhase p) {
    if (phase == agents::MorphPhaseName(p)) {
      std::cerr << "mkagent: test hook: killed in morph phase " << phase << std::endl;
      raise(SIGKILL);
    }
  };
}

// One host's agent: its kernel (emulated or real), driver, journal, agent core and gRPC
// server. A process serving N emulated hosts runs N of these, the same code each, behind
// one shared server (one port per host, agents/agent_router.h).
struct HostRuntime {
  std::string name;
  std::unique_ptr<StateLock> state_lock;  // this host's state directory, held while it runs
  std::unique_ptr<kernel::EmulatedKernel> emulator;
  std::unique_ptr<kernel::KernelFs> fs;
  std::unique_ptr<kernel::Syscalls> sys;
  agents::GuestDialer dial;
  std::unique_ptr<agents::LivenessProbe> probe;
  std::unique_ptr<kernel::HostKernel> hk;
  std::unique_ptr<agents::ActionJournal> journal;
  std::unique_ptr<agents::Agent> agent;
  std::unique_ptr<agents::AgentService> service;
  std::unique_ptr<grpc::Server> server;  // its own (one host); null with --hosts N (one shared)
  std::string listen;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  int port = 0;
};

absl::StatusOr<std::unique_ptr<HostRuntime>> StartHost(const std::string& name, const std::string& state_dir,
                                                      const std::string& listen,
                                                      std::shared_ptr<const planner::Topology> topology,
                                                      const Settings& settings) {
  // One host of many: its folder under --tls-dir, read once (a reload thread per host would
  // be thousands of threads).
  security::TlsOptions tls = settings.tls;
  if (settings.lean && !tls.dir.empty()) tls.dir += "/" + name;
  auto creds = security::ServerCredentials(tls, listen, security::Identity::Agent(name), !settings.lean);
  if (!creds.ok()) return creds.status();
  auto rt = std::make_unique<HostRuntime>();
  rt->name = name;
  auto state_lock = OpenStateDir(state_dir);
  if (!state_lock.ok()) return state_lock.status();
  rt->state_lock = *std::move(state_lock);
  kernel::KernelFs* fs_ptr;
  kernel::Syscalls* sys_ptr;
  if (settings.kernel_kind == "emulated") {
    kernel::EmulatorOptions eo = kernel::MachineFromTopology(*topology);
    eo.boot_time = settings.boot;
    eo.halt_time = settings.halt;
    eo.state_file = state_dir + "/emulated-kernel.state";
    eo.guests.binary = settings.guest_binary;
    eo.guests.socket_dir = state_dir + "/vsock";
    eo.guests.hooks_root = settings.guest_hooks.empty() ? state_dir + "/guest-hooks" : settings.guest_hooks;
    eo.guests.exit_with = eo.state_file;
    rt->emulator = std::make_unique<kernel::EmulatedKernel>(eo);
    // A state file that cannot be read is never taken for a fresh machine (its kernels
    // would be forgotten and their CPUs handed out again).
    if (!rt->emulator->load_status().ok()) {
      return absl::DataLossError(absl::StrCat(eo.state_file, ": ", rt->emulator->load_status().message(),
                                              "; move it away to start an empty emulated machine"));
    }
    fs_ptr = rt->emulator.get();
    sys_ptr = rt->emulator.get();
    std::string vsock_dir = state_dir + "/vsock";
    kernel::EmulatedKernel* emu = rt->emulator.get();
    rt->dial = [vsock_dir, emu](uint32_t id) -> absl::StatusOr<std::unique_ptr<kmp::Connection>> {
      // While no guest runs on this host there is nothing to look up (EmulatedKernel::RunsGuests).
      std::string path = kernel::VsockPath(vsock_dir, id, kernel::kGuestPort);
      if (!emu->RunsGuests() || access(path.c_str(), F_OK) != 0) {
        return absl::NotFoundError("instance " + std::to_string(id) + " runs no guest");
      }
      return kmp::DialUnix(path, absl::Milliseconds(200));
    };
    rt->probe = agents::NewKmpProbe(rt->dial, agents::NewEmulatorProbe(*rt->emulator));
  } else {
    rt->fs = kernel::NewPosixKernelFs();
    rt->sys = kernel::NewLinuxSyscalls();
    fs_ptr = rt->fs.get();
    sys_ptr = rt->sys.get();
    rt->dial = [](uint32_t id) { return kmp::DialVsock(id, kmp::kPort, absl::Milliseconds(200)); };
    rt->probe = agents::NewKmpProbe(rt->dial, agents::NewVsockProbe(settings.vsock_port));
  }
  kernel::HostKernelOptions ho;
  ho.host = name;
  ho.lock_path = state_dir + "/kernel.lock";
  ho.kerf_lock_path = settings.kernel_kind == "sysfs" ? "/var/run/kerf.lock" : state_dir + "/kerf.lock";
  ho.state_dir = state_dir + "/provenance";
  ho.images = settings.images;
  ho.require_digest = settings.require_digest;
  if (rt->emulator != nullptr) {
    rt->emulator->TrackChanges(ho);  // an observation at rest reads nothing
  }
  rt->hk = std::make_unique<kernel::HostKernel>(*fs_ptr, *sys_ptr, ho);

  if (settings.reserve_cores > 0) {
    v1::Pool spec;
    spec.mutable_host_reserved()->set_cores(settings.reserve_cores);
    spec.mutable_host_reserved()->set_memory(settings.reserve_memory);
    for (const auto& f : topology->pci) spec.add_devices(f.bdf);
    auto pool = planner::DerivePool(name, *topology, spec);
    if (!pool.ok()) return pool.status();
    kernel::PoolState ps;
    for (uint32_t cpu : pool->cpus) ps.cpus.push_back(topology->physical_ids.at(cpu));
    for (const auto& [n, bytes] : pool->memory) ps.memory.push_back({0, bytes, topology->numa[n].os_index});
    for (int d : pool->devices) {
      ps.devices.push_back({"dev" + std::to_string(d), topology->pci[d].bdf, topology->pci[d].vendor_id,
                            topology->pci[d].device_id});
    }
    auto obs = rt->hk->Observe();
    if (obs.ok() && obs->instances.empty()) MK_RETURN_IF_ERROR(rt->hk->SetPool(ps));
  }

  agents::ActionJournal::Options jo;
  jo.sync = !settings.bench;
  auto journal = agents::ActionJournal::Open(state_dir + "/journal", jo);
  if (!journal.ok()) return journal.status();
  rt->journal = *std::move(journal);
  agents::AgentOptions ao;
  ao.host = name;
  ao.state_dir = state_dir;
  ao.version = kVersion;
  ao.poll_interval = settings.poll;
  if (settings.lean && rt->emulator != nullptr) {
    rt->emulator->TrackChanges(ao);
    // The emulator's probe answers from its state; a guest's heartbeat does not.
    ao.probe_follows_kernel = [emu = rt->emulator.get()] { return !emu->RunsGuests(); };
  }
  rt->agent = std::make_unique<agents::Agent>(ao, *rt->hk, topology, *rt->journal, *rt->probe, Clock::Real());
  if (!rt->agent->load_status().ok()) return rt->agent->load_status();
  agents::MorphOptions mo;
  mo.dir = state_dir + "/morph";
  mo.on_phase = KillAtPhaseHook();
  if (absl::Status m = rt->agent->EnableMorph(rt->dial, mo); !m.ok()) {
    return absl::DataLossError(absl::StrCat("the morph journal: ", m.message()));
  }
  rt->service = std::make_unique<agents::AgentService>(*rt->agent, rt->emulator.get(), settings.faults,
                                                       /*require_controller=*/!tls.insecure);
  if (settings.faults && rt->emulator != nullptr) {
    // mkfault's kerf-* operations: an operator's own driver, taking kerf's lock (the agent's
    // driver takes it too, so they never interleave) and none of the agent's records.
    kernel::HostKernelOptions kerf;
    kerf.host = name;
    kerf.kerf_lock_path = ho.kerf_lock_path;  // kerf's own lock, as kerf takes it
    kerf.cache_records = false;
    rt->service->SetKerf(std::make_unique<kernel::HostKernel>(*fs_ptr, *sys_ptr, kerf));
  }
  if (settings.request_log != nullptr) rt->service->SetRequestLog(settings.request_log);
  rt->listen = listen;
  rt->credentials = *creds;
  if (!settings.lean) {
    rt->server = agents::StartAgentServer(*rt->service, listen, &rt->port, false, *creds);
    if (rt->server == nullptr || rt->port == 0) return absl::UnavailableError("cannot listen on " + listen);
  }
  if (!settings.lean) rt->agent->Start();  // else the process's FleetWatchdog
  return rt;
}

// "127.0.0.1:7101" and i -> "127.0.0.1:<7101+i>" (port 0 stays 0: each picks a free one).
absl::StatusOr<std::string> NthAddress(const std::string& listen, int i) {
  size_t colon = listen.rfind(':');
  int port = 0;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError("--listen: want HOST:PORT, got \"" + listen + "\"");
  }
  if (port == 0) return listen;
  if (port + i > 65535) return absl::InvalidArgumentError("--listen: port range passes 65535");
  return listen.substr(0, colon + 1) + std::to_string(port + i);
}

}  // namespace

int main(int argc, char** argv) {
  // Abseil's mutex deadlock detector keeps a lock graph on every acquisition (5 % of an
  // mkagent serving 1,000 hosts under a rollout, in perf). The tests and the simulation,
  // which link the libraries without these mains, keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  // SIGTERM/SIGINT are taken by one thread (sigwait below); blocked before any thread exists
  // so that every thread inherits the mask.
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);
  CLI::App app{"mkagent: the mkfleet per-host agent. Drives this host's multikernel kernel (or an emulated one)\n"
               "and serves the Agent gRPC service to mkcontroller. With --hosts N it serves N emulated hosts\n"
               "(the same code per host, one port each), so that a test fleet fits on one machine."};
  app.set_version_flag("--version", std::string("mkagent ") + kVersion);
  std::string kernel_kind = "emulated", topology_spec, listen = "127.0.0.1:7101", state_dir, host, ports_file;
  std::string boot_time = "0ms", halt_time = "0ms", reserve_memory = "0", poll_interval = "10ms";
  uint32_t vfs_per_nic = 0, reserve_cores = 0, vsock_port = 1023, hosts = 1;
  bool faults = false;
  app.add_option("--kernel", kernel_kind, "emulated (default) or sysfs (a real multikernel host)")
      ->check(CLI::IsMember({"emulated", "sysfs"}));
  app.add_option("--topology", topology_spec, "live, FILE.xml or synthetic:STRING")->required();
  app.add_option("--listen", listen,
                 "gRPC address (default 127.0.0.1:7101; port 0 picks one and prints it). With --hosts N, host i "
                 "listens on PORT+i (or on a free port each with port 0)");
  std::string metrics_listen;
  app.add_option("--metrics-listen", metrics_listen,
                 "serve Prometheus metrics at http://ADDR/metrics (HOST:PORT on loopback; port 0 picks one and "
                 "prints it); off unless given");
  app.add_option("--state-dir", state_dir, "journal, policies, provenance (and the emulated kernel's state); "
                                           "with --hosts N, one subdirectory per host")->required();
  app.add_option("--host", host, "this host's name in events (default: the hostname); with --hosts N, the prefix of "
                                 "the names PREFIX-0001 ... PREFIX-N");
  uint32_t first_host = 0;
  app.add_option("--first-host", first_host,
                 "with --hosts N: number the hosts from this + 1 (several processes sharing one fleet's names: a "
                 "process holds about 3 files per host, and 20,000 is a common limit)")
      ->check(CLI::Range(0u, 1000000u));
  app.add_option("--hosts", hosts,
                 "emulated: serve this many hosts from this process (default 1): one gRPC server, one port per host "
                 "with its own certificate, a call routed to the host whose port it was addressed to")
      ->check(CLI::Range(1, 10000));
  app.add_option("--ports-file", ports_file, "write \"NAME ADDRESS\" per host to this file once all listen");
  app.add_option("--boot-time", boot_time, "emulated: how long a boot takes (e.g. 300ms)");
  app.add_option("--halt-time", halt_time, "emulated: how long a graceful halt takes");
  app.add_option("--poll-interval", poll_interval, "how often the watchdog observes the kernel (default 10ms); with --hosts N, how "
                 "often one shared watchdog looks at every host, observing only those where something changed");
  app.add_option("--vfs-per-nic", vfs_per_nic, "SR-IOV VFs per NIC for XML/synthetic topologies");
  app.add_option("--reserve-cores", reserve_cores,
                 "if set, write a pool at start (while no instance exists): the host keeps this many cores");
  app.add_option("--reserve-memory", reserve_memory, "with --reserve-cores: memory the host keeps (e.g. 4Gi)");
  app.add_option("--vsock-port", vsock_port,
                 "sysfs: liveness probe port for instances without mkguest (CID = instance id; those with it "
                 "answer KMP heartbeats on port 9000)");
  std::string guest_binary = "auto";
  app.add_option("--guest-binary", guest_binary,
                 "emulated: the mkguest run for each booted instance whose command line says mkfleet.guest=PROFILE "
                 "(default: mkguest beside mkagent; \"none\": no guests)");
  std::string guest_hooks;
  app.add_option("--guest-hooks", guest_hooks,
                 "emulated: PROFILE's morph hooks are DIR/PROFILE (default STATE-DIR/guest-hooks)");
  bool bench = false;
  app.add_flag("--bench", bench,
               "benchmarks only: the action journal is written but not fdatasync'd (an action done just before a "
               "power loss may run again); the emulated kernel's state is never synced in any mode");
  std::string request_log;
  app.add_option("--request-log", request_log,
                 "append a line per Execute and SetPolicy received to FILE (time, host, fence, action ids), e.g. to "
                 "check that two controllers never acted on a host at once");
  app.add_flag("--enable-fault-injection", faults, "emulated: allow the InjectFault debug RPC (to the controller's "
                                                   "certificate only)");
  Settings settings;
  std::vector<std::string> image_dirs = {kernel::kDefaultImageDir};
  std::string max_image = "1Gi";
  app.add_option("--image-dir", image_dirs,
                 "a directory kernel images and initrds may be loaded from (repeatable; default "
                 "/var/lib/mkfleet/kernels): regular files beneath it, reached without symbolic links");
  app.add_option("--max-image-size", max_image, "the largest kernel image or initrd loaded (default 1Gi)");
  app.add_flag("--require-digest", settings.require_digest,
               "refuse to load a kernel whose KernelInstance does not pin kernel.sha256");
  security::AddTlsFlags(app, &settings.tls,
                        "this host's agent (ROOT/agents/HOST; with --hosts N, ROOT/agents, one folder per host)");
  CLI11_PARSE(app, argc, argv);

  if (hosts > 1 && kernel_kind != "emulated") return Fail("--hosts: only with --kernel emulated");
  if (host.empty()) {
    char buf[256] = {0};
    gethostname(buf, sizeof(buf) - 1);
    host = buf;
  }
  settings.kernel_kind = kernel_kind;
  settings.guest_binary = guest_binary == "auto" ? DefaultGuestBinary() : guest_binary == "none" ? "" : guest_binary;
  settings.guest_hooks = guest_hooks;
  if (!guest_hooks.empty() && guest_hooks[0] != '/') return Fail("--guest-hooks: want an absolute path");
  if (!settings.guest_binary.empty() && access(settings.guest_binary.c_str(), X_OK) != 0) {
    if (guest_binary != "auto") return Fail("--guest-binary: " + guest_binary + " is not an executable");
  }
  settings.vsock_port = vsock_port;
  settings.faults = faults;
  if (!request_log.empty()) {
    auto log = agents::RequestLog::Open(request_log);
    if (!log.ok()) return Fail("--request-log: " + std::string(log.status().message()));
    settings.request_log = *log;
  }
  settings.reserve_cores = reserve_cores;
  settings.lean = hosts > 1;
  settings.bench = bench;
  auto boot = manifests::ParseDurationMs(boot_time);
  auto halt = manifests::ParseDurationMs(halt_time);
  auto poll = manifests::ParseDurationMs(poll_interval);
  if (!boot.ok()) return Fail(std::string("--boot-time: ") + std::string(boot.status().message()));
  if (!halt.ok()) return Fail(std::string("--halt-time: ") + std::string(halt.status().message()));
  if (!poll.ok() || *poll <= 0) return Fail("--poll-interval: want a positive duration such as 10ms");
  auto reserve_mem = manifests::ParseBytes(reserve_memory);
  if (!reserve_mem.ok()) return Fail(std::string("--reserve-memory: ") + std::string(reserve_mem.status().message()));
  settings.boot = absl::Milliseconds(*boot);
  settings.halt = absl::Milliseconds(*halt);
  settings.poll = absl::Milliseconds(*poll);
  settings.reserve_memory = *reserve_mem;
  auto max_image_bytes = manifests::ParseBytes(max_image);
  if (!max_image_bytes.ok() || *max_image_bytes == 0) return Fail("--max-image-size: want a size such as 512Mi or 1Gi");
  settings.images.max_bytes = *max_image_bytes;
  for (const std::string& d : image_dirs) {
    if (d.empty() || d[0] != '/') return Fail("--image-dir: want an absolute path, got \"" + d + "\"");
    settings.images.dirs.push_back(d);
  }

  planner::TopologyOptions topo_options;
  topo_options.vfs_per_network_function = vfs_per_nic;
  auto topo = planner::TopologySourceFromSpec(topology_spec, "", topo_options)->Load();
  if (!topo.ok()) return Fail(std::string(topo.status().message()));
  auto topology = std::make_shared<const planner::Topology>(*std::move(topo));
  RaiseFileLimit();

  // Before the gRPC servers: their requests are counted from the first.
  std::unique_ptr<metrics::Endpoint> metrics_endpoint;
  if (!metrics_listen.empty()) {
    auto endpoint = metrics::Endpoint::Serve(metrics_listen, "--metrics-listen");
    if (!endpoint.ok()) return Fail(std::string(endpoint.status().message()));
    metrics_endpoint = *std::move(endpoint);
  }
  std::vector<std::unique_ptr<HostRuntime>> runtimes;
  std::unique_ptr<agents::FleetWatchdog> watchdog;
  agents::AgentRouter router;                 // --hosts N: routes each call to its host
  std::unique_ptr<grpc::Server> shared;       // --hosts N: the one server
  auto stop_all = [&] {
    if (shared != nullptr) shared->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    for (auto& rt : runtimes) {
      if (rt->server != nullptr) rt->server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
    }
    if (watchdog != nullptr) watchdog->Stop();
    for (auto& rt : runtimes) rt->agent->Stop();
  };
  for (uint32_t i = 0; i < hosts; ++i) {
    std::string name = host, dir = state_dir;
    if (hosts > 1) {
      char suffix[16];
      std::snprintf(suffix, sizeof(suffix), "-%04u", i + 1 + first_host);
      name += suffix;
      dir += "/" + name;
    }
    auto address = NthAddress(listen, static_cast<int>(i));
    if (!address.ok()) return Fail(std::string(address.status().message()));
    auto rt = StartHost(name, dir, *address, topology, settings);
    if (!rt.ok()) {
      stop_all();
      return Fail(absl::StrCat("host ", name, ": ", rt.status().message()));
    }
    runtimes.push_back(*std::move(rt));
    if (hosts > 1 && (i + 1) % 100 == 0) std::cerr << "mkagent: " << i + 1 << "/" << hosts << " hosts ready\n";
  }
  if (settings.lean) {
    // Every host's port on one server: one thread pool for all of them.
    std::vector<Listen> listens;
    for (auto& rt : runtimes) listens.push_back({rt->listen, rt->credentials, &rt->port});
    shared = StartGrpcServerOnPorts(router, "mkfleet.v1.Agent", listens, 128);
    if (shared == nullptr) {
      stop_all();
      return Fail("cannot listen on the hosts' ports (" + runtimes.front()->listen + " ...)");
    }
    for (auto& rt : runtimes) {
      if (rt->port == 0) {
        stop_all();
        return Fail("host " + rt->name + ": cannot listen on " + rt->listen);
      }
      router.Add(rt->port, rt->service.get());
      router.AddAuthority(security::Identity::Agent(rt->name).DnsName(), rt->service.get());
    }
  }
  if (settings.lean) {
    // One watchdog for every host: a pass only where something changed (agents/fleet_watchdog.h).
    std::vector<agents::Agent*> agents;
    for (auto& rt : runtimes) agents.push_back(rt->agent.get());
    // Woken by the agent (a batch, new policies) and by its emulated kernel (any change).
    auto wire = [&runtimes](size_t i, std::atomic<bool>* flag) {
      runtimes[i]->agent->SetWakeFlag(flag);
      if (runtimes[i]->emulator != nullptr) runtimes[i]->emulator->SetWakeFlag(flag);
    };
    watchdog = std::make_unique<agents::FleetWatchdog>(agents, settings.poll, std::min<int>(2, runtimes.size()), wire);
    watchdog->Start();
  }
  if (!ports_file.empty()) {
    std::string lines;
    for (const auto& rt : runtimes) absl::StrAppend(&lines, rt->name, " 127.0.0.1:", rt->port, "\n");
    absl::Status written = WriteFileAtomically(ports_file, lines, 0644);
    if (!written.ok()) {
      stop_all();
      return Fail(absl::StrCat("--ports-file: ", written.message()));
    }
  }
  if (hosts == 1) {
    std::cout << "mkagent " << kVersion << ": host " << host << ", " << topology->Summary() << ", kernel "
              << kernel_kind << ", listening on port " << runtimes[0]->port;
    if (metrics_endpoint != nullptr) std::cout << ", metrics on port " << metrics_endpoint->port();
    std::cout << std::endl;
  } else {
    std::cout << "mkagent " << kVersion << ": " << hosts << " emulated hosts " << runtimes.front()->name << " ... "
              << runtimes.back()->name << ", each " << topology->Summary() << ", ports " << runtimes.front()->port
              << " ... " << runtimes.back()->port;
    if (metrics_endpoint != nullptr) std::cout << ", metrics on port " << metrics_endpoint->port();
    std::cout << std::endl;
  }
  // The (first) server waits for the signal; then every one stops.
  ServeUntilSignal(shared != nullptr ? *shared : *runtimes[0]->server, set, "mkagent");
  stop_all();
  std::cout << "mkagent: stopped" << std::endl;
  return 0;
}
