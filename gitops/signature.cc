#include "gitops/signature.h"

#include <gpgme.h>
#include <sys/stat.h>

#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/fnv.h"

namespace mkfleet::gitops {
namespace {

namespace fs = std::filesystem;

void InitGpgme() {
  static std::once_flag once;
  std::call_once(once, [] {
    gpgme_check_version(nullptr);
  });
}

struct Context {
  gpgme_ctx_t ctx = nullptr;
  ~Context() {
    if (ctx != nullptr) gpgme_release(ctx);
  }
};

struct Data {
  gpgme_data_t data = nullptr;
  ~Data() {
    if (data != nullptr) gpgme_data_release(data);
  }
};

absl::Status NewContext(const std::string& home, Context& c) {
  if (gpgme_error_t e = gpgme_new(&c.ctx); e != 0) {
    return absl::InternalError(absl::StrCat("gpgme: ", gpgme_strerror(e)));
  }
  gpgme_set_protocol(c.ctx, GPGME_PROTOCOL_OpenPGP);
  if (gpgme_error_t e = gpgme_ctx_set_engine_info(c.ctx, GPGME_PROTOCOL_OpenPGP, nullptr, home.c_str()); e != 0) {
    return absl::InternalError(absl::StrCat("gpgme: ", gpgme_strerror(e), " (is gpg installed?)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::string> SignatureVerifier::HomeFor(const std::string& keyring_file) {
  std::ifstream in(keyring_file, std::ios::binary);
  if (!in) return absl::FailedPreconditionError(absl::StrCat("verify.keyring: cannot read ", keyring_file));
  std::stringstream ss;
  ss << in.rdbuf();
  const std::string keys = ss.str();
  const std::string home = absl::StrFormat("%s/%016x", home_, Fnv1a().Field(keys).value());
  absl::MutexLock lock(&mu_);
  if (fs::exists(home + "/imported")) return home;
  std::error_code ec;
  fs::remove_all(home, ec);
  fs::create_directories(home, ec);
  if (ec) return absl::InternalError(absl::StrCat("verify: ", home, ": ", ec.message()));
  chmod(home.c_str(), 0700);  // gpg refuses a home others can read
  Context c;
  if (absl::Status s = NewContext(home, c); !s.ok()) return s;
  Data data;
  gpgme_data_new_from_mem(&data.data, keys.data(), keys.size(), 1);
  if (gpgme_error_t e = gpgme_op_import(c.ctx, data.data); e != 0) {
    return absl::FailedPreconditionError(absl::StrCat("verify.keyring ", keyring_file, ": ", gpgme_strerror(e)));
  }
  gpgme_import_result_t result = gpgme_op_import_result(c.ctx);
  if (result == nullptr || result->considered == 0 || (result->imported + result->unchanged) == 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("verify.keyring ", keyring_file, ": no OpenPGP public keys in it (write it with gpg --export)"));
  }
  std::ofstream(home + "/imported") << result->imported << "\n";
  return home;
}

absl::StatusOr<std::string> SignatureVerifier::Verify(const std::string& keyring_file, const std::string& signature,
                                                      const std::string& signed_data) {
  InitGpgme();
  if (signature.empty()) return absl::PermissionDeniedError("the commit is not signed");
  auto home = HomeFor(keyring_file);
  if (!home.ok()) return home.status();
  Context c;
  if (absl::Status s = NewContext(*home, c); !s.ok()) return s;
  Data sig, text;
  gpgme_data_new_from_mem(&sig.data, signature.data(), signature.size(), 0);
  gpgme_data_new_from_mem(&text.data, signed_data.data(), signed_data.size(), 0);
  if (gpgme_error_t e = gpgme_op_verify(c.ctx, sig.data, text.data, nullptr); e != 0) {
    return absl::PermissionDeniedError(absl::StrCat("the signature cannot be read: ", gpgme_strerror(e)));
  }
  gpgme_verify_result_t result = gpgme_op_verify_result(c.ctx);
  if (result == nullptr || result->signatures == nullptr) {
    return absl::PermissionDeniedError("the commit's signature block holds no OpenPGP signature");
  }
  std::string reasons;
  for (gpgme_signature_t s = result->signatures; s != nullptr; s = s->next) {
    std::string key = s->fpr != nullptr ? s->fpr : "?";
    switch (gpgme_err_code(s->status)) {
      case GPG_ERR_NO_ERROR:
        return key;
      case GPG_ERR_NO_PUBKEY:
        absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", "signed by key ", key, ", which is not in ", keyring_file);
        break;
      case GPG_ERR_BAD_SIGNATURE:
        absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", "bad signature (by key ", key,
                        "): the commit was changed after it was signed");
        break;
      case GPG_ERR_KEY_EXPIRED:
      case GPG_ERR_SIG_EXPIRED:
        absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", "the signature or key ", key, " has expired");
        break;
      case GPG_ERR_CERT_REVOKED:
        absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", "key ", key, " is revoked");
        break;
      default:
        absl::StrAppend(&reasons, reasons.empty() ? "" : "; ", "signature by key ", key, ": ",
                        gpgme_strerror(s->status));
    }
  }
  return absl::PermissionDeniedError(reasons);
}

}  // namespace mkfleet::gitops
