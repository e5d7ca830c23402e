// Semantic checks that the schema walk cannot express: combinations of fields inside one
// object, and relations between objects. Private to manifests/.
// Thread-safety: pure functions of their arguments.
#ifndef MKFLEET_MANIFESTS_CHECKS_H_
#define MKFLEET_MANIFESTS_CHECKS_H_

#include <string>
#include <vector>

#include "manifests/loader.h"

namespace mkfleet::manifests {

// Checks one object that walked without errors.
void CheckObject(const LoadedObject& object, std::vector<Diagnostic>* errors);

// Duplicate names per kind, fixed ids used twice on one host, and (when asked)
// KernelInstances whose spec.host names no Host among `objects`.
void CheckAcrossObjects(const std::vector<LoadedObject>& objects, bool check_host_references,
                        const std::vector<std::string>& known_hosts,
                        std::vector<Diagnostic>* errors);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_CHECKS_H_
