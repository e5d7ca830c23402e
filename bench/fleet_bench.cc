// fleet_bench: the declarative loop at fleet scale, with real processes. One mkagent serves
// N emulated hosts (synthetic 2-node, 32-core topology, zero boot time) on N loopback
// ports; one mkcontroller with a fresh SQLite store; manifests for the N Hosts and two
// InstanceSets (perHost 6 and 4: 10 instances per host) applied with the real `mkapply`.
// It prints:
//  1. apply from scratch until every set member is Ready (target <= 30 s for 1,000 hosts);
//  2. a no-op re-apply: mkapply's wall time (target <= 2 s) and the actions the controller
//     sent in the 3 s after it (target 0);
//  3. the controller's peak RSS (target <= 500 MiB);
// and its floor, measured in the same run: one round trip to the controller (a Stats call,
// median of 200) before anything is applied; figures 1 and 2 are also given as multiples.
// Each figure is measured twice in one run (--tls both, the default): plaintext on loopback
// (--insecure), then mutual TLS with a fresh CA and a certificate per host, and the
// difference is printed. Usage: fleet_bench [--hosts N] [--tls on|off|both] (default 1000).
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "absl/time/clock.h"
#include "security/certs.h"
#include "security/tls.h"
#include "bench/fleet_harness.h"
#include "tests/process_util.h"

namespace {

namespace v1 = mkfleet::v1;
using mkfleet::bench::Channel;
using mkfleet::bench::Clock;
using mkfleet::bench::MakePki;
using mkfleet::bench::Run;
using mkfleet::bench::Seconds;
using mkfleet::bench::Stats;

std::string Runfile(const std::string& path) { return mkfleet::bench::Runfile("bench/fleet_bench", path); }

// Ready members of the sets, and how many there should be.
std::pair<uint32_t, uint32_t> SetReadiness(v1::Controller::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetRequest req;
  req.set_kind("InstanceSet");
  v1::GetResponse r;
  if (!stub.Get(&ctx, req, &r).ok()) return {0, 0};
  uint32_t ready = 0, want = 0;
  for (const auto& o : r.objects()) {
    ready += o.instance_set().status().ready_replicas();
    want += o.instance_set().status().replicas();
  }
  return {ready, want};
}

// One whole run: agents, controller, apply until Ready, no-op re-apply; in `dir`, with
// mutual TLS (a fresh CA in dir/pki) or plaintext on loopback.
struct Result {
  bool ok = false;
  double floor_s = 0, converge_s = 0, noop_s = 0, rss_mib = 0;
};

Result RunFleet(int hosts, bool tls, const std::string& dir) {
  Result result;
  const int per_host = 10;
  const char* mode = tls ? "[mutual TLS]" : "[plaintext] ";
  std::string mkagent = Runfile("agents/mkagent"), mkcontroller = Runfile("reconciler/mkcontroller"),
              mkapply = Runfile("cli/mkapply");
  std::filesystem::create_directories(dir + "/manifests");
  const std::string pki = dir + "/pki";
  if (tls && !MakePki(pki, hosts)) return result;
  const std::string tls_flag = tls ? "--tls-dir" : "--insecure";
  // (--insecure twice when plaintext: every argument must be a flag or its value.)
  const std::string admin = tls ? pki + "/users/admin" : "--insecure";
  std::cout << mode << " fleet: " << hosts << " emulated hosts (pack:2 numa:1 core:16 pu:2, boot 0 ms), "
            << hosts * per_host << " instances from 2 InstanceSets; work dir " << dir << std::endl;

  auto t0 = Clock::now();
  mkfleet::testing::Process agents({mkagent, "--hosts", std::to_string(hosts), "--topology",
                                    "synthetic:pack:2 numa:1(memory=64GiB) core:16 pu:2", "--listen", "127.0.0.1:0",
                                    "--state-dir", dir + "/agents", "--host", "node", "--reserve-cores", "1",
                                    "--reserve-memory", "4Gi", "--bench", "--ports-file",
                                    dir + "/ports", "--image-dir", dir, tls_flag, tls ? pki + "/agents" : "--insecure"},
                                   dir + "/mkagent.log");
  if (agents.WaitFor("emulated hosts .* ports", std::chrono::seconds(300)).empty()) {
    std::cerr << "fleet_bench: mkagent did not start:\n" << agents.Log();
    return result;
  }
  std::cout << "agents listening after " << Seconds(Clock::now() - t0) << " s" << std::endl;
  mkfleet::testing::Process controller(
      {mkcontroller, "--listen", "127.0.0.1:0", "--store", "sqlite:" + dir + "/store.db", "--resync", "120", tls_flag,
       tls ? pki + "/controller" : "--insecure"},
      dir + "/mkcontroller.log");
  std::string port = controller.WaitFor("listening on port ([0-9]+)");
  if (port.empty()) {
    std::cerr << "fleet_bench: mkcontroller did not start:\n" << controller.Log();
    return result;
  }
  const std::string address = "127.0.0.1:" + port;
  auto stub = v1::Controller::NewStub(Channel(tls ? admin : "", address));

  // The floor: one round trip to the idle controller.
  const double floor_s = mkfleet::bench::ControllerRoundTrip(*stub);
  std::printf("%s floor: one controller round trip (Stats, median of 200): %.3f ms\n", mode, floor_s * 1000);

  // The manifests: one file of Hosts, one of sets, and a stand-in kernel image.
  std::string vmlinux = dir + "/vmlinux";
  std::ofstream(vmlinux, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
  {
    std::ifstream ports(dir + "/ports");
    std::ofstream out(dir + "/manifests/hosts.yaml");
    std::string name, addr;
    int i = 0;
    while (ports >> name >> addr) {
      out << "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " << name << "\n  labels: {rack: r"
          << (i++ % 20) << "}\nspec:\n  agent: " << addr << "\n  pool:\n    hostReserved: {cores: 1, memory: 4Gi}\n---\n";
    }
  }
  {
    std::ofstream out(dir + "/manifests/sets.yaml");
    for (auto [name, count] : {std::pair<std::string, int>{"web", 6}, {"cache", 4}}) {
      out << "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: " << name << "}\nspec:\n  perHost: "
          << count << "\n  template:\n    spec:\n      kernel: {image: " << vmlinux
          << ", cmdline: \"console=mktty0\"}\n      resources: {cpus: 2, memory: 1Gi}\n---\n";
    }
  }

  // 1. Apply from scratch until all Ready.
  auto start = Clock::now();
  int rc = Run({mkapply, "apply", "-f", dir + "/manifests", "--controller", address, tls_flag, admin},
               dir + "/apply1.log");
  double apply_call = Seconds(Clock::now() - start);
  if (rc != 0) {
    std::ifstream in(dir + "/apply1.log");
    std::cerr << "fleet_bench: mkapply apply failed:\n" << in.rdbuf();
    return result;
  }
  uint32_t ready = 0, want = 0;
  auto last_print = Clock::now();
  while (Seconds(Clock::now() - start) < 600) {
    std::tie(ready, want) = SetReadiness(*stub);
    if (want == static_cast<uint32_t>(hosts * per_host) && ready == want) break;
    if (Seconds(Clock::now() - last_print) >= 2) {
      v1::StatsResponse st = Stats(*stub);
      std::cout << "  " << Seconds(Clock::now() - start) << " s: " << ready << "/" << want << " ready, "
                << st.hosts_connected() << "/" << st.hosts() << " hosts connected, " << st.actions_sent()
                << " actions, " << st.passes() << " passes" << std::endl;
      last_print = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  double converge = Seconds(Clock::now() - start);
  v1::StatsResponse after = Stats(*stub);
  bool all_ready = want == static_cast<uint32_t>(hosts * per_host) && ready == want;
  std::printf("%s 1. apply from scratch until all Ready: %.2f s (mkapply itself %.2f s) for %u instances on %d hosts; "
              "%lld actions, %lld passes, %lld status writes%s; %.0fx the floor  [target <= 30 s]\n",
              mode, converge, apply_call, ready, hosts, static_cast<long long>(after.actions_sent()),
              static_cast<long long>(after.passes()), static_cast<long long>(after.status_writes()),
              all_ready ? "" : "  NOT ALL READY", converge / floor_s);

  // 2. No-op re-apply.
  std::this_thread::sleep_for(std::chrono::seconds(2));  // let the last statuses settle
  v1::StatsResponse before = Stats(*stub);
  start = Clock::now();
  rc = Run({mkapply, "apply", "-f", dir + "/manifests", "--controller", address, tls_flag, admin}, dir + "/apply2.log");
  double noop = Seconds(Clock::now() - start);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  v1::StatsResponse later = Stats(*stub);
  std::printf("%s 2. no-op re-apply: %.3f s (exit %d; %.0fx the floor), %lld actions sent in the 3 s after, %lld passes  "
              "[target <= 2 s, 0 actions]\n",
              mode, noop, rc, noop / floor_s, static_cast<long long>(later.actions_sent() - before.actions_sent()),
              static_cast<long long>(later.passes() - before.passes()));

  // 3. Peak RSS.
  std::printf("%s 3. controller peak RSS: %.1f MiB  [target <= 500 MiB]\n", mode, later.peak_rss_bytes() / 1048576.0);
  std::fflush(stdout);

  int c = controller.Kill(SIGTERM), a = agents.Kill(SIGTERM);
  bool clean = WIFEXITED(c) && WEXITSTATUS(c) == 0 && WIFEXITED(a) && WEXITSTATUS(a) == 0;
  if (!clean) std::cerr << "fleet_bench: unclean stop (controller " << c << ", agents " << a << ")\n";
  result.ok = all_ready && clean;
  result.floor_s = floor_s;
  result.converge_s = converge;
  result.noop_s = noop;
  result.rss_mib = later.peak_rss_bytes() / 1048576.0;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  int hosts = 1000;
  std::string tls = "both";
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--hosts" && i + 1 < argc) {
      hosts = std::atoi(argv[++i]);
    } else if (a == "--tls" && i + 1 < argc && (std::string(argv[i + 1]) == "on" || std::string(argv[i + 1]) == "off" ||
                                                 std::string(argv[i + 1]) == "both")) {
      tls = argv[++i];
    } else {
      const bool help = a == "--help" || a == "-h";
      (help ? std::cout : std::cerr) << "usage: fleet_bench [--hosts N] [--tls on|off|both]  (default 1000, both)\n";
      return help ? 0 : 2;
    }
  }
  if (hosts < 1) return 2;
  char tmpl[] = "/tmp/fleet_bench.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  Result off, on;
  bool ok = true;
  if (tls != "on") {
    off = RunFleet(hosts, false, dir + "/plaintext");
    ok = ok && off.ok;
  }
  if (tls != "off") {
    on = RunFleet(hosts, true, dir + "/tls");
    ok = ok && on.ok;
  }
  if (tls == "both" && off.ok && on.ok) {
    std::printf("TLS vs plaintext: floor %+.1f %%, apply until Ready %+.1f %%, no-op re-apply %+.1f %%, peak RSS %+.1f %%\n",
                100 * (on.floor_s / off.floor_s - 1), 100 * (on.converge_s / off.converge_s - 1),
                100 * (on.noop_s / off.noop_s - 1), 100 * (on.rss_mib / off.rss_mib - 1));
  }
  std::filesystem::remove_all(dir);
  return ok ? 0 : 1;
}
