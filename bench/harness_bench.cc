// harness_bench: what the emulated fleet costs by itself. One `mkagent --hosts N --bench`
// (default 1,000 hosts, synthetic 2-node 32-core topology, no instances, no controller)
// is started and left idle; its CPU time (utime + stime from /proc/PID/stat) over 10 s is
// printed as a share of one core, with its thread count and RSS. Target (2 cores): under
// 5 % of one core at 1,000 hosts. Its floor, measured in the same run: the same over 10 s
// for one idle host (`--hosts 1`, the per-host agent with its own watchdog thread), so the
// figure is also given per host as a multiple of it.
// Usage: harness_bench [--hosts N] [--seconds S]
#include <signal.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "bench/fleet_harness.h"

namespace {

struct Cost {
  double cpu_share = 0;  // of one core
  int threads = 0;
  long rss_kib = 0;
  double start_s = 0;
};

Cost Measure(const std::string& mkagent, int hosts, int seconds, const std::string& dir) {
  Cost c;
  std::filesystem::create_directories(dir);
  auto t0 = mkfleet::bench::Clock::now();
  mkfleet::bench::HarnessStateDir hosts_dir(dir);
  mkfleet::testing::Process agent({mkagent, "--hosts", std::to_string(hosts), "--topology",
                                   "synthetic:pack:2 numa:1(memory=64GiB) core:16 pu:2", "--listen", "127.0.0.1:0",
                                   "--state-dir", hosts_dir.path() + "/state",
                                   "--host", "node", "--bench", "--insecure",
                                   "--guest-binary", "none"},
                                  dir + "/mkagent.log");
  if (agent.WaitFor(hosts > 1 ? "emulated hosts .* ports" : "listening on port", std::chrono::seconds(300)).empty()) {
    std::cerr << "harness_bench: mkagent did not start:\n" << agent.Log();
    std::exit(1);
  }
  c.start_s = mkfleet::bench::Seconds(mkfleet::bench::Clock::now() - t0);
  std::this_thread::sleep_for(std::chrono::seconds(2));  // past the start's own work
  double before = mkfleet::bench::CpuSeconds(agent.pid());
  std::this_thread::sleep_for(std::chrono::seconds(seconds));
  double after = mkfleet::bench::CpuSeconds(agent.pid());
  c.cpu_share = (after - before) / seconds;
  c.threads = std::atoi(mkfleet::bench::StatusField(agent.pid(), "Threads").c_str());
  c.rss_kib = std::atol(mkfleet::bench::StatusField(agent.pid(), "VmRSS").c_str());
  agent.Kill(SIGTERM);
  return c;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  int hosts = 1000, seconds = 10;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--hosts" && i + 1 < argc) {
      hosts = std::atoi(argv[++i]);
    } else if (a == "--seconds" && i + 1 < argc) {
      seconds = std::atoi(argv[++i]);
    } else {
      const bool help = a == "--help" || a == "-h";
      (help ? std::cout : std::cerr) << "usage: harness_bench [--hosts N] [--seconds S]  (default 1000, 10)\n";
      return help ? 0 : 2;
    }
  }
  if (hosts < 2 || seconds < 1) return 2;
  char tmpl[] = "/tmp/harness_bench.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string mkagent = mkfleet::bench::Runfile("bench/harness_bench", "agents/mkagent");
  Cost one = Measure(mkagent, 1, seconds, dir + "/one");
  std::printf("floor: one idle host (its own agent and watchdog thread): %.2f %% of one core, %d threads\n",
              one.cpu_share * 100, one.threads);
  Cost many = Measure(mkagent, hosts, seconds, dir + "/many");
  const double per_host = many.cpu_share / hosts;
  std::printf("%d idle emulated hosts in one mkagent: %.2f %% of one core over %d s (%.4f %% per host, %.2fx the "
              "floor per host), %d threads, RSS %.1f MiB, listening after %.1f s  [target < 5 %% at 1,000]\n",
              hosts, many.cpu_share * 100, seconds, per_host * 100,
              one.cpu_share > 0 ? per_host / one.cpu_share : 0.0, many.threads, many.rss_kib / 1024.0, many.start_s);
  std::filesystem::remove_all(dir);
  return many.cpu_share < 0.05 || hosts != 1000 ? 0 : 1;
}
