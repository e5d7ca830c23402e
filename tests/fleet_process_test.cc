// The whole loop as real processes: mkagent (emulated kernel) and mkcontroller on free
// loopback ports, manifests applied with mkapply; the instance boots on the agent, and a
// pruning apply without it removes it.
#include <sys/wait.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"
#include "mkfleet/v1/agent.grpc.pb.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "security/testing/test_pki.h"
#include "tests/fleet_util.h"
#include "tests/process_util.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

constexpr char kTopology[] = "pack:2 numa:1(memory=16GiB) core:8 pu:2";

class FleetProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("fleet-proc-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
    vmlinux_ = (dir_ / "vmlinux").string();
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
  }
  void TearDown() override { fs::remove_all(dir_); }

  int Mkapply(std::vector<std::string> args, std::string* output) {
    std::vector<std::string> argv = {"cli/mkapply"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.push_back("--controller");
    argv.push_back("127.0.0.1:" + controller_port_);
    argv.push_back("--tls-dir");
    argv.push_back(pki_->admin());
    testing::Process p(argv, (dir_ / ("mkapply-" + std::to_string(++runs_))).string());
    int status = p.Kill(0);
    *output = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  std::string Manifest(bool with_instance) {
    std::string text =
        "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: node-a\nspec:\n  agent: 127.0.0.1:" + agent_port_ +
        "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n";
    if (with_instance) {
      text +=
          "---\napiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: web-1\nspec:\n  host: node-a\n"
          "  kernel:\n    image: " + vmlinux_ + "\n    cmdline: \"console=mktty0\"\n"
          "  resources:\n    cpus: 4\n    memory: 512Mi\n";
    }
    std::string path = (dir_ / (with_instance ? "fleet.yaml" : "hosts-only.yaml")).string();
    std::ofstream(path) << text;
    return path;
  }

  // web-1's kernel state on the agent (ABSENT when it has none).
  v1::KernelState StateOnAgent() {
    auto stub = v1::Agent::NewStub(security::TestPki::Channel(pki_->controller(), "127.0.0.1:" + agent_port_,
                                                              security::Identity::Agent("node-a")));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    auto reader = stub->Watch(&ctx, v1::WatchRequest());
    v1::HostState snapshot;
    if (!reader->Read(&snapshot)) return v1::KERNEL_STATE_UNKNOWN;
    ctx.TryCancel();
    for (const auto& in : snapshot.instances()) {
      if (in.name() == "web-1") return in.status().kernel_state();
    }
    return v1::KERNEL_STATE_ABSENT;
  }

  bool Eventually(v1::KernelState want) {
    for (int i = 0; i < 300; ++i) {
      if (StateOnAgent() == want) return true;
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return false;
  }

  // One mkagent (node-a, synthetic topology) and one mkcontroller, on free ports.
  void StartFleet() {
    agent_ = std::make_unique<testing::Process>(
        std::vector<std::string>{"agents/mkagent", "--topology", std::string("synthetic:") + kTopology, "--listen",
                                 "127.0.0.1:0", "--state-dir", (dir_ / "agent").string(), "--reserve-cores", "1",
                                 "--reserve-memory", "1Gi", "--host", "node-a", "--tls-dir", pki_->agent("node-a"),
                                 "--image-dir", dir_.string()},
        (dir_ / "agent.log").string());
    agent_port_ = agent_->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(agent_port_.empty()) << agent_->Log();
    controller_ = std::make_unique<testing::Process>(
        std::vector<std::string>{"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(),
                                 "--listen", "127.0.0.1:0", "--resync", "1", "--tls-dir", pki_->controller()},
        (dir_ / "controller.log").string());
    controller_port_ = controller_->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(controller_port_.empty()) << controller_->Log();
  }

  fs::path dir_;
  std::unique_ptr<security::TestPki> pki_;
  std::string vmlinux_;
  std::string agent_port_, controller_port_;
  std::unique_ptr<testing::Process> agent_, controller_;
  int runs_ = 0;
};

TEST_F(FleetProcessTest, WaitTimesOutOnAnUnschedulableInstance) {
  agent_port_ = "1";  // no agent: the host never connects
  testing::Process controller({"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(),
                               "--listen", "127.0.0.1:0", "--resync", "1", "--tls-dir", pki_->controller()},
                              (dir_ / "controller.log").string());
  controller_port_ = controller.WaitFor("listening on port ([0-9]+)");
  ASSERT_FALSE(controller_port_.empty()) << controller.Log();
  std::string out;
  EXPECT_EQ(Mkapply({"apply", "-f", Manifest(true), "--wait", "--timeout", "2s"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1: Pending (Scheduled: HostNotAvailable"));
  EXPECT_THAT(out, HasSubstr("timed out after 2s; not done: "));
  ASSERT_EQ(Mkapply({"events"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("HostNotAvailable"));
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1"));
}

TEST_F(FleetProcessTest, ApplyBootsTheInstanceAndPruneRemovesIt) {
  ASSERT_NO_FATAL_FAILURE(StartFleet());
  testing::Process& agent = *agent_;
  testing::Process& controller = *controller_;

  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Manifest(true), "--source", "fleet", "--wait", "--timeout", "60s"}, &out), 0)
      << out << controller.Log();
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1 created"));
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1: Running"));
  EXPECT_THAT(out, HasSubstr("all ready"));
  ASSERT_TRUE(Eventually(v1::KERNEL_STATE_ACTIVE)) << controller.Log() << agent.Log();
  // The controller's status catches up: `get instances` shows it Running on node-a.
  bool running = false;
  for (int i = 0; i < 100 && !running; ++i) {
    ASSERT_EQ(Mkapply({"get", "instances"}, &out), 0) << out;
    running = out.find("Running") != std::string::npos;
    if (!running) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(running) << out;
  EXPECT_THAT(out, HasSubstr("node-a"));
  // Every step is an event.
  ASSERT_EQ(Mkapply({"events", "instances", "web-1"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("ActionDone"));
  EXPECT_THAT(out, HasSubstr("create-start"));
  EXPECT_THAT(out, HasSubstr("Ready"));

  ASSERT_EQ(Mkapply({"apply", "-f", Manifest(false), "--source", "fleet", "--prune"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1 pruned"));
  ASSERT_TRUE(Eventually(v1::KERNEL_STATE_ABSENT)) << controller.Log() << agent.Log();

  int status = controller.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << controller.Log();
  status = agent.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << agent.Log();
}

// The lifecycle of one instance through mkapply: a no-op re-apply sends nothing; diff and
// --dry-run change nothing; a memory resize is one hot-plug; a kernel change with
// strategy Replace is halt, unload, load, start; Morph is refused with a condition; delete
// removes the kernel. The emulated kernel's counters prove each step ran exactly once.
TEST_F(FleetProcessTest, ResizeReplaceMorphAndDeleteEachRunExactlyOnce) {
  const std::string topology = kTopology;
  ASSERT_NO_FATAL_FAILURE(StartFleet());
  testing::Process& agent = *agent_;
  testing::Process& controller = *controller_;
  auto stub = v1::Controller::NewStub(security::TestPki::Channel(pki_->admin(), "127.0.0.1:" + controller_port_,
                                                                 security::Identity::Controller()));
  auto stats = [&] {
    grpc::ClientContext ctx;
    v1::StatsResponse st;
    EXPECT_TRUE(stub->Stats(&ctx, v1::StatsRequest(), &st).ok());
    return st;
  };
  auto actions = [&] { return stats().actions_sent(); };
  // Two more passes (resyncs come every second): what they would send, they have sent.
  auto two_passes = [&] {
    int64_t passes = stats().passes();
    return testing::Eventually([&] { return stats().passes() >= passes + 2; });
  };
  std::string vmlinux2 = (dir_ / "vmlinux-2").string();
  std::ofstream(vmlinux2, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(8192, 'n');
  auto manifest = [&](const std::string& image, const std::string& memory, const std::string& strategy) {
    std::string text = "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: node-a\nspec:\n  agent: 127.0.0.1:" +
                       agent_port_ + "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n---\n"
                       "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: web-1\nspec:\n"
                       "  host: node-a\n  kernel:\n    image: " + image + "\n    cmdline: \"console=mktty0\"\n"
                       "  resources:\n    cpus: 2\n    memory: " + memory + "\n  update: {strategy: " + strategy + "}\n";
    std::string path = (dir_ / "web.yaml").string();
    std::ofstream(path) << text;
    return path;
  };
  const std::string agent_address = "127.0.0.1:" + agent_port_;
  auto on_agent = [&] { return testing::AgentInstances(agent_address, "node-a", pki_->controller())["web-1"]; };
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", manifest(vmlinux_, "512Mi", "Replace"), "--wait", "--timeout", "60s"}, &out), 0)
      << out << controller.Log();
  ASSERT_TRUE(testing::Eventually([&] { return on_agent().kernel_state() == v1::KERNEL_STATE_ACTIVE; }));

  // Re-apply, diff and dry-run: nothing changes, nothing is sent.
  ASSERT_TRUE(two_passes());
  int64_t sent = actions();
  ASSERT_EQ(Mkapply({"apply", "-f", manifest(vmlinux_, "512Mi", "Replace")}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1 unchanged"));
  EXPECT_EQ(Mkapply({"diff", "-f", manifest(vmlinux_, "512Mi", "Replace")}, &out), 0) << out;
  EXPECT_EQ(Mkapply({"diff", "-f", manifest(vmlinux_, "1Gi", "Replace")}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1"));
  ASSERT_EQ(Mkapply({"apply", "--dry-run", "-f", manifest(vmlinux_, "1Gi", "Replace")}, &out), 0) << out;
  ASSERT_TRUE(two_passes());
  EXPECT_EQ(actions(), sent);
  EXPECT_EQ(on_agent().placement().memory(0).bytes(), 512ull << 20);

  // Resize by hot-plug.
  ASSERT_EQ(Mkapply({"apply", "-f", manifest(vmlinux_, "1Gi", "Replace"), "--wait", "--timeout", "60s"}, &out), 0)
      << out;
  ASSERT_TRUE(testing::Eventually([&] { return on_agent().placement().memory(0).bytes() == (1ull << 30); }));

  // Kernel change, strategy Replace.
  ASSERT_EQ(Mkapply({"apply", "-f", manifest(vmlinux2, "1Gi", "Replace"), "--wait", "--timeout", "60s"}, &out), 0)
      << out;
  ASSERT_TRUE(testing::Eventually([&] {
    v1::InstanceStatus st = on_agent();
    return st.provenance().kernel_path() == vmlinux2 && st.kernel_state() == v1::KERNEL_STATE_ACTIVE;
  }));

  // Strategy Morph on a kernel that runs no guest (mkguest): the live update cannot hand
  // anything over, rolls back before booting a new kernel, and says why; the kernel ran on.
  ASSERT_TRUE(two_passes());
  sent = actions();
  ASSERT_EQ(Mkapply({"apply", "-f", manifest(vmlinux_, "1Gi", "Morph")}, &out), 0) << out;
  ASSERT_TRUE(testing::Eventually([&] {
    return Mkapply({"describe", "instance", "web-1"}, &out) == 0 && out.find("MorphRolledBack") != std::string::npos;
  })) << out;
  EXPECT_THAT(out, HasSubstr("the guest (mkguest) of web-1 did not answer"));
  EXPECT_EQ(actions(), sent + 1);  // the morph-start, once
  EXPECT_EQ(on_agent().provenance().kernel_path(), vmlinux2);

  // Delete.
  ASSERT_EQ(Mkapply({"delete", "instance", "web-1"}, &out), 0) << out;
  ASSERT_TRUE(
      testing::Eventually([&] { return testing::AgentInstances(agent_address, "node-a", pki_->controller()).empty(); }));

  int status = controller.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << controller.Log();
  status = agent.Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << agent.Log();
  kernel::EmulatedKernel::Counters c =
      testing::EmulatorCounters(topology, (dir_ / "agent" / "emulated-kernel.state").string());
  EXPECT_EQ(c.creates, 1);
  EXPECT_EQ(c.memory_adds, 1);
  EXPECT_EQ(c.halts, 2);    // replace, delete
  EXPECT_EQ(c.unloads, 2);  // replace, delete
  EXPECT_EQ(c.loads, 2);
  EXPECT_EQ(c.starts, 2);
  EXPECT_EQ(c.removes, 1);
}

}  // namespace
}  // namespace mkfleet
