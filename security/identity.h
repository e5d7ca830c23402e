// Identity: who is at the other end of a mutual-TLS connection, as the fleet CA wrote it in
// the peer's certificate (security/certs.h issues them):
//   controller  URI SAN spiffe://mkfleet/controller, DNS SAN mkcontroller
//   agent       URI SAN spiffe://mkfleet/agent/<host>, DNS SAN <host>
//   user        URI SAN spiffe://mkfleet/user/<name>, subject CN=<name>, one O=<group> each
// Only the CA's signature makes these claims true: the TLS layer checks it before an
// Identity is ever built. Values; thread-compatible.
#ifndef MKFLEET_SECURITY_IDENTITY_H_
#define MKFLEET_SECURITY_IDENTITY_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mkfleet::security {

inline constexpr char kTrustDomain[] = "spiffe://mkfleet/";

struct Identity {
  enum class Kind {
    kNone,        // no certificate (a plaintext connection, or one that is not ours)
    kController,
    kAgent,
    kUser,
  };
  Kind kind = Kind::kNone;
  std::string name;                 // the host (agent) or the user; "mkcontroller" for the controller
  std::vector<std::string> groups;  // users only: the subject's O entries, in order

  static Identity Controller() { return {Kind::kController, "mkcontroller", {}}; }
  static Identity Agent(std::string host) { return {Kind::kAgent, std::move(host), {}}; }
  static Identity User(std::string name, std::vector<std::string> groups = {}) {
    return {Kind::kUser, std::move(name), std::move(groups)};
  }

  // The certificate's URI SAN for this identity ("spiffe://mkfleet/agent/node-a").
  std::string Uri() const;
  // The DNS name in the certificate, which TLS clients send as the server name:
  // "mkcontroller" or the host's name ("" for users, who never serve).
  std::string DnsName() const;
  // For messages: "controller", "agent node-a", "user alice (groups ops, dev)", "no certificate".
  std::string ToString() const;
  bool operator==(const Identity& o) const { return kind == o.kind && name == o.name && groups == o.groups; }
};

// What a certificate's URI SAN says, or InvalidArgument for a URI that is not ours.
absl::StatusOr<Identity> IdentityFromUri(absl::string_view uri);

// The identity in a PEM certificate (its one URI SAN under kTrustDomain; users' groups from
// the subject's O entries). InvalidArgument when it has none, or more than one.
// Does not check the signature: callers have (the TLS handshake, or VerifyAgainstCa).
absl::StatusOr<Identity> IdentityFromCertPem(absl::string_view pem);

// A user or group name as certificates and RoleBindings may write it: 1-64 characters of
// [a-z0-9._@-], starting with a letter or digit. InvalidArgument naming `what` otherwise.
absl::Status CheckPrincipalName(absl::string_view name, absl::string_view what);

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_IDENTITY_H_
