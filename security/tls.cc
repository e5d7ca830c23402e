#include "security/tls.h"

#include <arpa/inet.h>

#include "CLI/CLI.hpp"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "grpcpp/security/server_credentials.h"
#include "grpcpp/security/tls_certificate_verifier.h"
#include "grpcpp/security/tls_credentials_options.h"
#include "common/status_macros.h"
#include "security/certs.h"

namespace mkfleet::security {
namespace {

using grpc::experimental::CertificateProviderInterface;
using grpc::experimental::FileWatcherCertificateProvider;
using grpc::experimental::StaticDataCertificateProvider;

constexpr char kHowTo[] =
    "make a fleet CA and certificates with `mkapply certs init DIR` and pass the folder of this "
    "program's identity with --tls-dir (README: \"Securing a fleet\"); plaintext is only for a "
    "loopback address, with --insecure";

// The host part of "host:port" / "[v6]:port".
std::string HostOf(absl::string_view host_port) {
  if (!host_port.empty() && host_port[0] == '[') {
    size_t end = host_port.find(']');
    return std::string(host_port.substr(1, end == absl::string_view::npos ? absl::string_view::npos : end - 1));
  }
  size_t colon = host_port.rfind(':');
  return std::string(host_port.substr(0, colon));
}

// Accepts the server only when its certificate names `expected` (the chain was checked
// against ca.crt before this runs).
class ExpectedPeerVerifier final : public grpc::experimental::ExternalCertificateVerifier {
 public:
  ExpectedPeerVerifier(Identity expected, std::string target)
      : expected_(std::move(expected)), target_(std::move(target)) {}

  bool Verify(grpc::experimental::TlsCustomVerificationCheckRequest* request,
              std::function<void(grpc::Status)>, grpc::Status* sync_status) override {
    std::string presented = "no mkfleet identity";
    for (const grpc::string_ref& uri : request->uri_names()) {
      auto id = IdentityFromUri(absl::string_view(uri.data(), uri.size()));
      if (!id.ok()) continue;
      if (id->kind == expected_.kind && id->name == expected_.name) {
        *sync_status = grpc::Status::OK;
        return true;
      }
      presented = id->ToString();
    }
    *sync_status = grpc::Status(grpc::StatusCode::UNAUTHENTICATED,
                                absl::StrCat(target_, " presented the certificate of ", presented, ", not of ",
                                             expected_.ToString()));
    return true;
  }
  void Cancel(grpc::experimental::TlsCustomVerificationCheckRequest*) override {}

 private:
  const Identity expected_;
  const std::string target_;
};

std::shared_ptr<CertificateProviderInterface> Provider(const TlsOptions& options, const TlsCredentials& loaded,
                                                       bool watch) {
  if (!watch) {
    return std::make_shared<StaticDataCertificateProvider>(
        loaded.ca_pem, std::vector<grpc::experimental::IdentityKeyCertPair>{{loaded.key_pem, loaded.cert_pem}});
  }
  return std::make_shared<FileWatcherCertificateProvider>(
      options.dir + "/" + kKeyFile, options.dir + "/" + kCertFile, options.dir + "/" + kCaCertFile,
      static_cast<unsigned>(std::max(1, options.reload_seconds)));
}

}  // namespace

void AddTlsFlags(CLI::App& app, TlsOptions* options, const std::string& what, const std::string& env) {
  auto* dir = app.add_option("--tls-dir", options->dir,
                             "the folder of " + what +
                                 "'s credentials: ca.crt, tls.crt, tls.key (made by `mkapply certs`); re-read when "
                                 "they change");
  if (!env.empty()) dir->envname(env);
  app.add_flag("--insecure", options->insecure,
               "plaintext gRPC with no identities: only on a loopback address (tests, a laptop)");
  app.add_option("--tls-reload", options->reload_seconds,
                 "seconds between checks of the credential files for a new version (default 5)")
      ->check(CLI::Range(1, 86400));
}

bool IsLoopbackAddress(absl::string_view host_port) {
  std::string host = absl::AsciiStrToLower(HostOf(host_port));
  if (host == "localhost") return true;
  in_addr v4{};
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  in6_addr v6{};
  return inet_pton(AF_INET6, host.c_str(), &v6) == 1 && IN6_IS_ADDR_LOOPBACK(&v6);
}

namespace {

// Exactly one of --tls-dir and --insecure.
absl::Status CheckChoice(const TlsOptions& options) {
  if (options.insecure && !options.dir.empty()) {
    return absl::FailedPreconditionError("--insecure and --tls-dir: choose one");
  }
  if (!options.insecure && options.dir.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("no TLS credentials: ", kHowTo));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status CheckTransport(const TlsOptions& options, absl::string_view address, absl::string_view flag) {
  MK_RETURN_IF_ERROR(CheckChoice(options));
  if (options.insecure) {
    if (IsLoopbackAddress(address)) return absl::OkStatus();
    return absl::FailedPreconditionError(absl::StrCat(flag, " ", address, ": --insecure (plaintext) is refused for a ",
                                                      "non-loopback address; ", kHowTo));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsOptions& options,
                                                                          absl::string_view listen,
                                                                          const Identity& self, bool watch) {
  if (absl::Status s = CheckTransport(options, listen, "--listen"); !s.ok()) return s;
  if (options.insecure) return grpc::InsecureServerCredentials();
  MK_ASSIGN_OR_RETURN(TlsCredentials loaded, LoadTlsDir(options.dir, absl::Now()));
  if (!(loaded.identity == self)) {
    return absl::FailedPreconditionError(absl::StrCat(options.dir, "/tls.crt is the certificate of ",
                                                      loaded.identity.ToString(), ", not of ", self.ToString(),
                                                      " (issue one with `mkapply certs issue`)"));
  }
  grpc::experimental::TlsServerCredentialsOptions o(Provider(options, loaded, watch));
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_cert_request_type(GRPC_SSL_REQUEST_AND_REQUIRE_CLIENT_CERTIFICATE_AND_VERIFY);
  return grpc::experimental::TlsServerCredentials(o);
}

absl::StatusOr<std::shared_ptr<ClientTls>> ClientTls::Create(const TlsOptions& options) {
  MK_RETURN_IF_ERROR(CheckChoice(options));
  std::shared_ptr<ClientTls> out(new ClientTls(options));
  if (options.insecure) return out;
  MK_ASSIGN_OR_RETURN(TlsCredentials loaded, LoadTlsDir(options.dir, absl::Now()));
  out->self_ = loaded.identity;
  out->provider_ = Provider(options, loaded, /*watch=*/true);
  return out;
}

absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> ClientTls::Credentials(absl::string_view target,
                                                                               const Identity& expected) const {
  if (options_.insecure) {
    if (!IsLoopbackAddress(target)) {
      return absl::FailedPreconditionError(absl::StrCat("plaintext to ", target,
                                                        " refused (not a loopback address, and this process runs "
                                                        "--insecure); ",
                                                        kHowTo));
    }
    return grpc::InsecureChannelCredentials();
  }
  grpc::experimental::TlsChannelCredentialsOptions o;
  o.set_certificate_provider(provider_);
  o.watch_root_certs();
  o.watch_identity_key_cert_pairs();
  o.set_verify_server_certs(true);
  o.set_check_call_host(false);
  o.set_certificate_verifier(grpc::experimental::ExternalCertificateVerifier::Create<ExpectedPeerVerifier>(
      expected, std::string(target)));
  return grpc::experimental::TlsCredentials(o);
}

absl::StatusOr<std::shared_ptr<grpc::Channel>> ClientTls::Channel(absl::string_view target, const Identity& expected,
                                                                 grpc::ChannelArguments args) const {
  MK_ASSIGN_OR_RETURN(std::shared_ptr<grpc::ChannelCredentials> creds, Credentials(target, expected));
  if (!options_.insecure) args.SetSslTargetNameOverride(expected.DnsName());
  return grpc::CreateCustomChannel(std::string(target), creds, args);
}

std::string PeerKey(const grpc::ServerContextBase& context) {
  Identity id = PeerIdentity(context);
  if (id.kind != Identity::Kind::kNone) return id.ToString();
  std::string peer = context.peer();
  size_t colon = peer.rfind(':');
  return colon == std::string::npos ? peer : peer.substr(0, colon);
}

Identity PeerIdentity(const grpc::ServerContextBase& context) {
  std::shared_ptr<const grpc::AuthContext> auth = context.auth_context();
  if (auth == nullptr || !auth->IsPeerAuthenticated()) return Identity{};
  std::vector<grpc::string_ref> pems = auth->FindPropertyValues(GRPC_X509_PEM_CERT_PROPERTY_NAME);
  if (pems.empty()) return Identity{};
  std::string pem(pems[0].data(), pems[0].size());
  // A handful of certificates call all day long: parse each once.
  static absl::Mutex mu(absl::kConstInit);
  static auto* cache = new absl::flat_hash_map<std::string, Identity>();
  absl::MutexLock lock(&mu);
  auto it = cache->find(pem);
  if (it != cache->end()) return it->second;
  if (cache->size() >= 4096) cache->clear();
  auto id = IdentityFromCertPem(pem);
  return (*cache)[pem] = id.ok() ? *id : Identity{};
}

}  // namespace mkfleet::security
