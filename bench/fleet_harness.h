// What the fleet benchmarks share (fleet_bench, rollout_bench, harness_bench): their programs
// from the runfiles, running a command to its end, the controller's Stats, a process's CPU
// seconds and peak RSS from /proc, a fleet CA with one agent certificate per host
// (node-0001 ...), a channel to the controller as the admin, and where the emulated hosts
// keep their state.
#ifndef MKFLEET_BENCH_FLEET_HARNESS_H_
#define MKFLEET_BENCH_FLEET_HARNESS_H_

#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <iterator>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "security/certs.h"
#include "security/tls.h"
#include "tests/process_util.h"

namespace mkfleet::bench {

using Clock = std::chrono::steady_clock;

inline double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

// `path` (e.g. "agents/mkagent") in the runfiles of the running benchmark `self`.
inline std::string Runfile(const std::string& self, const std::string& path) {
  for (const char* base : {static_cast<const char*>(getenv("RUNFILES_DIR")), (self + ".runfiles").c_str()}) {
    if (base == nullptr) continue;
    std::string p = std::string(base) + "/mkfleet/" + path;
    if (std::filesystem::exists(p)) return p;
  }
  std::string exe = std::filesystem::read_symlink("/proc/self/exe").string();
  std::string p = exe + ".runfiles/mkfleet/" + path;
  if (std::filesystem::exists(p)) return p;
  std::cerr << self << ": cannot find " << path << " in the runfiles\n";
  std::exit(2);
}

// Runs `argv` to its end (output to `log`); its wait status.
inline int Run(const std::vector<std::string>& argv, const std::string& log) {
  mkfleet::testing::Process p(argv, log);
  while (p.Running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  return p.Kill(0);
}

inline mkfleet::v1::StatsResponse Stats(mkfleet::v1::Controller::Stub& stub) {
  grpc::ClientContext ctx;
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
  mkfleet::v1::StatsResponse r;
  grpc::Status s = stub.Stats(&ctx, mkfleet::v1::StatsRequest(), &r);
  if (!s.ok()) std::cerr << "Stats: " << s.error_message() << "\n";
  return r;
}

// The median of `n` empty round trips to the controller (Stats): the fleet benchmarks' floor.
inline double ControllerRoundTrip(mkfleet::v1::Controller::Stub& stub, int n = 200) {
  std::vector<double> trips;
  for (int i = 0; i < n; ++i) {
    auto t = Clock::now();
    Stats(stub);
    trips.push_back(Seconds(Clock::now() - t));
  }
  std::sort(trips.begin(), trips.end());
  return trips[trips.size() / 2];
}

// utime + stime of process `pid` so far, in seconds (from /proc/PID/stat; -1 if gone).
inline double CpuSeconds(pid_t pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/stat");
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  size_t close = text.rfind(')');
  if (close == std::string::npos) return -1;
  std::istringstream rest(text.substr(close + 2));
  std::string field;
  long long utime = 0, stime = 0;
  for (int i = 3; i <= 15 && rest >> field; ++i) {
    if (i == 14) utime = std::stoll(field);
    if (i == 15) stime = std::stoll(field);
  }
  return static_cast<double>(utime + stime) / sysconf(_SC_CLK_TCK);
}

// A field of /proc/PID/status ("VmHWM", "Threads"), as written there ("" if absent).
inline std::string StatusField(pid_t pid, const std::string& key) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.rfind(key + ":", 0) == 0) return line.substr(key.size() + 1);
  }
  return "";
}

// Peak resident set of `pid` in MiB (VmHWM).
inline double PeakRssMib(pid_t pid) { return std::atol(StatusField(pid, "VmHWM").c_str()) / 1024.0; }

// The name of host i (1-based): node-0001 ...
inline std::string HostName(int i) {
  char name[32];
  std::snprintf(name, sizeof(name), "node-%04d", i);
  return name;
}

// The fleet's CA in `pki`: the controller, an admin user and one agent per host, as mkapply
// certs would lay them out.
inline bool MakePki(const std::string& pki, int hosts) {
  using mkfleet::security::Identity;
  if (!mkfleet::security::InitCa(pki, absl::Now(), absl::Hours(24)).ok()) return false;
  std::vector<Identity> ids = {Identity::Controller(), Identity::User("admin", {"fleet-admins"})};
  for (int i = 1; i <= hosts; ++i) ids.push_back(Identity::Agent(HostName(i)));
  for (const Identity& id : ids) {
    absl::Status s = mkfleet::security::IssueCert(
        pki, mkfleet::security::CertOptions::For(id, absl::Now(), absl::Hours(24)), mkfleet::security::IdentityDir(pki, id));
    if (!s.ok()) {
      std::cerr << "pki: " << s.message() << "\n";
      return false;
    }
  }
  return true;
}

// A channel to `address` with the credentials in `dir` (plaintext when empty), expecting the
// server to be `peer`.
inline std::shared_ptr<grpc::Channel> Channel(const std::string& dir, const std::string& address,
                                              const mkfleet::security::Identity& peer =
                                                  mkfleet::security::Identity::Controller()) {
  mkfleet::security::TlsOptions o;
  o.dir = dir;
  o.insecure = dir.empty();
  auto tls = mkfleet::security::ClientTls::Create(o);
  if (!tls.ok()) {
    std::cerr << "channel: " << tls.status().message() << "\n";
    std::exit(1);
  }
  return *(*tls)->Channel(address, peer);
}

// Where a benchmark's emulated hosts (mkagent --state-dir: journals, records, the emulated
// kernels' state) live: a fresh directory on /dev/shm when there is one, else `fallback`.
// They are the harness, not what is measured (the controller's store stays on disk); on a
// disk file system the inode each atomic file replace takes cost mkagent half its CPU at
// 1,000 hosts (ext4's inode allocation under churn). Removed with this object.
class HarnessStateDir {
 public:
  explicit HarnessStateDir(const std::string& fallback) {
    char tmpl[] = "/dev/shm/mkfleet-hosts.XXXXXX";
    const char* made = access("/dev/shm", W_OK) == 0 ? mkdtemp(tmpl) : nullptr;
    path_ = made != nullptr ? made : fallback;
    owned_ = made != nullptr;
  }
  ~HarnessStateDir() {
    std::error_code ec;
    if (owned_) std::filesystem::remove_all(path_, ec);
  }
  HarnessStateDir(const HarnessStateDir&) = delete;
  HarnessStateDir& operator=(const HarnessStateDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  bool owned_ = false;
};

}  // namespace mkfleet::bench

#endif  // MKFLEET_BENCH_FLEET_HARNESS_H_
