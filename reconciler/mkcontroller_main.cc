// mkcontroller: the fleet controller. Parses flags, opens the store and serves the
// Controller API for mkapply; SIGTERM/SIGINT stop it cleanly.
//
// This build serves the object API (apply, diff, get, delete with atomic applies and
// prune); reconciling objects against agents is not wired in yet.
#include <signal.h>

#include <iostream>
#include <memory>
#include <thread>

#include "CLI/CLI.hpp"
#include "absl/strings/match.h"
#include "common/clock.h"
#include "common/version.h"
#include "reconciler/controller_service.h"
#include "reconciler/objects.h"
#include "reconciler/store.h"

int main(int argc, char** argv) {
  using namespace mkfleet;
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::string listen = "127.0.0.1:7100";
  std::string store_spec;
  CLI::App app{"mkcontroller: the mkfleet controller. Stores the fleet's manifests and serves mkapply."};
  app.set_version_flag("--version", std::string("mkcontroller ") + kVersion);
  app.add_option("--listen", listen, "gRPC address (default 127.0.0.1:7100; port 0 picks one and prints it)");
  app.add_option("--store", store_spec, "sqlite:PATH (the store file; created if missing)")->required();
  CLI11_PARSE(app, argc, argv);

  if (!absl::StartsWith(store_spec, "sqlite:") || store_spec.size() == 7) {
    std::cerr << "mkcontroller: --store: expected sqlite:PATH, got \"" << store_spec
              << "\" (etcd is not supported by this build)\n";
    return 2;
  }
  auto store = reconciler::OpenSqliteStore(store_spec.substr(7), Clock::Real());
  if (!store.ok()) {
    std::cerr << "mkcontroller: --store: " << store.status().message() << "\n";
    return 1;
  }
  reconciler::Objects objects(**store);
  reconciler::ControllerService service(**store, objects);
  int port = 0;
  auto server = reconciler::StartControllerServer(service, listen, &port);
  if (server == nullptr || port == 0) {
    std::cerr << "mkcontroller: --listen: cannot listen on " << listen << "\n";
    return 1;
  }
  std::cout << "mkcontroller " << kVersion << ": store " << store_spec << ", listening on port " << port
            << std::endl;
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&set, &sig);
    std::cout << "mkcontroller: signal " << sig << ", shutting down" << std::endl;
    server->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  server->Wait();
  waiter.join();
  std::cout << "mkcontroller: stopped" << std::endl;
  return 0;
}
