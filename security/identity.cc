#include "security/identity.h"

#include <openssl/bio.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>

#include <memory>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/formats.h"
#include "security/openssl_util.h"

namespace mkfleet::security {

std::string Identity::Uri() const {
  switch (kind) {
    case Kind::kController:
      return absl::StrCat(kTrustDomain, "controller");
    case Kind::kAgent:
      return absl::StrCat(kTrustDomain, "agent/", name);
    case Kind::kUser:
      return absl::StrCat(kTrustDomain, "user/", name);
    case Kind::kNone:
      break;
  }
  return "";
}

std::string Identity::DnsName() const {
  if (kind == Kind::kController || kind == Kind::kAgent) return name;
  return "";
}

std::string Identity::ToString() const {
  switch (kind) {
    case Kind::kController:
      return "controller";
    case Kind::kAgent:
      return absl::StrCat("agent ", name);
    case Kind::kUser:
      if (groups.empty()) return absl::StrCat("user ", name);
      return absl::StrCat("user ", name, " (groups ", absl::StrJoin(groups, ", "), ")");
    case Kind::kNone:
      break;
  }
  return "no certificate";
}

absl::Status CheckPrincipalName(absl::string_view name, absl::string_view what) {
  if (manifests::IsPrincipalName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, ": \"", absl::CEscape(name.substr(0, 80)),
                                                 "\" is not a valid name (1-64 characters of a-z 0-9 . _ @ -, "
                                                 "starting with a letter or digit)"));
}

absl::StatusOr<Identity> IdentityFromUri(absl::string_view uri) {
  if (!absl::ConsumePrefix(&uri, kTrustDomain)) {
    return absl::InvalidArgumentError(absl::StrCat("URI \"", absl::CEscape(uri), "\" is not under ", kTrustDomain));
  }
  if (uri == "controller") return Identity::Controller();
  if (absl::ConsumePrefix(&uri, "agent/") && manifests::IsDnsLabel(uri)) return Identity::Agent(std::string(uri));
  if (absl::ConsumePrefix(&uri, "user/") && CheckPrincipalName(uri, "user").ok()) {
    return Identity::User(std::string(uri));
  }
  return absl::InvalidArgumentError(absl::StrCat("URI \"", kTrustDomain, absl::CEscape(uri),
                                                 "\" names no controller, agent or user"));
}

absl::StatusOr<Identity> IdentityFromCertPem(absl::string_view pem) {
  MK_ASSIGN_OR_RETURN(X509Ptr cert, ParseCertPem(pem));
  return IdentityOfCert(cert.get());
}

}  // namespace mkfleet::security
