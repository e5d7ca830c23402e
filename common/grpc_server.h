// StartGrpcServer: the one way mkfleet daemons serve gRPC: on `address` (port 0 picks a
// free one, written to `port`) with `credentials` (security/tls.h; plaintext only in
// in-process tests on loopback), with the standard health service reporting `service_name`
// as serving, and server reflection for grpcurl-style tools. Null when it cannot listen.
#ifndef MKFLEET_COMMON_GRPC_SERVER_H_
#define MKFLEET_COMMON_GRPC_SERVER_H_

#include <signal.h>
#include <sys/resource.h>

#include <chrono>
#include <functional>
#include <iostream>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/ext/proto_server_reflection_plugin.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/health_check_service_interface.h"
#include "grpcpp/resource_quota.h"
#include "grpcpp/support/server_interceptor.h"

namespace mkfleet {

inline constexpr int kMaxRequestBytes = 4 << 20;
inline constexpr int kMaxServerThreads = 512;

// One thread that always waits in gRPC's poller, so that a new connection or call is read at
// once. On Linux gRPC 1.51 polls every socket of the process from whichever threads wait in
// it; the threads of its callback API ("nexting" threads) sleep 100 ms after each idle second,
// and when they were the only ones waiting, a connection arriving then waited up to 100 ms.
inline void KeepOnePoller() {
  static std::once_flag once;
  std::call_once(once, [] {
    std::thread([] {
      grpc::CompletionQueue cq;  // never gets work: its wait is the point
      void* tag = nullptr;
      bool ok = false;
      while (true) cq.AsyncNext(&tag, &ok, std::chrono::system_clock::now() + std::chrono::hours(24));
    }).detach();
  });
}

// Interceptors every server this process starts from now on adds (common/metrics.h adds
// its request metrics when metrics are on).
using ServerInterceptorMaker = std::function<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>()>;
inline std::vector<ServerInterceptorMaker>& ServerInterceptorMakers() {
  static auto* makers = new std::vector<ServerInterceptorMaker>();
  return *makers;
}

// One server for one or many listening ports, each with its own credentials (mkagent
// --hosts N: every emulated host's port, with that host's certificate, on one server and
// one thread pool). `listens[i].port` receives the port bound. No request past 4 MiB is
// read (RESOURCE_EXHAUSTED; the services bound what is inside); the sync server's threads
// are bounded by `max_threads` (each call holds one while it runs: past it, new calls get
// RESOURCE_EXHAUSTED instead of a new thread). `lean`: one completion queue and one polling
// thread. Null when it cannot listen.
struct Listen {
  std::string address;
  std::shared_ptr<grpc::ServerCredentials> credentials;
  int* port = nullptr;
};
inline std::unique_ptr<grpc::Server> StartGrpcServerOnPorts(grpc::Service& service, const std::string& service_name,
                                                            const std::vector<Listen>& listens, int max_threads,
                                                            bool lean = false) {
  KeepOnePoller();
  grpc::EnableDefaultHealthCheckService(true);
  grpc::reflection::InitProtoReflectionServerBuilderPlugin();
  grpc::ServerBuilder builder;
  if (lean) {
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::NUM_CQS, 1);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MIN_POLLERS, 1);
    builder.SetSyncServerOption(grpc::ServerBuilder::SyncServerOption::MAX_POLLERS, 1);
  }
  for (const Listen& l : listens) builder.AddListeningPort(l.address, l.credentials, l.port);
  builder.SetMaxReceiveMessageSize(kMaxRequestBytes);
  grpc::ResourceQuota quota(service_name + " server");
  quota.SetMaxThreads(max_threads);
  builder.SetResourceQuota(quota);
  builder.RegisterService(&service);
  if (!ServerInterceptorMakers().empty()) {
    std::vector<std::unique_ptr<grpc::experimental::ServerInterceptorFactoryInterface>> interceptors;
    for (const ServerInterceptorMaker& make : ServerInterceptorMakers()) interceptors.push_back(make());
    builder.experimental().SetInterceptorCreators(std::move(interceptors));
  }
  std::unique_ptr<grpc::Server> server = builder.BuildAndStart();
  if (server != nullptr) server->GetHealthCheckService()->SetServingStatus(service_name, true);
  return server;
}

// One port.
inline std::unique_ptr<grpc::Server> StartGrpcServer(grpc::Service& service, const std::string& service_name,
                                                     const std::string& address, int* port,
                                                     std::shared_ptr<grpc::ServerCredentials> credentials,
                                                     bool lean = false) {
  return StartGrpcServerOnPorts(service, service_name, {{address, std::move(credentials), port}},
                                lean ? 16 : kMaxServerThreads, lean);
}

// Blocks until one of the signals in `signals` arrives (the caller blocked them in every
// thread, i.e. before starting any), then stops `server` with a 2 s grace for calls in
// flight and returns once it has stopped. Logs "<program>: signal N, shutting down".
inline void ServeUntilSignal(grpc::Server& server, const sigset_t& signals, const std::string& program) {
  std::thread waiter([&] {
    int sig = 0;
    sigwait(&signals, &sig);
    std::cout << program << ": signal " << sig << ", shutting down" << std::endl;
    server.Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(2));
  });
  server.Wait();
  waiter.join();
}

// Raises the open-file limit to its hard maximum (daemons holding one connection per host
// need more than the usual 1024). Returns the new soft limit.
inline uint64_t RaiseFileLimit() {
  struct rlimit r;
  if (getrlimit(RLIMIT_NOFILE, &r) != 0) return 0;
  if (r.rlim_cur < r.rlim_max) {
    r.rlim_cur = r.rlim_max;
    setrlimit(RLIMIT_NOFILE, &r);
    getrlimit(RLIMIT_NOFILE, &r);
  }
  return r.rlim_cur;
}

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_GRPC_SERVER_H_
