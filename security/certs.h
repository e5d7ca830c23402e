// The fleet's certificate authority and the credentials it issues, with OpenSSL's C API
// (libcrypto; no `openssl` command is run). Keys are ECDSA P-256, signatures SHA-256.
//
// A credentials folder holds one identity: ca.crt (the fleet CA, to check peers), tls.crt
// (the identity's certificate) and tls.key (its private key, mode 0600). `certs init ROOT`
// lays them out as
//   ROOT/ca.crt, ROOT/ca.key         the CA (keep ca.key offline once issuing is done)
//   ROOT/controller/                 mkcontroller --tls-dir
//   ROOT/agents/<host>/              mkagent --tls-dir (the host's name in the SAN)
//   ROOT/users/<name>/               mkapply --tls-dir (CN the user, O each group)
// Files are replaced atomically, so daemons that re-read them (rotation) never see half.
// Thread-safe (stateless).
#ifndef MKFLEET_SECURITY_CERTS_H_
#define MKFLEET_SECURITY_CERTS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "security/identity.h"

namespace mkfleet::security {

inline constexpr char kCaCertFile[] = "ca.crt";
inline constexpr char kCertFile[] = "tls.crt";
inline constexpr char kKeyFile[] = "tls.key";

// ROOT/controller, ROOT/agents/<host> or ROOT/users/<name>.
std::string IdentityDir(const std::string& root, const Identity& identity);

// Makes ROOT/ca.crt and ROOT/ca.key (a self-signed CA valid from `now` for `validity`).
// AlreadyExists when ROOT/ca.key exists (a CA is never replaced by accident).
absl::Status InitCa(const std::string& root, absl::Time now, absl::Duration validity);

struct CertOptions {
  Identity identity;                    // controller, agent or user (see identity.h)
  std::vector<std::string> dns_names;   // extra DNS names (the controller's, for other TLS clients)
  std::vector<std::string> ip_addresses;
  absl::Time not_before;
  absl::Time not_after;

  // `identity`'s certificate, valid from five minutes before `now` (clocks differ a little)
  // until `now` + `validity`.
  static CertOptions For(Identity identity, absl::Time now, absl::Duration validity) {
    CertOptions o;
    o.identity = std::move(identity);
    o.not_before = now - absl::Minutes(5);
    o.not_after = now + validity;
    return o;
  }
};

// Signs a new key pair for `options` with the CA in `root` and writes it to `out_dir`
// (created 0700): ca.crt, tls.crt, tls.key. Replaces what is there (rotation).
absl::Status IssueCert(const std::string& root, const CertOptions& options, const std::string& out_dir);

// A credentials folder read and checked.
struct TlsCredentials {
  std::string ca_pem, cert_pem, key_pem;
  Identity identity;   // what tls.crt names
  absl::Time not_after;
};

// Reads `dir`'s three files and checks them: each parses, the key is tls.crt's, tls.crt is
// the CA's and valid at `now`, names an mkfleet identity, and tls.key is readable by its
// owner only. FailedPrecondition naming the file and what to do otherwise.
absl::StatusOr<TlsCredentials> LoadTlsDir(const std::string& dir, absl::Time now);

// Checks `cert_pem` against the CA in `ca_pem` at `now`: OK, or PermissionDenied with
// OpenSSL's reason ("certificate has expired").
absl::Status VerifyAgainstCa(const std::string& cert_pem, const std::string& ca_pem, absl::Time now);

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_CERTS_H_
