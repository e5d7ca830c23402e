#include "reconciler/drift.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/objects.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using ::testing::IsEmpty;
using ::testing::Not;

class DriftTest : public ::testing::Test {
 protected:
  void SetUp() override {
    host_.mutable_metadata()->set_name("node-a");
    host_.mutable_metadata()->set_generation(1);
    spec_.set_phase(v1::PHASE_RUNNING);
    views_["node-a"].connected = true;
    Observe("web-1", {2, 3, 18, 19});
    Observe("db-1", {4, 5});
  }

  void Observe(const std::string& name, std::vector<uint32_t> cpus, v1::KernelState state = v1::KERNEL_STATE_ACTIVE) {
    v1::ObservedInstance& o = views_["node-a"].instances[name];
    o.set_name(name);
    v1::InstanceStatus& st = *o.mutable_status();
    st.set_kernel_state(state);
    st.mutable_placement()->clear_cpus();
    for (uint32_t c : cpus) st.mutable_placement()->add_cpus(c);
    st.mutable_placement()->clear_memory();
    v1::NodeBytes* m = st.mutable_placement()->add_memory();
    m->set_bytes(1ull << 30);
    st.mutable_provenance()->set_kernel_path("/boot/vmlinuz");
    st.mutable_provenance()->set_cmdline("console=mktty0");
  }

  // A plan of the fleet as PlanFleet would give it: both instances placed on node-a, with
  // `actions_for` each getting an action.
  FleetPlan Fleet(std::vector<std::string> actions_for = {}, int64_t generation = 1) {
    FleetPlan f;
    for (const char* name : {"web-1", "db-1"}) {
      PlannedInstance& p = f.planned[name];
      p.host = "node-a";
      p.kernel = name;
      p.recorded_owner = std::string("KernelInstance/") + name + "@3";
      p.generation = generation;
      p.spec = &spec_;
    }
    f.planned_on["node-a"] = {"db-1", "web-1"};
    Plan& plan = f.hosts["node-a"];
    for (const std::string& k : actions_for) {
      v1::Action a;
      a.set_id("node-a/" + k + "/g1/v1/cpu-add");
      a.set_instance(k);
      a.mutable_cpu_add();
      plan.actions.push_back(a);
      plan.changes[k] = InstanceChange{InstanceChange::Kind::kResize, false, "resize"};
    }
    return f;
  }

  DriftPass Step(FleetPlan& fleet) { return tracker_.Step({"node-a"}, {host_}, views_, statuses_, ++now_, &fleet); }

  std::vector<std::string> Lines(const DriftPass& pass) {
    std::vector<std::string> out;
    for (const v1::Event& e : pass.events) out.push_back(e.reason() + " " + e.kind() + "/" + e.name() + " " + e.message());
    return out;
  }

  v1::Host host_;
  v1::KernelInstanceSpec spec_;
  std::map<std::string, HostView> views_;
  std::map<std::string, std::string> statuses_;
  DriftTracker tracker_;
  int64_t now_ = 1000;
};

TEST_F(DriftTest, SettledInstanceChangedOutsideIsDriftAndCorrectLetsThePlanPutItBack) {
  FleetPlan settle = Fleet();
  EXPECT_THAT(Step(settle).events, IsEmpty());

  Observe("web-1", {2, 3, 18});  // a CPU hot-removed by hand
  FleetPlan fix = Fleet({"web-1"});
  DriftPass pass = Step(fix);
  EXPECT_THAT(Lines(pass), Contains(AllOf(HasSubstr("DriftDetected KernelInstance/web-1 cpus: wanted 2-3,18-19"),
                                          HasSubstr("found 2-3,18"), HasSubstr("putting it back"))));
  ASSERT_EQ(pass.by_host["node-a"].size(), 1u);
  EXPECT_EQ(pass.by_host["node-a"][0].policy(), "Correct");
  EXPECT_EQ(fix.hosts["node-a"].actions.size(), 1u) << "Correct keeps the corrective action";
  EXPECT_TRUE(fix.drift_held.empty());

  // Still on its way back: no new event, and the drift is the one found first (its time
  // too: a status that changed at every pass would be written at every pass).
  const int64_t since = pass.by_host["node-a"][0].since_unix_ms();
  FleetPlan again = Fleet({"web-1"});
  DriftPass later = Step(again);
  EXPECT_THAT(later.events, IsEmpty());
  ASSERT_EQ(later.by_host["node-a"].size(), 1u);
  EXPECT_EQ(later.by_host["node-a"][0].since_unix_ms(), since);

  Observe("web-1", {2, 3, 18, 20});  // back with 4 CPUs (another one): nothing left to do
  FleetPlan done = Fleet();
  pass = Step(done);
  EXPECT_THAT(Lines(pass), Contains(HasSubstr("DriftCorrected KernelInstance/web-1 put back: cpus 2-3,18,20")));
  EXPECT_TRUE(pass.by_host["node-a"].empty());
  // The new CPUs are the baseline now.
  FleetPlan quiet = Fleet();
  EXPECT_THAT(Step(quiet).events, IsEmpty());
}

TEST_F(DriftTest, ReportWithholdsTheDriftedInstancesActionsOnly) {
  host_.mutable_spec()->set_drift_policy(v1::DRIFT_REPORT);
  FleetPlan settle = Fleet();
  Step(settle);
  Observe("web-1", {2, 3, 18});
  FleetPlan plan = Fleet({"web-1", "db-1"});  // db-1 has a change of mkfleet's own
  DriftPass pass = Step(plan);
  EXPECT_THAT(Lines(pass), Contains(HasSubstr("(driftPolicy Report: left as found)")));
  ASSERT_EQ(plan.hosts["node-a"].actions.size(), 1u);
  EXPECT_EQ(plan.hosts["node-a"].actions[0].instance(), "db-1");
  EXPECT_FALSE(plan.hosts["node-a"].changes.count("web-1"));
  EXPECT_THAT(plan.drift_held["web-1"], AllOf(HasSubstr("cpus 2-3,18 (wanted 2-3,18-19)"), HasSubstr("Report")));

  // Put back by other hands: resolved, not corrected.
  Observe("web-1", {2, 3, 18, 19});
  FleetPlan back = Fleet();
  EXPECT_THAT(Lines(Step(back)), Contains(HasSubstr("DriftResolved KernelInstance/web-1")));
}

TEST_F(DriftTest, MkfleetsOwnChangesAreNotDrift) {
  FleetPlan settle = Fleet();
  Step(settle);
  // A new generation (the spec changed): the plan resizes it, the next view differs.
  Observe("web-1", {2, 3});
  FleetPlan resize = Fleet({"web-1"}, /*generation=*/2);
  EXPECT_THAT(Step(resize).events, IsEmpty());
  // An instance with an action under way is not a baseline: what it becomes is not drift.
  FleetPlan settle2 = Fleet({"db-1"}, 2);
  Step(settle2);
  Observe("db-1", {4, 5, 6, 7});
  FleetPlan after = Fleet({}, 2);
  EXPECT_THAT(Lines(Step(after)), Not(Contains(HasSubstr("db-1"))));
}

TEST_F(DriftTest, MissingHaltedAndACrashedKernel) {
  FleetPlan settle = Fleet();
  Step(settle);
  views_["node-a"].instances.erase("web-1");
  Observe("db-1", {4, 5}, v1::KERNEL_STATE_LOADED);
  FleetPlan fix = Fleet({"web-1", "db-1"});
  auto lines = Lines(Step(fix));
  EXPECT_THAT(lines, Contains(HasSubstr("web-1 instance: wanted active on node-a, found missing")));
  EXPECT_THAT(lines, Contains(HasSubstr("db-1 state: wanted active, found loaded (halted)")));
  // A crash is the failover policy's business, not drift.
  DriftTracker fresh;
  FleetPlan settle2 = Fleet();
  Observe("web-1", {2, 3, 18, 19});
  Observe("db-1", {4, 5});
  fresh.Step({"node-a"}, {host_}, views_, statuses_, 1, &settle2);
  Observe("db-1", {4, 5}, v1::KERNEL_STATE_FAILED);
  FleetPlan crashed = Fleet({"db-1"});
  EXPECT_THAT(fresh.Step({"node-a"}, {host_}, views_, statuses_, 2, &crashed).events, IsEmpty());
}

TEST_F(DriftTest, AnotherKernelOrCommandLineIsDrift) {
  FleetPlan settle = Fleet();
  Step(settle);
  auto& web = *views_["node-a"].instances["web-1"].mutable_status()->mutable_provenance();
  web.set_kernel_path("/boot/vmlinuz-by-hand");
  auto& db = *views_["node-a"].instances["db-1"].mutable_status()->mutable_provenance();
  db.set_cmdline("console=mktty0 debug");
  FleetPlan fix = Fleet({"web-1", "db-1"});
  auto lines = Lines(Step(fix));
  EXPECT_THAT(lines, Contains(HasSubstr("web-1 kernel: wanted /boot/vmlinuz, found /boot/vmlinuz-by-hand")));
  EXPECT_THAT(lines, Contains(HasSubstr("db-1 cmdline: wanted \"console=mktty0\", found \"console=mktty0 debug\"")));
}

TEST_F(DriftTest, AfterARestartTheStoredConvergedStatusIsTheBaseline) {
  v1::InstanceStatus st = views_["node-a"].instances["web-1"].status();
  st.set_phase("Running");
  st.set_observed_generation(1);
  st.set_kernel("web-1");
  st.mutable_placement()->set_host("node-a");
  statuses_[StatusKey("KernelInstance", "web-1")] = st.SerializeAsString();
  Observe("web-1", {2, 3, 18});  // changed while the controller was down
  FleetPlan fix = Fleet({"web-1"});
  EXPECT_THAT(Lines(Step(fix)), Contains(HasSubstr("DriftDetected KernelInstance/web-1 cpus")));
}

TEST_F(DriftTest, PoolChangedOutsideIsDrift) {
  FleetPlan settle = Fleet();
  Step(settle);
  views_["node-a"].pool.add_cpus(2);
  v1::Action change;
  change.set_id("node-a/pool/g1/pool-change-x");
  for (uint32_t c : {2, 3, 4}) change.mutable_pool_change()->add_cpus(c);
  FleetPlan drifted = Fleet();
  drifted.pool_changes["node-a"] = change;
  drifted.hosts["node-a"].actions.insert(drifted.hosts["node-a"].actions.begin(), change);
  host_.mutable_spec()->set_drift_policy(v1::DRIFT_REPORT);
  DriftPass pass = Step(drifted);
  EXPECT_THAT(Lines(pass), Contains(AllOf(HasSubstr("DriftDetected Host/node-a pool: wanted cpus 2-4"),
                                          HasSubstr("found cpus 2,"))));
  EXPECT_TRUE(drifted.hosts["node-a"].actions.empty()) << "Report withholds the pool change";
  // A changed Host spec (a new generation) is not drift.
  DriftTracker fresh;
  FleetPlan settle2 = Fleet();
  fresh.Step({"node-a"}, {host_}, views_, statuses_, 1, &settle2);
  host_.mutable_metadata()->set_generation(2);
  FleetPlan respec = Fleet();
  respec.pool_changes["node-a"] = change;
  EXPECT_THAT(fresh.Step({"node-a"}, {host_}, views_, statuses_, 2, &respec).events, IsEmpty());
}

TEST_F(DriftTest, UnmanagedKernelsAreReportedOnceAndRemovedOnlyWhenAsked) {
  Observe("stray", {30});
  v1::KernelRef stray;
  stray.set_name("stray");
  stray.set_kernel_state(v1::KERNEL_STATE_ACTIVE);
  stray.mutable_placement()->add_cpus(30);
  FleetPlan keep = Fleet();
  keep.unmanaged["node-a"] = {stray};
  DriftPass pass = Step(keep);
  EXPECT_THAT(Lines(pass), Contains(AllOf(HasSubstr("DriftDetected Kernel/stray unmanaged kernel on node-a"),
                                          HasSubstr("left alone"))));
  EXPECT_TRUE(keep.hosts["node-a"].actions.empty());
  EXPECT_EQ(pass.by_host["node-a"].at(0).policy(), "Keep");
  FleetPlan again = Fleet();
  again.unmanaged["node-a"] = {stray};
  EXPECT_THAT(Step(again).events, IsEmpty()) << "once";

  host_.mutable_spec()->set_unmanaged(v1::UNMANAGED_REMOVE);
  FleetPlan remove = Fleet({"web-1"});
  remove.unmanaged["node-a"] = {stray};
  Step(remove);
  ASSERT_GE(remove.hosts["node-a"].actions.size(), 2u);
  EXPECT_EQ(remove.hosts["node-a"].actions[0].instance(), "stray") << "deletes go first";
  EXPECT_TRUE(remove.hosts["node-a"].actions[0].has_halt());
  views_["node-a"].instances.erase("stray");
  FleetPlan gone = Fleet();
  EXPECT_THAT(Lines(Step(gone)), Contains(HasSubstr("DriftCorrected Kernel/stray unmanaged kernel deleted")));
}

}  // namespace
}  // namespace mkfleet::reconciler
