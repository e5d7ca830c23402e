#include "reconciler/access.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {

namespace v1 = mkfleet::v1;

v1::Role RequiredRole(absl::string_view verb, absl::string_view kind) {
  if (verb == "audit") return v1::ROLE_ADMIN;
  if (verb != "apply" && verb != "delete" && verb != "prune" && verb != "morph" && verb != "rollout" &&
      verb != "sync" && verb != "suspend" && verb != "resume" && verb != "cordon") {
    return v1::ROLE_VIEWER;
  }
  if (kind == "KernelInstance" || kind == "InstanceSet" || kind == "RolloutPolicy") return v1::ROLE_OPERATOR;
  return v1::ROLE_ADMIN;  // Host, RoleBinding, and any kind added later until said otherwise
}

v1::Role RoleOf(const security::Identity& identity, const std::vector<v1::RoleBinding>& bindings,
                const AccessOptions& options) {
  if (options.insecure) return v1::ROLE_ADMIN;
  if (identity.kind != security::Identity::Kind::kUser) return v1::ROLE_UNSPECIFIED;
  auto in_group = [&](const std::string& g) {
    return std::find(identity.groups.begin(), identity.groups.end(), g) != identity.groups.end();
  };
  if (!options.admin_group.empty() && in_group(options.admin_group)) return v1::ROLE_ADMIN;
  v1::Role best = v1::ROLE_UNSPECIFIED;
  for (const v1::RoleBinding& b : bindings) {
    for (const v1::Subject& s : b.spec().subjects()) {
      bool match = (s.kind() == v1::SUBJECT_USER && s.name() == identity.name) ||
                   (s.kind() == v1::SUBJECT_GROUP && in_group(s.name()));
      if (match) best = std::max(best, b.spec().role());
    }
  }
  return best;
}

std::string RoleName(v1::Role role) {
  switch (role) {
    case v1::ROLE_VIEWER:
      return "viewer";
    case v1::ROLE_OPERATOR:
      return "operator";
    case v1::ROLE_ADMIN:
      return "admin";
    default:
      return "no role";
  }
}

absl::StatusOr<Access::Caller> Access::Resolve(const security::Identity& identity) {
  Caller caller{identity, v1::ROLE_UNSPECIFIED};
  std::vector<v1::RoleBinding> bindings;
  if (!options_.insecure && identity.kind == security::Identity::Kind::kUser) {
    auto objects = objects_.List("RoleBinding");
    if (!objects.ok()) return objects.status();
    for (const v1::Object& o : *objects) bindings.push_back(o.role_binding());
  }
  caller.role = RoleOf(identity, bindings, options_);
  return caller;
}

absl::Status Access::Check(const Caller& caller, absl::string_view verb, absl::string_view kind,
                           absl::string_view name) const {
  v1::Role needed = RequiredRole(verb, kind);
  if (caller.role >= needed) return absl::OkStatus();
  std::string object = name.empty() ? absl::StrCat(kind, "s") : absl::StrCat(kind, "/", name);
  if (verb == "audit") object = "the audit log";
  return absl::PermissionDeniedError(absl::StrCat(caller.identity.ToString(), " may not ", verb, " ", object,
                                                  ": needs role ", RoleName(needed), ", has ",
                                                  RoleName(caller.role)));
}

}  // namespace mkfleet::reconciler
