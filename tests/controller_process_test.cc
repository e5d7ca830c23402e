// mkcontroller and mkapply as real processes: objects survive a SIGKILL of the controller,
// re-applying changes nothing, SIGTERM stops it with exit 0, and exit codes hold.
#include <sys/wait.h>

#include <algorithm>
#include <chrono>
#include <filesystem>
#include <thread>
#include <vector>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "grpcpp/grpcpp.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "security/testing/test_pki.h"
#include "tests/process_util.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ControllerProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("controller-proc-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::unique_ptr<testing::Process> StartController(const std::string& log) {
    auto p = std::make_unique<testing::Process>(
        std::vector<std::string>{"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(),
                                 "--listen", "127.0.0.1:0", "--tls-dir", pki_->controller()},
        (dir_ / log).string());
    port_ = p->WaitFor("listening on port ([0-9]+)");
    EXPECT_FALSE(port_.empty()) << p->Log();
    return p;
  }

  // Runs mkapply to completion; returns its exit code and output.
  int Mkapply(std::vector<std::string> args, std::string* output) {
    std::vector<std::string> argv = {"cli/mkapply"};
    argv.insert(argv.end(), args.begin(), args.end());
    if (args[0] != "validate") {
      argv.push_back("--controller");
      argv.push_back("127.0.0.1:" + port_);
      argv.push_back("--tls-dir");
      argv.push_back(pki_->admin());
    }
    std::string log = (dir_ / ("mkapply-" + std::to_string(++runs_))).string();
    testing::Process p(argv, log);
    int status = p.Kill(0);  // signal 0: just wait for it
    *output = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  fs::path dir_;
  std::unique_ptr<security::TestPki> pki_;
  std::string port_;
  int runs_ = 0;
};

TEST_F(ControllerProcessTest, ObjectsSurviveSigkillAndSigtermIsClean) {
  auto controller = StartController("c1.log");
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", "examples"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1 created"));

  controller->Kill(SIGKILL);
  controller = StartController("c2.log");
  ASSERT_EQ(Mkapply({"get", "ki"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("db-1"));
  EXPECT_THAT(out, HasSubstr("ml-1"));
  EXPECT_THAT(out, HasSubstr("web-1"));
  ASSERT_EQ(Mkapply({"apply", "-f", "examples"}, &out), 0) << out;
  EXPECT_THAT(out, Not(HasSubstr("created")));
  EXPECT_THAT(out, HasSubstr("Host/node-c unchanged"));

  ASSERT_EQ(Mkapply({"delete", "host", "node-zz"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("Host/node-zz does not exist"));
  ASSERT_EQ(Mkapply({"get", "pods"}, &out), 2) << out;

  int status = controller->Kill(SIGTERM);
  ASSERT_TRUE(WIFEXITED(status)) << controller->Log();
  EXPECT_EQ(WEXITSTATUS(status), 0);
  EXPECT_THAT(controller->Log(), HasSubstr("mkcontroller: stopped"));
}

// Every new connection (each mkapply command is one) is served at once. Defect (found by
// fleet_bench: one change in two took ~80 ms more, in plaintext too): gRPC 1.51's callback-API
// threads sleep 100 ms after each idle second, and when they were the only threads waiting in
// gRPC's poller a connection arriving meanwhile was not accepted until they woke. Servers now
// keep one thread waiting there (KeepOnePoller, common/grpc_server.h).
TEST_F(ControllerProcessTest, ANewConnectionIsServedAtOnceAtAnyMoment) {
  auto controller = StartController("c.log");
  const std::string target = "127.0.0.1:" + port_;
  std::vector<double> ms;
  for (int i = 0; i < 300; ++i) {  // ~9 s: eight of the callback threads' cycles
    auto t0 = std::chrono::steady_clock::now();
    auto stub = mkfleet::v1::Controller::NewStub(
        security::TestPki::Channel(pki_->admin(), target, security::Identity::Controller()));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    mkfleet::v1::StatsResponse stats;
    ASSERT_TRUE(stub->Stats(&ctx, mkfleet::v1::StatsRequest(), &stats).ok());
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  // A call on a fresh connection takes ~10 ms here (the TLS handshake); one that waited for
  // the poller takes 60-100 ms more, once per cycle. Slow: over 45 ms and over 4x the median
  // (a loaded machine slows every call); a loaded machine may also delay a few.
  std::vector<double> sorted = ms;
  std::sort(sorted.begin(), sorted.end());
  const double limit = std::max(45.0, 4 * sorted[sorted.size() / 2]);
  int slow = 0;
  std::string all;
  for (double m : ms) {
    slow += m > limit;
    all += std::to_string(static_cast<int>(m)) + " ";
  }
  EXPECT_LE(slow, 3) << "calls over " << limit << " ms (each, ms): " << all;
}

TEST_F(ControllerProcessTest, BadStoreFlagExits2) {
  auto run = [&](std::vector<std::string> args) {
    args.insert(args.begin(), "reconciler/mkcontroller");
    testing::Process p(args, (dir_ / "bad.log").string());
    int status = p.Kill(0);
    EXPECT_TRUE(WIFEXITED(status));
    EXPECT_EQ(WEXITSTATUS(status), 2) << p.Log();
    return p.Log();
  };
  EXPECT_THAT(run({"--store", "mysql:/x"}), HasSubstr("--store: expected sqlite:PATH or etcd:http://HOST:PORT"));
  EXPECT_THAT(run({"--store", "etcd:127.0.0.1:2379"}), HasSubstr("--store: \"127.0.0.1:2379\": want http://HOST:PORT"));
  EXPECT_THAT(run({"--store", "sqlite:" + (dir_ / "s.db").string(), "--ha"}), HasSubstr("--ha: needs an etcd store"));
  EXPECT_THAT(run({"--store", "etcd:http://127.0.0.1:1", "--ha", "--lease-ttl", "1s"}),
              HasSubstr("--lease-ttl: want a duration of 2s or more"));
}

TEST_F(ControllerProcessTest, ASecondControllerOnTheSameStoreExits2AndABadStoreIsRefused) {
  auto first = StartController("c1.log");
  testing::Process second({"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(), "--listen",
                           "127.0.0.1:0", "--tls-dir", pki_->controller()},
                          (dir_ / "second.log").string());
  int status = second.Kill(0);
  ASSERT_TRUE(WIFEXITED(status)) << second.Log();
  EXPECT_EQ(WEXITSTATUS(status), 2) << second.Log();
  EXPECT_THAT(second.Log(), HasSubstr("is in use by pid " + std::to_string(first->pid())));
  first.reset();
  // A truncated (0-byte) or corrupt store is refused at start, never taken for a new one.
  for (const std::string& content : {std::string(), std::string("SQLite format 3") + std::string(8192, 'x')}) {
    std::string bad = (dir_ / "bad.db").string();
    std::ofstream(bad, std::ios::binary | std::ios::trunc) << content;
    testing::Process p({"reconciler/mkcontroller", "--store", "sqlite:" + bad, "--listen", "127.0.0.1:0", "--tls-dir",
                        pki_->controller()},
                       (dir_ / "bad.log").string());
    status = p.Kill(0);
    ASSERT_TRUE(WIFEXITED(status)) << p.Log();
    EXPECT_NE(WEXITSTATUS(status), 0) << p.Log();
    EXPECT_THAT(p.Log(), HasSubstr("--store")) << p.Log();
  }
}

}  // namespace
}  // namespace mkfleet
