#include "security/pem_cache.h"

#include <openssl/bio.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>

#include <string>
#include <string_view>

#include "absl/container/flat_hash_map.h"
#include "absl/synchronization/mutex.h"
#include "security/next_symbol.h"

namespace mkfleet::security {
namespace {

constexpr size_t kMaxEntries = 64;

// The next PEM block of a memory BIO, when it can be answered from the cache: `text` from
// its BEGIN line to the end of its END line, `consumed` the bytes a PEM read takes (through
// the END line's newline).
struct Block {
  std::string_view text;
  size_t consumed = 0;
};

bool NextBlock(BIO* bio, bool (*type_ok)(std::string_view), Block* out) {
  if (bio == nullptr || BIO_method_type(bio) != BIO_TYPE_MEM) return false;
  char* data = nullptr;
  long len = BIO_get_mem_data(bio, &data);
  if (len <= 0 || data == nullptr) return false;
  std::string_view rest(data, static_cast<size_t>(len));
  // Only whitespace before it: PEM reads skip other lines, and blocks of other types.
  size_t begin = rest.find_first_not_of(" \t\r\n");
  constexpr std::string_view kBegin = "-----BEGIN ";
  if (begin == std::string_view::npos || rest.substr(begin, kBegin.size()) != kBegin) return false;
  if (begin > 0 && rest[begin - 1] != '\n') return false;
  size_t type_at = begin + kBegin.size();
  size_t type_end = rest.find("-----", type_at);
  size_t line_end = rest.find('\n', type_at);
  if (type_end == std::string_view::npos || (line_end != std::string_view::npos && type_end > line_end)) return false;
  std::string_view type = rest.substr(type_at, type_end - type_at);
  if (!type_ok(type)) return false;
  std::string end_line = "\n-----END " + std::string(type) + "-----";
  size_t end = rest.find(end_line, type_end);
  if (end == std::string_view::npos) return false;
  std::string_view body = rest.substr(begin, end - begin);
  if (body.find("Proc-Type:") != std::string_view::npos) return false;  // encrypted (legacy form)
  size_t text_end = end + end_line.size();
  size_t after = rest.find('\n', text_end);
  // Nothing but a line end (or the end of the data) after the END marker's dashes.
  std::string_view tail = rest.substr(text_end, (after == std::string_view::npos ? rest.size() : after) - text_end);
  if (tail.find_first_not_of(" \t\r") != std::string_view::npos) return false;
  out->text = rest.substr(begin, text_end - begin);
  out->consumed = after == std::string_view::npos ? rest.size() : after + 1;
  return true;
}

long Remaining(BIO* bio) {
  char* data = nullptr;
  return BIO_get_mem_data(bio, &data);
}

bool Consume(BIO* bio, size_t n) {
  std::string scratch(n, '\0');
  return BIO_read(bio, scratch.data(), static_cast<int>(n)) == static_cast<int>(n);
}

// One cache per reader: decoded objects by the block's text.
template <typename T>
class Cache {
 public:
  using UpRef = int (*)(T*);
  using Free = void (*)(T*);
  Cache(UpRef up_ref, Free free) : up_ref_(up_ref), free_(free) {}

  // A new reference to the object decoded from `text` before, or nullptr.
  T* Find(const std::string& text) {
    absl::MutexLock lock(&mu_);
    auto it = objects_.find(text);
    if (it == objects_.end() || up_ref_(it->second) != 1) return nullptr;
    ++counts_.hits;
    return it->second;
  }

  // Gives back a reference Find gave.
  void Drop(T* object) { free_(object); }

  void Keep(const std::string& text, T* object) {
    absl::MutexLock lock(&mu_);
    if (objects_.count(text) > 0 || up_ref_(object) != 1) return;
    if (objects_.size() >= kMaxEntries) {
      for (auto& [_, o] : objects_) free_(o);
      objects_.clear();
    }
    objects_.emplace(text, object);
    ++counts_.misses;
  }

  PemCacheCounts counts() {
    absl::MutexLock lock(&mu_);
    return counts_;
  }

 private:
  const UpRef up_ref_;
  const Free free_;
  absl::Mutex mu_;
  absl::flat_hash_map<std::string, T*> objects_ ABSL_GUARDED_BY(mu_);
  PemCacheCounts counts_ ABSL_GUARDED_BY(mu_);
};

// Leaked on purpose: readers may run while the process exits.
Cache<X509>& Certs() {
  static auto* c = new Cache<X509>(X509_up_ref, X509_free);
  return *c;
}
Cache<X509>& AuxCerts() {
  static auto* c = new Cache<X509>(X509_up_ref, X509_free);
  return *c;
}
Cache<EVP_PKEY>& Keys() {
  static auto* c = new Cache<EVP_PKEY>(EVP_PKEY_up_ref, EVP_PKEY_free);
  return *c;
}

bool CertType(std::string_view t) { return t == "CERTIFICATE" || t == "X509 CERTIFICATE"; }
bool AuxCertType(std::string_view t) { return CertType(t) || t == "TRUSTED CERTIFICATE"; }
bool KeyType(std::string_view t) { return t == "PRIVATE KEY" || t == "EC PRIVATE KEY" || t == "RSA PRIVATE KEY"; }

template <typename T, typename Reader>
T* Read(Cache<T>& cache, bool (*type_ok)(std::string_view), Reader real, BIO* bio, T** x, pem_password_cb* cb,
        void* u) {
  Block block;
  if (x != nullptr || cb != nullptr || !NextBlock(bio, type_ok, &block)) return real(bio, x, cb, u);
  std::string text(block.text);  // the BIO's memory moves on as it is read
  if (T* hit = cache.Find(text); hit != nullptr) {
    if (Consume(bio, block.consumed)) return hit;
    cache.Drop(hit);  // (a memory BIO reads what it holds: not seen)
    return nullptr;
  }
  const long before = Remaining(bio);
  T* decoded = real(bio, x, cb, u);
  if (decoded != nullptr && before - Remaining(bio) == static_cast<long>(block.consumed)) cache.Keep(text, decoded);
  return decoded;
}

}  // namespace

PemCacheCounts PemCacheStats() {
  PemCacheCounts out;
  for (PemCacheCounts c : {Certs().counts(), AuxCerts().counts(), Keys().counts()}) {
    out.hits += c.hits;
    out.misses += c.misses;
  }
  return out;
}

}  // namespace mkfleet::security

namespace sec = mkfleet::security;
using CertReader = X509* (*)(BIO*, X509**, pem_password_cb*, void*);
using KeyReader = EVP_PKEY* (*)(BIO*, EVP_PKEY**, pem_password_cb*, void*);

extern "C" X509* PEM_read_bio_X509(BIO* bio, X509** x, pem_password_cb* cb, void* u) {
  static const auto real = sec::NextSymbol<CertReader>("PEM_read_bio_X509");
  return sec::Read(sec::Certs(), sec::CertType, real, bio, x, cb, u);
}

extern "C" X509* PEM_read_bio_X509_AUX(BIO* bio, X509** x, pem_password_cb* cb, void* u) {
  static const auto real = sec::NextSymbol<CertReader>("PEM_read_bio_X509_AUX");
  return sec::Read(sec::AuxCerts(), sec::AuxCertType, real, bio, x, cb, u);
}

extern "C" EVP_PKEY* PEM_read_bio_PrivateKey(BIO* bio, EVP_PKEY** x, pem_password_cb* cb, void* u) {
  static const auto real = sec::NextSymbol<KeyReader>("PEM_read_bio_PrivateKey");
  return sec::Read(sec::Keys(), sec::KeyType, real, bio, x, cb, u);
}
