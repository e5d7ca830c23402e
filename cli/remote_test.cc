#include <algorithm>
#include <filesystem>
#include <sstream>
#include <string>

#include "cli/commands.h"
#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/controller_service.h"

namespace mkfleet::cli {
namespace {

using ::testing::HasSubstr;
using ::testing::Not;

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
    return o;
  }
  GetOptions Get(const std::string& kind, const std::string& name = "") {
    GetOptions o;
    o.controller = address_;
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
  std::string applied = out.str();
  EXPECT_EQ(std::count(applied.begin(), applied.end(), '\n'), 7) << applied;
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
  ASSERT_EQ(objects_->List("Host")->size(), 3u);
  for (const auto& h : *objects_->List("Host")) {
    EXPECT_EQ(h.host().metadata().deletion_unix_ms() != 0, h.host().metadata().name() == "node-a");
  }
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
  o.timeout_seconds = 2;
  EXPECT_EQ(RunApply(o, out, err), kExitFailure);
  EXPECT_THAT(err.str(), HasSubstr("cannot reach the controller at " + address_));
}

}  // namespace
}  // namespace mkfleet::cli
