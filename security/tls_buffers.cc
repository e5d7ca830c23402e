#include "security/tls_buffers.h"

#include <openssl/ssl.h>

#include <atomic>

#include "security/next_symbol.h"

namespace mkfleet::security {
namespace {

std::atomic<int64_t> releasing{0};

using SslNew = SSL* (*)(SSL_CTX*);

SslNew RealSslNew() {
  static const SslNew real = NextSymbol<SslNew>("SSL_new");
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
