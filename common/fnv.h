// FNV-1a, 64 bits: a hash that is the same across runs, builds and machines (ids and
// revisions the controller derives must not change when it restarts). Add() feeds bytes;
// Separate() marks the end of a field, so that ("ab", "c") and ("a", "bc") differ.
#ifndef MKFLEET_COMMON_FNV_H_
#define MKFLEET_COMMON_FNV_H_

#include <cstdint>

#include "absl/strings/string_view.h"

namespace mkfleet {

class Fnv1a {
 public:
  Fnv1a& Add(absl::string_view bytes) {
    for (unsigned char c : bytes) h_ = (h_ ^ c) * kPrime;
    return *this;
  }
  Fnv1a& Separate() {
    h_ = (h_ ^ 0xff) * kPrime;
    return *this;
  }
  // Add(field) then Separate().
  Fnv1a& Field(absl::string_view field) { return Add(field).Separate(); }
  uint64_t value() const { return h_; }

 private:
  static constexpr uint64_t kPrime = 1099511628211ull;
  uint64_t h_ = 1469598103934665603ull;
};

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_FNV_H_
