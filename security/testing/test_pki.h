// TestPki: a fleet CA for tests, in a folder of the test's own (certs.h layout), with the
// controller's and an admin user's credentials made at once and any other identity on first
// use; and channels that present one identity and expect another, as the binaries do.
// Thread-compatible.
#ifndef MKFLEET_SECURITY_TESTING_TEST_PKI_H_
#define MKFLEET_SECURITY_TESTING_TEST_PKI_H_

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "absl/time/clock.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "gtest/gtest.h"
#include "security/certs.h"
#include "security/tls.h"

namespace mkfleet::security {

class TestPki {
 public:
  explicit TestPki(std::string root) : root_(std::move(root)) {
    std::filesystem::remove_all(root_);
    absl::Status s = InitCa(root_, absl::Now(), absl::Hours(24));
    EXPECT_TRUE(s.ok()) << s;
    controller_ = Issue(Identity::Controller());
    admin_ = Issue(Identity::User("admin", {"fleet-admins"}));
  }

  const std::string& root() const { return root_; }
  const std::string& controller() const { return controller_; }
  const std::string& admin() const { return admin_; }
  std::string agent(const std::string& host) { return Issue(Identity::Agent(host)); }
  std::string user(const std::string& name, std::vector<std::string> groups = {}) {
    return Issue(Identity::User(name, std::move(groups)));
  }

  // Issues `id`'s credentials (again, if `out` is given or they do not exist yet).
  std::string Issue(const Identity& id, std::string out = "", absl::Duration from = -absl::Minutes(1),
                    absl::Duration to = absl::Hours(2)) {
    bool fixed = out.empty();
    if (fixed) out = IdentityDir(root_, id);
    if (fixed && std::filesystem::exists(out + "/tls.key")) return out;
    CertOptions o;
    o.identity = id;
    o.not_before = absl::Now() + from;
    o.not_after = absl::Now() + to;
    absl::Status s = IssueCert(root_, o, out);
    EXPECT_TRUE(s.ok()) << s;
    return out;
  }

  // Credentials that present `dir`'s files as they are (even expired, or another CA's) and
  // accept any server signed by its ca.crt: a client that skips every check of its own, to
  // see what the server refuses.
  static std::shared_ptr<grpc::ChannelCredentials> PresentAsIs(const std::string& dir) {
    auto read = [&](const char* f) {
      std::ifstream in(dir + "/" + f);
      return std::string(std::istreambuf_iterator<char>(in), {});
    };
    grpc::experimental::TlsChannelCredentialsOptions o;
    o.set_certificate_provider(std::make_shared<grpc::experimental::StaticDataCertificateProvider>(
        read("ca.crt"), std::vector<grpc::experimental::IdentityKeyCertPair>{{read("tls.key"), read("tls.crt")}}));
    o.watch_root_certs();
    o.watch_identity_key_cert_pairs();
    o.set_check_call_host(false);
    o.set_certificate_verifier(std::make_shared<grpc::experimental::NoOpCertificateVerifier>());
    return grpc::experimental::TlsCredentials(o);
  }

  // A channel to `target` presenting the credentials in `dir`, that only `expected` may
  // answer.
  static std::shared_ptr<grpc::Channel> Channel(const std::string& dir, const std::string& target,
                                                const Identity& expected, grpc::ChannelArguments args = {}) {
    TlsOptions o;
    o.dir = dir;
    auto tls = ClientTls::Create(o);
    EXPECT_TRUE(tls.ok()) << tls.status();
    auto channel = (*tls)->Channel(target, expected, std::move(args));
    EXPECT_TRUE(channel.ok()) << channel.status();
    return *channel;
  }

 private:
  std::string root_;
  std::string controller_;
  std::string admin_;
};

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_TESTING_TEST_PKI_H_
