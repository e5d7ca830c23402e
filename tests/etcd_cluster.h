// EtcdCluster: a real etcd (Debian's etcd-server) for tests and benchmarks: `members`
// processes on free loopback ports, each with its own data folder under `dir`, started
// together as one cluster; stopped (SIGKILL) when the object goes. Stop/Start one member
// to test failover; Pause/Resume (SIGSTOP/SIGCONT) to make one unreachable.
#ifndef MKFLEET_TESTS_ETCD_CLUSTER_H_
#define MKFLEET_TESTS_ETCD_CLUSTER_H_

#include <signal.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "tests/process_util.h"

namespace mkfleet::testing {

class EtcdCluster {
 public:
  static constexpr const char* kBinary = "/usr/bin/etcd";

  // Starts the members and waits until each has joined the cluster (etcd logs "published
  // local member to cluster"). `extra` flags go to every member.
  EtcdCluster(const std::string& dir, int members = 1, std::vector<std::string> extra = {})
      : dir_(dir), extra_(std::move(extra)) {
    std::filesystem::create_directories(dir_);
    std::vector<std::string> initial;
    for (int i = 0; i < members; ++i) {
      Member m;
      m.name = "m" + std::to_string(i);
      m.client_port = FreePort();
      m.peer_port = FreePort();
      while (m.peer_port == m.client_port) m.peer_port = FreePort();
      initial.push_back(absl::StrCat(m.name, "=http://127.0.0.1:", m.peer_port));
      members_.push_back(std::move(m));
    }
    initial_cluster_ = absl::StrJoin(initial, ",");
    for (int i = 0; i < members; ++i) Start(i, /*wait=*/false);
    for (int i = 0; i < members; ++i) WaitReady(i);
  }
  ~EtcdCluster() {
    for (auto& m : members_) m.process.reset();
    std::error_code ec;
    std::filesystem::remove_all(dir_, ec);
  }

  static bool Available() { return access(kBinary, X_OK) == 0; }

  bool ok() const { return ok_; }
  std::string endpoint(int i) const { return absl::StrCat("http://127.0.0.1:", members_[i].client_port); }
  std::vector<std::string> endpoints() const {
    std::vector<std::string> out;
    for (size_t i = 0; i < members_.size(); ++i) out.push_back(endpoint(i));
    return out;
  }
  // "etcd:http://...,http://..." as mkcontroller's --store takes it.
  std::string spec() const { return "etcd:" + absl::StrJoin(endpoints(), ","); }
  std::string Log(int i) const { return members_[i].process ? members_[i].process->Log() : ""; }

  void Stop(int i) { members_[i].process.reset(); }
  void Start(int i, bool wait = true) {
    Member& m = members_[i];
    const std::string data = absl::StrCat(dir_, "/", m.name);
    std::vector<std::string> argv = {
        kBinary, "--name", m.name, "--data-dir", data,
        "--listen-client-urls", endpoint(i), "--advertise-client-urls", endpoint(i),
        "--listen-peer-urls", absl::StrCat("http://127.0.0.1:", m.peer_port),
        "--initial-advertise-peer-urls", absl::StrCat("http://127.0.0.1:", m.peer_port),
        "--initial-cluster", initial_cluster_, "--initial-cluster-state", "new",
        "--initial-cluster-token", "mkfleet-test", "--log-outputs", "stderr", "--logger", "zap"};
    for (const auto& e : extra_) argv.push_back(e);
    m.process = std::make_unique<Process>(argv, absl::StrCat(dir_, "/", m.name, ".log"));
    if (wait) WaitReady(i);
  }
  void Pause(int i) { kill(members_[i].process->pid(), SIGSTOP); }
  void Resume(int i) { kill(members_[i].process->pid(), SIGCONT); }

 private:
  struct Member {
    std::string name;
    int client_port = 0;
    int peer_port = 0;
    std::unique_ptr<Process> process;
  };

  void WaitReady(int i) {
    if (members_[i].process->WaitFor("published local member to cluster", std::chrono::seconds(30)).empty()) ok_ = false;
  }

  std::string dir_;
  std::vector<std::string> extra_;
  std::vector<Member> members_;
  std::string initial_cluster_;
  bool ok_ = true;
};

}  // namespace mkfleet::testing

#endif  // MKFLEET_TESTS_ETCD_CLUSTER_H_
