// Offline planning (`mkapply plan`: the Host's spec and its topology) and live planning
// (PlanFleet over what a real agent reports) must agree on the same inputs. The live side
// here is an Agent over an emulated kernel, driven the way the controller drives it: plan,
// execute, observe again, until nothing is left to do.
#include <set>

#include "agents/agent.h"
#include "agents/liveness.h"
#include "agents/testing/agent_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/fleet_placement.h"
#include "planner/placement.h"
#include "planner/pool.h"
#include "planner/testing/test_topologies.h"
#include "reconciler/fleet_plan.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::IsEmpty;

class LivePlanTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::path(::testing::TempDir()) / ("live-plan-" + std::to_string(getpid()));
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    vmlinux_ = (dir_ / "vmlinux").string();
    std::ofstream(vmlinux_, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, 'k');
  }
  void TearDown() override {
    agent_.reset();
    std::filesystem::remove_all(dir_);
  }

  // A live host on `topology` with an empty pool, as mkagent starts without --reserve-cores.
  void StartAgent(std::shared_ptr<const planner::Topology> topology) {
    topology_ = topology;
    kernel::EmulatorOptions o = kernel::MachineFromTopology(*topology);
    o.clock = &clock_;
    emu_ = std::make_unique<kernel::EmulatedKernel>(o);
    kernel::HostKernelOptions ho;
    ho.host = "h1";
    ho.state_dir = (dir_ / "state").string();
    ho.clock = &clock_;
    ho.images.dirs = {dir_.string()};
    hk_ = std::make_unique<kernel::HostKernel>(*emu_, *emu_, ho);
    journal_ = *agents::ActionJournal::Open((dir_ / "journal").string());
    probe_ = agents::NewEmulatorProbe(*emu_);
    agents::AgentOptions ao;
    ao.host = "h1";
    agent_ = std::make_unique<agents::Agent>(ao, *hk_, topology, *journal_, *probe_, clock_);
  }

  HostView View() {
    agent_->Tick();
    v1::HostState s = agent_->Snapshot();
    HostView v;
    v.connected = v.reachable = true;
    v.topology = topology_;
    v.pool = s.pool();
    v.resource_version = v.state_version = s.resource_version();
    for (const auto& in : s.instances()) v.instances[in.name()] = in;
    return v;
  }

  // Plans and executes until a pass has nothing to do; returns the last plan.
  FleetPlan Converge(const v1::Host& host, const std::vector<v1::InstanceSet>& sets,
                     const std::vector<v1::KernelInstance>& instances = {}) {
    FleetPlan fleet;
    for (int pass = 0; pass < 10; ++pass) {
      std::map<std::string, HostView> views = {{"h1", View()}};
      fleet = PlanFleet({host}, views, instances, sets);
      const Plan& plan = fleet.hosts["h1"];
      if (plan.actions.empty()) return fleet;
      v1::ActionBatch batch;
      for (const auto& a : plan.actions) *batch.add_actions() = a;
      v1::ExecuteResponse r = *agent_->Execute(batch);
      for (const auto& res : r.results()) EXPECT_EQ(res.code(), 0) << res.id() << ": " << res.message();
    }
    ADD_FAILURE() << "no convergence in 10 passes";
    return fleet;
  }

  std::filesystem::path dir_;
  std::string vmlinux_;
  SimulatedClock clock_;
  std::shared_ptr<const planner::Topology> topology_;
  std::unique_ptr<kernel::EmulatedKernel> emu_;
  std::unique_ptr<kernel::HostKernel> hk_;
  std::unique_ptr<agents::ActionJournal> journal_;
  std::unique_ptr<agents::LivenessProbe> probe_;
  std::unique_ptr<agents::Agent> agent_;
};

TEST_F(LivePlanTest, HostReservedPoolPlansTheSameOfflineAndLive) {
  // Defect: with hostReserved the live controller saw no free whole core after the first
  // instance ("free whole cores: node0=0, node1=0") while `mkapply plan` placed all four.
  auto topology = planner::XmlTopology("24em64t-2n6c2t-pci.xml");
  v1::Host host;
  host.mutable_metadata()->set_name("h1");
  host.mutable_metadata()->set_generation(1);
  host.mutable_spec()->set_agent("127.0.0.1:1");
  host.mutable_spec()->mutable_pool()->mutable_host_reserved()->set_cores(1);
  host.mutable_spec()->mutable_pool()->mutable_host_reserved()->set_memory(1ull << 30);
  v1::InstanceSet set;
  set.mutable_metadata()->set_name("s");
  set.mutable_metadata()->set_generation(1);
  set.mutable_spec()->set_replicas(4);
  v1::KernelInstanceSpec* spec = set.mutable_spec()->mutable_template_()->mutable_spec();
  spec->mutable_kernel()->set_image(vmlinux_);
  spec->mutable_resources()->set_cpus(2);
  spec->mutable_resources()->set_memory(256ull << 20);

  // Offline, as `mkapply plan` does it.
  planner::HostInfo offline;
  offline.name = "h1";
  offline.topology = topology;
  auto pool = planner::DerivePool("h1", *topology, host.spec().pool());
  ASSERT_TRUE(pool.ok()) << pool.status();
  offline.pool = *pool;
  planner::FleetInput input;
  input.hosts = {offline};
  input.sets = {set};
  planner::FleetPlacement planned = planner::PlaceFleet(input);
  ASSERT_THAT(planned.unschedulable, IsEmpty());
  ASSERT_EQ(planned.placements.size(), 4u);

  // Live: the agent starts with no pool; the controller sends the Host's pool, then the set.
  StartAgent(topology);
  FleetPlan live = Converge(host, {set});
  EXPECT_THAT(live.unschedulable, IsEmpty());
  EXPECT_TRUE(live.pool_changes.empty()) << "the pool the agent lends still differs from the spec";
  ASSERT_EQ(live.placements.size(), 4u);
  for (const auto& [name, p] : planned.placements) {
    ASSERT_TRUE(live.placements.count(name)) << name;
    std::vector<uint32_t> want(p.cpus().begin(), p.cpus().end()), got(live.placements.at(name).cpus().begin(),
                                                                      live.placements.at(name).cpus().end());
    std::sort(want.begin(), want.end());
    std::sort(got.begin(), got.end());
    EXPECT_EQ(got, want) << name;
  }
  // And the planner's inputs agree: the pool the agent lends is the one the spec derives.
  HostView v = View();
  auto info = HostInfoFromView(host, v);
  ASSERT_TRUE(info.ok()) << info.status();
  EXPECT_EQ(info->pool.cpus, offline.pool.cpus);
  EXPECT_EQ(info->pool.memory, offline.pool.memory);
}

TEST_F(LivePlanTest, AfterAStandbyTakeoverTheServingKernelKeepsItsDevicesThroughAResize) {
  auto topology = planner::XmlTopology("32em64t-2n8c2t-pci-normalio.xml");
  v1::Host host;
  host.mutable_metadata()->set_name("h1");
  host.mutable_metadata()->set_generation(1);
  host.mutable_spec()->set_agent("127.0.0.1:1");
  for (uint32_t c = 2; c <= 15; ++c) host.mutable_spec()->mutable_pool()->mutable_cpus()->add_ids(c);
  for (uint32_t c = 18; c <= 31; ++c) host.mutable_spec()->mutable_pool()->mutable_cpus()->add_ids(c);
  for (uint32_t n : {0, 1}) {
    auto* m = host.mutable_spec()->mutable_pool()->add_memory();
    m->set_node(n);
    m->set_size(24ull << 30);
  }
  host.mutable_spec()->mutable_pool()->add_devices("0000:81:00.0");
  v1::KernelInstance web;
  web.mutable_metadata()->set_name("web-1");
  web.mutable_metadata()->set_generation(1);
  v1::KernelInstanceSpec* spec = web.mutable_spec();
  spec->set_host("h1");
  spec->mutable_kernel()->set_image(vmlinux_);
  spec->mutable_resources()->set_cpus(4);
  spec->mutable_resources()->set_placement(v1::PLACEMENT_NEAR_DEVICES);
  spec->mutable_resources()->set_memory(2ull << 30);
  auto* nic = spec->mutable_resources()->add_devices();
  nic->set_name("nic0");
  nic->mutable_select()->set_device_class(v1::DEVICE_CLASS_NETWORK);
  spec->mutable_failover()->set_policy(v1::FAILOVER_STANDBY);
  spec->mutable_failover()->mutable_standby()->set_cpus(2);
  spec->mutable_failover()->mutable_standby()->set_memory(512ull << 20);
  // Node 1 is full but for web-1: its standby goes to node 0.
  v1::KernelInstance filler = web;
  filler.mutable_metadata()->set_name("filler");
  filler.mutable_spec()->clear_failover();
  filler.mutable_spec()->mutable_resources()->clear_devices();
  filler.mutable_spec()->mutable_resources()->set_placement(v1::PLACEMENT_COMPACT);
  filler.mutable_spec()->mutable_resources()->set_cpus(12);
  filler.mutable_spec()->mutable_resources()->add_numa_nodes(1);
  StartAgent(topology);
  FleetPlan first = Converge(host, {}, {web, filler});
  ASSERT_THAT(first.unschedulable, IsEmpty());
  // The watchdog's standby takeover.
  v1::SetPolicyRequest policy;
  auto* p = policy.add_policies();
  p->set_instance("web-1");
  *p->mutable_failover() = spec->failover();
  p->set_standby_instance("web-1-standby");
  ASSERT_TRUE(agent_->SetPolicy(policy).ok());
  agent_->Tick();
  ASSERT_TRUE(emu_->InjectPanic("web-1").ok());
  agent_->Tick();
  agent_->Tick();
  FleetPlan after = Converge(host, {}, {web, filler});
  EXPECT_THAT(after.unschedulable, IsEmpty());
  EXPECT_EQ(after.planned.at("web-1").kernel, "web-1-standby");
  // A memory change: web-1 (served by web-1-standby) keeps its NIC.
  web.mutable_spec()->mutable_resources()->set_memory(3ull << 30);
  web.mutable_metadata()->set_generation(2);
  FleetPlan resized = Converge(host, {}, {web, filler});
  EXPECT_THAT(resized.unschedulable, IsEmpty());
  for (const auto& u : resized.unschedulable) ADD_FAILURE() << u.name << ": " << u.reason;
  for (const auto& [name, why] : resized.infeasible) std::cerr << "infeasible " << name << ": " << why << "\n";
}

}  // namespace
}  // namespace mkfleet::reconciler
