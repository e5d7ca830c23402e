// ComputeStatuses without gRPC, a store or a clock: plans from PlanFleet over hosts' views,
// outcomes as the dispatcher reports them, and the statuses and events that come out.
#include "reconciler/statuses.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/objects.h"
#include "reconciler/testing/fleet_views.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

class StatusesTest : public ::testing::Test {
 protected:
  // One pass: statuses from `fleet` as the hosts in `views` show it, the previous ones from
  // the last call (as the store would hold them).
  // `only`: the hosts this pass serves (default all); the others keep their statuses.
  StatusUpdate Pass(const FleetPlan& fleet, const std::map<std::string, HostOutcome>& outcomes = {},
                    std::set<std::string> only = {},
                    const std::map<std::string, std::vector<v1::Drift>>* drift = nullptr) {
    std::set<std::string> batch = std::move(only);
    if (batch.empty()) {
      for (const v1::Host& h : hosts_) batch.insert(h.metadata().name());
    }
    PassInputs in{batch, hosts_, instances_, sets_, fleet, views_, outcomes, stored_};
    in.drift = drift;
    StatusUpdate u = ComputeStatuses(in);
    for (const auto& [key, value] : u.writes) stored_[key] = value;
    for (const std::string& key : u.deletes) stored_.erase(key);
    return u;
  }
  FleetPlan Plan() { return PlanFleet(hosts_, views_, instances_, sets_); }
  v1::InstanceStatus Instance(const std::string& name) {
    v1::InstanceStatus st;
    st.ParseFromString(stored_.at(StatusKey("KernelInstance", name)));
    return st;
  }
  v1::InstanceSetStatus Set(const std::string& name) {
    v1::InstanceSetStatus st;
    st.ParseFromString(stored_.at(StatusKey("InstanceSet", name)));
    return st;
  }
  v1::HostStatus HostStatus(const std::string& name) {
    v1::HostStatus st;
    st.ParseFromString(stored_.at(StatusKey("Host", name)));
    return st;
  }
  template <typename S>
  const v1::Condition* Condition(const S& st, const std::string& type) {
    for (const v1::Condition& c : st.conditions()) {
      if (c.type() == type) return &c;
    }
    return nullptr;
  }
  static std::vector<std::string> Reasons(const StatusUpdate& u) {
    std::vector<std::string> out;
    for (const v1::Event& e : u.events) out.push_back(e.kind() + "/" + e.name() + " " + e.reason());
    return out;
  }

  std::vector<v1::Host> hosts_ = {Host("node-a"), Host("node-b")};
  std::map<std::string, HostView> views_ = {{"node-a", Connected()}, {"node-b", Connected()}};
  std::vector<v1::KernelInstance> instances_;
  std::vector<v1::InstanceSet> sets_;
  std::map<std::string, std::string> stored_;
};

TEST_F(StatusesTest, ReadyOnlyWhenItRunsAsSpecifiedAndNothingIsLeftToDo) {
  instances_ = {reconciler::Instance("web-1", "node-a", 4)};
  FleetPlan first = Plan();
  Pass(first);
  v1::InstanceStatus st = Instance("web-1");
  EXPECT_EQ(st.phase(), "Creating");
  EXPECT_EQ(Condition(st, "Ready")->status(), v1::CONDITION_FALSE);
  EXPECT_EQ(st.observed_generation(), 0);
  // It runs, but this pass still has actions for it (sent or not): not Ready yet.
  RunAsPlaced(first, "node-a", views_["node-a"]);
  Pass(first);
  EXPECT_EQ(Condition(Instance("web-1"), "Ready")->status(), v1::CONDITION_FALSE);
  // Nothing left to do: Ready, at the generation, with one event; another pass writes nothing.
  StatusUpdate u = Pass(Plan());
  st = Instance("web-1");
  EXPECT_EQ(st.phase(), "Running");
  EXPECT_EQ(Condition(st, "Ready")->reason(), "Converged");
  EXPECT_EQ(st.observed_generation(), 1);
  EXPECT_EQ(Condition(st, "Ready")->observed_generation(), 1);
  EXPECT_THAT(Reasons(u), ::testing::Contains("KernelInstance/web-1 Ready"));
  StatusUpdate again = Pass(Plan());
  EXPECT_THAT(again.writes, IsEmpty());
  EXPECT_THAT(again.events, IsEmpty());
}

TEST_F(StatusesTest, StatusesSayWhereTheSpecCameFrom) {
  instances_ = {reconciler::Instance("web-1", "node-a", 4)};
  v1::ObjectMeta& meta = *instances_[0].mutable_metadata();
  meta.set_source("git:prod");
  meta.set_source_commit("1a2b3c4d5e6f00112233445566778899aabbccdd");
  meta.set_source_path("clusters/prod/web.yaml");
  hosts_[0].mutable_metadata()->set_source("hosts.yaml");
  Pass(Plan());
  const v1::SourceRef from = Instance("web-1").applied_from();
  EXPECT_EQ(from.source(), "git:prod");
  EXPECT_EQ(from.commit(), "1a2b3c4d5e6f00112233445566778899aabbccdd");
  EXPECT_EQ(from.path(), "clusters/prod/web.yaml");
  EXPECT_EQ(HostStatus("node-a").applied_from().source(), "hosts.yaml");
  EXPECT_EQ(HostStatus("node-a").applied_from().commit(), "");
}

TEST_F(StatusesTest, AFailedActionIsNamedAndItsSetIsDegraded) {
  // Defect 5: `describe` did not say which action of a batch failed.
  sets_ = {PerHostSet("edge", 1)};
  FleetPlan plan = Plan();
  RunAsPlaced(plan, "node-a", views_["node-a"]);
  std::map<std::string, HostOutcome> outcomes;
  outcomes["node-b"].in_plan = {"edge-node-b-0"};
  outcomes["node-b"].failed["edge-node-b-0"] =
      "node-b/edge-node-b-0/g3/v1/create-load: cannot open /var/lib/mkfleet/kernels/x: ENOENT";
  Pass(plan, outcomes);
  v1::InstanceStatus st = Instance("edge-node-b-0");
  EXPECT_EQ(st.phase(), "Failed");
  EXPECT_EQ(Condition(st, "Ready")->reason(), "ActionFailed");
  EXPECT_THAT(Condition(st, "Degraded")->message(), HasSubstr("create-load: cannot open /var/lib/mkfleet/kernels/x"));
  v1::InstanceSetStatus set = Set("edge");
  EXPECT_EQ(Condition(set, "Ready")->status(), v1::CONDITION_FALSE);
  ASSERT_NE(Condition(set, "Degraded"), nullptr);
  EXPECT_EQ(Condition(set, "Degraded")->reason(), "MembersFailed");
  EXPECT_THAT(Condition(set, "Degraded")->message(), HasSubstr("first edge-node-b-0: node-b/edge-node-b-0"));
}

TEST_F(StatusesTest, MembersOnAHostThatIsDownAreNotCounted) {
  // Defect 4: members on a host whose agent was down were counted as updated.
  sets_ = {PerHostSet("edge", 1)};
  FleetPlan first = Plan();
  RunAsPlaced(first, "node-a", views_["node-a"]);
  RunAsPlaced(first, "node-b", views_["node-b"]);
  Pass(Plan());
  EXPECT_EQ(Set("edge").ready_replicas(), 2u);
  EXPECT_EQ(Condition(Set("edge"), "Ready")->status(), v1::CONDITION_TRUE);
  views_["node-b"].connected = false;
  views_["node-b"].error = "connection refused";
  // A pass that serves node-a only: node-b's member keeps its last status (Ready), which
  // must not count while nobody can see it.
  Pass(Plan(), {}, {"node-a"});
  EXPECT_EQ(Set("edge").ready_replicas(), 1u);
  EXPECT_EQ(Set("edge").updated_replicas(), 1u);
  Pass(Plan());
  v1::InstanceSetStatus set = Set("edge");
  EXPECT_EQ(set.replicas(), 2u);
  EXPECT_EQ(set.ready_replicas(), 1u);
  EXPECT_EQ(set.updated_replicas(), 1u);
  EXPECT_EQ(Condition(set, "Ready")->status(), v1::CONDITION_FALSE);
  EXPECT_EQ(Condition(Instance("edge-node-b-0"), "Ready")->reason(), "HostUnreachable");
}

TEST_F(StatusesTest, AResizeThatCannotBeMetSaysResizedFalseAndKeepsRunning) {
  instances_ = {reconciler::Instance("web-1", "node-a", 6)};
  RunAsPlaced(Plan(), "node-a", views_["node-a"]);
  Pass(Plan());
  instances_[0].mutable_spec()->mutable_resources()->set_cpus(40);
  instances_[0].mutable_metadata()->set_generation(2);
  StatusUpdate u = Pass(Plan());
  v1::InstanceStatus st = Instance("web-1");
  EXPECT_EQ(st.phase(), "Running");
  const v1::Condition* resized = Condition(st, "Resized");
  ASSERT_NE(resized, nullptr);
  EXPECT_EQ(resized->status(), v1::CONDITION_FALSE);
  EXPECT_EQ(resized->reason(), "Infeasible");
  EXPECT_THAT(resized->message(), HasSubstr("needs 20 whole cores"));
  EXPECT_EQ(resized->observed_generation(), 2);
  EXPECT_EQ(st.observed_generation(), 2);  // the change was seen (and cannot be met)
  EXPECT_THAT(Reasons(u), ::testing::Contains("KernelInstance/web-1 ResizeInfeasible"));
}

TEST_F(StatusesTest, HostsSayTerminatingAndNameKernelsNoObjectOwns) {
  v1::ObservedInstance foreign;
  foreign.set_name("by-hand");
  foreign.mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
  foreign.mutable_status()->mutable_placement()->add_cpus(4);
  views_["node-a"].instances["by-hand"] = foreign;
  hosts_[1].mutable_metadata()->set_deletion_unix_ms(1);
  // The drift tracker's findings for the pass (the unmanaged kernel among them) go in the
  // host's status; its events are the tracker's (DriftDetected), not the statuses'.
  std::map<std::string, std::vector<v1::Drift>> drift;
  v1::Drift d;
  d.set_object("Kernel/by-hand");
  d.set_field("unmanaged");
  drift["node-a"].push_back(d);
  StatusUpdate u = Pass(Plan(), {}, {}, &drift);
  v1::HostStatus a = HostStatus("node-a");
  ASSERT_EQ(a.unmanaged_size(), 1);
  EXPECT_EQ(a.unmanaged(0).name(), "by-hand");
  ASSERT_EQ(a.drift_size(), 1);
  EXPECT_EQ(a.drift(0).object(), "Kernel/by-hand");
  EXPECT_EQ(HostStatus("node-b").drift_size(), 0);
  EXPECT_EQ(a.phase(), "Ready");
  EXPECT_EQ(HostStatus("node-b").phase(), "Terminating");
  EXPECT_THAT(Reasons(u), ::testing::Not(::testing::Contains("Host/node-a Unmanaged")));
  // Gone once the tracker finds none.
  Pass(Plan());
  EXPECT_EQ(HostStatus("node-a").drift_size(), 0);
}

}  // namespace
}  // namespace mkfleet::reconciler
