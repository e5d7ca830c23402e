// mkapply's command line itself (the binary): global flags anywhere, MKFLEET_CONTROLLER,
// durations. Against an in-process controller service on a free loopback port.
#include <filesystem>
#include <fstream>
#include <iterator>

#include "gmock/gmock.h"
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

}  // namespace
}  // namespace mkfleet::cli
