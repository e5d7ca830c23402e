// Certificates and keys are decoded once per process, not once per TLS connection.
//
// gRPC (1.51) builds an OpenSSL context for every channel and every listening port, and
// decodes the process's PEM key, certificate and CA into each: a controller connects to each
// host over its own channel, and OpenSSL 3.0 decodes a key through its decoder framework
// (provider lookups under global locks). At 10,000 hosts that was ~15 % of the controller's
// CPU while hosts connect (fleet_bench, perf), and every context held its own parsed copies.
//
// Linking this library (alwayslink) makes OpenSSL's PEM_read_bio_PrivateKey,
// PEM_read_bio_X509 and PEM_read_bio_X509_AUX answer a PEM block they decoded before with
// the same object (one more reference), gRPC's calls included: the executable's definitions
// come first for the dynamic linker, and they call the real ones. Only what reads the same
// either way is answered from the cache: a memory BIO whose next block is of the type asked
// for, unencrypted, with no password callback and no object to reuse; the BIO is then
// consumed exactly as the real call consumes it (checked when the block is first decoded).
// Anything else goes to OpenSSL as it is. At most 64 blocks are kept; objects are shared
// read-only, as OpenSSL allows for keys and certificates.
#ifndef MKFLEET_SECURITY_PEM_CACHE_H_
#define MKFLEET_SECURITY_PEM_CACHE_H_

#include <cstdint>

namespace mkfleet::security {

struct PemCacheCounts {
  int64_t hits = 0;    // answered with an object decoded before
  int64_t misses = 0;  // decoded by OpenSSL and kept
};

// This process's counts (zero until something is read through the cache).
PemCacheCounts PemCacheStats();

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_PEM_CACHE_H_
