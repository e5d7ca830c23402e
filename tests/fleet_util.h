// Helpers shared by the process tests: free loopback ports, polling, what an agent runs
// (its Watch snapshot) and an emulated kernel's counters read back from its state file.
#ifndef MKFLEET_TESTS_FLEET_UTIL_H_
#define MKFLEET_TESTS_FLEET_UTIL_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <map>
#include <string>
#include <thread>

#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "planner/topology_source.h"
#include "security/testing/test_pki.h"
#include "tests/process_util.h"

namespace mkfleet::testing {


// Polls `pred` every 50 ms for up to `seconds`.
template <typename Pred>
bool Eventually(Pred pred, int seconds = 30) {
  for (int i = 0; i < seconds * 20; ++i) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

// The instances the agent of `host` at `address` runs, from its Watch snapshot (empty if
// unreachable), asked with the controller's credentials in `controller_tls`.
inline std::map<std::string, mkfleet::v1::InstanceStatus> AgentInstances(const std::string& address,
                                                                         const std::string& host,
                                                                         const std::string& controller_tls) {
  auto stub = mkfleet::v1::Agent::NewStub(
      security::TestPki::Channel(controller_tls, address, security::Identity::Agent(host)));
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
  auto reader = stub->Watch(&ctx, mkfleet::v1::WatchRequest());
  mkfleet::v1::HostState snapshot;
  std::map<std::string, mkfleet::v1::InstanceStatus> out;
  if (!reader->Read(&snapshot)) return out;
  ctx.TryCancel();
  for (const auto& in : snapshot.instances()) out[in.name()] = in.status();
  return out;
}

// The counters of the emulated kernel (synthetic `topology`) whose state file is
// `state_file`; read after its agent has stopped.
inline kernel::EmulatedKernel::Counters EmulatorCounters(const std::string& topology, const std::string& state_file) {
  auto t = planner::NewSyntheticTopologySource(topology, planner::TopologyOptions{})->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  kernel::EmulatorOptions o = kernel::MachineFromTopology(*t);
  o.state_file = state_file;
  kernel::EmulatedKernel k(o);
  EXPECT_TRUE(k.load_status().ok()) << k.load_status();
  return k.counters();
}

}  // namespace mkfleet::testing

#endif  // MKFLEET_TESTS_FLEET_UTIL_H_
