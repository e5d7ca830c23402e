// Access: who may do what to the controller's objects. Roles come from RoleBinding objects
// (docs/manifests.md) plus the bootstrap group, whose users are admins whatever the store
// says (so a fleet with no bindings yet, or a binding applied by mistake, is never locked
// out). Each role includes the one before:
//   viewer    get, list, watch, events, diff, plan, stats
//   operator  + apply and delete KernelInstances and InstanceSets
//   admin     + apply and delete Hosts and RoleBindings, read the audit log
// Only user certificates hold roles: an agent's or the controller's own certificate holds
// none. With `insecure` (plaintext on loopback, an explicit choice) every caller is admin.
// Thread-safety: safe to call concurrently (RoleOf reads the store each time).
#ifndef MKFLEET_RECONCILER_ACCESS_H_
#define MKFLEET_RECONCILER_ACCESS_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "mkfleet/v1/manifest.pb.h"
#include "reconciler/objects.h"
#include "security/identity.h"

namespace mkfleet::reconciler {

struct AccessOptions {
  bool insecure = false;
  std::string admin_group = "fleet-admins";
};

// The role `verb` ("get", "apply", "delete", "audit", ...) on `kind` needs.
mkfleet::v1::Role RequiredRole(absl::string_view verb, absl::string_view kind);

// The highest role `bindings` (and the bootstrap group) give `identity`.
mkfleet::v1::Role RoleOf(const security::Identity& identity, const std::vector<mkfleet::v1::RoleBinding>& bindings,
                         const AccessOptions& options);

// "viewer", "operator", "admin", or "no role".
std::string RoleName(mkfleet::v1::Role role);

class Access {
 public:
  Access(Objects& objects, AccessOptions options) : objects_(objects), options_(std::move(options)) {}

  struct Caller {
    security::Identity identity;
    mkfleet::v1::Role role = mkfleet::v1::ROLE_UNSPECIFIED;
  };
  // The caller's role, from the stored RoleBindings now.
  absl::StatusOr<Caller> Resolve(const security::Identity& identity);
  // OK, or PermissionDenied naming the identity, the verb and the object:
  // "user alice (groups ops) may not apply Host/node-a: needs role admin, has operator".
  absl::Status Check(const Caller& caller, absl::string_view verb, absl::string_view kind,
                     absl::string_view name = "") const;

 private:
  Objects& objects_;
  const AccessOptions options_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_ACCESS_H_
