#include "security/certs.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "security/identity.h"

namespace mkfleet::security {
namespace {

using ::testing::HasSubstr;
namespace fs = std::filesystem;

class CertsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = (fs::path(::testing::TempDir()) / ("certs-" + std::to_string(getpid()))).string();
    fs::remove_all(root_);
    ASSERT_TRUE(InitCa(root_, now_, absl::Hours(24 * 365)).ok());
  }
  void TearDown() override { fs::remove_all(root_); }

  CertOptions Options(Identity id) {
    CertOptions o;
    o.identity = std::move(id);
    o.not_before = now_ - absl::Minutes(1);
    o.not_after = now_ + absl::Hours(24);
    return o;
  }

  const absl::Time now_ = absl::Now();
  std::string root_;
};

TEST_F(CertsTest, IssuedFolderLoadsWithItsIdentity) {
  ASSERT_TRUE(IssueCert(root_, Options(Identity::User("alice", {"ops", "dev"})), root_ + "/users/alice").ok());
  auto loaded = LoadTlsDir(root_ + "/users/alice", now_);
  ASSERT_TRUE(loaded.ok()) << loaded.status();
  EXPECT_EQ(loaded->identity, Identity::User("alice", {"ops", "dev"}));
  EXPECT_EQ(loaded->identity.ToString(), "user alice (groups ops, dev)");
  EXPECT_GT(loaded->not_after, now_ + absl::Hours(23));
  struct stat st {};
  ASSERT_EQ(stat((root_ + "/users/alice/tls.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
  ASSERT_EQ(stat((root_ + "/ca.key").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);

  ASSERT_TRUE(IssueCert(root_, Options(Identity::Agent("node-a")), IdentityDir(root_, Identity::Agent("node-a"))).ok());
  auto agent = LoadTlsDir(root_ + "/agents/node-a", now_);
  ASSERT_TRUE(agent.ok()) << agent.status();
  EXPECT_EQ(agent->identity, Identity::Agent("node-a"));
  auto id = IdentityFromCertPem(agent->cert_pem);
  ASSERT_TRUE(id.ok());
  EXPECT_EQ(id->Uri(), "spiffe://mkfleet/agent/node-a");
}

TEST_F(CertsTest, ACaIsNeverReplaced) {
  auto again = InitCa(root_, now_, absl::Hours(1));
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
}

TEST_F(CertsTest, ExpiredNotYetValidAndForeignCertificatesAreRefused) {
  CertOptions expired = Options(Identity::Controller());
  expired.not_before = now_ - absl::Hours(48);
  expired.not_after = now_ - absl::Hours(24);
  ASSERT_TRUE(IssueCert(root_, expired, root_ + "/old").ok());
  auto loaded = LoadTlsDir(root_ + "/old", now_);
  EXPECT_EQ(loaded.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(loaded.status().message(), HasSubstr("certificate has expired"));

  CertOptions future = Options(Identity::Controller());
  future.not_before = now_ + absl::Hours(1);
  ASSERT_TRUE(IssueCert(root_, future, root_ + "/future").ok());
  EXPECT_THAT(LoadTlsDir(root_ + "/future", now_).status().message(), HasSubstr("not yet valid"));

  // Another CA's certificate, with our ca.crt beside it.
  std::string other = root_ + "/other-ca";
  ASSERT_TRUE(InitCa(other, now_, absl::Hours(24)).ok());
  ASSERT_TRUE(IssueCert(other, Options(Identity::Controller()), root_ + "/foreign").ok());
  fs::copy_file(root_ + "/ca.crt", root_ + "/foreign/ca.crt", fs::copy_options::overwrite_existing);
  EXPECT_THAT(LoadTlsDir(root_ + "/foreign", now_).status().message(), HasSubstr("not valid against ca.crt"));
}

TEST_F(CertsTest, KeyReadableByOthersOrNotMatchingIsRefused) {
  ASSERT_TRUE(IssueCert(root_, Options(Identity::Controller()), root_ + "/c").ok());
  ASSERT_EQ(chmod((root_ + "/c/tls.key").c_str(), 0644), 0);
  EXPECT_THAT(LoadTlsDir(root_ + "/c", now_).status().message(), HasSubstr("chmod 600"));
  ASSERT_EQ(chmod((root_ + "/c/tls.key").c_str(), 0600), 0);
  ASSERT_TRUE(IssueCert(root_, Options(Identity::Controller()), root_ + "/d").ok());
  fs::copy_file(root_ + "/d/tls.key", root_ + "/c/tls.key", fs::copy_options::overwrite_existing);
  EXPECT_THAT(LoadTlsDir(root_ + "/c", now_).status().message(), HasSubstr("is not the key of tls.crt"));
  EXPECT_THAT(LoadTlsDir(root_ + "/missing", now_).status().message(), HasSubstr("missing/ca.crt"));
}

TEST_F(CertsTest, NamesAreCheckedBeforeSigning) {
  EXPECT_EQ(IssueCert(root_, Options(Identity::Agent("../evil")), root_ + "/x").code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(IssueCert(root_, Options(Identity::User("alice", {"ops,URI:spiffe://mkfleet/controller"})), root_ + "/x")
                .code(),
            absl::StatusCode::kInvalidArgument);
  CertOptions o = Options(Identity::Controller());
  o.dns_names = {"a,URI:spiffe://mkfleet/controller"};
  EXPECT_EQ(IssueCert(root_, o, root_ + "/x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_FALSE(fs::exists(root_ + "/x"));
}

TEST(IdentityTest, UrisRoundTripAndForeignOnesAreRefused) {
  for (const Identity& id : {Identity::Controller(), Identity::Agent("node-a"), Identity::User("bob@example.com")}) {
    auto back = IdentityFromUri(id.Uri());
    ASSERT_TRUE(back.ok()) << id.Uri();
    EXPECT_EQ(*back, id);
  }
  EXPECT_FALSE(IdentityFromUri("spiffe://other/controller").ok());
  EXPECT_FALSE(IdentityFromUri("spiffe://mkfleet/agent/../x").ok());
  EXPECT_FALSE(IdentityFromUri("spiffe://mkfleet/admin").ok());
  EXPECT_FALSE(CheckPrincipalName("Alice", "user").ok());
  EXPECT_FALSE(CheckPrincipalName(std::string(65, 'a'), "user").ok());
}

}  // namespace
}  // namespace mkfleet::security
