#include "planner/fleet_placement.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/testing/test_topologies.h"

namespace mkfleet::planner {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<std::string> Names(const FleetPlacement& r) {
  std::vector<std::string> out;
  for (const auto& [name, p] : r.placements) out.push_back(name);
  return out;
}

v1::InstanceSet Set(const std::string& name, uint32_t replicas, uint32_t cpus) {
  v1::InstanceSet set;
  set.mutable_metadata()->set_name(name);
  set.mutable_spec()->set_replicas(replicas);
  set.mutable_spec()->mutable_template_()->mutable_spec()->mutable_resources()->set_cpus(cpus);
  set.mutable_spec()->mutable_template_()->mutable_spec()->mutable_resources()->set_memory(512ull << 20);
  return set;
}

class FleetPlacementTest : public ::testing::Test {
 protected:
  // 4 cores x 2 threads; the core of CPU 0 stays with the host: 3 cores to lend.
  std::shared_ptr<const Topology> t_ = SyntheticTopology("pack:1 numa:1(memory=16GiB) core:4 pu:2");
};

TEST_F(FleetPlacementTest, ReplicasSpreadOverRacksAndPerHostOnEveryHost) {
  FleetInput in;
  for (auto [name, rack] : std::vector<std::pair<std::string, std::string>>{
           {"n1", "r1"}, {"n2", "r1"}, {"n3", "r2"}, {"n4", "r3"}}) {
    HostInfo h = WholeHost(name, t_);
    h.labels = {{"rack", rack}, {"role", "edge"}};
    in.hosts.push_back(h);
  }
  v1::InstanceSet set = Set("web", 3, 2);
  set.mutable_spec()->mutable_host_selector()->mutable_match_labels()->insert({"role", "edge"});
  set.mutable_spec()->set_spread_by("rack");
  in.sets = {set};
  FleetPlacement r = PlaceFleet(in);
  // One per rack.
  EXPECT_THAT(Names(r), ElementsAre("web-n1-0", "web-n3-0", "web-n4-0"));
  EXPECT_EQ(r.member_of.at("web-n3-0"), "web");
  in.sets[0].mutable_spec()->set_per_host(2);
  r = PlaceFleet(in);
  EXPECT_EQ(r.placements.size(), 8u);
  EXPECT_TRUE(r.placements.count("web-n1-1"));
  EXPECT_THAT(r.unschedulable, IsEmpty());
}

TEST_F(FleetPlacementTest, ReplicasKeepTheirMembersAndShrinkFromTheFullestHost) {
  FleetInput in;
  in.hosts = {WholeHost("n1", t_), WholeHost("n2", t_)};
  in.sets = {Set("s", 2, 2)};
  FleetPlacement first = PlaceFleet(in);
  ASSERT_EQ(first.placements.size(), 2u);
  // Both members stay where they are.
  in.current = first.placements;
  FleetPlacement again = PlaceFleet(in);
  EXPECT_EQ(Names(again), Names(first));
  // Three on n2 and one on n1, down to two: n2 gives up its highest numbers.
  PlacementResult all = Place(in.hosts,
                              {Request("s-n2-0", "n2", 2, 512), Request("s-n2-1", "n2", 2, 512),
                               Request("s-n2-2", "n2", 2, 512), Request("s-n1-0", "n1", 2, 512)},
                              {});
  in.current = all.placements;
  FleetPlacement shrunk = PlaceFleet(in);
  EXPECT_THAT(Names(shrunk), ElementsAre("s-n1-0", "s-n2-0"));
}

TEST_F(FleetPlacementTest, ReplicasGoWhereTheyFitAndLeaveCordonedHostsFirst) {
  // Defect 6: with node-x cordoned and full, replicas stayed short while node-y had room;
  // scale-down removed the member on the healthy host and kept the cordoned one's.
  HostInfo x = WholeHost("x", t_), y = WholeHost("y", t_);
  FleetInput in;
  in.hosts = {x, y};
  in.sets = {Set("s", 3, 2)};
  // x holds one member and is otherwise full (a kernel no object owns takes the rest).
  PlacementResult now = Place({x}, {Request("s-x-0", "x", 2, 512), Request("other", "x", 4, 512)}, {});
  ASSERT_THAT(now.unschedulable, IsEmpty());
  in.current["s-x-0"] = now.placements.at("s-x-0");
  in.fixed["unmanaged/other"] = now.placements.at("other");
  in.hosts[0].cordoned = true;
  FleetPlacement r = PlaceFleet(in);
  EXPECT_THAT(r.unschedulable, IsEmpty());
  EXPECT_THAT(Names(r), ElementsAre("s-x-0", "s-y-0", "s-y-1"));
  // Scale to 2: the member on the cordoned host goes.
  in.current = r.placements;
  in.sets[0].mutable_spec()->set_replicas(2);
  FleetPlacement down = PlaceFleet(in);
  EXPECT_THAT(Names(down), ElementsAre("s-y-0", "s-y-1"));
  // Replicas beyond what fits anywhere: the set says how many are missing and why.
  in.sets[0].mutable_spec()->set_replicas(9);
  FleetPlacement big = PlaceFleet(in);
  ASSERT_EQ(big.unschedulable.size(), 1u);
  EXPECT_EQ(big.unschedulable[0].name, "s");
  EXPECT_THAT(big.unschedulable[0].reason, HasSubstr("5 of 9 replicas fit on no host (1 tried): y: needs 1 whole cores"));
}

TEST_F(FleetPlacementTest, DrainReplacesAHostsMembersElsewhereWithinTheRolloutBudget) {
  // Three hosts of 3 lendable cores; a set of 3 one-core members, all on x, which drains.
  HostInfo x = WholeHost("x", t_), y = WholeHost("y", t_), z = WholeHost("z", t_);
  FleetInput in;
  in.hosts = {x, y, z};
  in.sets = {Set("s", 3, 2)};
  PlacementResult now = Place({x}, {Request("s-x-0", "x", 2, 512), Request("s-x-1", "x", 2, 512),
                                    Request("s-x-2", "x", 2, 512)}, {});
  ASSERT_THAT(now.unschedulable, IsEmpty());
  in.current = now.placements;
  in.hosts[0].cordoned = true;
  in.hosts[0].draining = true;
  // Pass 1: one replacement (maxSurge 1 by default); every member on x stays for now.
  FleetPlacement p1 = PlaceFleet(in);
  EXPECT_THAT(p1.unschedulable, IsEmpty());
  EXPECT_THAT(Names(p1), ElementsAre("s-x-0", "s-x-1", "s-x-2", "s-y-0"));
  // Pass 2, the replacement not Ready yet: one member on x goes (3 Ready, maxUnavailable 1
  // lets 2 be Ready), and a second replacement is placed.
  in.current = p1.placements;
  in.removal_first = {"s-y-0"};
  FleetPlacement p2 = PlaceFleet(in);
  EXPECT_THAT(Names(p2), ElementsAre("s-x-0", "s-x-1", "s-y-0", "s-z-0"));
  // Pass 3, neither replacement Ready: 2 Ready of 3 is the budget's floor, nothing more goes.
  in.current = p2.placements;
  in.removal_first = {"s-y-0", "s-z-0"};
  FleetPlacement p3 = PlaceFleet(in);
  EXPECT_THAT(Names(p3), ElementsAre("s-x-0", "s-x-1", "s-y-0", "s-z-0"));
  // Pass 4, both Ready: one more goes and the last replacement is placed; then the last.
  in.removal_first.clear();
  FleetPlacement p4 = PlaceFleet(in);
  EXPECT_THAT(Names(p4), ElementsAre("s-x-0", "s-y-0", "s-y-1", "s-z-0"));
  in.current = p4.placements;
  FleetPlacement p5 = PlaceFleet(in);
  EXPECT_THAT(Names(p5), ElementsAre("s-y-0", "s-y-1", "s-z-0"));
  in.current = p5.placements;
  EXPECT_THAT(Names(PlaceFleet(in)), ElementsAre("s-y-0", "s-y-1", "s-z-0"));

  // A larger budget moves more at once: maxSurge 3 places every replacement in one pass,
  // maxUnavailable 2 lets two members go before those are Ready.
  in.current = now.placements;
  in.removal_first.clear();
  in.sets[0].mutable_spec()->mutable_rollout()->mutable_max_surge()->set_count(3);
  in.sets[0].mutable_spec()->mutable_rollout()->mutable_max_unavailable()->set_count(2);
  FleetPlacement q1 = PlaceFleet(in);
  EXPECT_THAT(Names(q1), ElementsAre("s-x-0", "s-x-1", "s-x-2", "s-y-0", "s-y-1", "s-z-0"));
  in.current = q1.placements;
  in.removal_first = {"s-y-0", "s-y-1", "s-z-0"};
  EXPECT_THAT(Names(PlaceFleet(in)), ElementsAre("s-x-0", "s-y-0", "s-y-1", "s-z-0"));

  // Nowhere to go (y and z cordoned): the members stay where they run, and the set says why.
  in.current = now.placements;
  in.removal_first.clear();
  in.hosts[1].cordoned = in.hosts[2].cordoned = true;
  FleetPlacement stuck = PlaceFleet(in);
  EXPECT_THAT(Names(stuck), ElementsAre("s-x-0", "s-x-1", "s-x-2"));
  ASSERT_EQ(stuck.unschedulable.size(), 1u);
  EXPECT_THAT(stuck.unschedulable[0].reason, HasSubstr("selects no uncordoned Host"));

  // A member on the draining host that is not up goes at once (it serves nothing): its
  // replacement and one surge replacement for the others are placed.
  in.hosts[1].cordoned = in.hosts[2].cordoned = false;
  in.removal_first = {"s-x-2"};
  in.sets[0].mutable_spec()->clear_rollout();
  FleetPlacement down = PlaceFleet(in);
  EXPECT_THAT(Names(down), ElementsAre("s-x-0", "s-x-1", "s-y-0", "s-z-0"));

  // The member that goes once its replacement is placed is the draining host's, not one on
  // a host that is only cordoned (sim seed 18, sharded: a member on a cordoned host was
  // stopped for a drain elsewhere, and the draining host's member stayed).
  {
    FleetInput c;
    c.hosts = {x, y, z};
    c.hosts[0].cordoned = c.hosts[0].draining = true;
    c.hosts[1].cordoned = true;
    c.sets = {Set("s", 2, 2)};
    PlacementResult two = Place({x, y}, {Request("s-x-0", "x", 2, 512), Request("s-y-0", "y", 2, 512)}, {});
    ASSERT_THAT(two.unschedulable, IsEmpty());
    c.current = two.placements;
    FleetPlacement c1 = PlaceFleet(c);
    EXPECT_THAT(Names(c1), ElementsAre("s-x-0", "s-y-0", "s-z-0"));
    c.current = c1.placements;
    EXPECT_THAT(Names(PlaceFleet(c)), ElementsAre("s-y-0", "s-z-0"));
  }

  // perHost members belong to their host: drain leaves them.
  FleetInput ph;
  ph.hosts = {x, y};
  ph.hosts[0].cordoned = ph.hosts[0].draining = true;
  v1::InstanceSet per = Set("p", 0, 2);
  per.mutable_spec()->set_per_host(1);
  ph.sets = {per};
  ph.current["p-x-0"] = now.placements.at("s-x-0");
  EXPECT_THAT(Names(PlaceFleet(ph)), ElementsAre("p-x-0", "p-y-0"));
}

TEST_F(FleetPlacementTest, AnInstanceThatRanAndVanishedGetsItsPlaceBackBeforeANewOne) {
  // Sim seed 700037 (sharded), invariant (b'): k2 ran on a full host and was removed out of
  // band; g0, pending for want of room, took the freed core in the next pass (new requests
  // went larger first, then by name), and k2 could not come back.
  FleetInput in;
  in.hosts = {WholeHost("a", t_)};
  auto instance = [](const std::string& name) {
    v1::KernelInstance ki;
    ki.mutable_metadata()->set_name(name);
    ki.mutable_spec()->set_host("a");
    ki.mutable_spec()->mutable_resources()->set_cpus(2);
    ki.mutable_spec()->mutable_resources()->set_memory(512ull << 20);
    return ki;
  };
  in.instances = {instance("g0"), instance("k2"), instance("x"), instance("y")};
  PlacementResult now = Place(in.hosts, {Request("k2", "a", 2, 512), Request("x", "a", 2, 512), Request("y", "a", 2, 512)}, {});
  ASSERT_THAT(now.unschedulable, IsEmpty());
  in.current = {{"x", now.placements.at("x")}, {"y", now.placements.at("y")}};
  in.previous = {{"k2", now.placements.at("k2")}};
  FleetPlacement r = PlaceFleet(in);
  ASSERT_EQ(r.placements.count("k2"), 1u) << ::testing::PrintToString(r.unschedulable);
  EXPECT_EQ(r.placements.at("k2").DebugString(), now.placements.at("k2").DebugString());  // where it ran
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_EQ(r.unschedulable[0].name, "g0");
  // Without a place it ran on, new requests go as before (g0 before k2, by name).
  in.previous.clear();
  FleetPlacement before = PlaceFleet(in);
  EXPECT_EQ(before.placements.count("g0"), 1u);
  EXPECT_EQ(before.placements.count("k2"), 0u);
}

TEST_F(FleetPlacementTest, AResizeThatCannotBeMetKeepsTheCurrentPlacement) {
  // Defect 2: growing a running instance beyond the host took it down, then said
  // Unschedulable.
  FleetInput in;
  in.hosts = {WholeHost("a", t_)};
  v1::KernelInstance ki;
  ki.mutable_metadata()->set_name("web");
  ki.mutable_spec()->set_host("a");
  ki.mutable_spec()->mutable_resources()->set_cpus(4);
  ki.mutable_spec()->mutable_resources()->set_memory(512ull << 20);
  in.instances = {ki};
  FleetPlacement first = PlaceFleet(in);
  ASSERT_EQ(first.placements.size(), 1u);
  in.current = first.placements;
  in.instances[0].mutable_spec()->mutable_resources()->set_cpus(10);  // 5 cores; 3 to lend
  FleetPlacement r = PlaceFleet(in);
  EXPECT_THAT(r.unschedulable, IsEmpty());
  ASSERT_EQ(r.placements.count("web"), 1u);
  EXPECT_EQ(r.placements.at("web").DebugString(), first.placements.at("web").DebugString());
  ASSERT_EQ(r.infeasible.count("web"), 1u);
  EXPECT_THAT(r.infeasible.at("web"), HasSubstr("needs 5 whole cores"));
  // A resize that fits still happens in place.
  in.instances[0].mutable_spec()->mutable_resources()->set_cpus(6);
  FleetPlacement fits = PlaceFleet(in);
  EXPECT_TRUE(fits.infeasible.empty());
  EXPECT_EQ(fits.placements.at("web").cpus_size(), 6);
  EXPECT_EQ(fits.placements.at("web").boot_cpu(), first.placements.at("web").boot_cpu());
}

TEST_F(FleetPlacementTest, AChangedInstanceNeverTakesWhatAnotherChangedOneRunsOn) {
  // a holds one core and wants two; b holds the other two and changes only its memory.
  // Placed one after the other, a took one of b's cores and b, re-placed, fit nowhere.
  FleetInput in;
  in.hosts = {WholeHost("h", t_)};
  auto ki = [](const std::string& name, uint32_t cpus, uint64_t mib) {
    v1::KernelInstance k;
    k.mutable_metadata()->set_name(name);
    k.mutable_spec()->set_host("h");
    k.mutable_spec()->mutable_resources()->set_cpus(cpus);
    k.mutable_spec()->mutable_resources()->set_memory(mib << 20);
    return k;
  };
  in.instances = {ki("a", 2, 512), ki("b", 4, 512)};
  FleetPlacement first = PlaceFleet(in);
  ASSERT_EQ(first.placements.size(), 2u);
  in.current = first.placements;
  in.instances = {ki("a", 4, 512), ki("b", 4, 1024)};
  FleetPlacement r = PlaceFleet(in);
  EXPECT_THAT(r.unschedulable, IsEmpty());
  ASSERT_EQ(r.placements.count("b"), 1u);
  std::vector<uint32_t> b_before(first.placements.at("b").cpus().begin(), first.placements.at("b").cpus().end());
  std::vector<uint32_t> b_after(r.placements.at("b").cpus().begin(), r.placements.at("b").cpus().end());
  EXPECT_EQ(b_after, b_before);  // b keeps its CPUs and grows its memory in place
  EXPECT_EQ(r.placements.at("b").memory(0).bytes(), 1024ull << 20);
  EXPECT_TRUE(r.infeasible.count("a"));  // a cannot grow without b's core: it stays as it is
}

TEST_F(FleetPlacementTest, ARunningInstanceStaysWhenASiblingThreadGetsAnotherTenant) {
  // Found by the fleet simulation: a kernel started by hand on the sibling thread of a core
  // held whole made the controller re-create a running instance elsewhere.
  FleetInput in;
  in.hosts = {WholeHost("h", t_)};
  v1::KernelInstance k;
  k.mutable_metadata()->set_name("k");
  k.mutable_spec()->set_host("h");
  k.mutable_spec()->mutable_resources()->set_cpus(1);  // one CPU of a core held whole
  k.mutable_spec()->mutable_resources()->set_memory(256ull << 20);
  in.instances = {k};
  FleetPlacement first = PlaceFleet(in);
  ASSERT_EQ(first.placements.size(), 1u);
  const v1::Placement& p = first.placements.at("k");
  uint32_t cpu = p.cpus(0);
  uint32_t sibling = 0;
  for (uint32_t pu : t_->cores[t_->core_of_pu.at(cpu)].pus) {
    if (pu != cpu) sibling = pu;
  }
  v1::Placement foreign;
  foreign.set_host("h");
  foreign.add_cpus(sibling);
  auto* m = foreign.add_memory();
  m->set_node(0);
  m->set_bytes(128ull << 20);
  in.fixed["unmanaged/h/foreign"] = foreign;
  in.current = first.placements;
  FleetPlacement r = PlaceFleet(in);
  ASSERT_EQ(r.placements.count("k"), 1u);
  EXPECT_EQ(r.placements.at("k").cpus(0), cpu);
  EXPECT_TRUE(r.infeasible.empty());
}

TEST_F(FleetPlacementTest, RunningInstancesOnSiblingThreadsStayWhateverTheirNames) {
  // Found by the fleet simulation (seed 40107): a, holding its core whole, and b (any
  // thread) ran on the two threads of one core; a, kept first by name, took the core whole
  // and b was re-created elsewhere. Kept the other way round, both stayed.
  for (const auto& [whole, any] : {std::make_pair("a", "b"), std::make_pair("b", "a")}) {
    FleetInput in;
    in.hosts = {WholeHost("h", t_)};
    auto instance = [](const std::string& name, bool any_thread) {
      v1::KernelInstance k;
      k.mutable_metadata()->set_name(name);
      k.mutable_spec()->set_host("h");
      k.mutable_spec()->mutable_resources()->set_cpus(1);
      k.mutable_spec()->mutable_resources()->set_memory(256ull << 20);
      if (any_thread) k.mutable_spec()->mutable_resources()->set_smt(v1::SMT_ANY);
      return k;
    };
    in.instances = {instance(whole, false), instance(any, true)};
    const uint32_t core = 1;
    auto placed = [&](uint32_t pu) {
      v1::Placement p;
      p.set_host("h");
      p.add_cpus(pu);
      p.set_boot_cpu(pu);
      p.add_numa_nodes(0);
      auto* m = p.add_memory();
      m->set_node(0);
      m->set_bytes(256ull << 20);
      return p;
    };
    in.current[whole] = placed(t_->cores[core].pus[0]);
    in.current[any] = placed(t_->cores[core].pus[1]);
    FleetPlacement r = PlaceFleet(in);
    ASSERT_EQ(r.placements.size(), 2u) << whole;
    EXPECT_EQ(r.placements.at(whole).cpus(0), t_->cores[core].pus[0]) << whole << " holds the core whole";
    EXPECT_EQ(r.placements.at(any).cpus(0), t_->cores[core].pus[1]) << any << " runs on any thread";
    EXPECT_TRUE(r.unschedulable.empty());
    EXPECT_TRUE(r.infeasible.empty());
  }
}

TEST_F(FleetPlacementTest, AMemoryShrinkHotRemoveCannotDoKeepsTheInstanceAsItIs) {
  // Found by the fleet simulation (seed 769): a running instance created with 2Gi, changed to
  // 1Gi, got a memory-remove that could never succeed (its only region holds the image), and
  // the failing action kept it from being started again after a crash.
  FleetInput in;
  in.hosts = {WholeHost("h", t_)};
  v1::KernelInstance k;
  k.mutable_metadata()->set_name("k");
  k.mutable_spec()->set_host("h");
  k.mutable_spec()->mutable_resources()->set_cpus(2);
  k.mutable_spec()->mutable_resources()->set_memory(2048ull << 20);
  in.instances = {k};
  FleetPlacement first = PlaceFleet(in);
  ASSERT_EQ(first.placements.size(), 1u);
  in.current = first.placements;
  in.instances[0].mutable_spec()->mutable_resources()->set_memory(1024ull << 20);
  in.removable_memory["k"] = {};  // only the first region: nothing comes back
  FleetPlacement r = PlaceFleet(in);
  ASSERT_TRUE(r.infeasible.count("k"));
  EXPECT_THAT(r.infeasible.at("k"), HasSubstr("cannot shrink from 2Gi to 1Gi in place"));
  EXPECT_EQ(r.placements.at("k").memory(0).bytes(), 2048ull << 20);
  // What it still holds is not given to anyone else: a new instance that needs the whole
  // rest of the memory does not fit.
  v1::KernelInstance big = k;
  big.mutable_metadata()->set_name("big");
  big.mutable_spec()->mutable_resources()->set_memory(14336ull << 20);
  in.instances.push_back(big);
  r = PlaceFleet(in);
  EXPECT_TRUE(r.infeasible.count("k"));
  EXPECT_EQ(r.placements.count("big"), 0u);
  in.instances.pop_back();
  // A region added after boot (1Gi) is given back: the shrink is done in place.
  in.removable_memory["k"] = {{0, {1024ull << 20}}};
  r = PlaceFleet(in);
  EXPECT_TRUE(r.infeasible.empty());
  EXPECT_EQ(r.placements.at("k").memory(0).bytes(), 1024ull << 20);
  // Not whole regions (512Mi to give back from one of 1Gi): infeasible again.
  in.instances[0].mutable_spec()->mutable_resources()->set_memory(1536ull << 20);
  r = PlaceFleet(in);
  EXPECT_TRUE(r.infeasible.count("k"));
  // Moved to another host (its Host changed), nothing is hot-removed: no limit either.
  in.hosts.push_back(WholeHost("h2", t_));
  in.instances[0].mutable_spec()->set_host("h2");
  r = PlaceFleet(in);
  EXPECT_TRUE(r.infeasible.empty());
  EXPECT_EQ(r.placements.at("k").host(), "h2");
  in.instances[0].mutable_spec()->set_host("h");
  // Growing is never limited by regions.
  in.instances[0].mutable_spec()->mutable_resources()->set_memory(3072ull << 20);
  r = PlaceFleet(in);
  EXPECT_TRUE(r.infeasible.empty());
  EXPECT_EQ(r.placements.at("k").memory(0).bytes(), 3072ull << 20);
}

TEST_F(FleetPlacementTest, FixedKernelsAreNeverPlacedOver) {
  FleetInput in;
  in.hosts = {WholeHost("a", t_)};
  PlacementResult other = Place(in.hosts, {Request("foreign", "a", 6, 512)}, {});
  in.fixed["foreign"] = other.placements.at("foreign");
  in.sets = {Set("s", 2, 2)};
  FleetPlacement r = PlaceFleet(in);
  EXPECT_EQ(r.placements.size(), 0u);
  ASSERT_EQ(r.unschedulable.size(), 1u);
  EXPECT_THAT(r.unschedulable[0].reason, HasSubstr("2 of 2 replicas fit on no host"));
}

TEST_F(FleetPlacementTest, FrozenSetsKeepExactlyTheirMembers) {
  FleetInput in;
  in.hosts = {WholeHost("n1", t_), WholeHost("n2", t_)};
  in.sets = {Set("s", 3, 2)};
  PlacementResult now = Place(in.hosts, {Request("s-n1-0", "n1", 2, 512)}, {});
  in.current = now.placements;
  in.frozen_sets = {"s"};
  FleetPlacement r = PlaceFleet(in);
  EXPECT_THAT(Names(r), ElementsAre("s-n1-0"));
  EXPECT_THAT(r.unschedulable, IsEmpty());
}

TEST(SetOfMemberTest, LongestSetThatFits) {
  v1::InstanceSet a, ab;
  a.mutable_metadata()->set_name("a");
  ab.mutable_metadata()->set_name("a-b");
  EXPECT_EQ(SetOfMember("a-b-h1-3", "h1", {a, ab}), "a-b");
  EXPECT_EQ(SetOfMember("a-h1-3", "h1", {a, ab}), "a");
  EXPECT_EQ(SetOfMember("a-h1-x", "h1", {a, ab}), "");
  EXPECT_EQ(SetOfMember("a-h1-03", "h1", {a, ab}), "");
}

}  // namespace
}  // namespace mkfleet::planner
