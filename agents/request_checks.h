// The checks every request to the agent passes before anything runs, whoever sends it: the
// shape of a batch (ids present, unique, bounded; an operation and an instance each),
// instance names (the characters of a DNS label: they become kernel and file names), kernel
// paths (absolute, no "..", bounded), and the sizes of every list, so that no request can
// make the agent or its journal grow without bound. Pure functions; thread-safe.
#ifndef MKFLEET_AGENTS_REQUEST_CHECKS_H_
#define MKFLEET_AGENTS_REQUEST_CHECKS_H_

#include <cstddef>

#include "absl/status/status.h"
#include "absl/strings/string_view.h"
#include "mkfleet/v1/agent.pb.h"

namespace mkfleet::agents {

inline constexpr size_t kMaxBatchActions = 1024;
inline constexpr size_t kMaxIdBytes = 256;
inline constexpr size_t kMaxInstanceNameBytes = 253;
inline constexpr size_t kMaxPathBytes = 4096;
inline constexpr size_t kMaxCmdlineBytes = 4096;
inline constexpr size_t kMaxListItems = 8192;  // CPUs, memory ranges, devices of one action
inline constexpr size_t kMaxPolicies = 4096;

// An instance name: 1-253 characters of [a-z0-9-], alphanumeric at both ends (a DNS
// label's characters; longer, as set members and standbys append to an object's name).
bool IsInstanceName(absl::string_view name);

// OK, or InvalidArgument naming the action and the field: "actions[1] (b-load):
// load.kernel.image: must be an absolute path".
absl::Status CheckBatch(const mkfleet::v1::ActionBatch& batch);
absl::Status CheckPolicies(const mkfleet::v1::SetPolicyRequest& request);
// InvalidArgument unless `name` IsInstanceName; `what` names the field.
absl::Status CheckInstanceName(absl::string_view name, absl::string_view what);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_REQUEST_CHECKS_H_
