// The hostile-input suite of step 7, with real processes on loopback: every attack the
// issue reported against the landed tree is replayed and must be refused, the daemon must
// keep serving, and nothing on disk outside its folders may change. Then authentication and
// authorization: each role, a wrong CA, an expired certificate, an agent certificate for
// another Host, a client presenting an agent's certificate.
#include <sys/stat.h>
#include <sys/wait.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

using ::testing::HasSubstr;
using security::Identity;

class SecurityTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    // A file outside every daemon's folders that no attack may touch.
    victim_ = (dir_ / "victim").string();
    std::ofstream(victim_) << "precious";
  }
  void ExpectVictimUntouched() {
    std::ifstream in(victim_);
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    EXPECT_EQ(text, "precious");
  }
  std::string AgentAddress(const std::string& name) { return "127.0.0.1:" + std::to_string(agents_[name].port); }

  // An Agent stub that presents the credentials in `dir` and expects `host`'s agent.
  std::unique_ptr<v1::Agent::Stub> AgentAs(const std::string& dir, const std::string& host) {
    return v1::Agent::NewStub(security::TestPki::Channel(dir, AgentAddress(host), Identity::Agent(host)));
  }
  std::unique_ptr<v1::Agent::Stub> AgentPlaintext(const std::string& host) {
    return v1::Agent::NewStub(grpc::CreateChannel(AgentAddress(host), grpc::InsecureChannelCredentials()));
  }
  std::unique_ptr<v1::Controller::Stub> ControllerAs(const std::string& dir) {
    return v1::Controller::NewStub(security::TestPki::Channel(
        dir, "127.0.0.1:" + std::to_string(controller_port_), Identity::Controller()));
  }
  static grpc::Status Execute(v1::Agent::Stub& stub, const v1::ActionBatch& batch, v1::ExecuteResponse* r = nullptr) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(10));
    v1::ExecuteResponse ignored;
    return stub.Execute(&ctx, batch, r != nullptr ? r : &ignored);
  }
  static bool Serving(v1::Agent::Stub& stub) {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::InventoryResponse r;
    return stub.Inventory(&ctx, v1::InventoryRequest(), &r).ok();
  }
  static v1::ActionBatch Load(const std::string& instance, const std::string& image, const std::string& initrd = "") {
    v1::ActionBatch b;
    v1::Action* c = b.add_actions();
    c->set_id(instance + "-create");
    c->set_instance(instance);
    c->mutable_create()->mutable_placement()->add_cpus(4);
    c->mutable_create()->mutable_placement()->add_memory()->set_bytes(256ull << 20);
    v1::Action* l = b.add_actions();
    l->set_id(instance + "-load-" + std::to_string(std::hash<std::string>()(image + initrd)));
    l->set_instance(instance);
    l->mutable_load()->mutable_kernel()->set_image(image);
    l->mutable_load()->mutable_kernel()->set_initrd(initrd);
    return b;
  }

  std::string victim_;
};

// No credentials, or the wrong ones, get nowhere: plaintext to a TLS daemon fails, and a
// certificate that is not the controller's is refused by the agent for every RPC.
TEST_F(SecurityTest, EveryAgentRpcNeedsTheControllersCertificate) {
  StartAgent("node-a");
  v1::ActionBatch halt;
  v1::Action* h = halt.add_actions();
  h->set_id("force-halt");
  h->set_instance("web-1");
  h->mutable_halt()->set_force(true);
  EXPECT_EQ(Execute(*AgentPlaintext("node-a"), halt).error_code(), grpc::StatusCode::UNAVAILABLE);
  for (const std::string& who : {pki_->admin(), pki_->agent("node-b"), pki_->user("mallory", {"fleet-admins"})}) {
    auto stub = AgentAs(who, "node-a");
    grpc::Status s = Execute(*stub, halt);
    EXPECT_EQ(s.error_code(), grpc::StatusCode::PERMISSION_DENIED) << who;
    EXPECT_THAT(s.error_message(), HasSubstr("only the controller may"));
    grpc::ClientContext c1, c2;
    v1::SetPolicyResponse pr;
    EXPECT_EQ(stub->SetPolicy(&c1, v1::SetPolicyRequest(), &pr).error_code(), grpc::StatusCode::PERMISSION_DENIED);
    v1::FaultRequest f;
    f.set_fault("fail-overlay");
    v1::Empty e;
    EXPECT_EQ(stub->InjectFault(&c2, f, &e).error_code(), grpc::StatusCode::PERMISSION_DENIED);
  }
  EXPECT_TRUE(Serving(*AgentAs(pki_->controller(), "node-a")));
}

// `--listen 0.0.0.0` without TLS is refused, saying how to set TLS up; so is no TLS at all.
TEST_F(SecurityTest, PlaintextOnlyOnLoopbackAndOnlyWhenAskedFor) {
  for (std::vector<std::string> argv :
       {std::vector<std::string>{"agents/mkagent", "--topology", std::string("synthetic:") + kTopology, "--state-dir",
                                 (dir_ / "x").string(), "--listen", "0.0.0.0:0", "--insecure"},
        {"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "s.db").string(), "--listen", "0.0.0.0:0",
         "--insecure"},
        {"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "s.db").string(), "--listen", "127.0.0.1:0"}}) {
    std::string out;
    int status = Run(argv, &out);
    EXPECT_EQ(status, 2) << out;
    EXPECT_THAT(out, HasSubstr("mkapply certs init")) << out;
    EXPECT_THAT(out, HasSubstr("--tls-dir")) << out;
  }
}

// A Host's `agent:` may name any address, but the controller sends nothing to a listener
// that lacks that Host's certificate (here: node-b's agent, posing as node-a).
TEST_F(SecurityTest, TheControllerTalksOnlyToTheHostsOwnAgent) {
  StartAgent("node-b");
  StartController();
  std::string yaml = "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: node-a\nspec:\n  agent: " +
                     AgentAddress("node-b") + "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n---\n" +
                     InstanceYaml("web-1", "node-a");
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("impostor.yaml", yaml)}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    Mkapply({"describe", "host", "node-a"}, &out);
    return out.find("presented the certificate of agent node-b, not of agent node-a") != std::string::npos;
  })) << out << controller_->Log();
  EXPECT_TRUE(OnAgent("node-b").empty()) << "nothing was sent to the impostor";
}

// load of /dev/zero wedged the agent for good; ../../usr/bin/ls, symlinks and
// initrd /etc/shadow were read. All are refused with one message, the agent keeps serving
// and stops cleanly, and nothing outside its folders changes.
TEST_F(SecurityTest, KernelFilesComeOnlyFromTheImageDirectory) {
  StartAgent("node-a");
  auto stub = AgentAs(pki_->controller(), "node-a");
  fs::create_symlink(victim_, dir_ / "vmlinux-link");
  std::string refusal;
  for (const auto& [image, initrd] :
       {std::pair<std::string, std::string>{"/dev/zero", ""}, {"/etc/shadow", ""}, {"/etc/no-such-file", ""},
        {(dir_ / "vmlinux-link").string(), ""}, {vmlinux_, "/etc/shadow"}, {vmlinux_, victim_ + "-missing"}}) {
    v1::ExecuteResponse r;
    grpc::Status s = Execute(*stub, Load("web-1", image, initrd), &r);
    ASSERT_TRUE(s.ok()) << s.error_message();
    ASSERT_EQ(r.results_size(), 2);
    EXPECT_EQ(r.results(1).code(), static_cast<int>(grpc::StatusCode::PERMISSION_DENIED)) << image << initrd;
    std::string m = r.results(1).message();
    EXPECT_THAT(m, HasSubstr("not an allowed file"));
    // The same words whether the file exists or not (the path aside).
    std::string shape = m.substr(m.find(": not an allowed"));
    if (refusal.empty()) refusal = shape;
    EXPECT_EQ(shape, refusal);
  }
  v1::ActionBatch relative = Load("web-2", "../../usr/bin/ls");
  EXPECT_EQ(Execute(*stub, relative).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_TRUE(Serving(*stub));
  // Nothing published a digest of a file it should not have read.
  for (const auto& [name, st] : OnAgent("node-a")) {
    EXPECT_TRUE(st.provenance().kernel_sha256().empty()) << name;
    EXPECT_TRUE(st.provenance().initrd_sha256().empty()) << name;
  }
  int status = agents_["node-a"].process->Kill(SIGTERM);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << agents_["node-a"].process->Log();
  ExpectVictimUntouched();
}

// An instance named ../../../../pwn held its CPU invisibly; 4 MiB ids and 100k-action
// batches grew the agent to 1.16 GB and its journal to 253 MB. All refused up front.
TEST_F(SecurityTest, HostileBatchesAreRefusedAndTheJournalStaysSmall) {
  StartAgent("node-a");
  auto stub = AgentAs(pki_->controller(), "node-a");
  EXPECT_EQ(Execute(*stub, Load("../../../../pwn", vmlinux_)).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ActionBatch big_id = Load("web-1", vmlinux_);
  big_id.mutable_actions(0)->set_id(std::string(4 << 20, 'i'));
  EXPECT_EQ(Execute(*stub, big_id).error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  big_id.mutable_actions(0)->set_id(std::string(3 << 20, 'i'));
  EXPECT_EQ(Execute(*stub, big_id).error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  v1::ActionBatch many;
  for (int i = 0; i < 100000; ++i) {
    v1::Action* a = many.add_actions();
    a->set_id(std::to_string(i));
    a->set_instance("x");
    a->mutable_remove();
  }
  EXPECT_NE(Execute(*stub, many).error_code(), grpc::StatusCode::OK);
  EXPECT_TRUE(Serving(*stub));
  EXPECT_TRUE(OnAgent("node-a").empty());
  EXPECT_LT(fs::file_size(dir_ / "node-a" / "journal"), 4096u);
  ExpectVictimUntouched();
}

// A state directory prepared by someone else (here: its journal a symlink to a file of
// ours) is refused at start, and the link's target is never written.
TEST_F(SecurityTest, APreparedStateDirectoryIsRefused) {
  fs::create_directories(dir_ / "node-a");
  chmod((dir_ / "node-a").c_str(), 0700);
  fs::create_symlink(victim_, dir_ / "node-a" / "journal");
  std::string out;
  int status = Run({"agents/mkagent", "--topology", std::string("synthetic:") + kTopology, "--listen", "127.0.0.1:0",
                    "--state-dir", (dir_ / "node-a").string(), "--host", "node-a", "--tls-dir", pki_->agent("node-a")},
                   &out);
  EXPECT_EQ(status, 2) << out;
  ExpectVictimUntouched();
  fs::remove(dir_ / "node-a" / "journal");
  chmod((dir_ / "node-a").c_str(), 0777);
  status = Run({"agents/mkagent", "--topology", std::string("synthetic:") + kTopology, "--listen", "127.0.0.1:0",
                "--state-dir", (dir_ / "node-a").string(), "--host", "node-a", "--tls-dir", pki_->agent("node-a")},
               &out);
  EXPECT_EQ(status, 2) << out;
  EXPECT_THAT(out, HasSubstr("writable by group or others"));
}

// An Apply with cpus 0 and memory 0 crashed the controller (and, stored, on every
// restart); bad names were stored. Refused, the controller keeps serving and restarts clean.
TEST_F(SecurityTest, TheControllerChecksEveryApply) {
  StartController();
  auto stub = ControllerAs(pki_->admin());
  v1::ApplyRequest req;
  v1::KernelInstance* ki = req.add_objects()->mutable_kernel_instance();
  ki->set_api_version("mkfleet.io/v1");
  ki->set_kind("KernelInstance");
  ki->mutable_metadata()->set_name("../../Evil");
  ki->mutable_spec()->set_host("node-a");
  ki->mutable_spec()->mutable_kernel()->set_image(vmlinux_);
  ki->mutable_spec()->set_id(9999);
  grpc::ClientContext ctx;
  v1::ApplyResponse r;
  grpc::Status s = stub->Apply(&ctx, req, &r);
  EXPECT_EQ(s.error_code(), grpc::StatusCode::INVALID_ARGUMENT);
  EXPECT_THAT(s.error_message(), HasSubstr("metadata.name"));
  EXPECT_THAT(s.error_message(), HasSubstr("spec.resources"));
  controller_->Kill(SIGTERM);
  StartController();  // a restart on the same store
  grpc::ClientContext c2;
  v1::GetRequest get;
  get.set_kind("KernelInstance");
  v1::GetResponse got;
  ASSERT_TRUE(ControllerAs(pki_->admin())->Get(&c2, get, &got).ok());
  EXPECT_EQ(got.objects_size(), 0);
}

// Roles: a viewer reads, an operator changes instances, only an admin changes Hosts and
// bindings; refusals name the identity, the verb and the object, exit 1, and are audited.
TEST_F(SecurityTest, EachRoleMayDoWhatItSaysAndNoMore) {
  StartAgent("node-a");
  StartController();
  std::string out;
  std::string bindings =
      "apiVersion: mkfleet.io/v1\nkind: RoleBinding\nmetadata: {name: view}\nspec:\n  role: viewer\n  subjects:\n"
      "  - {kind: User, name: vera}\n---\napiVersion: mkfleet.io/v1\nkind: RoleBinding\nmetadata: {name: ops}\n"
      "spec:\n  role: operator\n  subjects:\n  - {kind: Group, name: ops}\n";
  ASSERT_EQ(Mkapply({"apply", "-f", Write("rb.yaml", bindings)}, &out), 0) << out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("host.yaml", HostYaml("node-a"))}, &out), 0) << out;
  auto as = [&](const std::string& dir, std::vector<std::string> args) {
    args.insert(args.begin(), "cli/mkapply");
    for (const std::string& a : {std::string("--controller"), "127.0.0.1:" + std::to_string(controller_port_),
                                 std::string("--tls-dir"), dir}) {
      args.push_back(a);
    }
    return Run(args, &out);
  };
  const std::string vera = pki_->user("vera"), olga = pki_->user("olga", {"ops"}), nobody = pki_->user("nobody");
  const std::string ki = Write("ki.yaml", InstanceYaml("web-1", "node-a"));
  EXPECT_EQ(as(vera, {"get", "hosts"}), 0) << out;
  EXPECT_EQ(as(vera, {"apply", "-f", ki}), 1) << out;
  EXPECT_THAT(out, HasSubstr("user vera may not apply KernelInstance/web-1: needs role operator, has viewer"));
  EXPECT_EQ(as(olga, {"apply", "-f", ki}), 0) << out;
  EXPECT_EQ(as(olga, {"delete", "host", "node-a"}), 1) << out;
  EXPECT_THAT(out, HasSubstr("user olga (groups ops) may not delete Host/node-a: needs role admin, has operator"));
  EXPECT_EQ(as(olga, {"apply", "-f", Write("rb2.yaml", bindings)}), 1) << out;
  EXPECT_EQ(as(olga, {"audit"}), 1) << out;
  EXPECT_EQ(as(nobody, {"get", "instances"}), 1) << out;
  EXPECT_THAT(out, HasSubstr("user nobody may not get KernelInstances: needs role viewer, has no role"));
  // An agent's certificate (or the controller's own) holds no role at the controller.
  EXPECT_EQ(as(pki_->agent("node-a"), {"get", "hosts"}), 1) << out;
  EXPECT_THAT(out, HasSubstr("agent node-a may not get"));
  EXPECT_EQ(as(pki_->controller(), {"get", "hosts"}), 1) << out;
  // The admin sees every change and every refusal.
  ASSERT_EQ(Mkapply({"audit", "-o", "json"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("\"identity\":\"user olga (groups ops)\""));
  EXPECT_THAT(out, HasSubstr("PERMISSION_DENIED"));
  EXPECT_THAT(out, HasSubstr("KernelInstance/web-1"));
}

// Certificates: another CA's, an expired one, and mkapply with an agent's certificate.
TEST_F(SecurityTest, WrongCaAndExpiredCertificatesAreRefusedInTheHandshake) {
  StartController();
  std::string out;
  // Another CA, with a user named admin in fleet-admins: not ours.
  security::TestPki other((dir_ / "other-pki").string());
  std::string foreign = (dir_ / "foreign").string();
  fs::create_directories(foreign);
  for (const char* f : {"tls.crt", "tls.key"}) fs::copy_file(other.admin() + "/" + f, foreign + "/" + f);
  fs::copy_file(pki_->root() + "/ca.crt", foreign + "/ca.crt");
  chmod((foreign + "/tls.key").c_str(), 0600);
  std::vector<std::string> get = {"cli/mkapply", "get", "hosts", "--controller",
                                  "127.0.0.1:" + std::to_string(controller_port_), "--tls-dir"};
  auto run_with = [&](const std::string& dir) {
    std::vector<std::string> argv = get;
    argv.push_back(dir);
    return Run(argv, &out);
  };
  EXPECT_EQ(run_with(foreign), 2) << out;  // refused before dialling: not valid against ca.crt
  EXPECT_THAT(out, HasSubstr("not valid against ca.crt"));
  std::string expired = pki_->Issue(Identity::User("admin", {"fleet-admins"}), (dir_ / "expired").string(),
                                    -absl::Hours(48), -absl::Hours(24));
  EXPECT_EQ(run_with(expired), 2) << out;
  EXPECT_THAT(out, HasSubstr("expired"));
  // Presented anyway (a client that skips its own checks): the controller's handshake refuses them.
  auto present = [&](const std::string& dir) {
    auto stub = v1::Controller::NewStub(grpc::CreateChannel("127.0.0.1:" + std::to_string(controller_port_),
                                                            security::TestPki::PresentAsIs(dir)));
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetRequest req;
    req.set_kind("Host");
    v1::GetResponse r;
    return stub->Get(&ctx, req, &r);
  };
  EXPECT_EQ(present(foreign).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(present(expired).error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_TRUE(present(pki_->admin()).ok());
}

// 4,000 idle streams gave the controller 4,022 threads: streams are capped per client.
TEST_F(SecurityTest, IdleStreamsAreCapped) {
  StartController();
  std::string out;
  agents_["node-a"].port = FreePort();  // no agent needed: a Host object to watch
  ASSERT_EQ(Mkapply({"apply", "-f", Write("host.yaml", HostYaml("node-a"))}, &out), 0) << out;
  auto stub = ControllerAs(pki_->admin());
  std::vector<std::unique_ptr<grpc::ClientContext>> contexts;
  std::vector<std::unique_ptr<grpc::ClientReader<v1::ObjectWatchEvent>>> streams;
  auto threads = [&] {
    std::ifstream in("/proc/" + std::to_string(controller_->pid()) + "/status");
    std::string line;
    while (std::getline(in, line)) {
      if (line.rfind("Threads:", 0) == 0) return std::stoi(line.substr(8));
    }
    return -1;
  };
  // Warm up (the first calls start gRPC's own threads), then count.
  {
    grpc::ClientContext c;
    auto warm = stub->Watch(&c, v1::ObjectWatchRequest());
    v1::ObjectWatchEvent e;
    ASSERT_TRUE(warm->Read(&e));
    c.TryCancel();
    warm->Finish();
  }
  const int idle_threads = threads();
  for (int i = 0; i < 16; ++i) {
    contexts.push_back(std::make_unique<grpc::ClientContext>());
    streams.push_back(stub->Watch(contexts.back().get(), v1::ObjectWatchRequest()));
    v1::ObjectWatchEvent e;
    ASSERT_TRUE(streams.back()->Read(&e)) << "stream " << i << " is open (its snapshot came)";
  }
  // An open stream holds no thread of the controller (callback API).
  EXPECT_LE(threads(), idle_threads + 2) << "16 idle streams, threads before " << idle_threads;
  grpc::ClientContext ctx;
  auto refused = stub->Watch(&ctx, v1::ObjectWatchRequest());
  v1::ObjectWatchEvent e;
  EXPECT_FALSE(refused->Read(&e));
  grpc::Status s = refused->Finish();
  EXPECT_EQ(s.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED);
  EXPECT_THAT(s.error_message(), HasSubstr("at most 16 per client"));
  // Another user still gets one.
  auto other = ControllerAs(pki_->user("vera", {"fleet-admins"}));
  grpc::ClientContext c2;
  auto theirs = other->Watch(&c2, v1::ObjectWatchRequest());
  EXPECT_TRUE(theirs->Read(&e));
  c2.TryCancel();
  theirs->Finish();
  for (auto& c : contexts) c->TryCancel();
  for (auto& r : streams) r->Finish();
}

}  // namespace
}  // namespace mkfleet
