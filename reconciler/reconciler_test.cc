// The reconcile loop end to end in one process: a real Agent (emulated kernel) on a free
// loopback port, the SQLite store, and the Reconciler converging the host to the objects.
#include "reconciler/reconciler.h"

#include <filesystem>
#include <fstream>

#include "absl/strings/match.h"
#include "agents/testing/served_agent.h"
#include "common/metrics.h"
#include "reconciler/controller_metrics.h"
#include "reconciler/agent_client.h"
#include "reconciler/event_log.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

class ReconcilerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = (host_.dir / "store.db").string();
    store_ = *OpenSqliteStore(path, Clock::Real());
    objects_ = std::make_unique<Objects>(*store_);
  }
  void TearDown() override {
    if (reconciler_) reconciler_->Stop();
  }

  v1::Object HostObject() {
    v1::Object o;
    o.mutable_host()->mutable_metadata()->set_name("node-a");
    o.mutable_host()->mutable_spec()->set_agent("127.0.0.1:" + std::to_string(port_));
    return o;
  }
  v1::Object Protected(const std::string& name, uint32_t cpus) {
    v1::Object o = Instance(name, cpus);
    v1::Failover* f = o.mutable_kernel_instance()->mutable_spec()->mutable_failover();
    f->set_policy(v1::FAILOVER_STANDBY);
    f->mutable_standby()->set_cpus(2);
    f->mutable_standby()->set_memory(256ull << 20);
    return o;
  }
  std::string RoleOf(const std::string& name) {
    v1::HostState snapshot = agent_->Snapshot();
    for (const auto& in : snapshot.instances()) {
      if (in.name() == name) return in.status().role();
    }
    return "";
  }
  v1::Object Instance(const std::string& name, uint32_t cpus) {
    v1::Object o;
    v1::KernelInstance* ki = o.mutable_kernel_instance();
    ki->mutable_metadata()->set_name(name);
    ki->mutable_spec()->set_host("node-a");
    ki->mutable_spec()->mutable_kernel()->set_image(host_.vmlinux);
    ki->mutable_spec()->mutable_kernel()->set_cmdline("console=mktty0");
    ki->mutable_spec()->mutable_resources()->set_cpus(cpus);
    ki->mutable_spec()->mutable_resources()->set_memory(512ull << 20);
    return o;
  }
  // The kernel state of `name` on the agent, or ABSENT.
  v1::KernelState StateOf(const std::string& name) {
    v1::HostState snapshot = agent_->Snapshot();
    for (const auto& in : snapshot.instances()) {
      if (in.name() == name) return in.status().kernel_state();
    }
    return v1::KERNEL_STATE_ABSENT;
  }
  template <typename Pred>
  bool Eventually(Pred pred) {
    for (int i = 0; i < 1500; ++i) {
      if (pred()) return true;
      absl::SleepFor(absl::Milliseconds(20));
    }
    return false;
  }

  agents::ServedAgent served_{"reconciler", "node-a"};
  agents::TestHost& host_ = served_.host;
  std::unique_ptr<agents::Agent>& agent_ = served_.agent;
  const int& port_ = served_.port;
  // Starts the loop on threads with `options` (and `events`, may be null).
  void Start(ReconcilerOptions options, EventLog* events = nullptr) {
    reconciler_ = std::make_unique<Reconciler>(*store_, *objects_, Clock::Real(), std::move(options), events);
    reconciler_->Start();
  }
  // An InstanceSet of 2-CPU members on any host: `replicas` in all, or `per_host` on each.
  v1::Object SetObject(const std::string& name, uint32_t replicas, uint32_t per_host = 0) {
    v1::Object set;
    v1::InstanceSet* is = set.mutable_instance_set();
    is->mutable_metadata()->set_name(name);
    if (per_host > 0) {
      is->mutable_spec()->set_per_host(per_host);
    } else {
      is->mutable_spec()->set_replicas(replicas);
    }
    v1::KernelInstanceSpec* t = is->mutable_spec()->mutable_template_()->mutable_spec();
    *t = Instance("x", 2).kernel_instance().spec();
    t->clear_host();
    return set;
  }

  std::unique_ptr<Store> store_;
  std::unique_ptr<Objects> objects_;
  std::unique_ptr<Reconciler> reconciler_;
};

using mkfleet::metrics::CollectedForTest;

TEST_F(ReconcilerTest, ActionsPassesAndHostsShowInTheMetrics) {
  mkfleet::metrics::EnableForTest();
  const double sent = CollectedForTest("mkfleet_actions_sent_total"), done = CollectedForTest("mkfleet_actions_done_total");
  const double created = CollectedForTest("mkfleet_actions_sent_total", "create");
  const double started = CollectedForTest("mkfleet_actions_sent_total", "start");
  const double whole = CollectedForTest("mkfleet_reconcile_pass_duration_seconds", "whole");
  const double planned = CollectedForTest("mkfleet_placement_duration_seconds");
  ReconcilerOptions options;
  options.resync = absl::Seconds(30);
  Start(options);
  ASSERT_TRUE(objects_->Apply({HostObject(), Instance("web-1", 2)}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return StateOf("web-1") == v1::KERNEL_STATE_ACTIVE; }));
  // One instance booted: a create and a start sent, once each (no pass plans the host from
  // a view without its last batch), every action sent done, none failed.
  ASSERT_TRUE(Eventually([&] { return CollectedForTest("mkfleet_actions_done_total") - done >= 3; }));
  EXPECT_EQ(CollectedForTest("mkfleet_actions_sent_total", "create") - created, 1);
  EXPECT_EQ(CollectedForTest("mkfleet_actions_sent_total", "start") - started, 1);
  // Every action sent ends done or failed (none failed here).
  ASSERT_TRUE(Eventually([&] {
    return CollectedForTest("mkfleet_actions_done_total") - done + CollectedForTest("mkfleet_actions_failed_total") ==
           CollectedForTest("mkfleet_actions_sent_total") - sent;
  })) << "sent " << CollectedForTest("mkfleet_actions_sent_total") - sent << ", done "
      << CollectedForTest("mkfleet_actions_done_total") - done << ", failed "
      << CollectedForTest("mkfleet_actions_failed_total");
  EXPECT_EQ(CollectedForTest("mkfleet_actions_failed_total"), 0);
  // The counts the console's fleet page reads: by phase and by host.
  ASSERT_TRUE(Eventually([&] { return reconciler_->InstancesByHost()["node-a"] == 1; }));
  EXPECT_EQ(reconciler_->InstancesByHost().size(), 1u);
  // (The status that says Running is written by the pass after the one that placed it.)
  ASSERT_TRUE(Eventually([&] { return reconciler_->PhaseCounts()["Running"] == 1; }))
      << ::testing::PrintToString(reconciler_->PhaseCounts());
  EXPECT_GE(CollectedForTest("mkfleet_reconcile_pass_duration_seconds", "whole") - whole, 1);
  EXPECT_GE(CollectedForTest("mkfleet_placement_duration_seconds") - planned, 1);
  // What a scrape reads from the loop.
  metrics::ControllerCollector collector({[&] { return reconciler_->QueueDepth(); },
                                          [&] { return reconciler_->HostCounts(); },
                                          [&] { return reconciler_->PhaseCounts(); }});
  auto gauges = [&](const std::string& name) {
    std::map<std::string, double> out;
    for (const prometheus::MetricFamily& f : collector.Collect()) {
      if (f.name != name) continue;
      for (const prometheus::ClientMetric& m : f.metric) out[m.label[0].value] = m.gauge.value;
    }
    return out;
  };
  EXPECT_EQ(gauges("mkfleet_hosts"), (std::map<std::string, double>{{"connected", 1}, {"disconnected", 0}}));
  ASSERT_TRUE(Eventually([&] { return gauges("mkfleet_instances")["Running"] == 1; }))
      << ::testing::PrintToString(gauges("mkfleet_instances"));
  EXPECT_EQ(gauges("mkfleet_instances").size(), 1u);
  // Deleted: counted nowhere.
  ASSERT_TRUE(objects_->Delete("KernelInstance", "web-1").ok());
  ASSERT_TRUE(Eventually([&] { return gauges("mkfleet_instances").empty(); }))
      << ::testing::PrintToString(gauges("mkfleet_instances"));
}

TEST_F(ReconcilerTest, ASetsRolloutShowsInTheMetrics) {
  mkfleet::metrics::EnableForTest();
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(200);
  Start(options);
  ASSERT_TRUE(objects_->Apply({HostObject(), SetObject("cache", 2)}, ApplyOptions{"t", false, false}).ok());
  auto rollout = [&] {
    auto all = reconciler_->RolloutGauges();
    auto g = all.find("InstanceSet/cache");
    return g == all.end() ? metrics::RolloutGauge{"absent"} : g->second;
  };
  auto done = [&](int64_t revision) {
    auto g = rollout();
    return g.phase == "Complete" && g.revision == revision && g.members == 2 && g.updated == 2;
  };
  ASSERT_TRUE(Eventually([&] { return done(1); }))
      << rollout().phase << " r" << rollout().revision << " " << rollout().members << " " << rollout().updated;
  // A new template: revision 2, its members move to it.
  v1::Object next = SetObject("cache", 2);
  next.mutable_instance_set()->mutable_spec()->mutable_template_()->mutable_spec()->mutable_kernel()->set_cmdline(
      "console=mktty0 quiet");
  ASSERT_TRUE(objects_->Apply({next}, ApplyOptions{"t2", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return done(2); }))
      << rollout().phase << " r" << rollout().revision << " " << rollout().members << " " << rollout().updated;
  EXPECT_TRUE(reconciler_->MorphCounts().empty());  // no live update here
}

TEST_F(ReconcilerTest, ConvergesStaysQuietAndDeletes) {
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(300);
  reconciler_ = std::make_unique<Reconciler>(*store_, *objects_, Clock::Real(), options);
  reconciler_->Start();
  ASSERT_TRUE(objects_->Apply({HostObject(), Instance("web-1", 2), Instance("db-1", 4)}, ApplyOptions{"t", false, false})
                  .ok());
  ASSERT_TRUE(Eventually([&] {
    return StateOf("web-1") == v1::KERNEL_STATE_ACTIVE && StateOf("db-1") == v1::KERNEL_STATE_ACTIVE;
  })) << agent_->Snapshot().DebugString();
  // The status follows: Running, Ready, observedGeneration caught up.
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "web-1");
    return o.ok() && o->has_value() && (*o)->kernel_instance().status().phase() == "Running";
  }));
  {
    v1::KernelInstance web = (*objects_->Get("KernelInstance", "web-1"))->kernel_instance();
    EXPECT_EQ(web.status().kernel_state(), v1::KERNEL_STATE_ACTIVE);
    EXPECT_EQ(web.status().observed_generation(), web.metadata().generation());
    EXPECT_EQ(web.status().placement().cpus_size(), 2);
    bool ready = false;
    for (const auto& c : web.status().conditions()) {
      if (c.type() == "Ready") ready = c.status() == v1::CONDITION_TRUE;
    }
    EXPECT_TRUE(ready) << web.status().DebugString();
  }
  // Whole cores from the pool, as planned.
  v1::HostState running = agent_->Snapshot();
  for (const auto& in : running.instances()) {
    EXPECT_EQ(in.status().placement().cpus_size(), in.name() == "web-1" ? 2 : 4) << in.name();
  }

  // Converged: further passes (resyncs every 300 ms) send nothing.
  ASSERT_TRUE(Eventually([&] {
    int64_t before = reconciler_->actions_sent();
    absl::SleepFor(absl::Milliseconds(100));
    return reconciler_->actions_sent() == before;
  }));
  int64_t sent = reconciler_->actions_sent();
  int64_t passes = reconciler_->passes();
  ASSERT_TRUE(Eventually([&] { return reconciler_->passes() >= passes + 2; }));
  EXPECT_EQ(reconciler_->actions_sent(), sent);
  EXPECT_TRUE(reconciler_->ReconcileHost("node-a").ok());
  EXPECT_EQ(reconciler_->actions_sent(), sent);

  // Deleting an object removes its kernel; the other keeps running, untouched.
  ASSERT_TRUE(objects_->Delete("KernelInstance", "web-1").ok());
  ASSERT_TRUE(Eventually([&] { return StateOf("web-1") == v1::KERNEL_STATE_ABSENT; }))
      << agent_->Snapshot().DebugString();
  EXPECT_EQ(StateOf("db-1"), v1::KERNEL_STATE_ACTIVE);

  // Too big for the host: Pending with Scheduled=False and the planner's reason.
  ASSERT_TRUE(objects_->Apply({Instance("huge", 64)}, ApplyOptions{"t2", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "huge");
    return o.ok() && o->has_value() && (*o)->kernel_instance().status().phase() == "Pending";
  }));
  v1::InstanceStatus huge = (*objects_->Get("KernelInstance", "huge"))->kernel_instance().status();
  ASSERT_GE(huge.conditions_size(), 1);
  EXPECT_EQ(huge.conditions(0).type(), "Scheduled");
  EXPECT_EQ(huge.conditions(0).status(), v1::CONDITION_FALSE);
  EXPECT_EQ(huge.conditions(0).reason(), "Unschedulable");
  EXPECT_FALSE(huge.conditions(0).message().empty());
}

TEST_F(ReconcilerTest, StandbyPolicyReachesTheAgentsWatchdog) {
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(300);
  reconciler_ = std::make_unique<Reconciler>(*store_, *objects_, Clock::Real(), options);
  reconciler_->Start();
  ASSERT_TRUE(objects_->Apply({HostObject(), Protected("web-1", 2)}, ApplyOptions{"t", false, false}).ok());
  // The planner adds the warm standby; the policy tells the watchdog who backs whom.
  ASSERT_TRUE(Eventually([&] {
    return StateOf("web-1-standby") == v1::KERNEL_STATE_ACTIVE && RoleOf("web-1") == "primary" &&
           RoleOf("web-1-standby") == "standby";
  })) << agent_->Snapshot().DebugString();
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "web-1");
    return o.ok() && o->has_value() && (*o)->kernel_instance().status().role() == "primary" &&
           (*o)->kernel_instance().status().phase() == "Running";
  }));
}

TEST_F(ReconcilerTest, StandbyTakeoverIsKeptAndReported) {
  auto log = EventLog::Open(*store_, Clock::Real());
  ASSERT_TRUE(log.ok());
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(200);
  reconciler_ = std::make_unique<Reconciler>(*store_, *objects_, Clock::Real(), options, log->get());
  reconciler_->Start();
  v1::Object web = Protected("web-1", 2);
  ASSERT_TRUE(objects_->Apply({HostObject(), web}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "web-1");
    return RoleOf("web-1-standby") == "standby" && o.ok() && o->has_value() &&
           (*o)->kernel_instance().status().phase() == "Running";
  }));
  ASSERT_TRUE(host_.emu->InjectPanic("web-1").ok());
  // The watchdog swaps the roles; the controller keeps that (it does not move anything
  // back) and reports web-1 as served by the kernel web-1-standby.
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "web-1");
    return RoleOf("web-1-standby") == "primary" && o.ok() && o->has_value() &&
           (*o)->kernel_instance().status().kernel() == "web-1-standby" &&
           (*o)->kernel_instance().status().phase() == "Running";
  })) << agent_->Snapshot().DebugString();
  int64_t sent = reconciler_->actions_sent();
  int64_t passes = reconciler_->passes();
  ASSERT_TRUE(Eventually([&] { return reconciler_->passes() >= passes + 3; }));
  EXPECT_EQ(reconciler_->actions_sent(), sent) << "the controller undid the takeover";
  EXPECT_EQ(RoleOf("web-1-standby"), "primary");
  EXPECT_EQ(RoleOf("web-1"), "standby");
  // The agent's watchdog events reach the controller's log, once each.
  ASSERT_TRUE(Eventually([&] {
    EventFilter filter;
    filter.kind = "KernelInstance";
    filter.name = "web-1";
    auto events = (*log)->List(filter);
    if (!events.ok()) return false;
    int takeovers = 0, crashes = 0;
    for (const auto& e : *events) {
      takeovers += e.reason() == "StandbyTakeover";
      crashes += e.reason() == "Crashed";
    }
    return takeovers == 1 && crashes == 1;
  }));
}

TEST_F(ReconcilerTest, SetMembersHaveStatusAndTheSetCountsThem) {
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(200);
  Start(options);
  v1::Object set = SetObject("edge", 0, 3);
  v1::InstanceSet* is = set.mutable_instance_set();
  v1::KernelInstanceSpec* t = is->mutable_spec()->mutable_template_()->mutable_spec();
  ASSERT_TRUE(objects_->Apply({HostObject(), set}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("InstanceSet", "edge");
    return o.ok() && o->has_value() && (*o)->instance_set().status().ready_replicas() == 3;
  }));
  v1::InstanceSetStatus st = (*objects_->Get("InstanceSet", "edge"))->instance_set().status();
  EXPECT_EQ(st.replicas(), 3u);
  EXPECT_EQ(st.observed_generation(), 1);
  auto all = objects_->List("KernelInstance", /*with_members=*/true);
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 3u);
  for (const auto& o : *all) {
    EXPECT_EQ(o.kernel_instance().status().owner(), "InstanceSet/edge");
    EXPECT_EQ(o.kernel_instance().status().phase(), "Running");
    EXPECT_EQ(o.kernel_instance().spec().host(), "node-a");
    EXPECT_EQ(o.kernel_instance().metadata().labels().at("mkfleet.io/set"), "edge");
  }
  // The reconciler itself does not see members as KernelInstance objects.
  EXPECT_TRUE(objects_->List("KernelInstance")->empty());
  // The host's status: reachable, its dialect and pool usage.
  auto host = objects_->Get("Host", "node-a");
  ASSERT_TRUE(host.ok() && host->has_value());
  const v1::HostStatus& hs = (*host)->host().status();
  EXPECT_TRUE(hs.reachable());
  EXPECT_FALSE(hs.dialect().empty());
  EXPECT_EQ(hs.pool().cpus_size() - hs.pool().cpus_free_size(), 6);

  // A new kernel in the template rolls out member by member (maxUnavailable 1) to all.
  std::string vmlinux2 = (host_.dir / "vmlinux-2").string();
  std::ofstream(vmlinux2, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(8192, 'n');
  t->mutable_kernel()->set_image(vmlinux2);
  ASSERT_TRUE(objects_->Apply({set}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("InstanceSet", "edge");
    return o.ok() && (*o)->instance_set().status().observed_generation() == 2 &&
           (*o)->instance_set().status().ready_replicas() == 3;
  }));
  v1::HostState rolled = agent_->Snapshot();
  for (const auto& in : rolled.instances()) {
    EXPECT_EQ(in.status().provenance().kernel_path(), vmlinux2) << in.name();
    EXPECT_EQ(in.status().kernel_state(), v1::KERNEL_STATE_ACTIVE) << in.name();
  }

  // Scaling the set down removes a member and its status.
  is->mutable_spec()->set_per_host(2);
  ASSERT_TRUE(objects_->Apply({set}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto members = objects_->List("KernelInstance", true);
    auto o = objects_->Get("InstanceSet", "edge");
    return members.ok() && members->size() == 2 && o.ok() && (*o)->instance_set().status().replicas() == 2 &&
           (*o)->instance_set().status().ready_replicas() == 2;
  }));
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// A change of a pinned instance on a settled fleet goes to its agent before the whole
// fleet is planned (checked against the whole plan: the same actions); a change that may
// concern any host (an instance with no host) waits for the whole pass.
// Every action id sent to the agent, in order.
class RecordingClient : public AgentClient {
 public:
  RecordingClient(std::unique_ptr<AgentClient> inner, absl::Mutex* mu, std::vector<std::string>* ids)
      : inner_(std::move(inner)), mu_(mu), ids_(ids) {}
  absl::StatusOr<v1::InventoryResponse> Inventory(absl::Duration timeout) override { return inner_->Inventory(timeout); }
  std::unique_ptr<WatchStream> Watch(const v1::WatchRequest& request) override { return inner_->Watch(request); }
  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ActionBatch& batch, absl::Duration timeout) override {
    {
      absl::MutexLock lock(mu_);
      for (const v1::Action& a : batch.actions()) ids_->push_back(a.id());
    }
    return inner_->Execute(batch, timeout);
  }
  absl::Status SetPolicy(const v1::SetPolicyRequest& request, absl::Duration timeout) override {
    return inner_->SetPolicy(request, timeout);
  }

 private:
  std::unique_ptr<AgentClient> inner_;
  absl::Mutex* mu_;
  std::vector<std::string>* ids_;
};

TEST_F(ReconcilerTest, APinnedChangeOnASettledFleetIsSentEarlyAndMatchesTheWholePlan) {
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(200);
  options.check_early_sends = true;
  absl::Mutex sent_mu;
  std::vector<std::string> sent;
  options.client_factory = [&](const std::string& host, const std::string& address) -> std::unique_ptr<AgentClient> {
    return std::make_unique<RecordingClient>(NewGrpcAgentClient(address, host), &sent_mu, &sent);
  };
  Start(options);
  v1::Object set = SetObject("cache", 1);
  ASSERT_TRUE(objects_->Apply({HostObject(), Instance("web-1", 2), set}, ApplyOptions{"t", false, false}).ok());
  ASSERT_TRUE(Eventually([&] {
    auto o = objects_->Get("KernelInstance", "web-1");
    return o.ok() && o->has_value() && (*o)->kernel_instance().status().phase() == "Running" &&
           StateOf("cache-node-a-0") == v1::KERNEL_STATE_ACTIVE;
  })) << agent_->Snapshot().DebugString();
  // Resyncs: a pass finds the fleet settled.
  ASSERT_TRUE(Eventually([&] { return reconciler_->SettledForTest(); }));
  absl::SleepFor(absl::Milliseconds(300));
  ASSERT_TRUE(reconciler_->SettledForTest());
  EXPECT_EQ(reconciler_->early_sends(), 0);
  ASSERT_TRUE(objects_->Apply({Instance("web-2", 2)}, ApplyOptions{"t2", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return StateOf("web-2") == v1::KERNEL_STATE_ACTIVE; }));
  EXPECT_EQ(reconciler_->early_sends(), 1);
  // Sent once: the whole pass after it does not send the same batch again. (A pass that
  // saw the agent's report from the middle of that batch may send the start again, under
  // another id; the agent finds it done.)
  absl::SleepFor(absl::Milliseconds(300));
  {
    absl::MutexLock lock(&sent_mu);
    std::map<std::string, int> creates;
    for (const std::string& id : sent) {
      if (absl::StrContains(id, "/web-2/") && absl::StrContains(id, "/create-")) ++creates[id];
    }
    EXPECT_EQ(creates.size(), 3u) << "create, load, start";
    for (const auto& [id, n] : creates) EXPECT_EQ(n, 1) << id;
  }
  EXPECT_EQ(reconciler_->early_send_mismatches(), 0);
  EXPECT_GE(reconciler_->local_passes(), 1) << "the early send stood for the whole pass (checked by one)";
  // What ran early is what the plan wanted: the pass after sends nothing more for it.
  EXPECT_EQ(StateOf("cache-node-a-0"), v1::KERNEL_STATE_ACTIVE);
  absl::SleepFor(absl::Milliseconds(600));
  v1::Object loose = Instance("web-3", 2);
  loose.mutable_kernel_instance()->mutable_spec()->clear_host();
  ASSERT_TRUE(objects_->Apply({loose}, ApplyOptions{"t3", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return StateOf("web-3") == v1::KERNEL_STATE_ACTIVE; }));
  EXPECT_EQ(reconciler_->early_sends(), 1) << "an instance with no host may go anywhere: the whole pass places it";
  EXPECT_EQ(reconciler_->early_send_mismatches(), 0);
}

// Without the check, the early send of a pinned change stands for the whole pass (a local
// pass), and so does the pass that follows the agent's report: no plan of the whole fleet
// runs, yet the instance's status is recorded. A change that may concern any host (an
// instance with no host) is planned over the whole fleet.
TEST_F(ReconcilerTest, APinnedChangeOnASettledFleetNeedsNoWholePass) {
  ReconcilerOptions options;
  options.resync = absl::Milliseconds(200);
  Start(options);
  v1::Object set = SetObject("cache", 1);
  ASSERT_TRUE(objects_->Apply({HostObject(), Instance("web-1", 2), set}, ApplyOptions{"t", false, false}).ok());
  auto running = [&](const std::string& name) {
    auto o = objects_->Get("KernelInstance", name, /*with_members=*/true);
    return o.ok() && o->has_value() && (*o)->kernel_instance().status().phase() == "Running";
  };
  ASSERT_TRUE(Eventually([&] { return running("web-1") && running("cache-node-a-0"); }));
  // Resyncs: a whole pass finds the fleet settled, and the passes after it are local (a
  // loaded machine may take longer than a few resyncs to get there).
  ASSERT_TRUE(Eventually([&] {
    if (!reconciler_->SettledForTest()) return false;
    const int64_t before = reconciler_->passes() - reconciler_->local_passes();
    absl::SleepFor(absl::Milliseconds(600));
    return reconciler_->SettledForTest() && reconciler_->passes() - reconciler_->local_passes() == before;
  }));
  const int64_t whole = reconciler_->passes() - reconciler_->local_passes();
  const int64_t local = reconciler_->local_passes();
  ASSERT_TRUE(objects_->Apply({Instance("web-2", 2)}, ApplyOptions{"t2", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return running("web-2"); }));
  EXPECT_EQ(StateOf("web-2"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(reconciler_->passes() - reconciler_->local_passes(), whole) << "no whole pass for a pinned change";
  EXPECT_GE(reconciler_->local_passes() - local, 2) << "the send, then the agent's report";
  auto cache = objects_->Get("InstanceSet", "cache");
  ASSERT_TRUE(cache.ok() && cache->has_value());
  EXPECT_EQ((*cache)->instance_set().status().ready_replicas(), 1u);
  v1::Object loose = Instance("web-3", 2);
  loose.mutable_kernel_instance()->mutable_spec()->clear_host();
  ASSERT_TRUE(objects_->Apply({loose}, ApplyOptions{"t3", false, false}).ok());
  ASSERT_TRUE(Eventually([&] { return running("web-3"); }));
  EXPECT_GT(reconciler_->passes() - reconciler_->local_passes(), whole) << "an instance with no host: a whole pass";
}

}  // namespace
}  // namespace mkfleet::reconciler
