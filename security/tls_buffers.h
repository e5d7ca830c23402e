// Idle TLS connections hold no record buffers.
//
// OpenSSL gives each connection a read and a write record buffer (about 17 KiB each) for
// its whole life unless SSL_MODE_RELEASE_BUFFERS is set; gRPC (1.51) does not set it and
// offers no way to. A controller holds one connection per host, nearly all idle between
// passes: at 10,000 hosts those buffers were ~130 MiB of its peak RSS (fleet_bench). Linking
// this library (alwayslink) sets the mode on every SSL object the process creates, gRPC's
// included: it wraps OpenSSL's SSL_new (the dynamic linker resolves gRPC's calls to the
// executable's definition first) and calls the real one.
#ifndef MKFLEET_SECURITY_TLS_BUFFERS_H_
#define MKFLEET_SECURITY_TLS_BUFFERS_H_

#include <cstdint>

namespace mkfleet::security {

// How many SSL objects this process created with their buffers released when idle (0 when
// the wrapper is not in effect).
int64_t TlsConnectionsReleasingBuffers();

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_TLS_BUFFERS_H_
