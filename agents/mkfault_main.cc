// mkfault: injects a fault into an emulated host through its agent's debug RPC
// (Agent.InjectFault), for demos and fault tests. The agent must run with
// --kernel emulated --enable-fault-injection; a real kernel is never touched. The agent
// accepts the call only from the controller's certificate (--tls-dir ROOT/controller).
#include <chrono>
#include <iostream>
#include <string>

#include "CLI/CLI.hpp"
#include "common/version.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "security/tls.h"

int main(int argc, char** argv) {
  CLI::App app{"mkfault: inject a fault into an emulated multikernel host through its mkagent\n"
               "(which must run with --enable-fault-injection). Exit 0 when injected, 1 when the agent\n"
               "refuses or cannot be reached, 2 on bad usage."};
  app.set_version_flag("--version", std::string("mkfault ") + mkfleet::kVersion);
  std::string agent = "127.0.0.1:7101", host, instance, fault, resource;
  int timeout = 10;
  app.add_option("fault", fault,
                 "panic | hang (instance), busy | unbusy (resource: a CPU number or a PCI address, the "
                 "kernel answers EBUSY), fail-overlay (the next transaction fails), slow-halt | fail-halt "
                 "(instance); out of band, as an operator's kerf would, not through the agent: kerf-halt, "
                 "kerf-remove, kerf-cpu-remove, kerf-memory-remove (instance), kerf-create (a new instance no "
                 "object owns: --instance NAME, --resource a free pool CPU's physical id or none)")
      ->required()
      ->check(CLI::IsMember({"panic", "hang", "busy", "unbusy", "fail-overlay", "slow-halt", "fail-halt", "kerf-halt",
                             "kerf-remove", "kerf-cpu-remove", "kerf-memory-remove", "kerf-create"}));
  app.add_option("--agent", agent, "the mkagent address (default 127.0.0.1:7101)");
  app.add_option("--host", host, "the agent's Host (its certificate must name it)");
  mkfleet::security::TlsOptions tls;
  mkfleet::security::AddTlsFlags(app, &tls, "the controller (ROOT/controller: agents accept only it)");
  app.add_option("--instance", instance, "the kernel instance (panic, hang, slow-halt, fail-halt)");
  app.add_option("--resource", resource, "busy/unbusy: the resource");
  app.add_option("--timeout", timeout, "seconds to wait for the agent (default 10)");
  CLI11_PARSE(app, argc, argv);
  bool needs_instance = fault == "panic" || fault == "hang" || fault == "slow-halt" || fault == "fail-halt" ||
                        fault.rfind("kerf-", 0) == 0;
  if (needs_instance && instance.empty()) {
    std::cerr << "mkfault: " << fault << " needs --instance\n";
    return 2;
  }
  if ((fault == "busy" || fault == "unbusy") && resource.empty()) {
    std::cerr << "mkfault: " << fault << " needs --resource\n";
    return 2;
  }
  if (!tls.insecure && host.empty()) {
    std::cerr << "mkfault: --host is required (the agent must present that Host's certificate)\n";
    return 2;
  }
  auto client_tls = mkfleet::security::ClientTls::Create(tls);
  if (!client_tls.ok()) {
    std::cerr << "mkfault: " << client_tls.status().message() << "\n";
    return 2;
  }
  auto channel = (*client_tls)->Channel(agent, mkfleet::security::Identity::Agent(host));
  if (!channel.ok()) {
    std::cerr << "mkfault: " << channel.status().message() << "\n";
    return 2;
  }
  auto stub = mkfleet::v1::Agent::NewStub(*channel);
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(timeout));
  mkfleet::v1::FaultRequest request;
  request.set_instance(instance);
  request.set_fault(fault);
  request.set_resource(resource);
  mkfleet::v1::Empty response;
  grpc::Status s = stub->InjectFault(&ctx, request, &response);
  if (!s.ok()) {
    std::cerr << "mkfault: agent " << agent << ": " << s.error_message() << "\n";
    return 1;
  }
  std::cout << "mkfault: " << fault << " injected" << (instance.empty() ? "" : " into " + instance) << " on " << agent
            << "\n";
  return 0;
}
