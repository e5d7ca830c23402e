// The defaults the schema documents, filled in where a manifest leaves a field unset, so
// that `mkapply get -o yaml|json` shows an object as the controller acts on it (with
// PrintOptions::zero_enums for enums whose default is their zero value: phase Running,
// update.strategy Replace, unmanaged Keep). Defaults that depend on a daemon's flags
// (a Host's driftPolicy: the controller's --drift-policy) stay unset.
// Thread-safety: pure function.
#ifndef MKFLEET_MANIFESTS_DEFAULTS_H_
#define MKFLEET_MANIFESTS_DEFAULTS_H_

#include "mkfleet/v1/manifest.pb.h"

namespace mkfleet::manifests {

void FillDefaults(mkfleet::v1::Object* object);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_DEFAULTS_H_
