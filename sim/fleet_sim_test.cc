// The fleet simulation's fixed seeds (a few minutes in all), and its determinism. A failing
// seed prints the command that replays it.
#include "sim/fleet_sim.h"

#include <unistd.h>

#include <filesystem>
#include <vector>

#include "absl/strings/str_join.h"
#include "gtest/gtest.h"

namespace mkfleet::sim {
namespace {

SimOptions Options(uint64_t seed) {
  SimOptions o;
  o.seed = seed;
  o.dir = std::filesystem::path(::testing::TempDir()) / ("sim-" + std::to_string(getpid()) + "-" + std::to_string(seed));
  return o;
}

// Runs `o`: its invariants hold (else the trace's last lines and how to replay it).
SimResult ExpectNoViolation(const SimOptions& o) {
  SimResult r = RunFleetSim(o);
  std::filesystem::remove_all(o.dir);
  EXPECT_TRUE(r.status.ok()) << r.status.message() << "\n  last lines of the trace:\n    "
                             << absl::StrJoin(r.tail, "\n    ") << "\n  replay: " << ReplayCommand(o);
  return r;
}

// Runs `o`: its invariants hold, and it did something (work and faults).
void ExpectHolds(const SimOptions& o) {
  SimResult r = ExpectNoViolation(o);
  EXPECT_GT(r.user_ops, 10);
  EXPECT_GT(r.faults, 3);
  EXPECT_GT(r.actions, 20);
}

class FleetSimSeeds : public ::testing::TestWithParam<uint64_t> {};

TEST_P(FleetSimSeeds, HoldsItsInvariants) { ExpectHolds(Options(GetParam())); }

INSTANTIATE_TEST_SUITE_P(Ci, FleetSimSeeds, ::testing::Range<uint64_t>(1, 81));

// A sharded control plane: the controller plans, a peer member sends to its share of the
// hosts; the peer is killed and cut off now and then (invariant m), on five hosts so that
// both own some.
class ShardedFleetSimSeeds : public ::testing::TestWithParam<uint64_t> {};

TEST_P(ShardedFleetSimSeeds, HoldsItsInvariants) {
  SimOptions o = Options(GetParam());
  o.hosts = 5;
  o.shards = 16;
  o.steps = 1200;
  ExpectHolds(o);
}

INSTANTIATE_TEST_SUITE_P(Ci, ShardedFleetSimSeeds, ::testing::Range<uint64_t>(1, 21));
// Sharded seeds of the sweep that found defects: 3 and 4 (a member on its first list, or
// cut off, owning a host another had: m), 122 and 173 (settled while a host was handed
// over or the controller did not lead), 303 and 588 (stale work after a delete: b), 27 (an
// instance moved by its spec re-created beside its old kernel: b), 595 (a re-create into room
// a failed shrink did not make: b'), 605 and 613 (gaps in j and b' themselves), 12035 (a
// placement not stable between two passes: b; passes since session 8's changes, which one
// fixed it is not pinned down: its trajectory changed with them).
INSTANTIATE_TEST_SUITE_P(FoundDefects, ShardedFleetSimSeeds,
                         ::testing::Values(27, 122, 173, 303, 588, 595, 605, 613, 12035));

// Longer runs on more hosts.
TEST(FleetSimTest, LongRunsOnFiveHosts) {
  for (uint64_t seed : {1001, 1002, 1003}) {
    SimOptions o = Options(seed);
    o.hosts = 5;
    o.steps = 2500;
    ExpectNoViolation(o);
  }
}

// The seeds that found defects (sweeps and soaks), as the soak ran them. Code changes move
// their traces, so they guard less than the tests written for each defect; they stay cheap.
TEST(FleetSimTest, SeedsThatFoundDefects) {
  struct Case {
    uint64_t seed;
    int hosts;
    int steps;
  };
  for (const Case& c : std::vector<Case>{{409, 3, 600}, {485, 3, 600}, {685, 3, 600}, {769, 3, 600}, {930, 3, 600},
                                         {944, 3, 600}, {1034, 4, 600}, {1403, 5, 1800}, {1484, 2, 600}, {1821, 3, 600},
                                         {1837, 3, 600}, {5294, 4, 600}, {8116, 2, 600}, {588, 2, 600}, {840, 2, 600},
                                         {8331, 5, 1800}, {54, 4, 600}, {110, 4, 600}, {35, 3, 600},
                                         {69, 3, 600}, {72, 2, 600}, {1083, 5, 1800}, {2097, 3, 600},
                                         {3273, 3, 600}, {5175, 5, 1800}, {7071, 5, 1800},
                                         {9014, 4, 600}, {11446, 4, 600}, {19, 5, 1800}, {296, 2, 600}, {5171, 5, 1800},
                                         {11139, 5, 1800}, {30002, 4, 600}, {30103, 5, 1800}, {30367, 5, 1800},
                                         {40004, 2, 600}, {40024, 2, 600}, {40107, 5, 1800}, {42175, 5, 1800},
                                         {30435, 5, 1800}, {42014, 4, 600}, {41243, 5, 1800},
                                         {60022, 4, 600}, {910274, 4, 600}}) {
    SimOptions o = Options(c.seed);
    o.hosts = c.hosts;
    o.steps = c.steps;
    ExpectNoViolation(o);
  }
}

// Sharded seeds of soaks on other sizes: 700037 on 3 hosts (b': a KernelInstance removed out
// of band lost its room to a pending one placed in the next pass).
TEST(FleetSimTest, ShardedSeedsThatFoundDefects) {
  for (uint64_t seed : {700037}) {
    SimOptions o = Options(seed);
    o.hosts = 3;
    o.steps = 600;
    o.shards = 16;
    ExpectNoViolation(o);
  }
}

TEST(FleetSimTest, TheSameSeedGivesTheSameTrace) {
  SimOptions a = Options(7), b = Options(7);
  b.dir += "-again";
  a.steps = b.steps = 300;
  SimResult ra = RunFleetSim(a), rb = RunFleetSim(b);
  std::filesystem::remove_all(a.dir);
  std::filesystem::remove_all(b.dir);
  EXPECT_EQ(ra.trace_hash, rb.trace_hash);
  EXPECT_EQ(ra.steps, rb.steps);
  EXPECT_EQ(ra.actions, rb.actions);
  SimOptions c = Options(8);
  c.steps = 300;
  SimResult rc = RunFleetSim(c);
  std::filesystem::remove_all(c.dir);
  EXPECT_NE(rc.trace_hash, ra.trace_hash);
}

}  // namespace
}  // namespace mkfleet::sim
