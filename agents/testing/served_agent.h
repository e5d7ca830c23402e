// ServedAgent: a TestHost with its Agent (watchdog running, real clock) served over gRPC
// on a free loopback port, for tests of the agent's clients (the controller's side).
#ifndef MKFLEET_AGENTS_TESTING_SERVED_AGENT_H_
#define MKFLEET_AGENTS_TESTING_SERVED_AGENT_H_

#include <chrono>
#include <memory>
#include <string>

#include "agents/agent.h"
#include "agents/agent_service.h"
#include "agents/liveness.h"
#include "agents/testing/agent_fixture.h"
#include "common/clock.h"
#include "gtest/gtest.h"

namespace mkfleet::agents {

struct ServedAgent {
  explicit ServedAgent(const std::string& name, const std::string& host_name) : host(name) {
    probe = NewEmulatorProbe(*host.emu);
    AgentOptions o;
    o.host = host_name;
    agent = std::make_unique<Agent>(o, *host.hk, host.topology, *host.journal, *probe, Clock::Real());
    agent->Start();
    service = std::make_unique<AgentService>(*agent, host.emu.get(), false);
    server = StartAgentServer(*service, "127.0.0.1:0", &port);
    EXPECT_NE(server, nullptr);
  }
  ~ServedAgent() {
    StopServing();
    agent->Stop();
  }
  void StopServing() {
    if (server) server->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
    server.reset();
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port); }

  TestHost host;
  std::unique_ptr<LivenessProbe> probe;
  std::unique_ptr<Agent> agent;
  std::unique_ptr<AgentService> service;
  std::unique_ptr<grpc::Server> server;
  int port = 0;
};

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_TESTING_SERVED_AGENT_H_
