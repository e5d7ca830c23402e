// The canonical printer: mkfleet.v1 objects -> YAML in the manifest format.
//
// Canonical means: fields in schema order, defaults and unset fields left out, units in
// their shortest exact spelling (2Gi, 100ms, "0-3,8"), label maps sorted. Loading the
// output gives back an equal message (the round-trip tests hold it to that).
// Thread-safety: pure functions.
#ifndef MKFLEET_MANIFESTS_PRINTER_H_
#define MKFLEET_MANIFESTS_PRINTER_H_

#include <string>
#include <vector>

#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::manifests {

struct PrintOptions {
  // Also print output-only fields (status, metadata.generation, ...).
  bool include_output_only = false;
  // Also print enum fields at their zero value when it has a manifest spelling (phase:
  // Running, unmanaged: Keep): with FillDefaults (defaults.h), the object with its defaults.
  bool zero_enums = false;
};

// One document, without a leading "---".
std::string PrintYaml(const mkfleet::v1::Object& object, const PrintOptions& options = {});

// Several documents separated by "---".
std::string PrintYaml(const std::vector<mkfleet::v1::Object>& objects,
                      const PrintOptions& options = {});

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_PRINTER_H_
