#include "security/certs.h"

#include <openssl/bn.h>
#include <openssl/ec.h>
#include <openssl/err.h>
#include <openssl/rand.h>
#include <openssl/x509v3.h>
#include <sys/stat.h>

#include <filesystem>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/file_util.h"
#include "manifests/formats.h"
#include "security/openssl_util.h"

namespace mkfleet::security {
namespace {

struct StoreFree {
  void operator()(X509_STORE* s) const { X509_STORE_free(s); }
};
struct StoreCtxFree {
  void operator()(X509_STORE_CTX* c) const { X509_STORE_CTX_free(c); }
};

absl::StatusOr<PkeyPtr> NewKey() {
  PkeyPtr key(EVP_EC_gen("P-256"));
  if (key == nullptr) return absl::InternalError("key generation: " + OpenSslError("EVP_EC_gen failed"));
  return key;
}

absl::Status AddExtension(X509* cert, X509* issuer, int nid, const std::string& value) {
  X509V3_CTX ctx;
  X509V3_set_ctx(&ctx, issuer, cert, nullptr, nullptr, 0);
  X509_EXTENSION* ext = X509V3_EXT_nconf_nid(nullptr, &ctx, nid, value.c_str());
  if (ext == nullptr) return absl::InternalError(absl::StrCat("extension ", value, ": ", OpenSslError("invalid")));
  int added = X509_add_ext(cert, ext, -1);
  X509_EXTENSION_free(ext);
  if (added != 1) return absl::InternalError("X509_add_ext: " + OpenSslError("failed"));
  return absl::OkStatus();
}

// A certificate for `key` with a random 127-bit serial, subject `cn` (and `orgs`), valid
// from `from` to `to`; not yet signed, no extensions.
absl::StatusOr<X509Ptr> NewCert(EVP_PKEY* key, const std::string& cn, const std::vector<std::string>& orgs,
                                absl::Time from, absl::Time to) {
  X509Ptr cert(X509_new());
  X509_set_version(cert.get(), 2);
  unsigned char serial[16];
  if (RAND_bytes(serial, sizeof(serial)) != 1) return absl::InternalError("RAND_bytes: " + OpenSslError("failed"));
  serial[0] &= 0x7f;
  BIGNUM* bn = BN_bin2bn(serial, sizeof(serial), nullptr);
  BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(cert.get()));
  BN_free(bn);
  ASN1_TIME_set(X509_getm_notBefore(cert.get()), absl::ToTimeT(from));
  ASN1_TIME_set(X509_getm_notAfter(cert.get()), absl::ToTimeT(to));
  X509_set_pubkey(cert.get(), key);
  X509_NAME* name = X509_get_subject_name(cert.get());
  auto add = [&](const char* field, const std::string& value) {
    X509_NAME_add_entry_by_txt(name, field, MBSTRING_UTF8, reinterpret_cast<const unsigned char*>(value.c_str()),
                               -1, -1, 0);
  };
  for (const std::string& o : orgs) add("O", o);
  add("CN", cn);
  return cert;
}

absl::Status Sign(X509* cert, EVP_PKEY* key) {
  if (X509_sign(cert, key, EVP_sha256()) == 0) return absl::InternalError("X509_sign: " + OpenSslError("failed"));
  return absl::OkStatus();
}

absl::Status MakeDir(const std::string& dir) {
  std::error_code ec;
  std::filesystem::create_directories(dir, ec);
  if (ec) return absl::FailedPreconditionError(absl::StrCat(dir, ": ", ec.message()));
  if (chmod(dir.c_str(), 0700) != 0) return absl::FailedPreconditionError(absl::StrCat(dir, ": chmod 0700 failed"));
  return absl::OkStatus();
}

absl::StatusOr<std::string> ReadIn(const std::string& dir, const char* file) {
  auto data = ReadFile(dir + "/" + file);
  if (!data.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(dir, "/", file, ": ", data.status().message()));
  }
  return data;
}

}  // namespace

std::string IdentityDir(const std::string& root, const Identity& identity) {
  switch (identity.kind) {
    case Identity::Kind::kController:
      return root + "/controller";
    case Identity::Kind::kAgent:
      return root + "/agents/" + identity.name;
    case Identity::Kind::kUser:
      return root + "/users/" + identity.name;
    case Identity::Kind::kNone:
      break;
  }
  return root;
}

absl::Status InitCa(const std::string& root, absl::Time now, absl::Duration validity) {
  if (std::filesystem::exists(root + "/ca.key")) {
    return absl::AlreadyExistsError(absl::StrCat(root, "/ca.key exists: a CA is never replaced (issue with it, or "
                                                       "choose another folder)"));
  }
  MK_RETURN_IF_ERROR(MakeDir(root));
  MK_ASSIGN_OR_RETURN(PkeyPtr key, NewKey());
  MK_ASSIGN_OR_RETURN(X509Ptr cert, NewCert(key.get(), "mkfleet CA", {"mkfleet"}, now - absl::Minutes(5),
                                            now + validity));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(cert.get()));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_basic_constraints, "critical,CA:TRUE,pathlen:0"));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_key_usage, "critical,keyCertSign,cRLSign"));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), cert.get(), NID_subject_key_identifier, "hash"));
  MK_RETURN_IF_ERROR(Sign(cert.get(), key.get()));
  MK_ASSIGN_OR_RETURN(std::string key_pem, KeyToPem(key.get()));
  MK_ASSIGN_OR_RETURN(std::string cert_pem, CertToPem(cert.get()));
  MK_RETURN_IF_ERROR(WriteFileAtomically(root + "/ca.key", key_pem, 0600));
  return WriteFileAtomically(root + "/" + kCaCertFile, cert_pem, 0644);
}

absl::Status IssueCert(const std::string& root, const CertOptions& options, const std::string& out_dir) {
  const Identity& id = options.identity;
  switch (id.kind) {
    case Identity::Kind::kAgent:
      if (!manifests::IsDnsLabel(id.name)) {
        return absl::InvalidArgumentError(absl::StrCat("host \"", id.name, "\" is not a DNS label"));
      }
      break;
    case Identity::Kind::kUser:
      MK_RETURN_IF_ERROR(CheckPrincipalName(id.name, "user"));
      for (const std::string& g : id.groups) MK_RETURN_IF_ERROR(CheckPrincipalName(g, "group"));
      break;
    case Identity::Kind::kController:
      break;
    case Identity::Kind::kNone:
      return absl::InvalidArgumentError("no identity to issue a certificate for");
  }
  for (const std::string& d : options.dns_names) {
    for (char c : d) {
      if (!absl::ascii_isalnum(c) && c != '-' && c != '.') {
        return absl::InvalidArgumentError(absl::StrCat("DNS name \"", absl::CEscape(d), "\" is not a host name"));
      }
    }
  }
  for (const std::string& ip : options.ip_addresses) {
    for (char c : ip) {
      if (!absl::ascii_isxdigit(c) && c != '.' && c != ':') {
        return absl::InvalidArgumentError(absl::StrCat("\"", absl::CEscape(ip), "\" is not an IP address"));
      }
    }
  }
  MK_ASSIGN_OR_RETURN(std::string ca_pem, ReadIn(root, kCaCertFile));
  MK_ASSIGN_OR_RETURN(std::string ca_key_pem, ReadIn(root, "ca.key"));
  MK_ASSIGN_OR_RETURN(X509Ptr ca, ParseCertPem(ca_pem));
  MK_ASSIGN_OR_RETURN(PkeyPtr ca_key, ParseKeyPem(ca_key_pem));
  if (X509_check_private_key(ca.get(), ca_key.get()) != 1) {
    return absl::FailedPreconditionError(absl::StrCat(root, "/ca.key is not the key of ", root, "/ca.crt"));
  }

  MK_ASSIGN_OR_RETURN(PkeyPtr key, NewKey());
  MK_ASSIGN_OR_RETURN(X509Ptr cert, NewCert(key.get(), id.name, id.groups, options.not_before, options.not_after));
  X509_set_issuer_name(cert.get(), X509_get_subject_name(ca.get()));
  std::vector<std::string> sans = {"URI:" + id.Uri()};
  if (!id.DnsName().empty()) sans.push_back("DNS:" + id.DnsName());
  for (const std::string& d : options.dns_names) sans.push_back("DNS:" + d);
  for (const std::string& ip : options.ip_addresses) sans.push_back("IP:" + ip);
  // Users are only ever clients; the controller and agents serve and dial.
  const char* usage = id.kind == Identity::Kind::kUser ? "clientAuth" : "serverAuth,clientAuth";
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_basic_constraints, "critical,CA:FALSE"));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_key_usage, "critical,digitalSignature"));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_ext_key_usage, usage));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_subject_alt_name, absl::StrJoin(sans, ",")));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_subject_key_identifier, "hash"));
  MK_RETURN_IF_ERROR(AddExtension(cert.get(), ca.get(), NID_authority_key_identifier, "keyid:always"));
  MK_RETURN_IF_ERROR(Sign(cert.get(), ca_key.get()));
  MK_ASSIGN_OR_RETURN(std::string key_pem, KeyToPem(key.get()));
  MK_ASSIGN_OR_RETURN(std::string cert_pem, CertToPem(cert.get()));

  MK_RETURN_IF_ERROR(MakeDir(out_dir));
  // The key first: a reader that sees the new certificate always finds its key (the
  // other order would pair a new certificate with the old key for a moment).
  MK_RETURN_IF_ERROR(WriteFileAtomically(out_dir + "/" + kKeyFile, key_pem, 0600));
  MK_RETURN_IF_ERROR(WriteFileAtomically(out_dir + "/" + kCertFile, cert_pem, 0644));
  return WriteFileAtomically(out_dir + "/" + kCaCertFile, ca_pem, 0644);
}

absl::Status VerifyAgainstCa(const std::string& cert_pem, const std::string& ca_pem, absl::Time now) {
  MK_ASSIGN_OR_RETURN(X509Ptr cert, ParseCertPem(cert_pem));
  MK_ASSIGN_OR_RETURN(X509Ptr ca, ParseCertPem(ca_pem));
  std::unique_ptr<X509_STORE, StoreFree> store(X509_STORE_new());
  X509_STORE_add_cert(store.get(), ca.get());
  std::unique_ptr<X509_STORE_CTX, StoreCtxFree> ctx(X509_STORE_CTX_new());
  if (X509_STORE_CTX_init(ctx.get(), store.get(), cert.get(), nullptr) != 1) {
    return absl::InternalError("X509_STORE_CTX_init: " + OpenSslError("failed"));
  }
  X509_VERIFY_PARAM_set_time(X509_STORE_CTX_get0_param(ctx.get()), absl::ToTimeT(now));
  if (X509_verify_cert(ctx.get()) == 1) return absl::OkStatus();
  int err = X509_STORE_CTX_get_error(ctx.get());
  ERR_clear_error();
  std::string reason = X509_verify_cert_error_string(err);
  if (err == X509_V_ERR_CERT_HAS_EXPIRED) {
    absl::StrAppend(&reason, " (on ", FormatAsn1Time(X509_get0_notAfter(cert.get())), ")");
  } else if (err == X509_V_ERR_CERT_NOT_YET_VALID) {
    absl::StrAppend(&reason, " (valid from ", FormatAsn1Time(X509_get0_notBefore(cert.get())), ")");
  }
  return absl::PermissionDeniedError(reason);
}

absl::StatusOr<TlsCredentials> LoadTlsDir(const std::string& dir, absl::Time now) {
  TlsCredentials out;
  MK_ASSIGN_OR_RETURN(out.ca_pem, ReadIn(dir, kCaCertFile));
  MK_ASSIGN_OR_RETURN(out.cert_pem, ReadIn(dir, kCertFile));
  MK_ASSIGN_OR_RETURN(out.key_pem, ReadIn(dir, kKeyFile));
  auto in = [&](const char* file, const absl::Status& s) {
    return absl::FailedPreconditionError(absl::StrCat(dir, "/", file, ": ", s.message()));
  };
  struct stat st {};
  if (stat((dir + "/" + kKeyFile).c_str(), &st) == 0 && (st.st_mode & 077) != 0) {
    return in(kKeyFile, absl::PermissionDeniedError("readable by others than its owner (chmod 600 it)"));
  }
  auto cert = ParseCertPem(out.cert_pem);
  if (!cert.ok()) return in(kCertFile, cert.status());
  auto key = ParseKeyPem(out.key_pem);
  if (!key.ok()) return in(kKeyFile, key.status());
  if (auto ca = ParseCertPem(out.ca_pem); !ca.ok()) return in(kCaCertFile, ca.status());
  if (X509_check_private_key(cert->get(), key->get()) != 1) {
    ERR_clear_error();
    return in(kKeyFile, absl::InvalidArgumentError("is not the key of tls.crt"));
  }
  if (absl::Status v = VerifyAgainstCa(out.cert_pem, out.ca_pem, now); !v.ok()) {
    return in(kCertFile, absl::PermissionDeniedError(absl::StrCat("not valid against ca.crt: ", v.message())));
  }
  auto id = IdentityOfCert(cert->get());
  if (!id.ok()) return in(kCertFile, id.status());
  out.identity = *std::move(id);
  struct tm tm {};
  ASN1_TIME_to_tm(X509_get0_notAfter(cert->get()), &tm);
  out.not_after = absl::FromTimeT(timegm(&tm));
  return out;
}

}  // namespace mkfleet::security
