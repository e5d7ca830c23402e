#include "security/tls_buffers.h"

#include <dlfcn.h>
#include <openssl/ssl.h>

#include <atomic>
#include <cstdlib>
#include <iostream>

namespace mkfleet::security {
namespace {

std::atomic<int64_t> releasing{0};

using SslNew = SSL* (*)(SSL_CTX*);

SslNew RealSslNew() {
  static const SslNew real = [] {
    auto f = reinterpret_cast<SslNew>(dlsym(RTLD_NEXT, "SSL_new"));
    if (f == nullptr) {
      std::cerr << "mkfleet: OpenSSL's SSL_new not found after this binary's (" << dlerror() << ")\n";
      std::abort();
    }
    return f;
  }();
  return real;
}

}  // namespace

int64_t TlsConnectionsReleasingBuffers() { return releasing.load(std::memory_order_relaxed); }

}  // namespace mkfleet::security

extern "C" SSL* SSL_new(SSL_CTX* ctx) {
  SSL* ssl = mkfleet::security::RealSslNew()(ctx);
  if (ssl != nullptr) {
    SSL_set_mode(ssl, SSL_MODE_RELEASE_BUFFERS);
    mkfleet::security::releasing.fetch_add(1, std::memory_order_relaxed);
  }
  return ssl;
}
