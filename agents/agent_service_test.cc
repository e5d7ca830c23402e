// The Agent gRPC service in-process, on a free loopback port, through a real stub.
#include "agents/agent_service.h"

#include "agents/agent_router.h"
#include "common/grpc_server.h"

#include <atomic>
#include <thread>

#include "agents/agent_watch.h"
#include "agents/testing/agent_fixture.h"
#include "agents/testing/served_agent.h"
#include "gmock/gmock.h"
#include "google/protobuf/empty.pb.h"
#include "google/protobuf/unknown_field_set.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"
#include "security/testing/test_pki.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::Contains;
using ::testing::HasSubstr;

class AgentServiceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    probe_ = NewEmulatorProbe(*host_.emu);
    AgentOptions o;
    o.host = "svc";
    agent_ = std::make_unique<Agent>(o, *host_.hk, host_.topology, *host_.journal, *probe_, host_.clock);
    service_ = std::make_unique<AgentService>(*agent_, host_.emu.get(), faults_);
    server_ = StartAgentServer(*service_, "127.0.0.1:0", &port_);
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel("127.0.0.1:" + std::to_string(port_), grpc::InsecureChannelCredentials());
    stub_ = v1::Agent::NewStub(channel_);
  }
  void TearDown() override {
    server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    agent_->Stop();
  }

  v1::ActionBatch Boot(const std::string& name, std::vector<uint32_t> cpus) {
    return BootBatch(name, cpus, host_.vmlinux);
  }

  // Calls a method with raw bytes (for services we have no generated code for).
  std::string RawCall(const std::string& method, const std::string& request) {
    grpc::GenericStub generic(channel_);
    grpc::ClientContext ctx;
    grpc::ByteBuffer req, resp;
    grpc::Slice slice(request);
    req = grpc::ByteBuffer(&slice, 1);
    grpc::CompletionQueue cq;
    std::mutex mu;
    std::condition_variable cv;
    bool done = false;
    grpc::Status status;
    generic.UnaryCall(&ctx, method, grpc::StubOptions(), &req, &resp, [&](grpc::Status s) {
      std::lock_guard<std::mutex> l(mu);
      status = s;
      done = true;
      cv.notify_one();
    });
    std::unique_lock<std::mutex> l(mu);
    cv.wait(l, [&] { return done; });
    EXPECT_TRUE(status.ok()) << status.error_message();
    std::vector<grpc::Slice> slices;
    resp.Dump(&slices);
    std::string out;
    for (auto& s : slices) out.append(reinterpret_cast<const char*>(s.begin()), s.size());
    return out;
  }

  bool faults_ = true;
  TestHost host_{"svc"};
  std::unique_ptr<LivenessProbe> probe_;
  std::unique_ptr<Agent> agent_;
  std::unique_ptr<AgentService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::Agent::Stub> stub_;
};

TEST_F(AgentServiceTest, InventoryDescribesTheHost) {
  grpc::ClientContext ctx;
  v1::InventoryResponse r;
  ASSERT_TRUE(stub_->Inventory(&ctx, v1::InventoryRequest(), &r).ok());
  EXPECT_EQ(r.host(), "svc");
  EXPECT_EQ(r.topology().cores_size(), 16);
  EXPECT_EQ(r.topology().physical_ids_size(), 32);
  EXPECT_EQ(r.dialect(), "v1");
  EXPECT_THAT(r.capabilities(), Contains("standby-takeover"));
  EXPECT_GT(r.pool().cpus_size(), 0);
}

TEST_F(AgentServiceTest, ExecuteAndBadRequests) {
  grpc::ClientContext ctx;
  v1::ExecuteResponse r;
  ASSERT_TRUE(stub_->Execute(&ctx, Boot("web-1", {2, 18}), &r).ok());
  ASSERT_EQ(r.results_size(), 3);
  for (const auto& res : r.results()) EXPECT_EQ(res.code(), 0) << res.message();

  v1::ActionBatch no_id = Boot("x", {3});
  no_id.mutable_actions(1)->clear_id();
  grpc::ClientContext c2;
  grpc::Status s = stub_->Execute(&c2, no_id, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(), "actions[1]: id is required");
  v1::ActionBatch dup = Boot("x", {3});
  dup.mutable_actions(2)->set_id("x-create");
  grpc::ClientContext c3;
  EXPECT_EQ(stub_->Execute(&c3, dup, &r).error_message(), "actions[2]: id x-create is used twice");
  // An out-of-pool CPU: the kernel refuses, nothing changes.
  auto before = host_.emu->counters();
  v1::ActionBatch out_of_pool = Boot("y", {0});
  grpc::ClientContext c4;
  ASSERT_TRUE(stub_->Execute(&c4, out_of_pool, &r).ok());
  EXPECT_EQ(r.results(0).code(), static_cast<int>(grpc::StatusCode::FAILED_PRECONDITION));
  EXPECT_THAT(r.results(0).message(), HasSubstr("is not in this host's pool"));
  EXPECT_EQ(r.results(1).code(), static_cast<int>(grpc::StatusCode::ABORTED));
  EXPECT_EQ(host_.emu->counters().creates, before.creates);
}

// Defects (step 7): an instance named ../../../../pwn was created (invisible to Watch, its
// CPU held across restarts); 4 MiB ids and 100k-action batches grew the agent to 1.16 GB
// and its journal to 253 MB; a relative image path was read from the agent's directory.
// Each is refused before anything runs, naming the action and the field.
TEST_F(AgentServiceTest, HostileBatchesAreRefusedBeforeAnythingRuns) {
  auto refused = [&](v1::ActionBatch batch, const std::string& want) {
    grpc::ClientContext ctx;
    v1::ExecuteResponse r;
    grpc::Status s = stub_->Execute(&ctx, batch, &r);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT) << want;
    EXPECT_THAT(s.error_message(), HasSubstr(want));
    EXPECT_LT(s.error_message().size(), 1024u);
  };
  auto before = host_.emu->counters();
  v1::ActionBatch pwn = Boot("../../../../pwn", {2, 18});
  refused(pwn, "actions[0] (../../../../pwn-create): instance \"../../../../pwn\" is not a valid instance name");
  v1::ActionBatch long_id = Boot("a", {2});
  long_id.mutable_actions(0)->set_id(std::string(4096, 'i'));
  refused(long_id, "actions[0]: id is longer than 256 bytes");
  // A request past 4 MiB never reaches the service.
  long_id.mutable_actions(0)->set_id(std::string(4 << 20, 'i'));
  {
    grpc::ClientContext ctx;
    v1::ExecuteResponse r;
    EXPECT_EQ(stub_->Execute(&ctx, long_id, &r).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  }
  v1::ActionBatch many;
  for (int i = 0; i < 1025; ++i) {
    v1::Action* a = many.add_actions();
    a->set_id("r" + std::to_string(i));
    a->set_instance("a");
    a->mutable_remove();
  }
  refused(many, "1025 actions: at most 1024 in one batch");
  v1::ActionBatch relative = Boot("b", {2});
  relative.mutable_actions(1)->mutable_load()->mutable_kernel()->set_image("../../usr/bin/ls");
  refused(relative, "actions[1] (b-load): load.kernel.image: must be an absolute path");
  v1::ActionBatch dots = Boot("b", {2});
  dots.mutable_actions(1)->mutable_load()->mutable_kernel()->set_initrd("/var/lib/mkfleet/kernels/../../../etc/shadow");
  refused(dots, "load.kernel.initrd: must not contain ..");
  v1::ActionBatch cmdline = Boot("b", {2});
  cmdline.mutable_actions(1)->mutable_load()->mutable_kernel()->set_cmdline(std::string(8192, 'c'));
  refused(cmdline, "load.kernel.cmdline: longer than 4096 bytes");
  EXPECT_EQ(host_.emu->counters().creates, before.creates);
  EXPECT_EQ(host_.emu->counters().loads, before.loads);
  EXPECT_EQ(agent_->Snapshot().instances_size(), 0);

  // Policies and faults name instances too.
  grpc::ClientContext c1;
  v1::SetPolicyRequest policy;
  policy.add_policies()->set_instance("x/../../y");
  v1::SetPolicyResponse pr;
  EXPECT_EQ(stub_->SetPolicy(&c1, policy, &pr).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  grpc::ClientContext c2;
  v1::FaultRequest fault;
  fault.set_fault("panic");
  fault.set_instance("../x");
  v1::Empty e;
  EXPECT_EQ(stub_->InjectFault(&c2, fault, &e).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
}

TEST_F(AgentServiceTest, WatchSendsASnapshotThenChanges) {
  grpc::ClientContext ctx;
  v1::WatchRequest req;
  auto reader = stub_->Watch(&ctx, req);
  v1::HostState first;
  ASSERT_TRUE(reader->Read(&first));
  EXPECT_TRUE(first.snapshot());
  grpc::ClientContext c2;
  v1::ExecuteResponse r;
  ASSERT_TRUE(stub_->Execute(&c2, Boot("web-1", {2, 18}), &r).ok());
  v1::HostState change;
  ASSERT_TRUE(reader->Read(&change));
  EXPECT_FALSE(change.snapshot());
  EXPECT_GT(change.resource_version(), first.resource_version());
  ctx.TryCancel();
}

TEST_F(AgentServiceTest, FaultInjectionAndSetPolicy) {
  grpc::ClientContext c1;
  v1::ExecuteResponse r;
  ASSERT_TRUE(stub_->Execute(&c1, Boot("web-1", {2, 18}), &r).ok());
  grpc::ClientContext c2;
  v1::FaultRequest f;
  f.set_instance("web-1");
  f.set_fault("panic");
  v1::Empty e;
  ASSERT_TRUE(stub_->InjectFault(&c2, f, &e).ok());
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_LOADED);
  grpc::ClientContext c3;
  f.set_fault("meteor");
  EXPECT_THAT(stub_->InjectFault(&c3, f, &e).error_message(), HasSubstr("unknown fault \"meteor\""));
  grpc::ClientContext c4;
  v1::SetPolicyRequest bad;
  bad.add_policies();
  v1::SetPolicyResponse pr;
  grpc::Status s = stub_->SetPolicy(&c4, bad, &pr);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_EQ(s.error_message(),
            "policies[0]: instance \"\" is not a valid instance name (1-253 characters of a-z, 0-9 and -, "
            "alphanumeric at both ends)");
}

TEST_F(AgentServiceTest, HealthAndReflection) {
  // grpc.health.v1.Health/Check {service: "mkfleet.v1.Agent"} -> {status: SERVING (1)}
  std::string service = "mkfleet.v1.Agent";
  std::string req = std::string("\x0a", 1) + static_cast<char>(service.size()) + service;
  std::string resp = RawCall("/grpc.health.v1.Health/Check", req);
  EXPECT_EQ(resp, std::string("\x08\x01", 2));
  // Reflection: list_services.
  grpc::GenericStub generic(channel_);
  grpc::ClientContext ctx;
  grpc::CompletionQueue cq;
  auto call = generic.PrepareCall(&ctx, "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", &cq);
  void* tag;
  bool ok;
  call->StartCall(reinterpret_cast<void*>(1));
  cq.Next(&tag, &ok);
  std::string list = std::string("\x3a\x00", 2);  // field 7 (list_services) = ""
  grpc::Slice slice(list);
  grpc::ByteBuffer out(&slice, 1);
  call->Write(out, reinterpret_cast<void*>(2));
  cq.Next(&tag, &ok);
  grpc::ByteBuffer in;
  call->Read(&in, reinterpret_cast<void*>(3));
  cq.Next(&tag, &ok);
  ASSERT_TRUE(ok);
  std::vector<grpc::Slice> slices;
  in.Dump(&slices);
  std::string bytes;
  for (auto& s : slices) bytes.append(reinterpret_cast<const char*>(s.begin()), s.size());
  google::protobuf::Empty parsed;
  ASSERT_TRUE(parsed.ParseFromString(bytes));
  std::vector<std::string> names;
  const auto& top = parsed.GetReflection()->GetUnknownFields(parsed);
  for (int i = 0; i < top.field_count(); ++i) {
    if (top.field(i).number() != 6) continue;  // list_services_response
    google::protobuf::UnknownFieldSet lsr;
    lsr.ParseFromString(top.field(i).length_delimited());
    for (int k = 0; k < lsr.field_count(); ++k) {
      google::protobuf::UnknownFieldSet svc;
      svc.ParseFromString(lsr.field(k).length_delimited());
      for (int m = 0; m < svc.field_count(); ++m) names.push_back(svc.field(m).length_delimited());
    }
  }
  EXPECT_THAT(names, Contains("mkfleet.v1.Agent"));
  EXPECT_THAT(names, Contains("grpc.health.v1.Health"));
  ctx.TryCancel();
  call->Finish(nullptr, reinterpret_cast<void*>(4));
  cq.Shutdown();
  while (cq.Next(&tag, &ok)) {
  }
}

class NoFaultsTest : public AgentServiceTest {
 protected:
  NoFaultsTest() { faults_ = false; }
};

TEST_F(NoFaultsTest, FaultInjectionIsOffUnlessEnabled) {
  grpc::ClientContext c;
  v1::FaultRequest f;
  f.set_fault("panic");
  v1::Empty e;
  grpc::Status s = stub_->InjectFault(&c, f, &e);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(s.error_message(), HasSubstr("--enable-fault-injection"));
}

// Behind mutual TLS (as mkagent serves) only the controller's certificate may call; a user's,
// another agent's or none is refused before the request is looked at.
TEST_F(AgentServiceTest, WithTlsOnlyTheControllerMayCallAndFaultsStayOffUnlessEnabled) {
  security::TestPki pki(::testing::TempDir() + "/agent-svc-pki");
  security::TlsOptions tls;
  tls.dir = pki.agent("svc");
  auto creds = security::ServerCredentials(tls, "127.0.0.1:0", security::Identity::Agent("svc"));
  ASSERT_TRUE(creds.ok()) << creds.status();
  AgentService secured(*agent_, host_.emu.get(), /*enable_faults=*/false, /*require_controller=*/true);
  int port = 0;
  auto server = StartAgentServer(secured, "127.0.0.1:0", &port, false, *creds);
  ASSERT_NE(server, nullptr);
  const std::string target = "127.0.0.1:" + std::to_string(port);
  auto as = [&](const std::string& dir) {
    return v1::Agent::NewStub(security::TestPki::Channel(dir, target, security::Identity::Agent("svc")));
  };
  auto execute = [&](v1::Agent::Stub& stub) {
    grpc::ClientContext ctx;
    v1::ExecuteResponse r;
    return stub.Execute(&ctx, Boot("a", {2, 3}), &r);
  };
  grpc::Status user = execute(*as(pki.user("alice", {"fleet-admins"})));
  EXPECT_EQ(user.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(user.error_message(), "agent svc: user alice (groups fleet-admins) may not call Execute (only the controller may)");
  EXPECT_EQ(execute(*as(pki.agent("other"))).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_EQ(agent_->Snapshot().instances_size(), 0) << "a refused batch ran";
  auto controller = as(pki.controller());
  EXPECT_TRUE(execute(*controller).ok());
  grpc::ClientContext ctx;
  v1::FaultRequest f;
  f.set_fault("panic");
  f.set_instance("a");
  v1::Empty e;
  grpc::Status fault = controller->InjectFault(&ctx, f, &e);
  EXPECT_EQ(fault.error_code(), grpc::StatusCode::PERMISSION_DENIED);
  EXPECT_THAT(fault.error_message(), HasSubstr("fault injection is off"));
  server->Shutdown(std::chrono::system_clock::now());
}

// One server for many hosts (mkagent --hosts N): a call reaches the host it was addressed to
// (by the authority's name or port), a Watch too; another authority is NOT_FOUND.
TEST_F(AgentServiceTest, TheRouterSendsACallToTheHostItWasAddressedTo) {
  AgentRouter router;
  int port = 0;
  std::vector<Listen> listens = {{"127.0.0.1:0", grpc::InsecureServerCredentials(), &port}};
  auto server = StartGrpcServerOnPorts(router, "mkfleet.v1.Agent", listens, 8);
  ASSERT_NE(server, nullptr);
  router.Add(port, service_.get());
  router.AddAuthority("svc.agent.example", service_.get());
  auto call = [&](const std::string& authority) {
    grpc::ChannelArguments args;
    if (!authority.empty()) args.SetString(GRPC_ARG_DEFAULT_AUTHORITY, authority);
    auto stub = v1::Agent::NewStub(
        grpc::CreateCustomChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials(), args));
    grpc::ClientContext ctx;
    v1::InventoryResponse r;
    grpc::Status s = stub->Inventory(&ctx, v1::InventoryRequest(), &r);
    return std::make_pair(s, r.host());
  };
  auto by_port = call("");
  ASSERT_TRUE(by_port.first.ok()) << by_port.first.error_message();
  EXPECT_EQ(by_port.second, "svc");
  auto by_name = call("svc.agent.example");
  ASSERT_TRUE(by_name.first.ok()) << by_name.first.error_message();
  EXPECT_EQ(by_name.second, "svc");
  auto other = call("127.0.0.1:1");
  EXPECT_EQ(other.first.error_code(), grpc::StatusCode::NOT_FOUND);
  EXPECT_THAT(other.first.error_message(), ::testing::HasSubstr("no emulated host here serves \"127.0.0.1:1\""));
  // A Watch through the router: the snapshot of the host.
  auto stub = v1::Agent::NewStub(
      grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  grpc::ClientContext wctx;
  auto reader = stub->Watch(&wctx, v1::WatchRequest());
  v1::HostState snapshot;
  ASSERT_TRUE(reader->Read(&snapshot));
  EXPECT_TRUE(snapshot.snapshot());
  wctx.TryCancel();
  reader->Finish();
  server->Shutdown(std::chrono::system_clock::now());
}

// Defect (session 13): a Watch's slot was freed with its reactor, whose last reference
// could be the change notifier's (pumping a change just as gRPC finished the stream): then
// after the server, and the service that owns the slots, were gone. A use after free (seen
// as `free(): invalid pointer` in tests under load; ASan: StreamLimiter::Release from the
// notifier's thread). Once gRPC is done with a stream, its slot is free.
TEST(AgentWatchSlotTest, AStreamsSlotIsFreeOnceTheServerIsDownWhileChangesArePumped) {
  ServedAgent served("watchslot", "node-w");
  // The notifier pumps the streams again and again (nothing new to send: each pump is a
  // look at the agent's version).
  std::atomic<bool> stop{false};
  const Agent* agent = served.agent.get();
  std::thread pumping([&] {
    while (!stop.load()) WatchNotifier::Default().Changed(agent);
  });
  int open = 0;
  int round = 0;
  for (; round < 150 && open == 0; ++round) {
    if (round > 0) served.server = StartAgentServer(*served.service, "127.0.0.1:0", &served.port);
    ASSERT_NE(served.server, nullptr);
    auto stub = v1::Agent::NewStub(grpc::CreateChannel(served.Address(), grpc::InsecureChannelCredentials()));
    constexpr int kStreams = 4;  // the most one client may hold
    grpc::ClientContext ctx[kStreams];
    std::unique_ptr<grpc::ClientReader<v1::HostState>> readers[kStreams];
    for (int i = 0; i < kStreams; ++i) {
      readers[i] = stub->Watch(&ctx[i], v1::WatchRequest());
      v1::HostState first;
      ASSERT_TRUE(readers[i]->Read(&first)) << "round " << round << " stream " << i;
    }
    ASSERT_EQ(served.service->open_streams(), kStreams);
    served.StopServing();  // returns once gRPC is done with every call
    open = served.service->open_streams();
    for (int i = 0; i < kStreams; ++i) {
      ctx[i].TryCancel();
      readers[i]->Finish();
    }
  }
  stop = true;
  pumping.join();
  EXPECT_EQ(open, 0) << "round " << round - 1 << ": the streams ended, " << open << " slots still taken";
}

}  // namespace
}  // namespace mkfleet::agents
