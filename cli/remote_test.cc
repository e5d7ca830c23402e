#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>

#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/table.h"
#include <fstream>
#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/controller_service.h"

namespace mkfleet::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;
namespace v1 = mkfleet::v1;

class RemoteTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = ::testing::TempDir() + "/remote-" +
                       ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    store_ = *reconciler::OpenSqliteStore(path, clock_);
    objects_ = std::make_unique<reconciler::Objects>(*store_);
    service_ = std::make_unique<reconciler::ControllerService>(*store_, *objects_);
    int port = 0;
    server_ = reconciler::StartControllerServer(*service_, "127.0.0.1:0", &port);
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }
  ApplyOptions Apply(std::vector<std::string> paths) {
    ApplyOptions o;
    o.paths = std::move(paths);
    o.controller = address_;
    o.tls.insecure = true;  // an in-process plaintext server on loopback
    return o;
  }
  GetOptions Get(const std::string& kind, const std::string& name = "") {
    GetOptions o;
    o.controller = address_;
    o.tls.insecure = true;  // an in-process plaintext server on loopback
    o.kind = kind;
    o.name = name;
    return o;
  }

  SimulatedClock clock_;
  std::unique_ptr<reconciler::Store> store_;
  std::unique_ptr<reconciler::Objects> objects_;
  std::unique_ptr<reconciler::ControllerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(RemoteTest, ApplyExamplesThenReapplyThenGetAndDelete) {
  std::ostringstream out, err;
  ASSERT_EQ(RunDiff(Apply({"examples"}), out, err), kExitFailure) << err.str();  // 1: changes
  EXPECT_THAT(out.str(), HasSubstr("KernelInstance/web-1 created (dry run)\n"));
  out.str("");
  ASSERT_EQ(RunApply(Apply({"examples"}), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("Host/node-a created\n"));
  EXPECT_THAT(out.str(), HasSubstr("InstanceSet/edge created\n"));
  EXPECT_THAT(out.str(), HasSubstr("RolloutPolicy/web-fleet created\n"));
  std::string applied = out.str();
  EXPECT_EQ(std::count(applied.begin(), applied.end(), '\n'), 8) << applied;
  out.str("");
  ASSERT_EQ(RunApply(Apply({"examples"}), out, err), kExitOk);
  EXPECT_EQ(out.str().find("created"), std::string::npos) << out.str();
  EXPECT_THAT(out.str(), HasSubstr("KernelInstance/db-1 unchanged\n"));
  out.str("");
  EXPECT_EQ(RunDiff(Apply({"examples"}), out, err), kExitOk);  // 0: nothing would change
  out.str("");
  GetOptions json = Get("sets");
  json.output = "json";
  ASSERT_EQ(RunGet(json, out, err), kExitOk);
  EXPECT_THAT(out.str(), HasSubstr("\"name\": \"edge\""));

  out.str("");
  ASSERT_EQ(RunGet(Get("ki"), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("NAME"));
  EXPECT_THAT(out.str(), HasSubstr("ml-1"));
  EXPECT_THAT(out.str(), Not(HasSubstr("examples")));
  out.str("");
  GetOptions wide = Get("ki");
  wide.output = "wide";
  ASSERT_EQ(RunGet(wide, out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("SOURCE"));
  EXPECT_THAT(out.str(), HasSubstr("examples"));  // the source
  out.str("");
  ASSERT_EQ(RunDescribe(Get("instance", "web-1"), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("Name:         web-1"));
  EXPECT_THAT(out.str(), HasSubstr("failover FAILOVER_STANDBY"));
  EXPECT_THAT(out.str(), HasSubstr("Placement:    none"));  // no reconciler in this test
  out.str("");
  ASSERT_EQ(RunDescribe(Get("host", "node-b"), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("Agent:        127.0.0.1:7102"));
  out.str("");
  EXPECT_EQ(RunDescribe(Get("host", "nope"), out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("Host/nope does not exist"));
  err.str("");
  out.str("");
  GetOptions yaml = Get("hosts", "node-b");
  yaml.output = "yaml";
  ASSERT_EQ(RunGet(yaml, out, err), kExitOk);
  EXPECT_THAT(out.str(), HasSubstr("kind: Host"));
  EXPECT_THAT(out.str(), HasSubstr("name: node-b"));

  out.str("");
  ASSERT_EQ(RunDelete(Get("KernelInstance", "web-1"), out, err), kExitOk);
  EXPECT_EQ(out.str(), "KernelInstance/web-1 deleted\n");
  err.str("");
  EXPECT_EQ(RunDelete(Get("KernelInstance", "web-1"), out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("KernelInstance/web-1 does not exist"));
  EXPECT_EQ(RunGet(Get("pods"), out, err), kExitInvalid);
}

// describe host --topology: the host's map from the controller's Topology call (here a
// hand-made 2-node, 4-core topology), after the rest of the description.
TEST_F(RemoteTest, DescribeHostTopologyPrintsItsMap) {
  service_->SetTopologySource([](const std::string& host) -> absl::StatusOr<v1::TopologyInfo> {
    if (host != "node-b") return absl::NotFoundError("host " + host + ": this controller has no connection to it");
    v1::TopologyInfo t;
    for (uint32_t n = 0; n < 2; ++n) {
      v1::NumaNodeInfo* node = t.add_numa_nodes();
      node->set_node(n);
      node->set_memory_bytes(16ull << 30);
    }
    for (uint32_t c = 0; c < 4; ++c) {
      v1::CoreInfo* core = t.add_cores();
      core->set_core(c);
      core->set_numa_node(c / 2);
      core->set_package(c / 2);
      core->set_l3(c / 2);
      core->add_pus(c);
      core->add_pus(c + 4);
    }
    v1::PciFunctionInfo* nic = t.add_pci();
    nic->set_bdf("0000:81:00.0");
    nic->set_class_id(0x0200);
    nic->set_numa_node(1);
    nic->add_names("eth0");
    return t;
  });
  std::ostringstream out, err;
  ASSERT_EQ(RunApply(Apply({"examples"}), out, err), kExitOk) << err.str();
  out.str("");
  GetOptions describe = Get("host", "node-b");
  describe.topology = true;
  ASSERT_EQ(RunDescribe(describe, out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("Agent:        127.0.0.1:7102"));
  EXPECT_THAT(out.str(), HasSubstr("Topology:     node-b: 2 packages, 2 NUMA nodes, 4 cores, 8 CPUs (2 per core), "
                                   "1 PCI functions\n"));
  EXPECT_THAT(out.str(), HasSubstr("\n0     0    16Gi       .. ..\n1     1    16Gi       .. ..\n"));
  EXPECT_THAT(out.str(), ::testing::ContainsRegex("0000:81:00.0 +Network +node 1 +eth0 +-\n"));
  // No connection to the host here: the description, then the error; exit 1.
  out.str("");
  describe.name = "node-a";
  EXPECT_EQ(RunDescribe(describe, out, err), kExitFailure);
  EXPECT_THAT(out.str(), HasSubstr("Name:         node-a"));
  EXPECT_THAT(err.str(), HasSubstr("host node-a: this controller has no connection to it"));
  err.str("");
  GetOptions instance = Get("instance", "web-1");
  instance.topology = true;
  EXPECT_EQ(RunDescribe(instance, out, err), kExitInvalid);
  EXPECT_THAT(err.str(), HasSubstr("--topology is for hosts"));
}

TEST_F(RemoteTest, DeleteByFileRemovesWhatTheFilesName) {
  std::ostringstream out, err;
  ASSERT_EQ(RunApply(Apply({"examples"}), out, err), kExitOk) << err.str();
  out.str("");
  GetOptions del = Get("");
  del.paths = {"examples/hosts.yaml", "examples/web.yaml", "examples/db.yaml"};
  ASSERT_EQ(RunDelete(del, out, err), kExitOk) << err.str();
  // The instances go before the host they name.
  EXPECT_EQ(out.str().find("KernelInstance/web-1 deleted\nKernelInstance/db-1 deleted\n"), 0u) << out.str();
  // A Host drains first: it is marked, and the controller removes it once its kernels are gone.
  EXPECT_THAT(out.str(), HasSubstr("Host/node-a terminating: its instances are deleted first"));
  auto hosts = objects_->List("Host");
  ASSERT_EQ(hosts->size(), 3u);
  for (const auto& h : *hosts) EXPECT_NE(h.host().metadata().deletion_unix_ms(), 0) << h.host().metadata().name();
  EXPECT_EQ(objects_->List("KernelInstance")->size(), 1u);  // ml-1 names no host
  EXPECT_EQ(RunDelete(Get(""), out, err), kExitInvalid);
}

TEST_F(RemoteTest, MissingHostIsRejectedAndNothingChanges) {
  std::ostringstream out, err;
  // web.yaml alone references node-a, which the store does not have yet.
  EXPECT_EQ(RunApply(Apply({"examples/web.yaml"}), out, err), kExitInvalid);
  EXPECT_THAT(err.str(), HasSubstr("KernelInstance/web-1: spec.host: no Host named \"node-a\""));
  EXPECT_THAT(err.str(), HasSubstr("nothing was changed"));
  EXPECT_EQ(*store_->Revision(), 0);
  // Once the hosts are stored, the same file applies on its own.
  ASSERT_EQ(RunApply(Apply({"examples/hosts.yaml"}), out, err), kExitOk);
  EXPECT_EQ(RunApply(Apply({"examples/web.yaml"}), out, err), kExitOk) << err.str();
}

TEST_F(RemoteTest, UnreachableControllerExits1) {
  std::ostringstream out, err;
  server_->Shutdown();
  server_.reset();
  ApplyOptions o = Apply({"examples"});
  o.request_timeout = absl::Seconds(2);
  EXPECT_EQ(RunApply(o, out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("cannot reach the controller at " + address_));
}

// Apply --wait against statuses written here as the controller would write them.
class WaitTest : public RemoteTest {
 protected:
  std::string Write(const std::string& name, const std::string& yaml) {
    std::string path = ::testing::TempDir() + "/wait-" + name;
    std::ofstream(path) << yaml;
    return path;
  }
  std::string HostYaml() {
    return "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata: {name: h1}\nspec:\n  agent: 127.0.0.1:1\n"
           "  pool: {hostReserved: {cores: 1, memory: 1Gi}}\n";
  }
  std::string SetYaml(int replicas) {
    return absl::StrCat("apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: s}\nspec:\n  replicas: ",
                        replicas,
                        "\n  template:\n    spec:\n      kernel: {image: /k/vmlinux}\n"
                        "      resources: {cpus: 2, memory: 256Mi}\n");
  }
  std::string InstanceYaml() {
    return "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: k1}\nspec:\n  host: h1\n"
           "  kernel: {image: /var/lib/mkfleet/kernels/missing}\n  resources: {cpus: 2, memory: 256Mi}\n";
  }
  v1::Condition Cond(const std::string& type, bool ok, const std::string& reason, const std::string& message,
                     int64_t generation) {
    v1::Condition c;
    c.set_type(type);
    c.set_status(ok ? v1::CONDITION_TRUE : v1::CONDITION_FALSE);
    c.set_reason(reason);
    c.set_message(message);
    c.set_observed_generation(generation);
    return c;
  }
  void Status(const std::string& kind, const std::string& name, const google::protobuf::Message& status) {
    ASSERT_TRUE(objects_->WriteStatuses({{reconciler::StatusKey(kind, name), status.SerializeAsString()}}, {}).ok());
  }
  v1::HostStatus ReadyHost(int64_t generation) {
    v1::HostStatus h;
    h.set_reachable(true);
    h.set_observed_generation(generation);
    *h.add_conditions() = Cond("Reachable", true, "Connected", "", generation);
    *h.add_conditions() = Cond("PoolValid", true, "Valid", "", generation);
    return h;
  }
  ApplyOptions Waiting(const std::string& path, absl::Duration timeout = absl::Seconds(1)) {
    ApplyOptions o = Apply({path});
    o.wait = true;
    o.wait_timeout = timeout;
    return o;
  }
};

TEST_F(WaitTest, AGrownSetIsWaitedForAtItsNewCount) {
  // Defect 4: a set grown from 2 to 4 printed "2/2 ready ... all ready".
  std::ostringstream out, err;
  std::string file = Write("grow.yaml", HostYaml() + "---\n" + SetYaml(2));
  ASSERT_EQ(RunApply(Apply({file}), out, err), kExitOk) << err.str();
  Status("Host", "h1", ReadyHost(1));
  v1::InstanceSetStatus ready;
  ready.set_replicas(2);
  ready.set_ready_replicas(2);
  ready.set_observed_generation(1);
  *ready.add_conditions() = Cond("Scheduled", true, "Placed", "", 1);
  *ready.add_conditions() = Cond("Ready", true, "AllReady", "2/2 ready", 1);
  Status("InstanceSet", "s", ready);
  out.str("");
  ASSERT_EQ(RunApply(Waiting(file), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("all ready"));
  // Now 4: the status still speaks of generation 1.
  out.str("");
  err.str("");
  std::string grown = Write("grown.yaml", HostYaml() + "---\n" + SetYaml(4));
  EXPECT_EQ(RunApply(Waiting(grown), out, err), kExitFailure);
  EXPECT_THAT(out.str(), Not(HasSubstr("all ready")));
  EXPECT_THAT(err.str(), HasSubstr("timed out after 1s; not done: InstanceSet/s"));
}

TEST_F(WaitTest, PoliciesAreWaitedForAndRoleBindingsAreDoneAtOnce) {
  // The demo's --wait timed out on a RolloutPolicy (no branch for the kind: never done);
  // a RoleBinding, which has no status, the same.
  std::ostringstream out, err;
  Status("Host", "h1", ReadyHost(1));
  const std::string policy =
      "apiVersion: mkfleet.io/v1\nkind: RolloutPolicy\nmetadata: {name: p}\nspec:\n"
      "  selector: {matchLabels: {tier: web}}\n";
  const std::string binding =
      "apiVersion: mkfleet.io/v1\nkind: RoleBinding\nmetadata: {name: ops}\nspec:\n  role: viewer\n"
      "  subjects: [{kind: Group, name: ops}]\n";
  v1::RolloutPolicyStatus ready;
  ready.set_observed_generation(1);
  *ready.add_conditions() = Cond("Ready", true, "AllUpdated", "0 instance(s)", 1);
  Status("RolloutPolicy", "p", ready);
  std::string file = Write("policy.yaml", HostYaml() + "---\n" + policy + "---\n" + binding);
  ASSERT_EQ(RunApply(Waiting(file), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("all ready"));
  EXPECT_THAT(out.str(), HasSubstr("RolloutPolicy/p: Ready"));
  // One that is not Ready (its rollout runs) is waited for.
  v1::RolloutPolicyStatus rolling;
  rolling.set_observed_generation(0);
  *rolling.add_conditions() = Cond("Ready", false, "RollingOut", "revision 2: updating", 2);
  Status("RolloutPolicy", "p", rolling);
  out.str("");
  err.str("");
  std::string changed = Write("policy2.yaml", HostYaml() + "---\n" + policy + "  rollout: {canary: 1}\n");
  EXPECT_EQ(RunApply(Waiting(changed), out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("timed out after 1s; not done: RolloutPolicy/p"));
}

TEST_F(WaitTest, FailsAtOnceWithTheRealCause) {
  // Defect 4: --wait waited out its timeout on an instance already Failed and showed
  // "Ready: Converging" instead of the cause. (The statuses are written first, as the
  // controller would right after the apply.)
  std::ostringstream out, err;
  Status("Host", "h1", ReadyHost(1));
  v1::InstanceStatus failed;
  failed.set_phase("Failed");
  const std::string cause = "h1/k1/g1/v7/create-load: host h1: load k1: cannot open /var/lib/mkfleet/kernels/missing";
  *failed.add_conditions() = Cond("Scheduled", true, "Placed", "on h1", 1);
  *failed.add_conditions() = Cond("Ready", false, "ActionFailed", cause, 1);
  *failed.add_conditions() = Cond("Degraded", true, "ActionFailed", cause, 1);
  Status("KernelInstance", "k1", failed);
  std::string file = Write("failed.yaml", HostYaml() + "---\n" + InstanceYaml());
  absl::Time start = absl::Now();
  EXPECT_EQ(RunApply(Waiting(file, absl::Seconds(30)), out, err), kExitFailure);
  EXPECT_LT(absl::Now() - start, absl::Seconds(10));  // not the 30 s timeout
  EXPECT_THAT(out.str(), HasSubstr("KernelInstance/k1: Failed (Degraded: ActionFailed, " + cause));
  EXPECT_THAT(err.str(), HasSubstr("error: KernelInstance/k1: Degraded=True ActionFailed: " + cause));
  // A failure of an older generation is not this apply's: it waits (and times out here).
  err.str("");
  std::string changed = Write("changed.yaml", HostYaml() + "---\n" + InstanceYaml() + "  phase: Loaded\n");
  EXPECT_EQ(RunApply(Waiting(changed), out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("timed out"));
}

TEST_F(WaitTest, HostsAreWaitedForAndAnInvalidPoolFails) {
  // Defect 4: Hosts were not waited on (PoolValid=False still ended "all ready").
  std::ostringstream out, err;
  std::string file = Write("host.yaml", HostYaml());
  EXPECT_EQ(RunApply(Waiting(file), out, err), kExitFailure);  // created, never connects
  EXPECT_THAT(err.str(), HasSubstr("timed out after 1s; not done: Host/h1 (Not connected)"));
  v1::HostStatus invalid;
  *invalid.add_conditions() = Cond("Reachable", true, "Connected", "", 2);
  *invalid.add_conditions() =
      Cond("PoolValid", false, "Invalid", "Host/h1: spec.pool.hostReserved.cores: NUMA node 0 has only 6 cores", 2);
  Status("Host", "h1", invalid);
  err.str("");
  std::string more = HostYaml();
  more.replace(more.find("cores: 1"), 8, "cores: 9");
  EXPECT_EQ(RunApply(Waiting(Write("host2.yaml", more), absl::Seconds(30)), out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("Host/h1: PoolValid=False Invalid: Host/h1: spec.pool.hostReserved.cores"));
  Status("Host", "h1", ReadyHost(3));
  out.str("");
  EXPECT_EQ(RunApply(Waiting(file), out, err), kExitOk) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("all ready"));
}

TEST(DurationTest, KubectlStyleAndBareSeconds) {
  EXPECT_EQ(*ParseDuration("30s"), absl::Seconds(30));
  EXPECT_EQ(*ParseDuration("5m"), absl::Minutes(5));
  EXPECT_EQ(*ParseDuration("15"), absl::Seconds(15));  // `--timeout 15` is 15 s, not 300
  EXPECT_EQ(*ParseDuration("250ms"), absl::Milliseconds(250));
  EXPECT_FALSE(ParseDuration("soon").ok());
  EXPECT_THAT(std::string(ParseDuration("soon").status().message()), HasSubstr("not a duration"));
}

}  // namespace
}  // namespace mkfleet::cli
