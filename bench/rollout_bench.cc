// rollout_bench: a fleet-wide rollout with real processes. One mkagent serves N emulated
// hosts (default 1,000; --bench, 0 ms boots) in 4 zones; one mkcontroller; an InstanceSet
// of perHost 10 (10,000 members) applied with mkapply and Ready; then its kernel changes
// with rollout {canary: 1%, waves: {by: zone}, maxUnavailable: 10%} (Replace):
//  1. the good kernel: total time until the rollout is complete and the set Ready, the time
//     of the canary step and of each wave, actions per second, and the most members down at
//     once (every agent is watched, each change seen) against the budget;
//  2. a kernel that panics on boot: the time from the change to the completed rollback, the
//     time from the first failure to it, and how many members ever ran the bad kernel (at
//     most the canaries).
// Its floor, measured in the same run: one round trip to the controller (Stats, median of
// 200); the figures are also given as multiples of it. Targets (2 cores): the good rollout
// <= 60 s; the bad one rolled back <= 10 s after the canaries fail.
// Usage: rollout_bench [--hosts N] [--tls on|off] (default 1000, on).
#include <signal.h>
#include <sys/wait.h>

#include <atomic>
#include <fstream>
#include <map>
#include <mutex>
#include <set>

#include "bench/fleet_harness.h"
#include "mkfleet/v1/agent.grpc.pb.h"

namespace {

namespace v1 = mkfleet::v1;
using mkfleet::bench::Clock;
using mkfleet::bench::Seconds;

constexpr int kPerHost = 10;
constexpr int kZones = 4;

std::string Runfile(const std::string& path) { return mkfleet::bench::Runfile("bench/rollout_bench", path); }

// Watches every agent at once (one completion queue, one thread): per host, the set's
// members and the kernel each runs; the most members down at once while `measuring`; the
// members that ever ran `bad`.
class FleetWatcher {
 public:
  FleetWatcher(const std::vector<std::pair<std::string, std::string>>& hosts, const std::string& tls_dir)
      : hosts_(hosts.size()), down_(static_cast<int>(hosts.size()) * kPerHost) {
    for (size_t i = 0; i < hosts.size(); ++i) {
      Host& h = hosts_[i];
      h.name = hosts[i].first;
      h.stub = v1::Agent::NewStub(mkfleet::bench::Channel(tls_dir, hosts[i].second,
                                                          mkfleet::security::Identity::Agent(h.name)));
      h.reader = h.stub->PrepareAsyncWatch(&h.ctx, v1::WatchRequest(), &cq_);
      h.reader->StartCall(Tag(i, false));
    }
    thread_ = std::thread([this] { Loop(); });
  }
  ~FleetWatcher() {
    for (Host& h : hosts_) h.ctx.TryCancel();
    thread_.join();
  }
  // Whether every host has sent its first snapshot.
  bool Ready() {
    std::lock_guard<std::mutex> lock(mu_);
    return snapshots_ == hosts_.size();
  }
  void Measure(const std::string& bad) {
    std::lock_guard<std::mutex> lock(mu_);
    bad_ = bad;
    max_down_ = down_;
    touched_.clear();
  }
  int max_down() {
    std::lock_guard<std::mutex> lock(mu_);
    return max_down_;
  }
  size_t touched() {
    std::lock_guard<std::mutex> lock(mu_);
    return touched_.size();
  }

 private:
  struct Host {
    std::string name;
    std::unique_ptr<v1::Agent::Stub> stub;
    grpc::ClientContext ctx;
    std::unique_ptr<grpc::ClientAsyncReader<v1::HostState>> reader;
    v1::HostState msg;
    std::map<std::string, std::pair<bool, std::string>> members;  // name -> (active, kernel file)
    bool seen = false;
    int down = kPerHost;
  };
  static void* Tag(size_t i, bool read) { return reinterpret_cast<void*>((i << 1) | (read ? 1 : 0)); }

  void Loop() {
    void* tag;
    bool ok;
    while (cq_.Next(&tag, &ok)) {
      size_t i = reinterpret_cast<uintptr_t>(tag) >> 1;
      bool read = reinterpret_cast<uintptr_t>(tag) & 1;
      Host& h = hosts_[i];
      if (!ok) {
        if (++ended_ == hosts_.size()) break;
        continue;
      }
      if (read) Apply(h);
      h.reader->Read(&h.msg, Tag(i, true));
    }
  }
  void Apply(Host& h) {
    std::lock_guard<std::mutex> lock(mu_);
    if (h.msg.snapshot()) h.members.clear();
    for (const auto& in : h.msg.instances()) {
      if (in.owner() != "InstanceSet/edge") continue;
      std::string file = std::filesystem::path(in.status().provenance().kernel_path()).filename();
      bool active = in.status().kernel_state() == v1::KERNEL_STATE_ACTIVE;
      h.members[in.name()] = {active, file};
      if (!bad_.empty() && file == bad_) touched_.insert(in.name());
    }
    for (const auto& name : h.msg.removed()) h.members.erase(name);
    int up = 0;
    for (const auto& [name, m] : h.members) up += m.first;
    int down = std::max(0, kPerHost - up);
    if (!h.seen) {
      h.seen = true;
      ++snapshots_;
    }
    down_ += down - h.down;
    h.down = down;
    if (snapshots_ == hosts_.size()) max_down_ = std::max(max_down_, down_);
  }

  std::vector<Host> hosts_;
  grpc::CompletionQueue cq_;
  std::thread thread_;
  std::mutex mu_;
  size_t snapshots_ = 0, ended_ = 0;
  int down_ = 0;  // members down now (each host counts kPerHost down until its first snapshot)
  int max_down_ = 0;
  std::string bad_;
  std::set<std::string> touched_;
};

v1::RolloutStatus RolloutOf(v1::Controller::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::RolloutRequest req;
  req.set_kind("InstanceSet");
  req.set_name("edge");
  req.set_verb("status");
  v1::RolloutResponse r;
  if (!stub.Rollout(&ctx, req, &r).ok()) return {};
  return r.status();
}

bool SetReady(v1::Controller::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  v1::GetRequest req;
  req.set_kind("InstanceSet");
  req.set_name("edge");
  v1::GetResponse r;
  if (!stub.Get(&ctx, req, &r).ok() || r.objects_size() != 1) return false;
  for (const auto& c : r.objects(0).instance_set().status().conditions()) {
    if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
  }
  return false;
}

std::string SetYaml(const std::string& image) {
  return "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: edge}\nspec:\n  perHost: " +
         std::to_string(kPerHost) + "\n  template:\n    spec:\n      kernel: {image: " + image +
         ", cmdline: \"console=mktty0\"}\n      resources: {cpus: 2, memory: 1Gi}\n"
         "  rollout: {canary: \"1%\", waves: {by: zone}, maxUnavailable: \"10%\", minReady: 1s, healthTimeout: 5s}\n";
}

int Main(int hosts, bool tls) {
  char tmpl[] = "/tmp/rollout_bench.XXXXXX";
  const std::string dir = mkdtemp(tmpl);
  const std::string mkagent = Runfile("agents/mkagent"), mkcontroller = Runfile("reconciler/mkcontroller"),
                    mkapply = Runfile("cli/mkapply");
  const std::string pki = dir + "/pki";
  if (tls && !mkfleet::bench::MakePki(pki, hosts)) return 1;
  const std::string tls_flag = tls ? "--tls-dir" : "--insecure";
  const std::string admin = tls ? pki + "/users/admin" : "--insecure";
  const std::string controller_tls = tls ? pki + "/controller" : "";
  for (const char* k : {"vmlinux-1", "vmlinux-2"}) {
    std::ofstream(dir + "/" + k, std::ios::binary) << std::string("\x7f" "ELF", 4) << k << std::string(4096, 'k');
  }
  std::ofstream(dir + "/vmlinux-bad", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                        << "mkfleet-emulator:panic-after-ms=0";
  std::cout << "rollout_bench: " << hosts << " emulated hosts (one mkagent --bench, boot 0 ms) in " << kZones
            << " zones, InstanceSet perHost " << kPerHost << " = " << hosts * kPerHost << " members, "
            << (tls ? "mutual TLS" : "plaintext") << "; work dir " << dir << std::endl;
  mkfleet::bench::HarnessStateDir hosts_dir(dir);
  mkfleet::testing::Process agents({mkagent, "--hosts", std::to_string(hosts), "--topology",
                                    "synthetic:pack:2 numa:1(memory=64GiB) core:16 pu:2", "--listen", "127.0.0.1:0",
                                    "--state-dir", hosts_dir.path() + "/agents",
                                    "--host", "node", "--reserve-cores", "1",
                                    "--reserve-memory", "4Gi", "--bench", "--ports-file", dir + "/ports",
                                    "--image-dir", dir, "--guest-binary", "none", tls_flag,
                                    tls ? pki + "/agents" : "--insecure"},
                                   dir + "/mkagent.log");
  if (agents.WaitFor("emulated hosts .* ports", std::chrono::seconds(300)).empty()) {
    std::cerr << "rollout_bench: mkagent did not start:\n" << agents.Log();
    return 1;
  }
  mkfleet::testing::Process controller({mkcontroller, "--listen", "127.0.0.1:0", "--store",
                                        "sqlite:" + dir + "/store.db", "--resync", "120", tls_flag,
                                        tls ? pki + "/controller" : "--insecure"},
                                       dir + "/mkcontroller.log");
  std::string port = controller.WaitFor("listening on port ([0-9]+)");
  if (port.empty()) {
    std::cerr << "rollout_bench: mkcontroller did not start:\n" << controller.Log();
    return 1;
  }
  const std::string address = "127.0.0.1:" + port;
  auto stub = v1::Controller::NewStub(mkfleet::bench::Channel(tls ? admin : "", address));
  const double floor_s = mkfleet::bench::ControllerRoundTrip(*stub);
  std::printf("floor: one controller round trip (Stats, median of 200): %.3f ms\n", floor_s * 1000);

  std::vector<std::pair<std::string, std::string>> ports;
  {
    std::ifstream in(dir + "/ports");
    std::ofstream out(dir + "/hosts.yaml");
    std::string name, addr;
    int i = 0;
    while (in >> name >> addr) {
      ports.push_back({name, addr});
      out << "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " << name << "\n  labels: {zone: z"
          << (i++ % kZones) << "}\nspec:\n  agent: " << addr << "\n  pool:\n    hostReserved: {cores: 1, memory: 4Gi}\n---\n";
    }
  }
  auto apply = [&](const std::string& image, const std::string& message, int n) {
    std::ofstream(dir + "/set.yaml") << SetYaml(dir + "/" + image);
    int rc = mkfleet::bench::Run({mkapply, "apply", "-f", dir + "/hosts.yaml", "-f", dir + "/set.yaml", "--message",
                                  message, "--controller", address, tls_flag, admin},
                                 dir + "/apply" + std::to_string(n) + ".log");
    if (rc != 0) {
      std::ifstream in(dir + "/apply" + std::to_string(n) + ".log");
      std::cerr << "rollout_bench: mkapply failed:\n" << in.rdbuf();
    }
    return rc == 0;
  };
  auto wait = [&](const std::function<bool()>& done, double limit_s) {
    auto start = Clock::now();
    while (Seconds(Clock::now() - start) < limit_s) {
      if (done()) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  };

  // The fleet at revision 1.
  auto t0 = Clock::now();
  if (!apply("vmlinux-1", "first", 1) || !wait([&] { return SetReady(*stub); }, 600)) {
    std::cerr << "rollout_bench: the set did not become Ready\n";
    return 1;
  }
  std::printf("setup: %d members Ready in %.1f s\n", hosts * kPerHost, Seconds(Clock::now() - t0));
  auto watching = std::make_unique<FleetWatcher>(ports, controller_tls);
  FleetWatcher& watcher = *watching;
  if (!wait([&] { return watcher.Ready(); }, 120)) {
    std::cerr << "rollout_bench: the agents' watches did not start\n";
    return 1;
  }
  const int budget = (hosts * kPerHost * 10 + 99) / 100;
  const int canaries = (hosts * kPerHost + 99) / 100;

  // 1. The good kernel.
  watcher.Measure("vmlinux-2");
  v1::StatsResponse before = mkfleet::bench::Stats(*stub);
  t0 = Clock::now();
  if (!apply("vmlinux-2", "kernel 2", 2)) return 1;
  std::map<std::string, double> wave_start;  // "canary" or zone -> seconds after the change
  std::vector<std::string> order;
  bool done = wait(
      [&] {
        v1::RolloutStatus st = RolloutOf(*stub);
        if (st.revision() != 2) return false;
        std::string step = st.phase() == "Progressing" && st.message().find("canar") != std::string::npos
                               ? "canary"
                               : st.current_wave();
        if (!step.empty() && !wave_start.count(step) && st.phase() != "Complete") {
          wave_start[step] = Seconds(Clock::now() - t0);
          order.push_back(step);
        }
        return st.phase() == "Complete" && SetReady(*stub);
      },
      300);
  const double total = Seconds(Clock::now() - t0);
  v1::StatsResponse after = mkfleet::bench::Stats(*stub);
  const int max_down = watcher.max_down();
  const long long actions = after.actions_sent() - before.actions_sent();
  std::printf("1. good kernel, %d members over %d hosts in %d waves: %s in %.2f s (%.0fx the floor)  [target <= 60 s]\n",
              hosts * kPerHost, hosts, kZones, done ? "complete and Ready" : "NOT COMPLETE", total, total / floor_s);
  for (size_t i = 0; i < order.size(); ++i) {
    double end = i + 1 < order.size() ? wave_start[order[i + 1]] : total;
    std::printf("   %-8s from %6.2f s, %6.2f s\n", order[i].c_str(), wave_start[order[i]], end - wave_start[order[i]]);
  }
  std::printf("   %lld actions, %.0f actions/s; %lld passes\n", actions, actions / total,
              static_cast<long long>(after.passes() - before.passes()));
  std::printf("   most members down at once: %d  [budget maxUnavailable 10%% = %d]%s\n", max_down, budget,
              max_down <= budget ? "" : "  OVER BUDGET");

  // 2. A kernel that panics on boot.
  watcher.Measure("vmlinux-bad");
  t0 = Clock::now();
  if (!apply("vmlinux-bad", "a kernel that panics on boot", 3)) return 1;
  double first_failure = -1;
  bool rolled_back = wait(
      [&] {
        v1::RolloutStatus st = RolloutOf(*stub);
        if (st.revision() != 3) return false;
        if (first_failure < 0 && st.failures() > 0) first_failure = Seconds(Clock::now() - t0);
        return st.phase() == "RolledBack" && SetReady(*stub);
      },
      180);
  const double back = Seconds(Clock::now() - t0);
  const size_t touched = watcher.touched();
  std::printf("2. kernel panicking on boot: %s %.2f s after the change (%.0fx the floor); first failure seen at %.2f s, "
              "rolled back %.2f s after it  [target <= 10 s]\n",
              rolled_back ? "rolled back and Ready" : "NOT ROLLED BACK", back, back / floor_s, first_failure,
              back - first_failure);
  std::printf("   members that ran the bad kernel: %zu  [at most the canaries: %d]%s\n", touched, canaries,
              touched <= static_cast<size_t>(canaries) ? "" : "  MORE THAN THE CANARIES");
  std::printf("   controller peak RSS %.1f MiB\n", after.peak_rss_bytes() / 1048576.0);
  std::fflush(stdout);
  watching.reset();  // its streams and channels go before their certificates
  stub.reset();      // (and the controller's channel, which reloads the admin's)
  int c = controller.Kill(SIGTERM), a = agents.Kill(SIGTERM);
  bool clean = WIFEXITED(c) && WEXITSTATUS(c) == 0 && WIFEXITED(a) && WEXITSTATUS(a) == 0;
  if (!clean) std::cerr << "rollout_bench: unclean stop (controller " << c << ", agents " << a << ")\n";
  std::filesystem::remove_all(dir);
  return done && rolled_back && max_down <= budget && touched <= static_cast<size_t>(canaries) && clean ? 0 : 1;
}

}  // namespace

int main(int argc, char** argv) {
  setvbuf(stdout, nullptr, _IOLBF, 0);  // each figure as soon as it is measured
  int hosts = 1000;
  bool tls = true;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--hosts" && i + 1 < argc) {
      hosts = std::atoi(argv[++i]);
    } else if (a == "--tls" && i + 1 < argc && (std::string(argv[i + 1]) == "on" || std::string(argv[i + 1]) == "off")) {
      tls = std::string(argv[++i]) == "on";
    } else {
      const bool help = a == "--help" || a == "-h";
      (help ? std::cout : std::cerr) << "usage: rollout_bench [--hosts N] [--tls on|off]  (default 1000, on)\n";
      return help ? 0 : 2;
    }
  }
  if (hosts < kZones) {
    std::cerr << "rollout_bench: --hosts: at least " << kZones << "\n";
    return 2;
  }
  return Main(hosts, tls);
}
