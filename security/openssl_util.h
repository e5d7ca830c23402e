// Private to security/: OpenSSL objects owned by unique_ptr, PEM in and out, and the one place
// certificates are read for identities. Thread-safe (OpenSSL 3 is).
#ifndef MKFLEET_SECURITY_OPENSSL_UTIL_H_
#define MKFLEET_SECURITY_OPENSSL_UTIL_H_

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/x509.h>

#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "common/status_macros.h"
#include "security/identity.h"

namespace mkfleet::security {

struct X509Free {
  void operator()(X509* x) const { X509_free(x); }
};
struct PkeyFree {
  void operator()(EVP_PKEY* k) const { EVP_PKEY_free(k); }
};
using X509Ptr = std::unique_ptr<X509, X509Free>;
using PkeyPtr = std::unique_ptr<EVP_PKEY, PkeyFree>;

// The message of OpenSSL's latest queued error (and clears the queue), or `fallback`.
std::string OpenSslError(absl::string_view fallback);

// The first certificate in `pem`. InvalidArgument when there is none.
absl::StatusOr<X509Ptr> ParseCertPem(absl::string_view pem);
// The private key in `pem` (unencrypted). InvalidArgument when there is none.
absl::StatusOr<PkeyPtr> ParseKeyPem(absl::string_view pem);
absl::StatusOr<std::string> CertToPem(X509* cert);
absl::StatusOr<std::string> KeyToPem(EVP_PKEY* key);

// The identity `cert` names (see identity.h); does not check its signature.
absl::StatusOr<Identity> IdentityOfCert(X509* cert);

// "2027-12-02 19:44:10 UTC" for an ASN1 time.
std::string FormatAsn1Time(const ASN1_TIME* t);

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_OPENSSL_UTIL_H_
