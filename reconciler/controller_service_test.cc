#include "reconciler/controller_service.h"

#include <filesystem>
#include <thread>

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

  // A valid Host and KernelInstance, as mkapply sends them.
  v1::ApplyRequest Request() {
    v1::ApplyRequest req;
    req.set_source("test");
    v1::Host* host = req.add_objects()->mutable_host();
    host->set_api_version("mkfleet.io/v1");
    host->set_kind("Host");
    host->mutable_metadata()->set_name("node-a");
    host->mutable_spec()->set_agent("127.0.0.1:7101");
    host->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_cores(1);
    host->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_memory(1ull << 30);
    v1::KernelInstance* ki = req.add_objects()->mutable_kernel_instance();
    ki->set_api_version("mkfleet.io/v1");
    ki->set_kind("KernelInstance");
    ki->mutable_metadata()->set_name("web-1");
    ki->mutable_spec()->set_host("node-a");
    ki->mutable_spec()->mutable_kernel()->set_image("/var/lib/mkfleet/kernels/vmlinuz");
    ki->mutable_spec()->mutable_resources()->set_cpus(2);
    ki->mutable_spec()->mutable_resources()->set_memory(512ull << 20);
    return req;
  }
  // Applies `req`: the status, and what the store holds afterwards.
  grpc::Status Apply(const v1::ApplyRequest& req) {
    grpc::ClientContext ctx;
    v1::ApplyResponse r;
    return stub_->Apply(&ctx, req, &r);
  }
  grpc::Status Get(const std::string& kind, const std::string& name, v1::GetResponse* got) {
    grpc::ClientContext ctx;
    v1::GetRequest get;
    get.set_kind(kind);
    get.set_name(name);
    return stub_->Get(&ctx, get, got);
  }
  size_t Stored() {
    auto kvs = store_->List("/objects/");
    return kvs.ok() ? kvs->size() : 0;
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

// Defect (step 7): an Apply with cpus 0 and memory 0 was stored and crashed the controller
// in PickCpus, on every restart; names like ../../Evil, 1 MiB names, id 9999 and unknown
// enum values were stored. The controller now runs mkapply validate's checks on every
// Apply: each bad object is refused with its field, and nothing is written.
TEST_F(ControllerServiceTest, ApplyRunsTheManifestChecksAndWritesNothingOnError) {
  auto refused = [&](const std::function<void(v1::ApplyRequest&)>& spoil, const std::string& want) {
    v1::ApplyRequest req = Request();
    spoil(req);
    grpc::Status s = Apply(req);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << want;
    EXPECT_THAT(s.error_message(), ::testing::HasSubstr(want));
    EXPECT_LT(s.error_message().size(), 4096u) << "an error is not an echo of the request";
    EXPECT_EQ(Stored(), 0u) << want;
  };
  auto ki = [](v1::ApplyRequest& r) { return r.mutable_objects(1)->mutable_kernel_instance(); };
  refused([&](v1::ApplyRequest& r) {
    ki(r)->mutable_spec()->mutable_resources()->set_cpus(0);
    ki(r)->mutable_spec()->mutable_resources()->set_memory(0);
  }, "KernelInstance/web-1: spec.resources");
  refused([&](v1::ApplyRequest& r) { ki(r)->mutable_metadata()->set_name("../../Evil"); }, "metadata.name");
  refused([&](v1::ApplyRequest& r) { ki(r)->mutable_metadata()->set_name(std::string(1 << 20, 'a')); },
          "metadata.name");
  refused([&](v1::ApplyRequest& r) { ki(r)->mutable_spec()->set_id(9999); }, "spec.id");
  refused([&](v1::ApplyRequest& r) { ki(r)->mutable_spec()->set_phase(static_cast<v1::Phase>(77)); }, "spec.phase");
  refused([&](v1::ApplyRequest& r) { r.mutable_objects(0)->mutable_host()->set_api_version("v0"); }, "apiVersion");
  refused([&](v1::ApplyRequest& r) { r.add_objects(); }, "an object without kind");
  // Output-only fields a client sends are not stored.
  v1::ApplyRequest req = Request();
  ki(req)->mutable_status()->set_phase("Running");
  ki(req)->mutable_metadata()->set_generation(77);
  ASSERT_TRUE(Apply(req).ok());
  v1::GetResponse got;
  ASSERT_TRUE(Get("KernelInstance", "web-1", &got).ok());
  EXPECT_EQ(got.objects(0).kernel_instance().status().phase(), "");
  EXPECT_EQ(got.objects(0).kernel_instance().metadata().generation(), 1);
}

TEST_F(ControllerServiceTest, NamesAreDnsLabelsInEveryRequest) {
  for (const std::string& bad : {std::string("../x"), std::string(300, 'a'), std::string("A")}) {
    grpc::ClientContext c2;
    v1::GetResponse got;
    EXPECT_EQ(Get("Host", bad, &got).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
    v1::DeleteRequest del;
    del.set_kind("Host");
    del.set_name(bad);
    v1::DeleteResponse r;
    EXPECT_EQ(stub_->Delete(&c2, del, &r).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  }
}

// Defect (step 7): 4,000 idle Watch/Events streams gave the controller 4,022 threads and
// 611 MB. Streams are capped per client and in all; a closed one frees its slot.
TEST_F(ControllerServiceTest, StreamsAreCappedPerClientAndInAll) {
  service_->SetStreamLimits(2, 3);
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::ObjectWatchEvent>>> open;
  // Every call has a deadline: a stream the server accepted where the test expected a refusal
  // (or the reverse) fails the test instead of hanging it.
  const auto deadline = std::chrono::system_clock::now() + std::chrono::seconds(30);
  auto watch = [&]() {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    contexts.back()->set_deadline(deadline);
    open.push_back(stub_->Watch(contexts.back().get(), v1::ObjectWatchRequest()));
    // Accepted (the server holds its slot) before the next one is opened: the server takes
    // the calls of one client concurrently, so the third could otherwise arrive first (the
    // hang under load of an earlier version of this test).
    open.back()->WaitForInitialMetadata();
    return open.back().get();
  };
  auto status_of = [](grpc::ClientReader<v1::ObjectWatchEvent>* r, grpc::ClientContext* ctx) {
    ctx->TryCancel();
    return r->Finish();
  };
  watch();
  watch();
  // The third from the same client (all plaintext calls here come from 127.0.0.1) is refused.
  auto* third = watch();
  grpc::Status s = third->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("at most 2 per client"));
  // Closing one frees its slot.
  EXPECT_EQ(status_of(open[0].get(), contexts[0].get()).error_code(), grpc::StatusCode::CANCELLED);
  bool freed = false;
  // (The server notices the cancel within a wait of the stream's loop: try for a while.)
  for (int i = 0; i < 250 && !freed; ++i) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::milliseconds(300));
    auto r = stub_->Watch(&ctx, v1::ObjectWatchRequest());
    freed = r->Finish().error_code() == grpc::StatusCode::DEADLINE_EXCEEDED;  // held until its deadline
    if (!freed) std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_TRUE(freed);
  for (size_t i = 1; i < open.size(); ++i) contexts[i]->TryCancel();
}

// etcd's NOSPACE behaviour: over its quota the store refuses applies, and deletes (which
// make room) still work.
TEST_F(ControllerServiceTest, OverTheQuotaAppliesAreRefusedAndDeletesStillWork) {
  ASSERT_TRUE(Apply(Request()).ok());
  service_->SetStoreQuota(1);  // any store is over one byte
  grpc::Status s = Apply(Request());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("NOSPACE"));
  grpc::ClientContext ctx;
  v1::DeleteRequest del;
  del.set_kind("KernelInstance");
  del.set_name("web-1");
  v1::DeleteResponse r;
  EXPECT_TRUE(stub_->Delete(&ctx, del, &r).ok());
  EXPECT_EQ(Stored(), 1u);
  // Diff (a dry run) is still answered.
  grpc::ClientContext c2;
  v1::ApplyResponse d;
  EXPECT_TRUE(stub_->Diff(&c2, Request(), &d).ok());
}

TEST_F(ControllerServiceTest, RequireDigestRefusesUnpinnedKernels) {
  service_->SetRequireDigest(true);
  grpc::Status s = Apply(Request());
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), ::testing::HasSubstr("KernelInstance/web-1: spec.kernel.sha256: required"));
  EXPECT_EQ(Stored(), 0u);
  v1::ApplyRequest pinned = Request();
  pinned.mutable_objects(1)->mutable_kernel_instance()->mutable_spec()->mutable_kernel()->set_sha256(std::string(64, 'a'));
  EXPECT_TRUE(Apply(pinned).ok());
}

}  // namespace
}  // namespace mkfleet::reconciler
