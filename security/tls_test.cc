#include "security/tls.h"

#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "openssl/ssl.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "gtest/gtest.h"
#include "mkfleet/v1/controller.grpc.pb.h"
#include "security/certs.h"
#include "security/testing/test_pki.h"
#include "security/pem_cache.h"
#include "security/tls_buffers.h"

namespace mkfleet::security {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;

// Answers Delete with who called.
class WhoAmI final : public v1::Controller::Service {
 public:
  grpc::Status Delete(grpc::ServerContext* ctx, const v1::DeleteRequest*, v1::DeleteResponse* r) override {
    r->set_result(PeerIdentity(*ctx).ToString());
    return grpc::Status::OK;
  }
};

class TlsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::path(::testing::TempDir()) / ("tls-" + std::to_string(getpid()))).string();
    fs::remove_all(root_);
    ASSERT_TRUE(InitCa(root_, absl::Now(), absl::Hours(24)).ok());
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    fs::remove_all(root_);
  }

  std::string Issue(const Identity& id, std::string dir = "", absl::Duration from = -absl::Minutes(1),
                    absl::Duration to = absl::Hours(1), const std::string& ca = "") {
    CertOptions o;
    o.identity = id;
    o.not_before = absl::Now() + from;
    o.not_after = absl::Now() + to;
    if (dir.empty()) dir = IdentityDir(root_, id);
    absl::Status s = IssueCert(ca.empty() ? root_ : ca, o, dir);
    EXPECT_TRUE(s.ok()) << s;
    return dir;
  }

  void Serve(const std::string& dir, const Identity& self) {
    TlsOptions o;
    o.dir = dir;
    o.reload_seconds = 1;
    auto creds = ServerCredentials(o, "127.0.0.1:0", self);
    ASSERT_TRUE(creds.ok()) << creds.status();
    grpc::ServerBuilder b;
    b.AddListeningPort("127.0.0.1:0", *creds, &port_);
    b.RegisterService(&service_);
    server_ = b.BuildAndStart();
    ASSERT_NE(server_, nullptr);
  }
  std::string Target() const { return "127.0.0.1:" + std::to_string(port_); }

  // Calls with `creds`: the server's answer (who it saw) or the error.
  absl::StatusOr<std::string> Call(std::shared_ptr<grpc::ChannelCredentials> creds) {
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);  // a new connection each time
    return Call(grpc::CreateCustomChannel(Target(), creds, args));
  }
  absl::StatusOr<std::string> Call(std::shared_ptr<grpc::Channel> channel) {
    auto stub = v1::Controller::NewStub(channel);
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::DeleteResponse r;
    grpc::Status s = stub->Delete(&ctx, v1::DeleteRequest(), &r);
    if (!s.ok()) return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
    return r.result();
  }
  absl::StatusOr<std::string> CallAs(const std::string& dir, const Identity& expected) {
    TlsOptions o;
    o.dir = dir;
    auto tls = ClientTls::Create(o);
    if (!tls.ok()) return tls.status();
    grpc::ChannelArguments args;
    args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
    auto channel = (*tls)->Channel(Target(), expected, args);
    if (!channel.ok()) return channel.status();
    return Call(*channel);
  }
  // A client that presents `dir`'s files as they are (even expired) and trusts ca.crt.
  absl::StatusOr<std::string> CallRaw(const std::string& dir) { return Call(TestPki::PresentAsIs(dir)); }

  std::string root_;
  WhoAmI service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(TlsTest, MutualTlsCarriesTheClientsIdentity) {
  Serve(Issue(Identity::Controller()), Identity::Controller());
  auto who = CallAs(Issue(Identity::User("alice", {"ops"})), Identity::Controller());
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "user alice (groups ops)");
  who = CallAs(Issue(Identity::Agent("node-a")), Identity::Controller());
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "agent node-a");
}

TEST_F(TlsTest, EachChannelsContextReusesTheKeyAndCertificatesDecodedBefore) {
  // gRPC builds an OpenSSL context per channel from the PEM files: the second channel is
  // given the key and certificates the first decoded (the readers gRPC calls are the
  // cache's), and its handshake succeeds with them.
  Serve(Issue(Identity::Controller()), Identity::Controller());
  TlsOptions o;
  o.dir = Issue(Identity::User("alice", {"ops"}));
  auto tls = ClientTls::Create(o);
  ASSERT_TRUE(tls.ok()) << tls.status();
  grpc::ChannelArguments args;
  args.SetInt(GRPC_ARG_USE_LOCAL_SUBCHANNEL_POOL, 1);
  auto first = (*tls)->Channel(Target(), Identity::Controller(), args);
  ASSERT_TRUE(first.ok()) << first.status();
  auto who = Call(*first);
  ASSERT_TRUE(who.ok()) << who.status();
  const PemCacheCounts before = PemCacheStats();
  auto second = (*tls)->Channel(Target(), Identity::Controller(), args);
  ASSERT_TRUE(second.ok()) << second.status();
  who = Call(*second);
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_EQ(*who, "user alice (groups ops)");
  const PemCacheCounts after = PemCacheStats();
  EXPECT_EQ(after.hits - before.hits, 3);  // its key, its certificate, the CA
  EXPECT_EQ(after.misses, before.misses);
}

TEST_F(TlsTest, ConnectionsReleaseTheirRecordBuffersWhenIdle) {
  // gRPC's own SSL objects (both ends of a new connection) are made with
  // SSL_MODE_RELEASE_BUFFERS: the wrapper of SSL_new is the one gRPC's calls reach.
  Serve(Issue(Identity::Controller()), Identity::Controller());
  const int64_t before = TlsConnectionsReleasingBuffers();
  auto who = CallAs(Issue(Identity::Agent("node-a")), Identity::Controller());
  ASSERT_TRUE(who.ok()) << who.status();
  EXPECT_GE(TlsConnectionsReleasingBuffers(), before + 2);
  // And any other.
  SSL_CTX* ctx = SSL_CTX_new(TLS_method());
  ASSERT_NE(ctx, nullptr);
  SSL* ssl = SSL_new(ctx);
  ASSERT_NE(ssl, nullptr);
  EXPECT_NE(SSL_get_mode(ssl) & SSL_MODE_RELEASE_BUFFERS, 0u);
  EXPECT_EQ(SSL_CTX_get_mode(ctx) & SSL_MODE_RELEASE_BUFFERS, 0u);  // set on the connection, not the context
  SSL_free(ssl);
  SSL_CTX_free(ctx);
}

TEST_F(TlsTest, ClientRefusesAServerThatIsNotWhoItDialled) {
  Serve(Issue(Identity::Agent("node-b")), Identity::Agent("node-b"));
  auto who = CallAs(Issue(Identity::Controller()), Identity::Agent("node-a"));
  EXPECT_EQ(who.status().code(), absl::StatusCode::kUnavailable) << who.status();
  EXPECT_THAT(who.status().message(), HasSubstr("presented the certificate of agent node-b, not of agent node-a"));
  EXPECT_TRUE(CallAs(root_ + "/controller", Identity::Agent("node-b")).ok());
}

TEST_F(TlsTest, ServerRefusesPlaintextForeignAndExpiredClients) {
  Serve(Issue(Identity::Controller()), Identity::Controller());
  EXPECT_FALSE(Call(grpc::InsecureChannelCredentials()).ok());

  std::string other = root_ + "/other";
  ASSERT_TRUE(InitCa(other, absl::Now(), absl::Hours(24)).ok());
  std::string foreign = Issue(Identity::User("mallory", {"fleet-admins"}), root_ + "/mallory", -absl::Minutes(1),
                              absl::Hours(1), other);
  auto who = CallRaw(foreign);
  EXPECT_FALSE(who.ok()) << *who;

  std::string expired = Issue(Identity::User("alice", {"fleet-admins"}), root_ + "/expired", -absl::Hours(2),
                              -absl::Hours(1));
  who = CallRaw(expired);
  EXPECT_FALSE(who.ok()) << *who;
  // ... and refuses to load it as our own credentials, saying why.
  EXPECT_THAT(CallAs(expired, Identity::Controller()).status().message(), HasSubstr("expired"));
  // The same client with a valid certificate gets through.
  EXPECT_TRUE(CallRaw(Issue(Identity::User("alice"))).ok());
}

TEST_F(TlsTest, CertificatesReplacedInPlaceAreUsedWithoutRestart) {
  std::string dir = Issue(Identity::Agent("node-b"), root_ + "/served");
  Serve(dir, Identity::Agent("node-b"));
  std::string client = Issue(Identity::Controller());
  EXPECT_FALSE(CallAs(client, Identity::Agent("node-a")).ok());
  Issue(Identity::Agent("node-a"), dir);
  bool rotated = false;
  for (int i = 0; i < 100 && !rotated; ++i) {
    rotated = CallAs(client, Identity::Agent("node-a")).ok();
    if (!rotated) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  EXPECT_TRUE(rotated);
}

TEST_F(TlsTest, ADaemonServesOnlyWithItsOwnCertificate) {
  TlsOptions o;
  o.dir = Issue(Identity::Agent("node-b"));
  auto creds = ServerCredentials(o, "127.0.0.1:0", Identity::Agent("node-a"));
  EXPECT_THAT(creds.status().message(), HasSubstr("is the certificate of agent node-b, not of agent node-a"));
  o.dir = Issue(Identity::User("alice"));
  EXPECT_FALSE(ServerCredentials(o, "127.0.0.1:0", Identity::Controller()).ok());
}

TEST(TransportTest, PlaintextOnlyWhenAskedAndOnlyOnLoopback) {
  TlsOptions none;
  EXPECT_THAT(CheckTransport(none, "127.0.0.1:7100", "--listen").message(), HasSubstr("mkapply certs init"));
  TlsOptions insecure;
  insecure.insecure = true;
  EXPECT_TRUE(CheckTransport(insecure, "127.0.0.1:7100", "--listen").ok());
  EXPECT_TRUE(CheckTransport(insecure, "[::1]:7100", "--listen").ok());
  EXPECT_TRUE(CheckTransport(insecure, "localhost:7100", "--listen").ok());
  absl::Status wide = CheckTransport(insecure, "0.0.0.0:7100", "--listen");
  EXPECT_EQ(wide.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(wide.message(), HasSubstr("--listen 0.0.0.0:7100: --insecure (plaintext) is refused"));
  EXPECT_THAT(wide.message(), HasSubstr("--tls-dir"));
  EXPECT_FALSE(CheckTransport(insecure, "10.0.0.5:7100", "--listen").ok());
  EXPECT_FALSE(CheckTransport(insecure, "[::]:7100", "--listen").ok());
  EXPECT_FALSE(ServerCredentials(insecure, "0.0.0.0:0", Identity::Controller()).ok());
  auto tls = ClientTls::Create(insecure);
  ASSERT_TRUE(tls.ok());
  EXPECT_FALSE((*tls)->Credentials("192.168.1.1:7101", Identity::Agent("a")).ok());
  EXPECT_TRUE((*tls)->Credentials("127.0.0.1:7101", Identity::Agent("a")).ok());
}

}  // namespace
}  // namespace mkfleet::security
