// Verifies a commit's OpenPGP signature against a keyring file with GPGME.
//
// The keyring is imported into a private GnuPG home under `home` (one folder per keyring
// content, so an edited keyring takes effect on the next check and a removed key stops
// verifying); nothing touches the user's own keys. A signature is good when gpg says it
// is (made by a key of the keyring, not expired, not revoked); key trust levels play no
// part: being in the keyring is the trust.
//
// Thread-safety: Verify may be called from several threads (each call has its own GPGME
// context; imports are serialized).
#ifndef MKFLEET_GITOPS_SIGNATURE_H_
#define MKFLEET_GITOPS_SIGNATURE_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"

namespace mkfleet::gitops {

class SignatureVerifier {
 public:
  explicit SignatureVerifier(std::string home) : home_(std::move(home)) {}

  // The signing key's fingerprint when `signature` (armored) over `signed_data` verifies
  // against the keys in `keyring_file`; PermissionDenied with the reason otherwise
  // ("not signed", "signed by key 0x... which is not in the keyring", "bad signature").
  absl::StatusOr<std::string> Verify(const std::string& keyring_file, const std::string& signature,
                                     const std::string& signed_data);

 private:
  // The GnuPG home holding exactly `keyring_file`'s keys.
  absl::StatusOr<std::string> HomeFor(const std::string& keyring_file);
  const std::string home_;
  absl::Mutex mu_;
};

}  // namespace mkfleet::gitops

#endif  // MKFLEET_GITOPS_SIGNATURE_H_
