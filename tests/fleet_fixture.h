// The fixture of the tests that run a fleet of real processes on loopback: mkagents
// (emulated kernels, synthetic topology kTopology) that can be killed and restarted on the
// same port and state, one mkcontroller (same port and store across restarts), mkapply and
// mkfault, and what a test reads back: statuses, events, what each agent runs, and each
// emulated kernel's operation counters (from its state file, once its agent stopped).
//
// With ha_ set before StartController, the controller is a control plane instead: a
// three-member etcd and three `mkcontroller --ha` (member i on etcd member i only, so
// pausing etcd member i cuts controller i off). controller_ and stub_ are then the leader;
// after the test kills it, StartController starts it again (as its supervisor would, now a
// follower, once another leads) and makes the new leader controller_. Every agent logs the requests it
// receives (--request-log), for ExpectNoSplitBrain.
#ifndef MKFLEET_TESTS_FLEET_FIXTURE_H_
#define MKFLEET_TESTS_FLEET_FIXTURE_H_

#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <mutex>
#include <set>
#include <sstream>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "planner/topology_source.h"
#include "security/testing/test_pki.h"
#include "tests/fleet_util.h"
#include "tests/etcd_cluster.h"
#include "tests/process_util.h"

namespace mkfleet {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;

inline constexpr char kTopology[] = "pack:2 numa:1(memory=16GiB) core:8 pu:2";

using testing::Eventually;
using testing::FreePort;

class ProcessFleetTest : public ::testing::Test {
 protected:
  struct AgentSpec {
    std::string name;
    int port = 0;
    std::unique_ptr<testing::Process> process;
  };

  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("proc-fleet-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
    vmlinux_ = (dir_ / "vmlinux").string();
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
    controller_port_ = 0;  // its first start picks one (see StartAgent)
  }
  void TearDown() override {
    controller_.reset();
    members_.clear();
    etcd_.reset();
    agents_.clear();
    // MKFLEET_KEEP_TEST_DIR=1 keeps the processes' logs and state of a failed test.
    if (getenv("MKFLEET_KEEP_TEST_DIR") == nullptr || !HasFailure()) fs::remove_all(dir_);
  }

  // Flags every agent or controller started from now on gets too.
  std::vector<std::string> agent_flags_, controller_flags_;
  static std::vector<std::string> Plus(std::vector<std::string> argv, const std::vector<std::string>& more) {
    argv.insert(argv.end(), more.begin(), more.end());
    return argv;
  }

  // Starts (or restarts, same port and state) the agent `name`.
  void StartAgent(const std::string& name, const std::string& boot_time = "300ms") {
    AgentSpec& a = agents_[name];
    a.name = name;
    // First start: the agent picks a free port itself (a port found free and bound later
    // may be taken in between by a parallel test); restarts keep it.
    const bool first = a.port == 0;
    a.process.reset();  // the old one first: it holds the state directory's lock
    a.process = std::make_unique<testing::Process>(
        Plus({"agents/mkagent", "--topology", std::string("synthetic:") + kTopology, "--listen",
              "127.0.0.1:" + std::to_string(a.port), "--state-dir", (dir_ / name).string(), "--reserve-cores", "1",
              "--reserve-memory", "1Gi", "--host", name, "--boot-time", boot_time, "--enable-fault-injection",
              "--tls-dir", pki_->agent(name), "--image-dir", dir_.string(), "--request-log",
              (dir_ / ("requests-" + name + ".log")).string()},
             agent_flags_),
        (dir_ / (name + "-" + std::to_string(++runs_) + ".log")).string());
    const std::string port = a.process->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(port.empty()) << a.process->Log();
    if (first) a.port = std::stoi(port);
  }
  void StartController() {
    if (ha_) return StartControlPlane();
    controller_.reset();  // the old one first: it holds the store's lock
    controller_ = std::make_unique<testing::Process>(
        Plus({"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(), "--listen",
              "127.0.0.1:" + std::to_string(controller_port_), "--resync", "1", "--unreachable-after", "1",
              "--tls-dir", pki_->controller()},
             controller_flags_),
        (dir_ / ("controller-" + std::to_string(++runs_) + ".log")).string());
    const std::string port = controller_->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(port.empty()) << controller_->Log();
    controller_port_ = std::stoi(port);
    stub_ = v1::Controller::NewStub(security::TestPki::Channel(
        pki_->admin(), "127.0.0.1:" + std::to_string(controller_port_), security::Identity::Controller()));
  }

  // --- The control plane (ha_) ---
  static constexpr int kMembers = 3;
  std::vector<std::string> MemberArgv(int i) {
    return {"reconciler/mkcontroller", "--store", "etcd:" + etcd_->endpoint(i), "--ha", "--name",
            "c" + std::to_string(i), "--lease-ttl", "3s", "--listen", "127.0.0.1:" + std::to_string(member_ports_[i]),
            "--resync", "1", "--unreachable-after", "1", "--tls-dir", pki_->controller(), "--etcd-max-txn-ops",
            "10000", "--git-cache", (dir_ / ("git-" + std::to_string(i))).string(), "--shards", std::to_string(shards_)};
  }
  void StartMember(int i) {
    members_[i] = std::make_unique<testing::Process>(
        MemberArgv(i), (dir_ / ("controller-c" + std::to_string(i) + "-" + std::to_string(++runs_) + ".log")).string());
    ASSERT_FALSE(members_[i]->WaitFor("listening on port ([0-9]+)").empty()) << members_[i]->Log();
  }
  // A call to member i, as the admin, with a 2 s deadline: Controllers or Stats.
  template <typename Response, typename Request, typename Method>
  Response AskMember(int i, Method method) {
    auto stub = v1::Controller::NewStub(security::TestPki::Channel(
        pki_->admin(), "127.0.0.1:" + std::to_string(member_ports_[i]), security::Identity::Controller()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(2));
    Response r;
    if (!((*stub).*method)(&ctx, Request(), &r).ok()) return {};
    return r;
  }
  // The counters of member i (zero when it does not answer).
  v1::StatsResponse MemberStats(int i) {
    return AskMember<v1::StatsResponse, v1::StatsRequest>(i, &v1::Controller::Stub::Stats);
  }
  // The control plane's view from member i (empty mode when it does not answer).
  v1::ControllersResponse Controllers(int i) {
    return AskMember<v1::ControllersResponse, v1::ControllersRequest>(i, &v1::Controller::Stub::Controllers);
  }
  // The index of the leader every running member agrees on, other than `not_index`; -1
  // while there is none.
  int AgreedLeader(int not_index = -1) {
    int leader = -1;
    for (int i = 0; i < kMembers; ++i) {
      const bool running = (members_[i] != nullptr && members_[i]->Running()) || (i == leader_index_ && controller_ && controller_->Running());
      if (!running) continue;
      v1::ControllersResponse r = Controllers(i);
      if (r.leader().size() < 2) return -1;
      int l = r.leader()[1] - '0';
      if (leader != -1 && l != leader) return -1;
      leader = l;
    }
    return leader == not_index ? -1 : leader;
  }
  void StartControlPlane() {
    if (etcd_ == nullptr) {
      etcd_ = std::make_unique<testing::EtcdCluster>((dir_ / "etcd").string(), kMembers);
      ASSERT_TRUE(etcd_->ok()) << etcd_->Log(0);
      members_.resize(kMembers);
      for (int i = 0; i < kMembers; ++i) member_ports_.push_back(FreePort());
      for (int i = 0; i < kMembers; ++i) StartMember(i);
    } else {
      // The former leader (killed by the test) back into its slot.
      ASSERT_GE(leader_index_, 0);
      members_[leader_index_] = std::move(controller_);
      killed_at_ = std::chrono::system_clock::now();
    }
    const int former = leader_index_;
    int leader = -1;
    ASSERT_TRUE(Eventually([&] { return (leader = AgreedLeader(former)) >= 0; }, 30))
        << "no leader elected; member logs:\n" << members_[0]->Log() << members_[1]->Log() << members_[2]->Log();
    // Another leads: the former leader starts again, as its supervisor would, a follower now.
    if (former >= 0) StartMember(former);
    leader_index_ = leader;
    controller_ = std::move(members_[leader]);
    controller_port_ = member_ports_[leader];
    stub_ = v1::Controller::NewStub(security::TestPki::Channel(
        pki_->admin(), "127.0.0.1:" + std::to_string(controller_port_), security::Identity::Controller()));
  }
  // Per host, the fences of the requests its agent received, in the order received: the
  // epochs never go down (a later leader's higher epoch is never followed by an earlier
  // leader's request), so two controllers never acted on one host at once.
  struct Request {
    int64_t unix_ms = 0;
    std::string method;
    int64_t epoch = 0;
  };
  std::map<std::string, std::vector<Request>> ReceivedRequests() {
    std::map<std::string, std::vector<Request>> out;
    for (const auto& [name, a] : agents_) {
      std::ifstream in(dir_ / ("requests-" + name + ".log"));
      std::string line;
      while (std::getline(in, line)) {
        std::istringstream fields(line);
        Request r;
        std::string host, fence;
        fields >> r.unix_ms >> host >> r.method >> fence;
        r.epoch = std::atoll(fence.substr(6, fence.find('.') - 6).c_str());
        out[host].push_back(r);
      }
    }
    return out;
  }
  void ExpectNoSplitBrain() {
    for (const auto& [host, requests] : ReceivedRequests()) {
      for (size_t i = 1; i < requests.size(); ++i) {
        EXPECT_LE(requests[i - 1].epoch, requests[i].epoch)
            << host << ": a request of epoch " << requests[i].epoch << " came after one of epoch "
            << requests[i - 1].epoch << " (two controllers acting at once)";
      }
    }
  }
  // Milliseconds from `since` to the first request any agent received after it (-1: none).
  int64_t FirstRequestAfter(std::chrono::system_clock::time_point since) {
    const int64_t t = std::chrono::duration_cast<std::chrono::milliseconds>(since.time_since_epoch()).count();
    int64_t first = -1;
    for (const auto& [host, requests] : ReceivedRequests()) {
      for (const Request& r : requests) {
        if (r.unix_ms >= t && (first < 0 || r.unix_ms < first)) first = r.unix_ms;
      }
    }
    return first < 0 ? -1 : first - t;
  }

  int Run(std::vector<std::string> argv, std::string* output) {
    testing::Process p(argv, (dir_ / ("run-" + std::to_string(++runs_))).string());
    int status = p.Kill(0);
    *output = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  int Mkapply(std::vector<std::string> args, std::string* output) {
    args.insert(args.begin(), "cli/mkapply");
    args.push_back("--controller");
    args.push_back("127.0.0.1:" + std::to_string(controller_port_));
    args.push_back("--tls-dir");
    args.push_back(pki_->admin());
    return Run(args, output);
  }
  // mkfault FAULT ARGS... against the agent `host` (with the controller's credentials).
  int Mkfault(const std::string& host, std::vector<std::string> args, std::string* output) {
    args.insert(args.begin(), "agents/mkfault");
    for (const std::string& a : {std::string("--agent"), "127.0.0.1:" + std::to_string(agents_[host].port),
                                 std::string("--host"), host, std::string("--tls-dir"), pki_->controller()}) {
      args.push_back(a);
    }
    return Run(args, output);
  }

  std::string HostYaml(const std::string& name) {
    return "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " + name + "\nspec:\n  agent: 127.0.0.1:" +
           std::to_string(agents_[name].port) + "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n---\n";
  }
  std::string InstanceYaml(const std::string& name, const std::string& host, const std::string& cpus = "cpus: 2") {
    return "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: " + name + "\nspec:\n  host: " + host +
           "\n  kernel:\n    image: " + vmlinux_ + "\n    cmdline: \"console=mktty0\"\n  resources:\n    " + cpus +
           "\n    memory: 512Mi\n---\n";
  }
  std::string Write(const std::string& file, const std::string& text) {
    std::string path = (dir_ / file).string();
    std::ofstream(path) << text;
    return path;
  }

  v1::InstanceStatus Status(const std::string& name) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetRequest req;
    req.set_kind("KernelInstance");
    req.set_name(name);
    v1::GetResponse r;
    if (!stub_->Get(&ctx, req, &r).ok() || r.objects_size() != 1) return {};
    return r.objects(0).kernel_instance().status();
  }
  bool AllRunning(const std::vector<std::string>& names) {
    for (const auto& n : names) {
      if (Status(n).phase() != "Running") return false;
    }
    return true;
  }
  std::vector<v1::Event> ControllerEvents() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto reader = stub_->Events(&ctx, v1::EventsRequest());
    std::vector<v1::Event> out;
    v1::Event e;
    while (reader->Read(&e)) out.push_back(e);
    reader->Finish();
    return out;
  }
  // Instances the agent `name` runs (from a Watch snapshot).
  std::map<std::string, v1::InstanceStatus> OnAgent(const std::string& name) {
    return testing::AgentInstances("127.0.0.1:" + std::to_string(agents_[name].port), name, pki_->controller());
  }
  // Stops the agent (SIGTERM) and reads its emulated kernel's counters from the state file.
  kernel::EmulatedKernel::Counters StopAndCount(const std::string& name) {
    int status = agents_[name].process->Kill(SIGTERM);
    EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << agents_[name].process->Log();
    return testing::EmulatorCounters(kTopology, (dir_ / name / "emulated-kernel.state").string());
  }
  // No action step was done twice (ActionDone per instance and step at most once).
  void ExpectNoRepeatedActions() {
    std::set<std::string> seen;
    for (const v1::Event& e : ControllerEvents()) {
      if (e.reason() != "ActionDone") continue;
      std::string key = e.name() + " " + e.message();
      EXPECT_TRUE(seen.insert(key).second) << "done twice: " << key;
    }
  }

  // Applies three 2-CPU instances to node-a and waits until its agent has begun (the
  // first kernel exists; the batch of three 400 ms boots is not through).
  void ApplyThreeAndWaitForTheFirst() {
    std::string out;
    std::string path = Write("fleet.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a") +
                                               InstanceYaml("a-2", "node-a") + InstanceYaml("a-3", "node-a"));
    ASSERT_EQ(Mkapply({"apply", "-f", path}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return !OnAgent("node-a").empty(); })) << controller_->Log();
  }
  // All three Running, each with its 2 CPUs, and each kernel operation ran once.
  void ExpectThreeRunningOnceEach() {
    ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1", "a-2", "a-3"}); }))
        << controller_->Log() << agents_["node-a"].process->Log();
    ExpectNoRepeatedActions();
    auto on_agent = OnAgent("node-a");
    EXPECT_EQ(on_agent.size(), 3u);
    for (const auto& [name, st] : on_agent) EXPECT_EQ(st.placement().cpus_size(), 2) << name;
    kernel::EmulatedKernel::Counters c = StopAndCount("node-a");
    EXPECT_EQ(c.creates, 3);
    EXPECT_EQ(c.loads, 3);
    EXPECT_EQ(c.starts, 3);
    EXPECT_EQ(c.removes, 0);
  }

  // The kernel image (file name) each of `hosts` runs (hosts with no running kernel are
  // absent); one channel per agent, kept (a channel and a stream per sample would hit the
  // agents' limits on a client's streams and read as "down"). `complete`: every agent answered.
  std::map<std::string, std::string> RunningImages(const std::vector<std::string>& hosts, bool* complete = nullptr) {
    std::map<std::string, std::string> out;
    if (complete != nullptr) *complete = true;
    for (const std::string& h : hosts) {
      auto& stub = agent_stubs_[h];
      if (stub == nullptr) {
        stub = v1::Agent::NewStub(security::TestPki::Channel(
            pki_->controller(), "127.0.0.1:" + std::to_string(agents_[h].port), security::Identity::Agent(h)));
      }
      grpc::ClientContext ctx;
      ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
      auto reader = stub->Watch(&ctx, v1::WatchRequest());
      v1::HostState snapshot;
      bool read = reader->Read(&snapshot);
      ctx.TryCancel();
      reader->Finish();
      if (!read) {
        if (complete != nullptr) *complete = false;
        continue;
      }
      for (const auto& in : snapshot.instances()) {
        if (in.status().kernel_state() == v1::KERNEL_STATE_ACTIVE) {
          out[h] = fs::path(in.status().provenance().kernel_path()).filename();
        }
      }
    }
    return out;
  }

  // Watches every agent of `hosts` (one stream each, kept) until `done` or the timeout: the
  // most hosts with no running kernel at once, and the order in which hosts first ran
  // `image`. Every change each agent reports is seen, so a short outage is not missed.
  struct Sampled {
    int max_down = 0;
    std::string worst;  // the hosts when the most were down
    int min_active = 1 << 30;  // the fewest running kernels at once, over all hosts
    std::string fewest;        // the hosts then
    std::vector<std::string> order;
  };
  Sampled SampleUntil(const std::vector<std::string>& hosts, const std::string& image,
                      const std::function<bool()>& done, std::chrono::seconds timeout = std::chrono::seconds(60)) {
    Sampled s;
    std::mutex mu;
    std::map<std::string, std::map<std::string, v1::ObservedInstance>> seen;  // host -> kernel -> state
    std::set<std::string> ran;
    auto recount = [&] {
      if (seen.size() < hosts.size()) return;  // not every agent's first snapshot yet
      int down = 0, active_kernels = 0;
      std::string text;
      for (const std::string& h : hosts) {
        bool up = false;
        for (const auto& [name, in] : seen[h]) {
          const bool active = in.status().kernel_state() == v1::KERNEL_STATE_ACTIVE;
          const std::string file = fs::path(in.status().provenance().kernel_path()).filename();
          up |= active;
          active_kernels += active;
          text += h + ": " + name + "=" + in.status().phase() + " " + file + "\n";
          if (active && file == image && ran.insert(h).second) s.order.push_back(h);
        }
        down += !up;
      }
      if (down > s.max_down) {
        s.max_down = down;
        s.worst = text;
      }
      if (active_kernels < s.min_active) {
        s.min_active = active_kernels;
        s.fewest = text;
      }
    };
    std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
    std::vector<std::thread> readers;
    for (const std::string& h : hosts) {
      contexts.push_back(std::make_unique<grpc::ClientContext>());
      grpc::ClientContext* ctx = contexts.back().get();
      readers.emplace_back([&, h, ctx] {
        auto stub = v1::Agent::NewStub(security::TestPki::Channel(
            pki_->controller(), "127.0.0.1:" + std::to_string(agents_[h].port), security::Identity::Agent(h)));
        auto reader = stub->Watch(ctx, v1::WatchRequest());
        v1::HostState hs;
        while (reader->Read(&hs)) {
          std::lock_guard<std::mutex> lock(mu);
          auto& mine = seen[h];
          if (hs.snapshot()) mine.clear();
          for (const auto& in : hs.instances()) mine[in.name()] = in;
          for (const auto& name : hs.removed()) mine.erase(name);
          recount();
        }
        reader->Finish();
      });
    }
    auto end = std::chrono::steady_clock::now() + timeout;
    while (std::chrono::steady_clock::now() < end && !done()) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    for (auto& ctx : contexts) ctx->TryCancel();
    for (auto& t : readers) t.join();
    return s;
  }

  fs::path dir_;
  std::unique_ptr<security::TestPki> pki_;
  std::string vmlinux_;
  int controller_port_ = 0;
  int runs_ = 0;
  std::map<std::string, AgentSpec> agents_;
  std::unique_ptr<testing::Process> controller_;
  // The control plane (ha_), sharded when shards_ > 0.
  bool ha_ = false;
  int shards_ = 0;
  std::unique_ptr<testing::EtcdCluster> etcd_;
  std::vector<std::unique_ptr<testing::Process>> members_;  // the leader's slot is empty (it is controller_)
  std::vector<int> member_ports_;
  int leader_index_ = -1;
  std::chrono::system_clock::time_point killed_at_;
  std::unique_ptr<v1::Controller::Stub> stub_;
  std::map<std::string, std::unique_ptr<v1::Agent::Stub>> agent_stubs_;  // RunningImages' channels
};

}  // namespace mkfleet

#endif  // MKFLEET_TESTS_FLEET_FIXTURE_H_
