// Objects as JSON: the canonical printer's output (printer.h) in JSON's types.
// Thread-safety: pure functions.
#ifndef MKFLEET_MANIFESTS_JSON_H_
#define MKFLEET_MANIFESTS_JSON_H_

#include "manifests/printer.h"
#include "mkfleet/v1/manifest.pb.h"
#include "nlohmann/json.hpp"

namespace mkfleet::manifests {

// The object as JSON, keys in schema order (`mkapply get -o json`, the console's /api/):
// what PrintYaml prints, numbers and booleans as JSON's, quantities ("2Gi", "100ms"), CPU
// lists ("0-3"), enum values as manifests spell them ("Running") and names as strings.
nlohmann::ordered_json PrintJson(const mkfleet::v1::Object& object, const PrintOptions& options = {});

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_JSON_H_
