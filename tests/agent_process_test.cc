// mkagent as a real process: exactly-once execution across SIGKILL, adoption of running
// instances on restart, and a clean SIGTERM.
#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "planner/topology_source.h"
#include "security/testing/test_pki.h"
#include "tests/process_util.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;

constexpr char kTopology[] = "synthetic:pack:2 numa:1(memory=16GiB) core:8 pu:2";

class AgentProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("agent-proc-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
    vmlinux_ = (dir_ / "vmlinux").string();
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<testing::Process> StartAgent(const std::string& log) {
    auto p = std::make_unique<testing::Process>(
        std::vector<std::string>{"agents/mkagent", "--topology", kTopology, "--listen", "127.0.0.1:0", "--state-dir",
                                 (dir_ / "state").string(), "--reserve-cores", "1", "--boot-time", "300ms",
                                 "--host", "proc", "--tls-dir", pki_->agent("proc"), "--image-dir", dir_.string()},
        (dir_ / log).string());
    std::string port = p->WaitFor("listening on port ([0-9]+)");
    EXPECT_FALSE(port.empty()) << p->Log();
    stub_ = v1::Agent::NewStub(
        security::TestPki::Channel(pki_->controller(), "127.0.0.1:" + port, security::Identity::Agent("proc")));
    return p;
  }

  v1::ActionBatch TenActions() {
    v1::ActionBatch b;
    int cpu = 2;
    for (const char* name : {"a", "b", "c"}) {
      v1::Action* c = b.add_actions();
      c->set_id(std::string(name) + "-create");
      c->set_instance(name);
      v1::Placement* p = c->mutable_create()->mutable_placement();
      p->add_cpus(cpu);
      p->add_cpus(cpu + 16);
      ++cpu;
      p->add_memory()->set_bytes(256ull << 20);
      v1::Action* l = b.add_actions();
      l->set_id(std::string(name) + "-load");
      l->set_instance(name);
      l->set_expect(v1::KERNEL_STATE_READY);
      l->mutable_load()->mutable_kernel()->set_image(vmlinux_);
      v1::Action* s = b.add_actions();
      s->set_id(std::string(name) + "-start");
      s->set_instance(name);
      s->set_expect(v1::KERNEL_STATE_LOADED);
      s->mutable_start();
    }
    v1::Action* add = b.add_actions();
    add->set_id("a-cpu-add");
    add->set_instance("a");
    add->mutable_cpu_add()->add_cpus(10);
    return b;
  }

  kernel::EmulatedKernel::Counters Counters() {
    auto topo = planner::NewSyntheticTopologySource(std::string(kTopology).substr(10))->Load();
    kernel::EmulatorOptions o = kernel::MachineFromTopology(*topo);
    o.state_file = (dir_ / "state" / "emulated-kernel.state").string();
    kernel::EmulatedKernel emu(o);
    EXPECT_TRUE(emu.load_status().ok());
    return emu.counters();
  }

  std::unique_ptr<security::TestPki> pki_;
  fs::path dir_;
  std::string vmlinux_;
  std::unique_ptr<v1::Agent::Stub> stub_;
};

TEST_F(AgentProcessTest, EachActionRunsExactlyOnceAcrossSigkill) {
  auto agent = StartAgent("agent1.log");
  // Send the batch and kill the agent while it is booting the instances (300 ms each).
  std::thread sender([&] {
    grpc::ClientContext ctx;
    v1::ExecuteResponse r;
    stub_->Execute(&ctx, TenActions(), &r);  // fails when the agent dies
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(450));
  agent->Kill(SIGKILL);
  sender.join();
  auto partial = Counters();
  EXPECT_GE(partial.starts, 1);  // killed mid-batch: some ran ...
  EXPECT_LT(partial.starts, 3);  // ... not all

  auto again = StartAgent("agent2.log");
  grpc::ClientContext ctx;
  v1::ExecuteResponse r;
  grpc::Status s = stub_->Execute(&ctx, TenActions(), &r);
  ASSERT_TRUE(s.ok()) << s.error_message();
  ASSERT_EQ(r.results_size(), 10);
  int replayed = 0;
  for (const auto& res : r.results()) {
    EXPECT_EQ(res.code(), 0) << res.id() << ": " << res.message();
    replayed += res.replayed();
  }
  EXPECT_GE(replayed, 1);
  EXPECT_EQ(again->Kill(SIGTERM), 0);
  auto c = Counters();
  EXPECT_EQ(c.creates, 3);
  EXPECT_EQ(c.loads, 3);
  EXPECT_EQ(c.starts, 3);
  EXPECT_EQ(c.cpu_adds, 1);
}

TEST_F(AgentProcessTest, RestartAdoptsRunningInstances) {
  auto agent = StartAgent("agent1.log");
  grpc::ClientContext ctx;
  v1::ExecuteResponse r;
  ASSERT_TRUE(stub_->Execute(&ctx, TenActions(), &r).ok());
  EXPECT_EQ(agent->Kill(SIGTERM), 0);  // clean shutdown: exit 0
  EXPECT_THAT(agent->Log(), ::testing::HasSubstr("mkagent: stopped"));
  auto again = StartAgent("agent2.log");
  grpc::ClientContext wctx;
  auto reader = stub_->Watch(&wctx, v1::WatchRequest());
  v1::HostState snapshot;
  ASSERT_TRUE(reader->Read(&snapshot));
  ASSERT_EQ(snapshot.instances_size(), 3);
  for (const auto& in : snapshot.instances()) EXPECT_EQ(in.status().kernel_state(), v1::KERNEL_STATE_ACTIVE);
  bool adopted = false;
  for (const auto& e : snapshot.events()) adopted |= e.reason() == "Adopted";
  EXPECT_TRUE(adopted);
  wctx.TryCancel();
  EXPECT_EQ(Counters().starts, 3);  // nothing was restarted
}

// Defect (step 7): two agents on one state directory handed out the same CPU and id to
// different instances. The second now exits 2 naming the first's pid.
TEST_F(AgentProcessTest, ASecondAgentOnTheSameStateExits2) {
  auto first = StartAgent("first.log");
  testing::Process second({"agents/mkagent", "--topology", kTopology, "--listen", "127.0.0.1:0", "--state-dir",
                           (dir_ / "state").string(), "--host", "proc", "--tls-dir", pki_->agent("proc")},
                          (dir_ / "second.log").string());
  int status = second.Kill(0);
  ASSERT_TRUE(WIFEXITED(status)) << second.Log();
  EXPECT_EQ(WEXITSTATUS(status), 2) << second.Log();
  EXPECT_THAT(second.Log(), ::testing::HasSubstr("is in use by pid " + std::to_string(first->pid())));
}

// Step 7: state that cannot be read is never silently replaced by empty state: a corrupt
// emulated-kernel state, policies file or journal (corrupt before its tail) stops the agent
// at start (exit 2) with what and where, and the file is left as it was.
TEST_F(AgentProcessTest, CorruptStateFilesAreRefusedAtStart) {
  {
    auto agent = StartAgent("first.log");
    grpc::ClientContext ctx;
    v1::ExecuteResponse r;
    ASSERT_TRUE(stub_->Execute(&ctx, TenActions(), &r).ok());
    v1::SetPolicyRequest policy;
    policy.add_policies()->set_instance("a");
    grpc::ClientContext c2;
    v1::SetPolicyResponse pr;
    ASSERT_TRUE(stub_->SetPolicy(&c2, policy, &pr).ok());
    ASSERT_EQ(WEXITSTATUS(agent->Kill(SIGTERM)), 0);
  }
  auto start_fails = [&](const std::string& file, const std::string& want) {
    testing::Process p({"agents/mkagent", "--topology", kTopology, "--listen", "127.0.0.1:0", "--state-dir",
                        (dir_ / "state").string(), "--host", "proc", "--tls-dir", pki_->agent("proc"), "--image-dir",
                        dir_.string()},
                       (dir_ / ("refused-" + file + ".log")).string());
    int status = p.Kill(0);
    ASSERT_TRUE(WIFEXITED(status)) << p.Log();
    EXPECT_EQ(WEXITSTATUS(status), 2) << p.Log();
    EXPECT_THAT(p.Log(), ::testing::HasSubstr(want)) << p.Log();
  };
  auto corrupt = [&](const std::string& file, size_t at) {
    std::string path = (dir_ / "state" / file).string();
    std::ifstream in(path, std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    std::string bad = data;
    bad[std::min(at, bad.size() - 1)] ^= 0x5a;
    std::ofstream(path, std::ios::binary | std::ios::trunc) << bad;
    return std::make_pair(path, data);
  };
  for (const auto& [file, at, want] :
       {std::tuple<std::string, size_t, std::string>{"emulated-kernel.state", 0, "emulated-kernel.state"},
        {"policies.pb", 0, "policies.pb is corrupt"},
        {"journal", 20, "corrupt record at offset"}}) {
    auto [path, good] = corrupt(file, at);
    start_fails(file, want);
    std::ifstream in(path, std::ios::binary);
    std::string now((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(now.size(), good.size()) << file << " was rewritten";
    std::ofstream(path, std::ios::binary | std::ios::trunc) << good;
  }
  // Put back, it starts and still runs what it ran.
  auto agent = StartAgent("again.log");
  EXPECT_EQ(Counters().creates, 3);
}

}  // namespace
}  // namespace mkfleet

namespace mkfleet {
namespace {

// mkagent --hosts N: one shared watchdog instead of a thread per host (its thread count
// stays near one per host: the gRPC server's poller), yet a host's boot that ends by itself
// and a crash are still seen, on the host where they happened.
TEST_F(AgentProcessTest, ManyHostsShareOneWatchdogAndStillSeeEveryChange) {
  constexpr int kHosts = 40;
  std::string tls_root;
  for (int i = 1; i <= kHosts; ++i) {
    char name[32];
    std::snprintf(name, sizeof(name), "many-%04d", i);
    tls_root = fs::path(pki_->agent(name)).parent_path().string();
  }
  testing::Process p({"agents/mkagent", "--hosts", std::to_string(kHosts), "--topology", kTopology, "--listen",
                      "127.0.0.1:0", "--state-dir", (dir_ / "hosts").string(), "--reserve-cores", "1",
                      "--boot-time", "300ms", "--host", "many", "--ports-file", (dir_ / "ports").string(),
                      "--tls-dir", tls_root, "--image-dir", dir_.string(), "--enable-fault-injection"},
                     (dir_ / "many.log").string());
  ASSERT_FALSE(p.WaitFor("emulated hosts .* ports").empty()) << p.Log();
  std::ifstream ports(dir_ / "ports");
  std::string name, address, last_name, last_address;
  while (ports >> name >> address) last_name = name, last_address = address;
  ASSERT_EQ(last_name, "many-0040");
  int threads = 0;
  for (auto& e : fs::directory_iterator("/proc/" + std::to_string(p.pid()) + "/task")) threads += e.is_directory();
  EXPECT_LT(threads, 30) << "a watchdog, server or stream thread per host?";
  // One server for all: each port answers as its own host, with its own certificate.
  {
    std::ifstream again(dir_ / "ports");
    std::string n, a;
    int checked = 0;
    while (again >> n >> a) {
      if (n != "many-0001" && n != "many-0017" && n != "many-0040") continue;
      auto s = v1::Agent::NewStub(security::TestPki::Channel(pki_->controller(), a, security::Identity::Agent(n)));
      grpc::ClientContext ictx;
      v1::InventoryResponse inv;
      ASSERT_TRUE(s->Inventory(&ictx, v1::InventoryRequest(), &inv).ok()) << n;
      EXPECT_EQ(inv.host(), n);
      ++checked;
    }
    EXPECT_EQ(checked, 3);
  }

  auto stub = v1::Agent::NewStub(
      security::TestPki::Channel(pki_->controller(), last_address, security::Identity::Agent(last_name)));
  grpc::ClientContext ctx;
  v1::ExecuteResponse r;
  ASSERT_TRUE(stub->Execute(&ctx, TenActions(), &r).ok());
  // The watchdog sees the boots end (300 ms, by themselves), then a crash.
  auto state = [&] {
    grpc::ClientContext wctx;
    wctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto reader = stub->Watch(&wctx, v1::WatchRequest());
    v1::HostState s;
    reader->Read(&s);
    wctx.TryCancel();
    return s;
  };
  auto all_active = [&] {
    v1::HostState s = state();
    int active = 0;
    for (const auto& in : s.instances()) active += in.status().kernel_state() == v1::KERNEL_STATE_ACTIVE;
    return active == 3;
  };
  bool up = false;
  for (int i = 0; i < 100 && !(up = all_active()); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  ASSERT_TRUE(up);
  std::this_thread::sleep_for(std::chrono::milliseconds(100));
  grpc::ClientContext fctx;
  v1::FaultRequest fault;
  fault.set_instance("b");
  fault.set_fault("panic");
  v1::Empty empty;
  ASSERT_TRUE(stub->InjectFault(&fctx, fault, &empty).ok());
  bool crashed = false;
  for (int i = 0; i < 100 && !crashed; ++i) {
    v1::HostState s = state();
    for (const auto& e : s.events()) crashed |= e.reason() == "Crashed" && e.name() == "b";
    if (!crashed) std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  EXPECT_TRUE(crashed) << p.Log();
  EXPECT_EQ(p.Kill(SIGTERM), 0);
}

}  // namespace
}  // namespace mkfleet
