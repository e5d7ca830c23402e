#include "reconciler/controller_service.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "grpcpp/grpcpp.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

class ControllerServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = ::testing::TempDir() + "/controller-" +
                       ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    store_ = *OpenSqliteStore(path, clock_);
    objects_ = std::make_unique<Objects>(*store_);
    events_ = *EventLog::Open(*store_, clock_);
    service_ = std::make_unique<ControllerService>(*store_, *objects_, events_.get());
    int port = 0;
    server_ = StartControllerServer(*service_, "127.0.0.1:0", &port);
    ASSERT_NE(server_, nullptr);
    ASSERT_GT(port, 0);
    stub_ = v1::Controller::NewStub(
        grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  }
  void TearDown() override {
    if (server_) server_->Shutdown();
  }

  v1::ApplyRequest Request() {
    v1::ApplyRequest req;
    req.set_source("test");
    v1::Object* host = req.add_objects();
    host->mutable_host()->mutable_metadata()->set_name("node-a");
    v1::Object* ki = req.add_objects();
    ki->mutable_kernel_instance()->mutable_metadata()->set_name("web-1");
    ki->mutable_kernel_instance()->mutable_spec()->set_host("node-a");
    ki->mutable_kernel_instance()->mutable_spec()->mutable_resources()->set_cpus(2);
    return req;
  }

  SimulatedClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Objects> objects_;
  std::unique_ptr<EventLog> events_;
  std::unique_ptr<ControllerService> service_;
  std::unique_ptr<grpc::Server> server_;
  std::unique_ptr<v1::Controller::Stub> stub_;
};

TEST_F(ControllerServiceTest, DiffThenApplyThenGetThenDelete) {
  v1::ApplyResponse diff;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Diff(&ctx, Request(), &diff).ok());
  }
  ASSERT_EQ(diff.changes_size(), 2);
  EXPECT_EQ(diff.changes(1).change(), "created");
  {
    grpc::ClientContext ctx;
    v1::GetRequest get;
    get.set_kind("KernelInstance");
    v1::GetResponse got;
    ASSERT_TRUE(stub_->Get(&ctx, get, &got).ok());
    EXPECT_EQ(got.objects_size(), 0) << "Diff must not write";
  }
  v1::ApplyResponse applied;
  {
    grpc::ClientContext ctx;
    ASSERT_TRUE(stub_->Apply(&ctx, Request(), &applied).ok());
  }
  EXPECT_GT(applied.revision(), 0);
  {
    grpc::ClientContext ctx;
    v1::GetRequest get;
    get.set_kind("KernelInstance");
    get.set_name("web-1");
    v1::GetResponse got;
    ASSERT_TRUE(stub_->Get(&ctx, get, &got).ok());
    ASSERT_EQ(got.objects_size(), 1);
    EXPECT_EQ(got.objects(0).kernel_instance().spec().host(), "node-a");
    EXPECT_EQ(got.objects(0).kernel_instance().metadata().generation(), 1);
  }
  {
    grpc::ClientContext ctx;
    v1::DeleteRequest del;
    del.set_kind("KernelInstance");
    del.set_name("web-1");
    v1::DeleteResponse out;
    ASSERT_TRUE(stub_->Delete(&ctx, del, &out).ok());
  }
  {
    grpc::ClientContext ctx;
    v1::GetRequest get;
    get.set_kind("KernelInstance");
    get.set_name("web-1");
    v1::GetResponse got;
    grpc::Status s = stub_->Get(&ctx, get, &got);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::NOT_FOUND);
    EXPECT_EQ(s.error_message(), "KernelInstance/web-1 does not exist");
  }
}

TEST_F(ControllerServiceTest, ErrorsCarryCodeAndMessage) {
  v1::ApplyRequest bad = Request();
  bad.mutable_objects(1)->mutable_kernel_instance()->mutable_spec()->set_host("node-x");
  bad.mutable_objects()->DeleteSubrange(0, 1);
  grpc::ClientContext ctx;
  v1::ApplyResponse out;
  grpc::Status s = stub_->Apply(&ctx, bad, &out);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("spec.host: no Host named \"node-x\""));

  grpc::ClientContext ctx2;
  v1::GetRequest get;
  get.set_kind("Pod");
  v1::GetResponse got;
  s = stub_->Get(&ctx2, get, &got);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("unknown kind \"Pod\""));
}

TEST_F(ControllerServiceTest, WatchSendsSnapshotThenChangesInOrder) {
  {
    grpc::ClientContext ctx;
    v1::ApplyResponse out;
    ASSERT_TRUE(stub_->Apply(&ctx, Request(), &out).ok());
  }
  grpc::ClientContext watch_ctx;
  v1::ObjectWatchRequest req;
  auto reader = stub_->Watch(&watch_ctx, req);
  v1::ObjectWatchEvent e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.object().host().metadata().name(), "node-a");
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.object().kernel_instance().metadata().name(), "web-1");
  int64_t snapshot_rev = e.revision();

  // A change: web-1 gets more CPUs; then it is deleted.
  v1::ApplyRequest change = Request();
  change.mutable_objects(1)->mutable_kernel_instance()->mutable_spec()->mutable_resources()->set_cpus(6);
  {
    grpc::ClientContext ctx;
    v1::ApplyResponse out;
    ASSERT_TRUE(stub_->Apply(&ctx, change, &out).ok());
  }
  ASSERT_TRUE(objects_->Delete("KernelInstance", "web-1").ok());
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_GT(e.revision(), snapshot_rev);
  EXPECT_EQ(e.object().kernel_instance().spec().resources().cpus(), 6u);
  EXPECT_EQ(e.object().kernel_instance().metadata().generation(), 2);
  EXPECT_FALSE(e.deleted());
  int64_t changed_rev = e.revision();
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_TRUE(e.deleted());
  EXPECT_EQ(e.object().kernel_instance().metadata().name(), "web-1");
  EXPECT_GT(e.revision(), changed_rev);

  // Resuming from a revision replays only what came after it.
  watch_ctx.TryCancel();
  grpc::ClientContext resume_ctx;
  req.set_revision(changed_rev);
  auto resumed = stub_->Watch(&resume_ctx, req);
  ASSERT_TRUE(resumed->Read(&e));
  EXPECT_TRUE(e.deleted());
  resume_ctx.TryCancel();
}

TEST_F(ControllerServiceTest, EventsListsThenFollowsWithAFilter) {
  auto ev = [](const std::string& name, const std::string& reason) {
    v1::Event e;
    e.set_kind("KernelInstance");
    e.set_name(name);
    e.set_reason(reason);
    return e;
  };
  ASSERT_TRUE(events_->Record(ev("web-1", "Old")).ok());
  ASSERT_TRUE(events_->Record(ev("db-1", "Other")).ok());
  grpc::ClientContext ctx;
  v1::EventsRequest req;
  req.set_follow(true);
  req.set_kind("KernelInstance");
  req.set_name("web-1");
  auto reader = stub_->Events(&ctx, req);
  v1::Event e;
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.reason(), "Old");
  ASSERT_TRUE(events_->Record(ev("db-1", "NotMine")).ok());
  ASSERT_TRUE(events_->Record(ev("web-1", "New")).ok());
  ASSERT_TRUE(reader->Read(&e));
  EXPECT_EQ(e.reason(), "New");  // db-1's were filtered out
  ctx.TryCancel();
}

}  // namespace
}  // namespace mkfleet::reconciler
