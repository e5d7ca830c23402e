#include "reconciler/objects.h"

#include <filesystem>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

v1::Object Host(const std::string& name) {
  v1::Object o;
  o.mutable_host()->mutable_metadata()->set_name(name);
  return o;
}

v1::Object Instance(const std::string& name, const std::string& host, int cpus) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->mutable_metadata()->set_name(name);
  ki->mutable_spec()->set_host(host);
  ki->mutable_spec()->mutable_resources()->set_cpus(cpus);
  return o;
}

std::vector<std::string> Changes(const v1::ApplyResponse& r) {
  std::vector<std::string> out;
  for (const auto& c : r.changes()) out.push_back(c.kind() + "/" + c.name() + " " + c.change());
  return out;
}

class ObjectsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = ::testing::TempDir() + "/objects-" +
                       ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    store_ = *OpenSqliteStore(path, clock_);
    objects_ = std::make_unique<Objects>(*store_);
  }
  SimulatedClock clock_;
  std::unique_ptr<Store> store_;
  std::unique_ptr<Objects> objects_;
};

TEST_F(ObjectsTest, CreateConfigureUnchangedAndGenerations) {
  ApplyOptions opts{"git:fleet", false, false};
  auto r = objects_->Apply({Host("node-a"), Instance("web-1", "node-a", 4)}, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Changes(*r), ::testing::ElementsAre("Host/node-a created", "KernelInstance/web-1 created"));
  auto web = **objects_->Get("KernelInstance", "web-1");
  EXPECT_EQ(web.kernel_instance().metadata().generation(), 1);
  EXPECT_EQ(web.kernel_instance().metadata().source(), "git:fleet");
  EXPECT_GT(web.kernel_instance().metadata().revision(), 0);

  r = objects_->Apply({Host("node-a"), Instance("web-1", "node-a", 8)}, opts);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Changes(*r), ::testing::ElementsAre("Host/node-a unchanged", "KernelInstance/web-1 configured"));
  web = **objects_->Get("KernelInstance", "web-1");
  EXPECT_EQ(web.kernel_instance().metadata().generation(), 2);
  EXPECT_EQ(web.kernel_instance().spec().resources().cpus(), 8u);

  // A label change is a spec-level change; re-applying the same thing writes nothing.
  int64_t before = *store_->Revision();
  r = objects_->Apply({Host("node-a"), Instance("web-1", "node-a", 8)}, opts);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*store_->Revision(), before);
  v1::Object labelled = Instance("web-1", "node-a", 8);
  (*labelled.mutable_kernel_instance()->mutable_metadata()->mutable_labels())["tier"] = "web";
  r = objects_->Apply({labelled}, opts);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ((**objects_->Get("KernelInstance", "web-1")).kernel_instance().metadata().generation(), 3);
}

// Stored Hosts are found whether an apply names a few (each looked up) or many (listed).
TEST_F(ObjectsTest, InstancesFindTheStoredHostsTheyName) {
  std::vector<v1::Object> hosts;
  for (int i = 0; i < 80; ++i) hosts.push_back(Host("node-" + std::to_string(i)));
  ASSERT_TRUE(objects_->Apply(hosts, ApplyOptions{"s", false, false}).ok());
  for (int count : {3, 80}) {
    std::vector<v1::Object> instances;
    for (int i = 0; i < count; ++i) {
      instances.push_back(Instance("web-" + std::to_string(i), "node-" + std::to_string(i), 2));
    }
    EXPECT_TRUE(objects_->Apply(instances, ApplyOptions{"s", false, false}).ok()) << count;
    instances.push_back(Instance("web-x", "node-x", 2));
    const int64_t before = *store_->Revision();
    auto r = objects_->Apply(instances, ApplyOptions{"s", false, false});
    ASSERT_FALSE(r.ok()) << count;
    EXPECT_THAT(r.status().message(), HasSubstr("KernelInstance/web-x: spec.host: no Host named \"node-x\"")) << count;
    EXPECT_EQ(*store_->Revision(), before);
  }
}

TEST_F(ObjectsTest, BadReferenceWritesNothing) {
  auto r = objects_->Apply({Host("node-a"), Instance("web-1", "node-a", 4), Instance("web-2", "node-zz", 4)},
                           ApplyOptions{"s", false, false});
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(r.status().message(), HasSubstr("KernelInstance/web-2: spec.host: no Host named \"node-zz\""));
  EXPECT_EQ(*store_->Revision(), 0);
  EXPECT_TRUE(objects_->List("Host")->empty());

  r = objects_->Apply({Host("node-a"), Host("node-a")}, ApplyOptions{"s", false, false});
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("Host/node-a: given twice"));

  // A reference to a host already in the store is fine.
  ASSERT_TRUE(objects_->Apply({Host("node-a")}, ApplyOptions{"hosts", false, false}).ok());
  EXPECT_TRUE(objects_->Apply({Instance("web-1", "node-a", 2)}, ApplyOptions{"apps", false, false}).ok());
}

TEST_F(ObjectsTest, DryRunWritesNothing) {
  auto r = objects_->Apply({Host("node-a")}, ApplyOptions{"s", true, false});
  ASSERT_TRUE(r.ok());
  EXPECT_THAT(Changes(*r), ::testing::ElementsAre("Host/node-a created"));
  EXPECT_EQ(*store_->Revision(), 0);
  EXPECT_FALSE(objects_->Get("Host", "node-a")->has_value());
}

TEST_F(ObjectsTest, PruneDeletesOnlyWhatTheSourceOwned) {
  ASSERT_TRUE(objects_->Apply({Host("node-a"), Host("node-b")}, ApplyOptions{"hosts", false, false}).ok());
  ASSERT_TRUE(objects_->Apply({Instance("web-1", "node-a", 2), Instance("web-2", "node-b", 2)},
                              ApplyOptions{"apps", false, false})
                  .ok());
  // Without prune, dropping web-2 from the set keeps it.
  ASSERT_TRUE(objects_->Apply({Instance("web-1", "node-a", 2)}, ApplyOptions{"apps", false, false}).ok());
  EXPECT_EQ(objects_->List("KernelInstance")->size(), 2u);
  // With prune it goes, and the other source's hosts stay.
  auto r = objects_->Apply({Instance("web-1", "node-a", 2)}, ApplyOptions{"apps", false, true});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_THAT(Changes(*r), ::testing::ElementsAre("KernelInstance/web-1 unchanged", "KernelInstance/web-2 pruned"));
  EXPECT_EQ(objects_->List("KernelInstance")->size(), 1u);
  EXPECT_EQ(objects_->List("Host")->size(), 2u);
  EXPECT_EQ(objects_->Apply({}, ApplyOptions{"", false, true}).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(ObjectsTest, DeleteNamesTheObject) {
  ASSERT_TRUE(objects_->Apply({Host("node-a")}, ApplyOptions{"s", false, false}).ok());
  // A Host is only marked: the controller deletes its kernels first (force: at once).
  EXPECT_EQ(*objects_->Delete("Host", "node-a", 1234), "terminating");
  EXPECT_EQ((*objects_->Get("Host", "node-a"))->host().metadata().deletion_unix_ms(), 1234);
  EXPECT_EQ(*objects_->Delete("Host", "node-a", 5678), "terminating");  // stays marked as it was
  EXPECT_EQ((*objects_->Get("Host", "node-a"))->host().metadata().deletion_unix_ms(), 1234);
  // Applying it again calls the deletion off.
  auto undo = objects_->Apply({Host("node-a")}, ApplyOptions{"s", false, false});
  ASSERT_TRUE(undo.ok());
  EXPECT_THAT(Changes(*undo), ::testing::ElementsAre("Host/node-a configured"));
  EXPECT_EQ((*objects_->Get("Host", "node-a"))->host().metadata().deletion_unix_ms(), 0);
  ASSERT_EQ(*objects_->Delete("Host", "node-a", 1), "terminating");
  ASSERT_TRUE(objects_->FinishHostDelete("node-a").ok());
  EXPECT_FALSE(objects_->Get("Host", "node-a")->has_value());
  absl::Status again = objects_->Delete("Host", "node-a").status();
  EXPECT_EQ(again.code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(again.message(), "Host/node-a does not exist");

  ASSERT_TRUE(objects_->Apply({Host("node-b"), Instance("web-1", "node-b", 2), Instance("web-2", "node-b", 2)},
                              ApplyOptions{"s", false, false})
                  .ok());
  absl::Status in_use = objects_->Delete("Host", "node-b").status();
  EXPECT_EQ(in_use.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(in_use.message(), "Host/node-b is still named by KernelInstance web-1, web-2; delete those first");
  EXPECT_TRUE(objects_->Get("Host", "node-b")->has_value());
}

TEST_F(ObjectsTest, StatusesAndSetMembers) {
  v1::Object set;
  set.mutable_instance_set()->mutable_metadata()->set_name("edge");
  set.mutable_instance_set()->mutable_spec()->set_per_host(1);
  set.mutable_instance_set()->mutable_spec()->mutable_template_()->mutable_spec()->mutable_resources()->set_cpus(2);
  ASSERT_TRUE(objects_->Apply({Host("node-a"), Instance("web-1", "node-a", 2), set}, ApplyOptions{"s", false, false})
                  .ok());
  v1::InstanceStatus web, member;
  web.set_phase("Running");
  member.set_phase("Creating");
  member.set_owner("InstanceSet/edge");
  member.mutable_placement()->set_host("node-a");
  v1::HostStatus host;
  host.set_reachable(true);
  ASSERT_TRUE(objects_
                  ->WriteStatuses({{StatusKey("KernelInstance", "web-1"), web.SerializeAsString()},
                                   {StatusKey("KernelInstance", "edge-node-a-0"), member.SerializeAsString()},
                                   {StatusKey("Host", "node-a"), host.SerializeAsString()}},
                                  {})
                  .ok());
  // Plain lists: the objects with their statuses, no members.
  auto instances = objects_->List("KernelInstance");
  ASSERT_TRUE(instances.ok());
  ASSERT_EQ(instances->size(), 1u);
  EXPECT_EQ((*instances)[0].kernel_instance().status().phase(), "Running");
  EXPECT_TRUE((*objects_->Get("Host", "node-a"))->host().status().reachable());
  // With members: the set's template on the member's host, labelled with the set.
  auto all = objects_->List("KernelInstance", /*with_members=*/true);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2u);
  const v1::KernelInstance& m = (*all)[0].kernel_instance();  // sorted by name
  EXPECT_EQ(m.metadata().name(), "edge-node-a-0");
  EXPECT_EQ(m.spec().host(), "node-a");
  EXPECT_EQ(m.spec().resources().cpus(), 2u);
  EXPECT_EQ(m.metadata().labels().at("mkfleet.io/set"), "edge");
  EXPECT_TRUE(objects_->Get("KernelInstance", "edge-node-a-0", true)->has_value());
  EXPECT_FALSE(objects_->Get("KernelInstance", "edge-node-a-0")->has_value());
  // A member is deleted through its set.
  absl::Status del = objects_->Delete("KernelInstance", "edge-node-a-0").status();
  EXPECT_EQ(del.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(del.message(), HasSubstr("member of InstanceSet/edge"));
  // Deleting a status.
  ASSERT_TRUE(objects_->WriteStatuses({}, {StatusKey("KernelInstance", "edge-node-a-0")}).ok());
  EXPECT_EQ(objects_->List("KernelInstance", true)->size(), 1u);
}

// ListSpecs returns what List does, without statuses, after every kind of write: creates,
// spec changes, statuses, deletes and re-creates (a new created revision), other kinds, and
// a history compacted past its copy.
TEST_F(ObjectsTest, ListSpecsFollowsEveryWrite) {
  auto same = [&](const std::string& kind, const std::string& step) {
    auto listed = objects_->List(kind);
    auto specs = objects_->ListSpecs(kind);
    ASSERT_TRUE(listed.ok()) << listed.status();
    ASSERT_TRUE(specs.ok()) << specs.status();
    ASSERT_EQ(listed->size(), specs->size()) << step;
    for (size_t i = 0; i < listed->size(); ++i) {
      v1::Object want = (*listed)[i];
      if (want.has_host()) want.mutable_host()->clear_status();
      if (want.has_kernel_instance()) want.mutable_kernel_instance()->clear_status();
      EXPECT_EQ(want.DebugString(), (*specs)[i].DebugString()) << step;
    }
  };
  ApplyOptions opts{"", false, false};
  ASSERT_TRUE(objects_->Apply({Host("node-a"), Host("node-b"), Instance("web-1", "node-a", 4)}, opts).ok());
  same("Host", "first read");
  same("KernelInstance", "first read");
  ASSERT_TRUE(objects_->Apply({Instance("web-1", "node-a", 8), Instance("web-2", "node-b", 2)}, opts).ok());
  v1::InstanceStatus running;
  running.set_phase("Running");
  ASSERT_TRUE(objects_->WriteStatuses({{StatusKey("KernelInstance", "web-2"), running.SerializeAsString()}}, {}).ok());
  same("KernelInstance", "a change, a new instance and a status");
  same("Host", "no change");
  auto specs = objects_->ListSpecs("KernelInstance");
  ASSERT_EQ(specs->size(), 2u);
  EXPECT_EQ((*specs)[0].kernel_instance().spec().resources().cpus(), 8u);
  EXPECT_FALSE((*specs)[1].kernel_instance().has_status());

  // Deleted and applied again: a new created revision.
  const int64_t first = (*specs)[1].kernel_instance().metadata().created_revision();
  ASSERT_TRUE(objects_->Delete("KernelInstance", "web-2").ok());
  same("KernelInstance", "deleted");
  ASSERT_TRUE(objects_->Apply({Instance("web-2", "node-b", 3)}, opts).ok());
  same("KernelInstance", "applied again");
  EXPECT_GT((*objects_->ListSpecs("KernelInstance"))[1].kernel_instance().metadata().created_revision(), first);
  ASSERT_TRUE(objects_->Apply({Host("node-c")}, opts).ok());
  same("Host", "a host added");

  // History compacted past the copy: read whole again.
  ASSERT_TRUE(objects_->Apply({Instance("web-3", "node-c", 1)}, opts).ok());
  ASSERT_TRUE(store_->Compact(*store_->Revision()).ok());
  ASSERT_TRUE(objects_->Apply({Instance("web-4", "node-c", 1)}, opts).ok());
  same("KernelInstance", "after a compaction");
  EXPECT_EQ(objects_->ListSpecs("KernelInstance")->size(), 4u);
}

}  // namespace
}  // namespace mkfleet::reconciler
