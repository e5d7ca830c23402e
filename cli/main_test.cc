// mkapply's command line itself (the binary): global flags anywhere, MKFLEET_CONTROLLER,
// durations. Against an in-process controller service on a free loopback port.
#include <filesystem>
#include <fstream>
#include <iterator>

#include "common/version.h"
#include "gmock/gmock.h"
#include "nlohmann/json.hpp"
#include "gtest/gtest.h"
#include "reconciler/controller_service.h"
#include "security/testing/test_pki.h"
#include "tests/process_util.h"

namespace mkfleet::cli {
namespace {

using ::testing::HasSubstr;

class MkapplyTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / ("mkapply-" + std::to_string(getpid()));
    std::filesystem::create_directories(dir_);
    store_ = *reconciler::OpenSqliteStore((dir_ / "store.db").string(), Clock::Real());
    objects_ = std::make_unique<reconciler::Objects>(*store_);
    events_ = *reconciler::EventLog::Open(*store_, Clock::Real());
    service_ = std::make_unique<reconciler::ControllerService>(*store_, *objects_, events_.get());
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
    security::TlsOptions tls;
    tls.dir = pki_->controller();
    auto creds = security::ServerCredentials(tls, "127.0.0.1:0", security::Identity::Controller());
    ASSERT_TRUE(creds.ok()) << creds.status();
    int port = 0;
    server_ = reconciler::StartControllerServer(*service_, "127.0.0.1:0", &port, *creds);
    ASSERT_NE(server_, nullptr);
    address_ = "127.0.0.1:" + std::to_string(port);
    std::ofstream(dir_ / "h.yaml") << "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata: {name: h1}\nspec:\n"
                                      "  agent: 127.0.0.1:1\n  pool: {hostReserved: {cores: 1, memory: 1Gi}}\n";
  }
  void TearDown() override {
    server_->Shutdown();
    std::filesystem::remove_all(dir_);
  }
  // Runs mkapply with `args` (and `env` set; the admin's credentials in MKFLEET_TLS_DIR
  // unless `env` sets it); returns its exit code, output in *out.
  int Run(std::vector<std::string> args, std::string* out, const std::string& env = "") {
    std::string log = (dir_ / "out.log").string();
    std::vector<std::string> argv = {"/usr/bin/env"};
    if (env.rfind("MKFLEET_TLS_DIR=", 0) != 0) argv.push_back("MKFLEET_TLS_DIR=" + pki_->admin());
    if (!env.empty()) argv.push_back(env);
    argv.push_back("cli/mkapply");
    argv.insert(argv.end(), args.begin(), args.end());
    testing::Process p(argv, log);
    while (p.Running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    int status = p.Kill(0);
    *out = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  // Runs mkapply with exactly the environment variables `env` set (none of the test's own
  // MKFLEET_* are added).
  int RunEnv(std::vector<std::string> args, std::string* out, const std::vector<std::string>& env) {
    std::vector<std::string> argv = {"/usr/bin/env", "-u", "MKFLEET_TLS_DIR", "-u", "MKFLEET_CONTROLLER",
                                     "-u", "MKFLEET_CONTEXT"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.push_back("cli/mkapply");
    argv.insert(argv.end(), args.begin(), args.end());
    testing::Process p(argv, (dir_ / "out.log").string());
    while (p.Running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
    int status = p.Kill(0);
    *out = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }
  std::filesystem::path dir_;
  std::unique_ptr<security::TestPki> pki_;
  std::unique_ptr<reconciler::Store> store_;
  std::unique_ptr<reconciler::Objects> objects_;
  std::unique_ptr<reconciler::EventLog> events_;
  std::unique_ptr<reconciler::ControllerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::string address_;
};

TEST_F(MkapplyTest, TheSystemLibrariesAreLinkedInNotLoadedAtEachStart) {
  // //bazel:static_system.bzl: loading Debian's gRPC, protobuf, Abseil and OpenSSL as 66
  // shared objects was most of what a short command cost.
  std::string out;
  testing::Process p({"/usr/bin/ldd", "cli/mkapply"}, (dir_ / "ldd.log").string());
  while (p.Running()) std::this_thread::sleep_for(std::chrono::milliseconds(5));
  int status = p.Kill(0);
  out = p.Log();
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << out;
  EXPECT_THAT(out, HasSubstr("libc.so"));
  for (const char* lib : {"libgrpc", "libprotobuf", "libabsl_", "libssl", "libcrypto", "libyaml"}) {
    EXPECT_THAT(out, ::testing::Not(HasSubstr(lib))) << lib << " is loaded at start";
  }
  // And it runs.
  EXPECT_EQ(Run({"--help"}, &out), 0) << out;
}

TEST_F(MkapplyTest, GlobalFlagsGoBeforeOrAfterTheSubcommandAndTheEnvironmentCounts) {
  // Defect 10: `mkapply --controller X get` was refused, MKFLEET_CONTROLLER ignored.
  std::string out;
  ASSERT_EQ(Run({"--controller", address_, "apply", "-f", (dir_ / "h.yaml").string()}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h1 created"));
  ASSERT_EQ(Run({"get", "hosts", "--controller", address_}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("h1"));
  ASSERT_EQ(Run({"get", "hosts"}, &out, "MKFLEET_CONTROLLER=" + address_), 0) << out;
  EXPECT_THAT(out, HasSubstr("h1"));
  // The flag wins over the environment.
  EXPECT_EQ(Run({"--controller", address_, "get", "hosts"}, &out, "MKFLEET_CONTROLLER=127.0.0.1:1"), 0) << out;
  ASSERT_EQ(Run({"--request-timeout", "5s", "events", "--type", "Warning", "--since", "5m", "-o", "json"}, &out,
                "MKFLEET_CONTROLLER=" + address_),
            0)
      << out;
  EXPECT_THAT(out, HasSubstr("[]"));
}

TEST_F(MkapplyTest, WaitTimeoutIsADurationAndBadOnesAreUsageErrors) {
  std::string out;
  // `--timeout 1s`: waits about a second for a Host that never connects, then exit 1.
  auto start = std::chrono::steady_clock::now();
  EXPECT_EQ(Run({"apply", "-f", (dir_ / "h.yaml").string(), "--wait", "--timeout", "1s", "--controller", address_}, &out),
            1)
      << out;
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
  EXPECT_THAT(out, HasSubstr("timed out after 1s"));
  EXPECT_EQ(Run({"apply", "-f", (dir_ / "h.yaml").string(), "--wait", "--timeout", "soon"}, &out), 2);
  EXPECT_THAT(out, HasSubstr("not a duration"));
  EXPECT_EQ(Run({"get", "hosts", "--request-timeout", "x"}, &out), 2);
}

TEST_F(MkapplyTest, AnUnreachableControllerSaysSo) {
  std::string out;
  EXPECT_EQ(Run({"get", "hosts", "--controller", "127.0.0.1:1", "--request-timeout", "1s"}, &out), 1);
  EXPECT_THAT(out, HasSubstr("error: cannot reach the controller at 127.0.0.1:1"));
}

TEST_F(MkapplyTest, CredentialsComeFromTheFlagOrTheEnvironmentAndNeverSilentlyGoPlaintext) {
  std::string out;
  // --tls-dir beats MKFLEET_TLS_DIR.
  EXPECT_EQ(Run({"get", "hosts", "--controller", address_, "--tls-dir", pki_->admin()}, &out,
                "MKFLEET_TLS_DIR=/nonexistent"),
            0)
      << out;
  // No credentials at all: exit 2, saying how to get them.
  EXPECT_EQ(Run({"get", "hosts", "--controller", address_}, &out, "MKFLEET_TLS_DIR="), 2) << out;
  EXPECT_THAT(out, HasSubstr("certs issue user"));
  // Plaintext to a TLS controller fails; plaintext to a non-loopback address is refused.
  EXPECT_EQ(Run({"get", "hosts", "--controller", address_, "--insecure"}, &out, "MKFLEET_TLS_DIR="), 1) << out;
  EXPECT_EQ(Run({"get", "hosts", "--controller", "10.1.2.3:7100", "--insecure"}, &out, "MKFLEET_TLS_DIR="), 2) << out;
  EXPECT_THAT(out, HasSubstr("refused (not a loopback address"));
  // Credentials that are not a user's own (or that are unreadable) are reported at once.
  EXPECT_EQ(Run({"get", "hosts", "--controller", address_, "--tls-dir", dir_.string()}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("ca.crt"));
}


// Hosts h1 (zone a), h2 (zone b), h3 (zone a) and an instance on each of h1 and h3.
class KubectlStyleTest : public MkapplyTest {
 protected:
  void SetUp() override {
    MkapplyTest::SetUp();
    std::string text;
    for (const auto& [name, zone] : std::vector<std::pair<std::string, std::string>>{{"h1", "a"}, {"h2", "b"}, {"h3", "a"}}) {
      text += "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata: {name: " + name + ", labels: {zone: " + zone +
              "}}\nspec:\n  agent: 127.0.0.1:1\n  pool: {hostReserved: {cores: 1, memory: 1Gi}}\n---\n";
    }
    for (const char* host : {"h1", "h3"}) {
      text += std::string("apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: web-") + host +
              ", labels: {app: web}}\nspec:\n  host: " + host +
              "\n  kernel: {image: /k/vmlinux}\n  resources: {cpus: 2, memory: 1Gi}\n---\n";
    }
    std::ofstream(dir_ / "fleet.yaml") << text;
    std::string out;
    ASSERT_EQ(Run({"apply", "-f", (dir_ / "fleet.yaml").string(), "--controller", address_}, &out), 0) << out;
  }
  int Mk(std::vector<std::string> args, std::string* out) {
    args.push_back("--controller");
    args.push_back(address_);
    return Run(args, out);
  }
};

TEST_F(KubectlStyleTest, SeveralNamesTypeSlashNameAndSelectors) {
  std::string out;
  ASSERT_EQ(Mk({"get", "hosts", "-l", "zone=a", "-o", "name"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h1\nHost/h3\n");
  ASSERT_EQ(Mk({"get", "hosts", "-l", "zone!=a", "-o", "name"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h2\n");
  ASSERT_EQ(Mk({"get", "hosts", "h3", "h1", "-o", "name"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h3\nHost/h1\n");
  ASSERT_EQ(Mk({"get", "host/h2", "ki/web-h1", "-o", "name"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h2\nKernelInstance/web-h1\n");
  // Two types: a table each.
  ASSERT_EQ(Mk({"get", "host/h2", "instance/web-h1"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("NAME +REACHABLE.*\nh2 .*\n\nNAME +PHASE.*\nweb-h1 "));
  // A missing one is said, the others printed, exit 1.
  EXPECT_EQ(Mk({"get", "hosts", "h1", "nope", "-o", "name"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Host/h1\n"));
  EXPECT_THAT(out, HasSubstr("error: Host/nope does not exist"));
  // Usage errors: exit 2.
  EXPECT_EQ(Mk({"get", "hosts", "h1", "-l", "zone=a"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("names cannot be given with a selector"));
  EXPECT_EQ(Mk({"get", "hosts", "host/h1"}, &out), 2) << out;
  EXPECT_EQ(Mk({"get", "hosts", "-l", "zone=a,=b"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("is not a requirement"));
  EXPECT_EQ(Mk({"get", "pods"}, &out), 2) << out;
  // describe and delete take the same.
  ASSERT_EQ(Mk({"describe", "hosts", "-l", "zone=b"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Name:         h2"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("Name:         h1")));
  ASSERT_EQ(Mk({"describe", "host/h1", "host/h3"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("Name: +h1(.|\n)*\n\nName: +h3"));
  EXPECT_EQ(Mk({"delete", "instances"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("never takes a whole type"));
  ASSERT_EQ(Mk({"delete", "instances", "-l", "app=web"}, &out), 0) << out;
  EXPECT_EQ(out, "KernelInstance/web-h1 deleted\nKernelInstance/web-h3 deleted\n");
  EXPECT_EQ(Mk({"get", "instances", "-o", "name"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("no KernelInstance objects"));
}

TEST_F(KubectlStyleTest, OutputFormats) {
  std::string out;
  // One object: the object itself, as stored, with its status; sizes as quantities.
  ASSERT_EQ(Mk({"get", "ki", "web-h1", "-o", "json"}, &out), 0) << out;
  auto one = nlohmann::json::parse(out);
  EXPECT_EQ(one["kind"], "KernelInstance");
  EXPECT_EQ(one["spec"]["resources"]["memory"], "1Gi");
  EXPECT_EQ(one["metadata"]["generation"], 1);
  ASSERT_EQ(Mk({"get", "ki", "-o", "json"}, &out), 0) << out;
  auto list = nlohmann::json::parse(out);
  EXPECT_EQ(list["kind"], "List");
  EXPECT_EQ(list["items"].size(), 2u);
  ASSERT_EQ(Mk({"get", "ki", "web-h1", "-o", "yaml"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("kind: KernelInstance\n"));
  EXPECT_THAT(out, HasSubstr("memory: 1Gi"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("1073741824")));
  ASSERT_EQ(Mk({"get", "hosts", "-o", "jsonpath={.items[*].metadata.name}"}, &out), 0) << out;
  EXPECT_EQ(out, "h1 h2 h3");
  ASSERT_EQ(Mk({"get", "hosts", "-o", "jsonpath={range .items[*]}{.metadata.name}={.metadata.labels.zone}{\"\\n\"}{end}"},
               &out),
            0)
      << out;
  EXPECT_EQ(out, "h1=a\nh2=b\nh3=a\n");
  ASSERT_EQ(Mk({"get", "ki", "-o", "custom-columns=NAME:.metadata.name,HOST:.spec.host,CPUS:.spec.resources.cpus"}, &out), 0)
      << out;
  EXPECT_EQ(out, "NAME    HOST  CPUS\nweb-h1  h1    2\nweb-h3  h3    2\n");
  EXPECT_EQ(Mk({"get", "ki", "-o", "jsonpath={.items[*"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("jsonpath"));
  EXPECT_EQ(Mk({"get", "ki", "-o", "xml"}, &out), 2) << out;
}

TEST_F(KubectlStyleTest, VersionResourcesCompletionHelpAndDidYouMean) {
  std::string out;
  ASSERT_EQ(Run({"version", "--client"}, &out), 0) << out;
  EXPECT_EQ(out, std::string("Client: mkapply ") + kVersion + "\n");
  ASSERT_EQ(Mk({"version"}, &out), 0) << out;
  EXPECT_EQ(out, std::string("Client: mkapply ") + kVersion + "\nServer: mkcontroller " + kVersion + " at " + address_ + "\n");
  ASSERT_EQ(Mk({"version", "-o", "json"}, &out), 0) << out;
  EXPECT_EQ(nlohmann::json::parse(out)["server"]["version"], kVersion);
  EXPECT_EQ(Run({"version", "--controller", "127.0.0.1:1", "--request-timeout", "1s"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Client: mkapply"));
  EXPECT_THAT(out, HasSubstr("cannot reach the controller"));

  ASSERT_EQ(Run({"api-resources"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::StartsWith("NAME          SHORTNAMES                   APIVERSION     KIND            VERBS\n"
                                         "hosts         host                         mkfleet.io/v1  Host            "));
  EXPECT_THAT(out, HasSubstr("\ninstances     ki,instance,kernelinstances  mkfleet.io/v1  KernelInstance  "));

  ASSERT_EQ(Run({"completion", "bash"}, &out), 0) << out;
  const std::string script = (dir_ / "mkapply.bash").string();
  std::ofstream(script) << out;
  std::string checked;
  testing::Process syntax({"/bin/bash", "-n", script}, (dir_ / "bash-n.log").string());
  EXPECT_EQ(syntax.Kill(0), 0) << syntax.Log();
  // Completing `mkapply ge` and `mkapply get ` in a real bash.
  testing::Process complete(
      {"/bin/bash", "-c",
       "source " + script + "; COMP_WORDS=(mkapply ge); COMP_CWORD=1; _mkapply; echo \"${COMPREPLY[*]}\"; "
       "COMP_WORDS=(mkapply get \"\"); COMP_CWORD=2; _mkapply; echo \"${COMPREPLY[*]}\"; "
       "COMP_WORDS=(mkapply get hosts --sel); COMP_CWORD=3; _mkapply; echo \"${COMPREPLY[*]}\""},
      (dir_ / "complete.log").string());
  EXPECT_EQ(complete.Kill(0), 0);
  EXPECT_THAT(complete.Log(), ::testing::StartsWith("get\n"));
  EXPECT_THAT(complete.Log(), HasSubstr("hosts instances sets"));
  EXPECT_THAT(complete.Log(), ::testing::EndsWith("--selector\n"));
  ASSERT_EQ(Run({"completion", "zsh"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::StartsWith("#compdef mkapply\n"));
  EXPECT_EQ(Run({"completion", "fish"}, &out), 2) << out;

  EXPECT_EQ(Run({"gte", "hosts"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("error: unknown command \"gte\" for mkapply\n\nDid you mean this?\n\tget\n"));
  EXPECT_EQ(Run({"--controller", address_, "desribe", "host", "h1"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("\tdescribe\n"));
  EXPECT_EQ(Run({"frobnicate"}, &out), 2) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("Did you mean")));
  ASSERT_EQ(Run({"help", "get"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("-l,--selector"));
  EXPECT_THAT(out, HasSubstr("custom-columns"));
  EXPECT_EQ(Run({"help", "gett"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("did you mean \"get\"?"));
}

TEST_F(KubectlStyleTest, GetDevicesListsEachFunctionWithItsNamesAndOwner) {
  service_->SetTopologySource([](const std::string& host) -> absl::StatusOr<v1::TopologyInfo> {
    v1::TopologyInfo t;
    t.add_numa_nodes()->set_node(0);
    v1::PciFunctionInfo* nic = t.add_pci();
    nic->set_bdf("0000:81:00.0");
    nic->set_class_id(0x0200);
    nic->set_numa_node(0);
    nic->add_names("eth0");
    nic->add_vf_bdfs("0000:81:00.1");
    v1::PciFunctionInfo* disk = t.add_pci();
    disk->set_bdf("0000:04:00.0");
    disk->set_class_id(0x0108);
    disk->set_numa_node(-1);
    disk->set_nvme_namespaces(4);
    return t;
  });
  std::string out;
  ASSERT_EQ(Mk({"get", "devices", "h1"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::StartsWith("BDF           CLASS    NUMA  NAMES  VFS  NAMESPACES  POOL  OWNER\n"
                                         "0000:81:00.0  Network  0     eth0   1    -           no    -\n"
                                         "0000:04:00.0  Storage  -     -      -    4           no    -\n"));
  EXPECT_EQ(Mk({"get", "devices"}, &out), 2) << out;
  EXPECT_EQ(Mk({"get", "devices", "nope"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Host/nope does not exist"));
}

TEST_F(KubectlStyleTest, InterruptingWaitSaysTheApplyIsCommitted) {
  // A Host whose agent never answers: --wait waits; Ctrl-C.
  testing::Process p({"cli/mkapply", "apply", "-f", (dir_ / "h.yaml").string(), "--wait", "--controller", address_,
                      "--tls-dir", pki_->admin()},
                     (dir_ / "wait.log").string());
  ASSERT_FALSE(p.WaitFor("Host/h1 (created|configured)").empty()) << p.Log();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  const int status = p.Kill(SIGINT);
  ASSERT_TRUE(WIFEXITED(status)) << p.Log();
  EXPECT_EQ(WEXITSTATUS(status), 130) << p.Log();
  EXPECT_THAT(p.Log(), HasSubstr("interrupted: the apply is committed"));
  EXPECT_THAT(p.Log(), HasSubstr("mkapply events -f"));
}

TEST_F(KubectlStyleTest, WatchPrintsARowForEachChange) {
  testing::Process p({"cli/mkapply", "get", "ki", "-w", "--controller", address_, "--tls-dir", pki_->admin()},
                     (dir_ / "watch.log").string());
  ASSERT_FALSE(p.WaitFor("web-h3 ").empty()) << p.Log();
  std::string out;
  ASSERT_EQ(Mk({"delete", "ki", "web-h1"}, &out), 0) << out;
  EXPECT_FALSE(p.WaitFor("KernelInstance/web-h1 deleted").empty()) << p.Log();
  std::ofstream(dir_ / "new.yaml") << "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: web-new}\n"
                                      "spec:\n  host: h2\n  kernel: {image: /k/vmlinux}\n"
                                      "  resources: {cpus: 2, memory: 1Gi}\n";
  ASSERT_EQ(Mk({"apply", "-f", (dir_ / "new.yaml").string()}, &out), 0) << out;
  EXPECT_FALSE(p.WaitFor("\nweb-new ").empty()) << p.Log();
  p.Kill(SIGINT);
  // One header, one row per object and change.
  const std::string log = p.Log();
  size_t headers = 0;
  for (size_t at = log.find("NAME"); at != std::string::npos; at = log.find("NAME", at + 1)) ++headers;
  EXPECT_EQ(headers, 1u) << log;
}

TEST_F(MkapplyTest, ContextsNameTheControllerAndTheCredentials) {
  const std::string config = "MKFLEET_CONFIG=" + (dir_ / "cfg" / "config").string();
  std::string out;
  ASSERT_EQ(RunEnv({"apply", "-f", (dir_ / "h.yaml").string(), "--controller", address_, "--tls-dir", pki_->admin()},
                   &out, {config}),
            0)
      << out;
  // No context yet: no credentials, and it says how to get them.
  EXPECT_EQ(RunEnv({"get", "hosts", "--controller", address_}, &out, {config}), 2) << out;
  ASSERT_EQ(RunEnv({"config", "set-context", "lab", "--controller", address_, "--tls-dir", pki_->admin()}, &out,
                   {config}),
            0)
      << out;
  EXPECT_EQ(out, "Context \"lab\" created.\n");
  ASSERT_EQ(RunEnv({"config", "set-context", "broken", "--controller", "127.0.0.1:1", "--tls-dir", pki_->admin(),
                    "--request-timeout", "1s"},
                   &out, {config}),
            0)
      << out;
  // The first context became the current one: no flags needed.
  ASSERT_EQ(RunEnv({"get", "hosts", "-o", "name"}, &out, {config}), 0) << out;
  EXPECT_EQ(out, "Host/h1\n");
  ASSERT_EQ(RunEnv({"config", "get-contexts"}, &out, {config}), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("CURRENT +NAME +CONTROLLER +CREDENTIALS +TIMEOUT\n\\* +lab +" + address_));
  EXPECT_THAT(out, ::testing::ContainsRegex("\n +broken +127.0.0.1:1 .* 1s\n"));
  // MKFLEET_CONTEXT and --context pick another; a flag beats the context's value.
  EXPECT_EQ(RunEnv({"get", "hosts"}, &out, {config, "MKFLEET_CONTEXT=broken"}), 1) << out;
  EXPECT_THAT(out, HasSubstr("cannot reach the controller at 127.0.0.1:1"));
  EXPECT_EQ(RunEnv({"get", "hosts", "--context", "broken"}, &out, {config}), 1) << out;
  ASSERT_EQ(RunEnv({"get", "hosts", "--context", "broken", "--controller", address_, "-o", "name"}, &out, {config}), 0)
      << out;
  ASSERT_EQ(RunEnv({"config", "use-context", "broken"}, &out, {config}), 0) << out;
  EXPECT_EQ(out, "Switched to context \"broken\".\n");
  ASSERT_EQ(RunEnv({"config", "current-context"}, &out, {config}), 0) << out;
  EXPECT_EQ(out, "broken\n");
  // Unknown contexts are refused, naming those there are.
  EXPECT_EQ(RunEnv({"get", "hosts", "--context", "prod"}, &out, {config}), 2) << out;
  EXPECT_THAT(out, HasSubstr("no context \"prod\""));
  EXPECT_THAT(out, HasSubstr("it has lab, broken"));
  EXPECT_EQ(RunEnv({"config", "use-context", "prod"}, &out, {config}), 2) << out;
  ASSERT_EQ(RunEnv({"config", "delete-context", "broken"}, &out, {config}), 0) << out;
  ASSERT_EQ(RunEnv({"config", "view"}, &out, {config}), 0) << out;
  EXPECT_THAT(out, HasSubstr("name: lab"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("broken")));
  EXPECT_EQ(std::filesystem::status(dir_ / "cfg" / "config").permissions() & std::filesystem::perms::others_read,
            std::filesystem::perms::none);
  // A broken file is named with its field.
  std::ofstream(dir_ / "cfg" / "config") << "contexts:\n  - name: x\n    controler: a:1\n";
  EXPECT_EQ(RunEnv({"get", "hosts"}, &out, {config}), 2) << out;
  EXPECT_THAT(out, HasSubstr("contexts[0].controler: unknown field"));
}

TEST_F(KubectlStyleTest, DiffPrintsTheFieldsThatWouldChange) {
  std::string out;
  // Nothing would change: exit 0, no diff.
  ASSERT_EQ(Mk({"diff", "-f", (dir_ / "fleet.yaml").string()}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::Not(HasSubstr("@@")));
  std::string text;
  {
    std::ifstream in(dir_ / "fleet.yaml");
    text.assign(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
  }
  const size_t at = text.find("name: web-h1");
  ASSERT_NE(at, std::string::npos);
  text.replace(text.find("cpus: 2", at), 7, "cpus: 4");
  std::ofstream(dir_ / "changed.yaml") << text;
  EXPECT_EQ(Mk({"diff", "-f", (dir_ / "changed.yaml").string()}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-h1 configured (dry run)\n"
                             "--- live/KernelInstance/web-h1\n+++ new/KernelInstance/web-h1\n@@ "));
  EXPECT_THAT(out, HasSubstr("\n-    cpus: 2\n+    cpus: 4\n"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("--- live/KernelInstance/web-h3")));
  // Invalid input: exit 2, and nothing is compared.
  std::ofstream(dir_ / "bad.yaml") << "kind: Nope\n";
  EXPECT_EQ(Mk({"diff", "-f", (dir_ / "bad.yaml").string()}, &out), 2) << out;
}

TEST_F(KubectlStyleTest, ValidateAFolderWithPartOfTheFleet) {
  // Instances only: their hosts are the controller's.
  std::filesystem::create_directories(dir_ / "part");
  std::ofstream(dir_ / "part" / "web.yaml") << "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: w}\n"
                                               "spec:\n  host: h2\n  kernel: {image: /k/vmlinux}\n"
                                               "  resources: {cpus: 2, memory: 1Gi}\n";
  std::string out;
  EXPECT_EQ(Run({"validate", "-f", (dir_ / "part").string()}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("spec.host: no Host named \"h2\""));
  ASSERT_EQ(Run({"validate", "-f", (dir_ / "part").string(), "--skip-host-checks"}, &out), 0) << out;
  ASSERT_EQ(Mk({"validate", "-f", (dir_ / "part").string(), "--hosts-from-controller"}, &out), 0) << out;
  // A host the controller does not have either: still an error, with a suggestion from its hosts.
  std::ofstream(dir_ / "part" / "web.yaml") << "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: w}\n"
                                               "spec:\n  host: h9\n  kernel: {image: /k/vmlinux}\n"
                                               "  resources: {cpus: 2, memory: 1Gi}\n";
  EXPECT_EQ(Mk({"validate", "-f", (dir_ / "part").string(), "--hosts-from-controller"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("no Host named \"h9\""));
  EXPECT_EQ(Run({"validate", "-f", (dir_ / "part").string(), "--hosts-from-controller", "--controller", "127.0.0.1:1",
                 "--request-timeout", "1s"},
                &out),
            1)
      << out;
}

TEST_F(KubectlStyleTest, CordonAndUncordon) {
  std::string out;
  ASSERT_EQ(Mk({"cordon", "h1"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h1 cordoned: nothing new is placed there; what runs there stays\n");
  ASSERT_EQ(Mk({"get", "hosts", "h1", "-o", "jsonpath={.spec.cordoned}"}, &out), 0) << out;
  EXPECT_EQ(out, "true");
  ASSERT_EQ(Mk({"get", "hosts", "h1"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("\nh1 +-,cordoned "));
  ASSERT_EQ(Mk({"cordon", "host/h1"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h1 was cordoned already\n");
  ASSERT_EQ(Mk({"uncordon", "h1"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h1 uncordoned"));
  ASSERT_EQ(Mk({"cordon", "-l", "zone=a"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h1 cordoned"));
  EXPECT_THAT(out, HasSubstr("Host/h3 cordoned"));
  ASSERT_EQ(Mk({"get", "hosts", "-l", "zone=a", "-o", "jsonpath={.items[*].spec.cordoned}"}, &out), 0) << out;
  EXPECT_EQ(out, "true true");
  EXPECT_EQ(Mk({"cordon", "nope"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Host/nope does not exist"));
  EXPECT_EQ(Mk({"cordon"}, &out), 2) << out;
  EXPECT_EQ(Mk({"cordon", "ki/web-h1"}, &out), 2) << out;
}

TEST_F(KubectlStyleTest, DrainCordonsAndSetsSpecDrainUntilUncordoned) {
  // (Members moving elsewhere, with agents: RolloutProcessTest.DrainMovesASetsMembers...)
  std::string out;
  ASSERT_EQ(Mk({"drain", "h2"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h2 draining: cordoned, and its replicas sets' members are replaced on other hosts"));
  EXPECT_THAT(out, HasSubstr("Host/h2: no set member left to move\n"));
  ASSERT_EQ(Mk({"get", "hosts", "h2", "-o", "jsonpath={.spec.cordoned} {.spec.drain}"}, &out), 0) << out;
  EXPECT_EQ(out, "true true");
  ASSERT_EQ(Mk({"get", "hosts", "h2"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("\nh2 +-,draining "));
  ASSERT_EQ(Mk({"drain", "h2", "--wait", "--timeout", "5s"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h2 was draining already\n"));
  EXPECT_THAT(out, HasSubstr("drained: h2\n"));
  // cordon leaves the drain on; uncordon ends both.
  ASSERT_EQ(Mk({"cordon", "h2"}, &out), 0) << out;
  EXPECT_EQ(out, "Host/h2 was cordoned already\n");
  ASSERT_EQ(Mk({"get", "hosts", "h2", "-o", "jsonpath={.spec.drain}"}, &out), 0) << out;
  EXPECT_EQ(out, "true");
  ASSERT_EQ(Mk({"uncordon", "h2"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("Host/h2 uncordoned (drain ended)"));
  ASSERT_EQ(Mk({"get", "hosts", "h2", "-o", "jsonpath={.spec.cordoned}{.spec.drain}"}, &out), 0) << out;
  EXPECT_EQ(out, "");
  EXPECT_EQ(Mk({"drain", "nope"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Host/nope does not exist"));
  EXPECT_EQ(Mk({"drain", "h2", "--timeout", "soon"}, &out), 2) << out;
  EXPECT_EQ(Mk({"drain"}, &out), 2) << out;
}

TEST_F(MkapplyTest, ExplainDescribesFieldsFromTheSchema) {
  std::string out;
  ASSERT_EQ(Run({"explain", "instance.spec.resources"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::StartsWith("KIND:     KernelInstance\nVERSION:  mkfleet.io/v1\n"
                                         "FIELD:    spec.resources <object (Resources)>\nRULES:    required\n"));
  EXPECT_THAT(out, HasSubstr("\n  memory  <quantity (bytes: 512Mi, 2Gi)>  required; at least 128Mi; a multiple of 128Mi\n"));
  EXPECT_THAT(out, HasSubstr("\n  cpus  <integer>  at least 1; at most 4096; not with cpuSet\n"));
  // The field's own comment in the .proto.
  EXPECT_THAT(out, HasSubstr("The kernel's llc-way-mask is a u32"));
  ASSERT_EQ(Run({"explain", "sets.spec.rollout.maxUnavailable"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("FIELD:    spec.rollout.maxUnavailable <count or percent (2, \"25%\")>"));
  EXPECT_THAT(out, HasSubstr("Replace: members down at once, fleet-wide (default 1)."));
  ASSERT_EQ(Run({"explain", "host"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("\n  status  <object (HostStatus)>  output only (written by mkfleet)\n"));
  EXPECT_EQ(Run({"explain", "instance.spec.resourcs"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("has no field \"resourcs\" (did you mean \"resources\"?)"));
  EXPECT_EQ(Run({"explain", "pods"}, &out), 2) << out;
  EXPECT_EQ(Run({"explain", "instance.spec.host.x"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("spec.host has no fields (it is string)"));
}

}  // namespace
}  // namespace mkfleet::cli
