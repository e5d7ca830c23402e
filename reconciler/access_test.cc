#include "reconciler/access.h"

#include <filesystem>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using security::Identity;

v1::RoleBinding Binding(v1::Role role, std::vector<std::pair<v1::SubjectKind, std::string>> subjects) {
  v1::RoleBinding b;
  b.mutable_spec()->set_role(role);
  for (auto& [kind, name] : subjects) {
    v1::Subject* s = b.mutable_spec()->add_subjects();
    s->set_kind(kind);
    s->set_name(name);
  }
  return b;
}

TEST(AccessTest, RolesIncludeTheOnesBefore) {
  EXPECT_EQ(RequiredRole("get", "Host"), v1::ROLE_VIEWER);
  EXPECT_EQ(RequiredRole("diff", ""), v1::ROLE_VIEWER);
  EXPECT_EQ(RequiredRole("apply", "KernelInstance"), v1::ROLE_OPERATOR);
  EXPECT_EQ(RequiredRole("delete", "InstanceSet"), v1::ROLE_OPERATOR);
  EXPECT_EQ(RequiredRole("apply", "Host"), v1::ROLE_ADMIN);
  EXPECT_EQ(RequiredRole("prune", "RoleBinding"), v1::ROLE_ADMIN);
  EXPECT_EQ(RequiredRole("apply", "SomethingNew"), v1::ROLE_ADMIN);
  EXPECT_EQ(RequiredRole("audit", ""), v1::ROLE_ADMIN);
}

TEST(AccessTest, RoleOfUsersAndGroups) {
  AccessOptions o;
  std::vector<v1::RoleBinding> b = {Binding(v1::ROLE_VIEWER, {{v1::SUBJECT_GROUP, "dev"}}),
                                    Binding(v1::ROLE_OPERATOR, {{v1::SUBJECT_USER, "alice"}}),
                                    Binding(v1::ROLE_ADMIN, {{v1::SUBJECT_GROUP, "sre"}})};
  EXPECT_EQ(RoleOf(Identity::User("bob", {"dev"}), b, o), v1::ROLE_VIEWER);
  EXPECT_EQ(RoleOf(Identity::User("alice", {"dev"}), b, o), v1::ROLE_OPERATOR);
  EXPECT_EQ(RoleOf(Identity::User("carol", {"dev", "sre"}), b, o), v1::ROLE_ADMIN);
  EXPECT_EQ(RoleOf(Identity::User("dave"), b, o), v1::ROLE_UNSPECIFIED);
  // A group binding does not match a user of that name, nor the reverse.
  EXPECT_EQ(RoleOf(Identity::User("sre"), b, o), v1::ROLE_UNSPECIFIED);
  EXPECT_EQ(RoleOf(Identity::User("x", {"alice"}), b, o), v1::ROLE_UNSPECIFIED);
  // The bootstrap group is admin with no binding at all.
  EXPECT_EQ(RoleOf(Identity::User("root", {"fleet-admins"}), {}, o), v1::ROLE_ADMIN);
  // Agents and the controller hold no role, even if a binding names them.
  std::vector<v1::RoleBinding> named = {Binding(v1::ROLE_ADMIN, {{v1::SUBJECT_USER, "node-a"}})};
  EXPECT_EQ(RoleOf(Identity::Agent("node-a"), named, o), v1::ROLE_UNSPECIFIED);
  EXPECT_EQ(RoleOf(Identity::Controller(), named, o), v1::ROLE_UNSPECIFIED);
  EXPECT_EQ(RoleOf(Identity{}, named, o), v1::ROLE_UNSPECIFIED);
  o.insecure = true;
  EXPECT_EQ(RoleOf(Identity{}, {}, o), v1::ROLE_ADMIN);
}

TEST(AccessTest, RefusalNamesIdentityVerbAndObject) {
  std::string path = ::testing::TempDir() + "/access.db";
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
  auto store = *OpenSqliteStore(path, Clock::Real());
  Objects objects(*store);
  v1::Object rb;
  rb.mutable_role_binding()->set_api_version("mkfleet.io/v1");
  rb.mutable_role_binding()->set_kind("RoleBinding");
  rb.mutable_role_binding()->mutable_metadata()->set_name("ops");
  *rb.mutable_role_binding()->mutable_spec() = Binding(v1::ROLE_OPERATOR, {{v1::SUBJECT_GROUP, "ops"}}).spec();
  ASSERT_TRUE(objects.Apply({rb}, {}).ok());
  Access access(objects, AccessOptions{});
  auto caller = access.Resolve(Identity::User("alice", {"ops"}));
  ASSERT_TRUE(caller.ok());
  EXPECT_EQ(caller->role, v1::ROLE_OPERATOR);
  EXPECT_TRUE(access.Check(*caller, "apply", "KernelInstance", "web-1").ok());
  absl::Status refused = access.Check(*caller, "apply", "Host", "node-a");
  EXPECT_EQ(refused.code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(refused.message(),
            "user alice (groups ops) may not apply Host/node-a: needs role admin, has operator");
  auto agent = access.Resolve(Identity::Agent("node-a"));
  EXPECT_EQ(access.Check(*agent, "get", "Host").message(), "agent node-a may not get Hosts: needs role viewer, has no role");
}

}  // namespace
}  // namespace mkfleet::reconciler
