// fleet_bench: the controller at fleet scale, measured apart from its test harness.
// `mkagent --hosts N --bench` (one process per 2,500 hosts) serves N emulated hosts (synthetic 2-node 32-core topology,
// zero boot time; it logs every request it receives); mkcontroller on a fresh store; two
// InstanceSets (perHost 6 and 4: 10 instances per host) applied with the real `mkapply`,
// with mutual TLS. For the controller alone (its CPU seconds from /proc/PID/stat; with
// --ha, the leader's) it prints:
//  1. apply from scratch until every member is Ready: wall and CPU seconds
//     [target 1,000 hosts <= 15 s, 10,000 hosts <= 120 s];
//  2. a no-op re-apply: mkapply's wall time, the controller's CPU, and the actions sent in
//     the 3 s after [target <= 1 s, 0 actions];
//  3. a one-instance change: from `mkapply apply` to the first request its agent receives,
//     the median of --changes C of them (default 5; each a new instance on another host)
//     [target <= 200 ms];
//  4. the controller's peak RSS [target <= 300 MiB at 1,000 hosts, <= 2 GiB at 10,000];
// and the harness's own CPU seconds over 1 (the mkagent process), and the harness's and the
// controller's CPU at rest for 3 s after 1 (every instance running). Its floor, measured in the
// same run: one round trip to the controller (Stats, median of 200); figures 1-3 are also
// given as multiples of it.
// --store sqlite|etcd|both (default sqlite): etcd runs a single-member etcd on loopback
// (Debian's etcd-server); `both` runs SQLite, then etcd, and prints them side by side.
// --ha K (etcd only): K `mkcontroller --ha` on that etcd; the leader reconciles, and after
// the figures the leader is SIGKILLed and a one-instance change applied through a follower:
// 5. failover: from SIGKILL to the first request an agent receives from the new leader.
// --shards S (with --ha K): the members split the hosts into S shards (each sends to its
// own, the leader plans for all); the figures are still the leader's.
// --metrics on|both: every daemon serves Prometheus metrics (--metrics-listen), scraped every
// 5 s as Prometheus would, and the controller the web console (--http) with an operator's
// fleet page open all along (its event stream read, /api/fleet fetched again after changes,
// as the page throttles itself: not sooner than a second, nor than four times its last
// load took); `both` runs SQLite without and with them, alternating (--pairs P, default 2:
// without, with, without, with), side by side, and their cost from the means.
// Usage: fleet_bench [--hosts N] [--store sqlite|etcd|both] [--ha K] [--shards S] [--changes C] [--tls on|off]
//                    [--metrics off|on|both] [--pairs P]
// (FLEET_BENCH_KEEP=1 keeps the work folder: logs, stores, request log;
// FLEET_BENCH_CONTROLLER_FLAGS adds mkcontroller flags, e.g. "--connection-threads 0".)
#include <signal.h>
#include <unistd.h>

#include <string_view>

#include "httplib.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <memory>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/notification.h"
#include "bench/fleet_harness.h"
#include "common/testing/scrape.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "tests/etcd_cluster.h"
#include "tests/process_util.h"

namespace {

namespace v1 = mkfleet::v1;
using mkfleet::bench::Channel;
using mkfleet::bench::Clock;
using mkfleet::bench::CpuSeconds;
using mkfleet::bench::MakePki;
using mkfleet::bench::Run;
using mkfleet::bench::Seconds;
using mkfleet::bench::Stats;
using mkfleet::testing::Process;

std::string Runfile(const std::string& path) { return mkfleet::bench::Runfile("bench/fleet_bench", path); }

int64_t UnixMs() {
  return std::chrono::duration_cast<std::chrono::milliseconds>(std::chrono::system_clock::now().time_since_epoch())
      .count();
}

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

// The first line of the agents' request log at or after `since_ms` that mentions `needle`:
// its time (unix ms), or -1 once `timeout_s` passed without one.
// The request log's size now: a wait for a request from now on reads only what follows (the
// log holds every action of the converge; reading it from the start would compete with the
// controller for the CPU while the change is timed).
std::streamoff LogEnd(const std::string& log) {
  std::ifstream in(log, std::ios::ate);
  return in ? static_cast<std::streamoff>(in.tellg()) : 0;
}

int64_t WaitForRequest(const std::string& log, int64_t since_ms, const std::string& needle, double timeout_s,
                       std::streamoff offset = 0) {
  auto end = Clock::now() + std::chrono::milliseconds(static_cast<int64_t>(timeout_s * 1000));
  while (Clock::now() < end) {
    std::ifstream in(log);
    in.seekg(offset);
    std::string line;
    while (std::getline(in, line)) {
      if (in.eof()) break;  // a line being written
      offset = in.tellg();
      int64_t t = std::atoll(line.c_str());
      if (t >= since_ms && line.find(needle) != std::string::npos) return t;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
  return -1;
}

struct Options {
  int hosts = 1000;
  bool tls = true;
  std::string store = "sqlite";
  int ha = 1;
  int shards = 0;
  int changes = 5;
  std::string metrics = "off";  // off | on | both (the SQLite run without and with, alternating)
  int pairs = 2;                 // both: how many times each
  bool metrics_on = false;       // this fleet's daemons serve metrics, scraped every kScrapeEvery
};

constexpr auto kScrapeEvery = std::chrono::seconds(5);

struct Result {
  bool ok = false;
  double floor_s = 0;
  double converge_s = 0, converge_cpu = 0, harness_cpu = 0;
  double noop_s = 0, noop_cpu = 0;
  long long noop_actions = 0;
  double change_ms = 0, change_min_ms = 0, change_max_ms = 0, rss_mib = 0;
  double failover_ms = -1;
};

class Fleet {
 public:
  Fleet(const Options& o, const std::string& store, const std::string& dir) : o_(o), store_(store), dir_(dir) {}
  ~Fleet() { Stop(); }

  Result Measure();

 private:
  std::string Mode() const {
    return absl::StrCat("[", store_, o_.ha > 1 ? absl::StrCat(", ha ", o_.ha) : "",
                        o_.ha > 1 && o_.shards > 0 ? absl::StrCat(", shards ", o_.shards) : "", o_.tls ? "" : ", plaintext",
                        o_.metrics_on ? ", metrics" : "", "]");
  }
  bool StartAgents();
  bool StartControllers();
  int FindLeader();
  std::string Address(int i) const { return "127.0.0.1:" + std::to_string(ports_[i]); }
  std::unique_ptr<v1::Controller::Stub> Stub(int i) const {
    return v1::Controller::NewStub(Channel(o_.tls ? pki() + "/users/admin" : "", Address(i)));
  }
  std::string pki() const { return dir_ + "/pki"; }
  int Apply(const std::string& path, int member, const std::string& log) {
    return Run({Runfile("cli/mkapply"), "apply", "-f", path, "--controller", Address(member), o_.tls ? "--tls-dir" : "--insecure",
                o_.tls ? pki() + "/users/admin" : "--insecure"},
               dir_ + "/" + log);
  }
  std::string InstanceFile(const std::string& name, const std::string& host) {
    std::string path = dir_ + "/" + name + ".yaml";
    std::ofstream(path) << "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: " << name
                        << "}\nspec:\n  host: " << host << "\n  kernel: {image: " << dir_
                        << "/vmlinux, cmdline: \"console=mktty0\"}\n  resources: {cpus: 2, memory: 1Gi}\n";
    return path;
  }
  void Stop() {
    StopScraper();
    for (auto& c : controllers_) c.reset();
    agents_.clear();
    etcd_.reset();
  }
  // --metrics: what Prometheus would do, every kScrapeEvery: GET /metrics of every daemon.
  void StartScraper() {
    if (metrics_ports_.empty()) return;
    scraper_ = std::thread([this] {
      while (!stop_scraping_.WaitForNotificationWithTimeout(absl::FromChrono(kScrapeEvery))) {
        for (int port : metrics_ports_) {
          const std::string text = mkfleet::testing::HttpGet(port);
          scrapes_ += text.empty() ? 0 : 1;
          scraped_bytes_ += text.size();
        }
      }
    });
  }
  void StopScraper() {
    if (!scraper_.joinable()) return;
    stop_scraping_.Notify();
    scraper_.join();
    if (viewer_ != nullptr) viewer_->stop();
    if (watcher_.joinable()) watcher_.join();
  }
  // --metrics: an operator's fleet page, open all along: its event stream, and the fleet
  // page's data fetched again after changes (throttled as the page is, see above).
  void StartViewer() {
    if (console_port_ == 0) return;
    viewer_ = std::make_unique<httplib::Client>("127.0.0.1", console_port_);
    viewer_->set_read_timeout(600, 0);
    watcher_ = std::thread([this] {
      httplib::Client api("127.0.0.1", console_port_);
      api.set_read_timeout(600, 0);
      auto next = Clock::now();
      viewer_->Get("/api/watch", [&](const char* data, size_t n) {
        if (stop_scraping_.HasBeenNotified()) return false;
        if (std::string_view(data, n).find("event: change") == std::string_view::npos) return true;
        if (Clock::now() < next) return true;
        const auto t = Clock::now();
        auto r = api.Get("/api/fleet");
        if (r && r->status == 200) page_bytes_ += r->body.size();
        const auto took = Clock::now() - t;
        page_ms_ += std::chrono::duration_cast<std::chrono::milliseconds>(took).count();
        ++page_loads_;
        next = t + std::max<Clock::duration>(std::chrono::seconds(1), 4 * took);
        return true;
      });
    });
  }
  // The agents' CPU seconds so far, all processes.
  double HarnessCpu() const {
    double sum = 0;
    for (const auto& a : agents_) sum += CpuSeconds(a->pid());
    return sum;
  }

  const Options o_;
  const std::string store_;
  const std::string dir_;
  mkfleet::bench::HarnessStateDir hosts_dir_{dir_};
  // The emulated hosts, at most kHostsPerProcess per mkagent (a process holds about 3 files
  // per host, and 20,000 open files is a common limit).
  static constexpr int kHostsPerProcess = 2500;
  std::vector<std::unique_ptr<Process>> agents_;
  std::unique_ptr<mkfleet::testing::EtcdCluster> etcd_;
  std::vector<std::unique_ptr<Process>> controllers_;
  std::vector<int> ports_;
  std::string request_log_;
  std::vector<int> metrics_ports_;  // --metrics: every daemon's
  std::thread scraper_;
  absl::Notification stop_scraping_;
  std::atomic<int64_t> scrapes_{0}, scraped_bytes_{0};
  int console_port_ = 0;  // --metrics: the leader's console
  std::unique_ptr<httplib::Client> viewer_;
  std::thread watcher_;
  std::atomic<int64_t> page_loads_{0}, page_ms_{0}, page_bytes_{0};
};

bool Fleet::StartAgents() {
  std::filesystem::create_directories(dir_ + "/manifests");
  if (o_.tls && !MakePki(pki(), o_.hosts)) return false;
  request_log_ = dir_ + "/requests.log";
  auto t0 = Clock::now();
  for (int first = 0; first < o_.hosts; first += kHostsPerProcess) {
    const int n = std::min(kHostsPerProcess, o_.hosts - first);
    const std::string k = std::to_string(agents_.size());
    std::vector<std::string> argv{Runfile("agents/mkagent"), "--hosts", std::to_string(n), "--first-host",
                                  std::to_string(first), "--topology",
                                  "synthetic:pack:2 numa:1(memory=64GiB) core:16 pu:2", "--listen", "127.0.0.1:0",
                                  "--state-dir", hosts_dir_.path() + "/agents", "--host", "node",
                                  "--reserve-cores", "1",
                                  "--reserve-memory", "4Gi", "--bench", "--ports-file", dir_ + "/ports-" + k,
                                  "--image-dir", dir_, "--request-log", request_log_, o_.tls ? "--tls-dir" : "--insecure",
                                  o_.tls ? pki() + "/agents" : "--insecure"};
    if (o_.metrics_on) argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0"});
    agents_.push_back(std::make_unique<Process>(argv, dir_ + "/mkagent-" + k + ".log"));
  }
  for (auto& a : agents_) {
    if (a->WaitFor("emulated hosts .* ports", std::chrono::seconds(600)).empty()) {
      std::cerr << "fleet_bench: mkagent did not start:\n" << a->Log();
      return false;
    }
    if (o_.metrics_on) metrics_ports_.push_back(std::atoi(a->WaitFor("metrics on port ([0-9]+)").c_str()));
  }
  {
    std::ofstream ports(dir_ + "/ports");
    for (size_t k = 0; k < agents_.size(); ++k) ports << std::ifstream(dir_ + "/ports-" + std::to_string(k)).rdbuf();
  }
  std::cout << Mode() << " " << o_.hosts << " emulated hosts listening after " << Seconds(Clock::now() - t0) << " s"
            << std::endl;
  return true;
}

bool Fleet::StartControllers() {
  std::vector<std::string> store_flags;
  if (store_ == "etcd") {
    etcd_ = std::make_unique<mkfleet::testing::EtcdCluster>(
        dir_ + "/etcd", 1,
        std::vector<std::string>{"--max-txn-ops", "1000000", "--max-request-bytes", "67108864", "--quota-backend-bytes",
                                 "8589934592"});
    if (!etcd_->ok()) {
      std::cerr << "fleet_bench: etcd did not start:\n" << etcd_->Log(0);
      return false;
    }
    store_flags = {"--store", etcd_->spec(), "--etcd-max-txn-ops", "1000000"};
  } else {
    store_flags = {"--store", "sqlite:" + dir_ + "/store.db"};
  }
  for (int i = 0; i < o_.ha; ++i) {
    ports_.push_back(mkfleet::testing::FreePort());
    // The periodic full pass (a safety net for missed changes; ~5 CPU s at 10,000 hosts) at
    // 600 s: a 10,000-host run takes ~4 min, and at 120 s it fell into the no-op and change
    // measures once the converge took under 120 s (what they timed was the resync pass).
    std::vector<std::string> argv = {Runfile("reconciler/mkcontroller"), "--listen", Address(i), "--resync", "600",
                                     "--git-cache", dir_ + "/git-" + std::to_string(i)};
    if (o_.tls) {
      argv.insert(argv.end(), {"--tls-dir", pki() + "/controller"});
    } else {
      argv.push_back("--insecure");
    }
    argv.insert(argv.end(), store_flags.begin(), store_flags.end());
    // FLEET_BENCH_CONTROLLER_FLAGS: more mkcontroller flags, space-separated (comparisons).
    if (const char* more = getenv("FLEET_BENCH_CONTROLLER_FLAGS")) {
      std::istringstream words(more);
      for (std::string w; words >> w;) argv.push_back(w);
    }
    if (o_.metrics_on) argv.insert(argv.end(), {"--metrics-listen", "127.0.0.1:0", "--http", "127.0.0.1:0"});
    if (o_.ha > 1) argv.insert(argv.end(), {"--ha", "--name", "c" + std::to_string(i)});
    if (o_.ha > 1 && o_.shards > 0) argv.insert(argv.end(), {"--shards", std::to_string(o_.shards)});
    controllers_.push_back(std::make_unique<Process>(argv, dir_ + "/mkcontroller-" + std::to_string(i) + ".log"));
    if (controllers_.back()->WaitFor("listening on port ([0-9]+)").empty()) {
      std::cerr << "fleet_bench: mkcontroller did not start:\n" << controllers_.back()->Log();
      return false;
    }
    if (o_.metrics_on) {
      metrics_ports_.push_back(std::atoi(controllers_.back()->WaitFor("metrics on port ([0-9]+)").c_str()));
      if (console_port_ == 0) console_port_ = std::atoi(controllers_.back()->WaitFor("console on port ([0-9]+)").c_str());
    }
  }
  return true;
}

// The member that leads (0 without --ha), or -1 if none within 30 s.
int Fleet::FindLeader() {
  if (o_.ha <= 1) return 0;
  auto end = Clock::now() + std::chrono::seconds(30);
  while (Clock::now() < end) {
    for (int i = 0; i < o_.ha; ++i) {
      if (controllers_[i] == nullptr || !controllers_[i]->Running()) continue;
      auto stub = Stub(i);
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
      v1::ControllersResponse r;
      if (stub->Controllers(&ctx, v1::ControllersRequest(), &r).ok() && r.leader().size() > 1) {
        int l = std::atoi(r.leader().c_str() + 1);
        if (controllers_[l] != nullptr && controllers_[l]->Running()) return l;
      }
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return -1;
}

Result Fleet::Measure() {
  Result result;
  const int per_host = 10;
  if (!StartAgents() || !StartControllers()) return result;
  StartScraper();
  StartViewer();
  const int leader = FindLeader();
  if (leader < 0) {
    std::cerr << "fleet_bench: no leader elected\n";
    return result;
  }
  const pid_t cpid = controllers_[leader]->pid();
  auto stub = Stub(leader);
  const std::string mode = Mode();

  const double floor_s = mkfleet::bench::ControllerRoundTrip(*stub);
  std::printf("%s floor: one controller round trip (Stats, median of 200): %.3f ms\n", mode.c_str(), floor_s * 1000);

  std::ofstream(dir_ + "/vmlinux", std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
  {
    std::ifstream ports(dir_ + "/ports");
    std::ofstream out(dir_ + "/manifests/hosts.yaml");
    std::string name, addr;
    int i = 0;
    while (ports >> name >> addr) {
      out << "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " << name << "\n  labels: {rack: r"
          << (i++ % 20) << "}\nspec:\n  agent: " << addr << "\n  pool:\n    hostReserved: {cores: 1, memory: 4Gi}\n---\n";
    }
    std::ofstream sets(dir_ + "/manifests/sets.yaml");
    for (auto [name, count] : {std::pair<std::string, int>{"web", 6}, {"cache", 4}}) {
      sets << "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: " << name << "}\nspec:\n  perHost: "
           << count << "\n  template:\n    spec:\n      kernel: {image: " << dir_
           << "/vmlinux, cmdline: \"console=mktty0\"}\n      resources: {cpus: 2, memory: 1Gi}\n---\n";
    }
  }

  // 1. Apply from scratch until all Ready.
  double cpu0 = CpuSeconds(cpid), harness0 = HarnessCpu();
  auto start = Clock::now();
  if (Apply(dir_ + "/manifests", leader, "apply1.log") != 0) {
    std::ifstream in(dir_ + "/apply1.log");
    std::cerr << "fleet_bench: mkapply apply failed:\n" << in.rdbuf();
    return result;
  }
  const double limit = o_.hosts >= 5000 ? 1200 : 600;
  uint32_t ready = 0, want = 0;
  auto last_print = Clock::now();
  while (Seconds(Clock::now() - start) < limit) {
    std::tie(ready, want) = SetReadiness(*stub);
    if (want == static_cast<uint32_t>(o_.hosts * per_host) && ready == want) break;
    if (Seconds(Clock::now() - last_print) >= 5) {
      v1::StatsResponse st = Stats(*stub);
      std::cout << "  " << static_cast<int>(Seconds(Clock::now() - start)) << " s: " << ready << "/" << want
                << " ready, " << st.hosts_connected() << "/" << st.hosts() << " hosts connected, " << st.actions_sent()
                << " actions, " << st.passes() << " passes" << std::endl;
      last_print = Clock::now();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  result.converge_s = Seconds(Clock::now() - start);
  result.converge_cpu = CpuSeconds(cpid) - cpu0;
  result.harness_cpu = HarnessCpu() - harness0;
  v1::StatsResponse after = Stats(*stub);
  const bool all_ready = want == static_cast<uint32_t>(o_.hosts * per_host) && ready == want;
  const double target = o_.hosts <= 1000 ? 15 : 120;
  std::printf("%s 1. apply from scratch until all Ready: %.2f s wall, controller %.2f CPU s, harness (mkagent) %.2f CPU "
              "s, for %u instances on %d hosts; %lld actions, %lld passes%s; %.0fx the floor  [target <= %.0f s]\n",
              mode.c_str(), result.converge_s, result.converge_cpu, result.harness_cpu, ready, o_.hosts,
              static_cast<long long>(after.actions_sent()), static_cast<long long>(after.passes()),
              all_ready ? "" : "  NOT ALL READY", result.converge_s / floor_s, target);
  std::fflush(stdout);

  // At rest (while the last statuses settle): what the emulated hosts and the controller use
  // with every instance running and nothing to do. The hosts' liveness probes (every running
  // instance with a failover policy, every 100 ms by default) compete with the controller
  // for the machine's cores in the figures that follow.
  {
    const double h0 = HarnessCpu(), c0 = CpuSeconds(cpid);
    const auto t0 = Clock::now();
    std::this_thread::sleep_for(std::chrono::seconds(3));
    const double wall = Seconds(Clock::now() - t0);
    std::printf("%s    at rest after it: harness %.0f%% of a core, controller %.0f%% (over %.1f s)\n", mode.c_str(),
                100 * (HarnessCpu() - h0) / wall, 100 * (CpuSeconds(cpid) - c0) / wall, wall);
    std::fflush(stdout);
  }

  // 2. No-op re-apply.
  v1::StatsResponse before = Stats(*stub);
  cpu0 = CpuSeconds(cpid);
  start = Clock::now();
  int rc = Apply(dir_ + "/manifests", leader, "apply2.log");
  result.noop_s = Seconds(Clock::now() - start);
  std::this_thread::sleep_for(std::chrono::seconds(3));
  result.noop_cpu = CpuSeconds(cpid) - cpu0;
  v1::StatsResponse later = Stats(*stub);
  result.noop_actions = later.actions_sent() - before.actions_sent();
  std::printf("%s 2. no-op re-apply: %.3f s wall (exit %d; %.0fx the floor), controller %.2f CPU s over it and the 3 s "
              "after, %lld actions sent  [target <= 1 s, 0 actions]\n",
              mode.c_str(), result.noop_s, rc, result.noop_s / floor_s, result.noop_cpu, result.noop_actions);

  // 3. One instance changed: apply to its agent's first request. Several changes (each a new
  // instance on another host, one at a time, after the last one's statuses settle): their
  // median, and the fastest and slowest.
  std::vector<double> changes;
  for (int c = 0; c < o_.changes; ++c) {
    const std::string host = mkfleet::bench::HostName(1 + c % o_.hosts);
    const std::string name = c == 0 ? "solo" : absl::StrCat("solo", c);
    if (c > 0) std::this_thread::sleep_for(std::chrono::seconds(1));
    const std::streamoff from = LogEnd(request_log_);
    const int64_t t_apply = UnixMs();
    rc = Apply(InstanceFile(name, host), leader, absl::StrCat("apply3-", c, ".log"));
    int64_t t_agent = WaitForRequest(request_log_, t_apply, "/" + name + "/", 30, from);
    if (t_agent < 0) {
      changes.clear();
      break;
    }
    changes.push_back(static_cast<double>(t_agent - t_apply));
  }
  std::sort(changes.begin(), changes.end());
  result.change_ms = changes.empty() ? -1 : changes[changes.size() / 2];
  result.change_min_ms = changes.empty() ? -1 : changes.front();
  result.change_max_ms = changes.empty() ? -1 : changes.back();
  std::printf("%s 3. one-instance change: %.0f ms from mkapply apply to its agent's first request, median of %zu "
              "(fastest %.0f, slowest %.0f; last exit %d; %.0fx the floor)  [target <= 200 ms]\n",
              mode.c_str(), result.change_ms, changes.size(), result.change_min_ms, result.change_max_ms, rc,
              result.change_ms / 1000 / floor_s);

  // 4. Peak RSS.
  result.rss_mib = mkfleet::bench::PeakRssMib(cpid);
  std::printf("%s 4. controller peak RSS: %.1f MiB  [target <= %s]\n", mode.c_str(), result.rss_mib,
              o_.hosts <= 1000 ? "300 MiB" : "2 GiB");
  if (o_.metrics_on) {
    StopScraper();
    std::printf("%s    metrics: %lld scrapes of %zu daemons (every %lld s), %.1f KiB each on average\n", mode.c_str(),
                static_cast<long long>(scrapes_.load()), metrics_ports_.size(),
                static_cast<long long>(std::chrono::duration_cast<std::chrono::seconds>(kScrapeEvery).count()),
                scrapes_ > 0 ? scraped_bytes_.load() / 1024.0 / scrapes_.load() : 0.0);
    std::printf("%s    console: the fleet page loaded %lld times (%.0f ms, %.0f KiB each on average)\n", mode.c_str(),
                static_cast<long long>(page_loads_.load()),
                page_loads_ > 0 ? static_cast<double>(page_ms_.load()) / page_loads_.load() : 0.0,
                page_loads_ > 0 ? page_bytes_.load() / 1024.0 / page_loads_.load() : 0.0);
  }
  std::fflush(stdout);

  // 5. Failover: the leader SIGKILLed, a change applied through a follower at once.
  if (o_.ha > 1) {
    const int follower = (leader + 1) % o_.ha;
    const std::streamoff from = LogEnd(request_log_);
    const int64_t t_kill = UnixMs();
    controllers_[leader]->Kill(SIGKILL);
    controllers_[leader].reset();
    rc = Apply(InstanceFile("after-failover", mkfleet::bench::HostName(1)), follower, "apply4.log");
    int64_t t_next = WaitForRequest(request_log_, t_kill, "/after-failover/", 60, from);
    result.failover_ms = t_next < 0 ? -1 : static_cast<double>(t_next - t_kill);
    std::printf("%s 5. failover: %.0f ms from SIGKILL of the leader to the new leader's first action at an agent "
                "(apply exit %d; lease 5 s)\n",
                mode.c_str(), result.failover_ms, rc);
  }
  std::fflush(stdout);

  bool clean = true;
  for (auto& c : controllers_) {
    if (c == nullptr) continue;
    int s = c->Kill(SIGTERM);
    clean = clean && WIFEXITED(s) && WEXITSTATUS(s) == 0;
  }
  for (auto& agent : agents_) {
    int a = agent->Kill(SIGTERM);
    clean = clean && WIFEXITED(a) && WEXITSTATUS(a) == 0;
  }
  if (!clean) std::cerr << "fleet_bench: unclean stop\n";
  result.ok = all_ready && clean && result.change_ms >= 0;
  result.floor_s = floor_s;
  return result;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);
  Options o;
  auto usage = [](std::ostream& out) {
    out << "usage: fleet_bench [--hosts N] [--store sqlite|etcd|both] [--ha K] [--shards S] [--changes C] [--tls on|off]\n"
           "                   [--metrics off|on|both] [--pairs P]\n"
           "  (default 1000 hosts, sqlite, one controller, mutual TLS; --ha needs etcd; --shards S: the K members\n"
           "  split the hosts into S shards, the leader's figures are printed; --changes C: one-instance changes\n"
           "  timed, their median reported, default 5; --metrics on: the daemons serve Prometheus metrics, scraped\n"
           "  every 5 s; both: the SQLite run without and with them, alternating --pairs P times (default 2), side\n"
           "  by side, and the cost as the means' difference)\n";
  };
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    std::string next = i + 1 < argc ? argv[i + 1] : "";
    if (a == "--hosts" && !next.empty()) {
      o.hosts = std::atoi(argv[++i]);
    } else if (a == "--store" && (next == "sqlite" || next == "etcd" || next == "both")) {
      o.store = argv[++i];
    } else if (a == "--ha" && !next.empty()) {
      o.ha = std::atoi(argv[++i]);
    } else if (a == "--shards" && !next.empty()) {
      o.shards = std::atoi(argv[++i]);
    } else if (a == "--changes" && !next.empty()) {
      o.changes = std::atoi(argv[++i]);
    } else if (a == "--metrics" && (next == "on" || next == "off" || next == "both")) {
      o.metrics = argv[++i];
    } else if (a == "--pairs" && !next.empty()) {
      o.pairs = std::atoi(argv[++i]);
    } else if (a == "--tls" && (next == "on" || next == "off")) {
      o.tls = std::string(argv[++i]) == "on";
    } else {
      const bool help = a == "--help" || a == "-h";
      usage(help ? std::cout : std::cerr);
      return help ? 0 : 2;
    }
  }
  if (o.hosts < 1 || o.ha < 1 || o.shards < 0 || o.changes < 1 || o.pairs < 1) return 2;
  if (o.store != "sqlite" && !mkfleet::testing::EtcdCluster::Available()) {
    std::cerr << "fleet_bench: no " << mkfleet::testing::EtcdCluster::kBinary << " (run scripts/setup)\n";
    return 2;
  }
  char tmpl[] = "/tmp/fleet_bench.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  std::vector<std::pair<std::string, Result>> results;
  if (o.store != "etcd") {
    Options s = o;
    s.ha = 1;  // one controller on a SQLite file
    // both: without and with, alternating (--pairs P times), so that neither side is always
    // the one run later on a machine whose state drifts (page cache, its load).
    const int rounds = o.metrics == "both" ? o.pairs : 1;
    for (int i = 0; i < rounds; ++i) {
      const std::string n = rounds > 1 ? absl::StrCat(" #", i + 1) : "";
      if (o.metrics != "on") {
        s.metrics_on = false;
        Fleet f(s, "sqlite", absl::StrCat(dir, "/sqlite", i));
        results.emplace_back("sqlite" + n, f.Measure());
      }
      if (o.metrics != "off") {
        s.metrics_on = true;
        Fleet f(s, "sqlite", absl::StrCat(dir, "/sqlite-metrics", i));
        results.emplace_back("+metrics+console" + n, f.Measure());
      }
    }
  }
  if (o.store != "sqlite") {
    Options e = o;
    e.metrics_on = o.metrics == "on";
    Fleet f(e, "etcd", dir + "/etcd");
    results.emplace_back(o.ha > 1 ? absl::StrCat("etcd, ha ", o.ha, o.shards > 0 ? absl::StrCat(", sh ", o.shards) : "")
                                  : "etcd",
                         f.Measure());
  }
  bool ok = true;
  if (results.size() > 1) {
    std::printf("%-22s %10s %12s %12s %10s %10s %12s %10s %12s\n", "store", "converge", "ctl CPU s", "harness CPU",
                "no-op", "actions", "change ms", "RSS MiB", "failover ms");
  }
  for (const auto& [name, r] : results) {
    ok = ok && r.ok;
    if (results.size() > 1) {
      std::printf("%-22s %9.2fs %12.2f %12.2f %9.3fs %10lld %12.0f %10.1f %12.0f\n", name.c_str(), r.converge_s,
                  r.converge_cpu, r.harness_cpu, r.noop_s, r.noop_actions, r.change_ms, r.rss_mib, r.failover_ms);
    }
  }
  if (o.metrics == "both" && o.store == "sqlite") {
    // The cost: the mean of the runs with, against the mean of those without.
    Result without, with;
    int n = 0;
    for (size_t i = 0; i + 1 < results.size(); i += 2, ++n) {
      const Result& a = results[i].second;
      const Result& b = results[i + 1].second;
      without.converge_s += a.converge_s, with.converge_s += b.converge_s;
      without.converge_cpu += a.converge_cpu, with.converge_cpu += b.converge_cpu;
      without.noop_s += a.noop_s, with.noop_s += b.noop_s;
      without.change_ms += a.change_ms, with.change_ms += b.change_ms;
      without.rss_mib += a.rss_mib, with.rss_mib += b.rss_mib;
    }
    auto pct = [](double a, double b) { return a > 0 ? 100.0 * (b - a) / a : 0.0; };
    std::printf("cost of metrics and console (mean of %d run%s each, alternating): converge %.2f -> %.2f s (%+.1f%%), "
                "controller CPU %.2f -> %.2f s (%+.1f%%), no-op %.3f -> %.3f s, change %.0f -> %.0f ms, "
                "peak RSS %.1f -> %.1f MiB (%+.1f%%)  [target within 10%%]\n",
                n, n == 1 ? "" : "s", without.converge_s / n, with.converge_s / n, pct(without.converge_s, with.converge_s),
                without.converge_cpu / n, with.converge_cpu / n, pct(without.converge_cpu, with.converge_cpu),
                without.noop_s / n, with.noop_s / n, without.change_ms / n, with.change_ms / n, without.rss_mib / n,
                with.rss_mib / n, pct(without.rss_mib, with.rss_mib));
  }
  if (getenv("FLEET_BENCH_KEEP") == nullptr) {
    std::filesystem::remove_all(dir);
  } else {
    std::cerr << "fleet_bench: kept " << dir << "\n";
  }
  return ok ? 0 : 1;
}
