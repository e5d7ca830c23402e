// Transport security of every mkfleet connection: mutual TLS on gRPC's TLS credentials
// (OpenSSL underneath), or plaintext only when asked for with --insecure and only on a
// loopback address.
//
// Both ends present a certificate of the fleet CA (certs.h). A server requires and checks
// the client's; a client checks that the server is the identity it meant to reach (the
// controller, or the agent of one named Host), whatever address it dialled. The credential
// files are re-read every few seconds, so a certificate replaced in place (rotation) takes
// effect for new connections without a restart.
// Thread-safety: ClientTls and PeerIdentity are safe to use from any thread.
#ifndef MKFLEET_SECURITY_TLS_H_
#define MKFLEET_SECURITY_TLS_H_

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"
#include "grpcpp/grpcpp.h"
#include "grpcpp/security/tls_certificate_provider.h"
#include "security/identity.h"

namespace CLI {
class App;
}

namespace mkfleet::security {

struct TlsOptions {
  std::string dir;        // a credentials folder: ca.crt, tls.crt, tls.key (certs.h)
  bool insecure = false;  // plaintext; loopback addresses only
  int reload_seconds = 5; // how often the files are checked for a new version
};

// Adds --tls-dir, --insecure and --tls-reload to `app`. `env` (if not empty) names an
// environment variable that gives --tls-dir's default (MKFLEET_TLS_DIR for mkapply).
void AddTlsFlags(CLI::App& app, TlsOptions* options, const std::string& what, const std::string& env = "");

// True for 127.0.0.0/8, [::1] and localhost, with a port ("127.0.0.1:7100").
bool IsLoopbackAddress(absl::string_view host_port);

// Exactly one of --tls-dir and --insecure, and --insecure only with `address` loopback.
// FailedPrecondition otherwise, saying how to set TLS up. `flag` names the address's
// flag ("--listen", "--controller") in the message.
absl::Status CheckTransport(const TlsOptions& options, absl::string_view address, absl::string_view flag);

// Server credentials for `listen`: mutual TLS with the folder's files (checked first by
// LoadTlsDir, and the certificate must name `self`; re-read every reload_seconds when
// `watch`, else read once), or plaintext as CheckTransport allows. Errors name the file
// and the fix.
absl::StatusOr<std::shared_ptr<grpc::ServerCredentials>> ServerCredentials(const TlsOptions& options,
                                                                          absl::string_view listen,
                                                                          const Identity& self, bool watch = true);

// The client side of one process: its own identity's files (one provider, one reload
// thread, shared by every channel it makes).
class ClientTls {
 public:
  // Checks the folder (LoadTlsDir) unless insecure.
  static absl::StatusOr<std::shared_ptr<ClientTls>> Create(const TlsOptions& options);

  // Credentials to dial `target` where only `expected` may answer (the handshake fails
  // otherwise, before any request is sent). Plaintext, when insecure, only to a loopback
  // target: FailedPrecondition for any other.
  absl::StatusOr<std::shared_ptr<grpc::ChannelCredentials>> Credentials(absl::string_view target,
                                                                      const Identity& expected) const;
  // A channel to `target` with Credentials(target, expected) and `args` (plus the TLS
  // server name of `expected`, so that the server finds its certificate by name).
  absl::StatusOr<std::shared_ptr<grpc::Channel>> Channel(absl::string_view target, const Identity& expected,
                                                         grpc::ChannelArguments args = {}) const;
  bool insecure() const { return options_.insecure; }
  // Whom this process presents (kNone when insecure).
  const Identity& self() const { return self_; }

 private:
  explicit ClientTls(TlsOptions options) : options_(std::move(options)) {}
  TlsOptions options_;
  Identity self_;
  std::shared_ptr<grpc::experimental::CertificateProviderInterface> provider_;
};

// Who made the call: the identity in the client's certificate (cached per certificate),
// or kNone for a plaintext connection.
Identity PeerIdentity(const grpc::ServerContextBase& context);

// The caller for per-client limits: its identity ("user alice"), or for a plaintext
// connection its address without the port ("ipv4:127.0.0.1").
std::string PeerKey(const grpc::ServerContextBase& context);

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_TLS_H_
