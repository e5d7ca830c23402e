// The definition of an OpenSSL function after this binary's own: for the libraries that wrap
// one for the whole process (tls_buffers.h, pem_cache.h), whose wrappers call the real one.
// Aborts, naming the function, when there is none (a binary linked statically).
#ifndef MKFLEET_SECURITY_NEXT_SYMBOL_H_
#define MKFLEET_SECURITY_NEXT_SYMBOL_H_

#include <dlfcn.h>

#include <cstdlib>
#include <iostream>

namespace mkfleet::security {

template <typename F>
F NextSymbol(const char* name) {
  auto f = reinterpret_cast<F>(dlsym(RTLD_NEXT, name));
  if (f == nullptr) {
    std::cerr << "mkfleet: OpenSSL's " << name << " not found after this binary's (" << dlerror() << ")\n";
    std::abort();
  }
  return f;
}

}  // namespace mkfleet::security

#endif  // MKFLEET_SECURITY_NEXT_SYMBOL_H_
