#include "reconciler/rollout.h"

#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// A toy fleet on a simulated clock: each step the engine decides, then each member moves
// toward the kernel of its revision: down one step (Replace), up the next unless the kernel
// is bad. It records the most members down at once and every kernel a member ever ran.
class Fleet {
 public:
  Fleet(int n, int waves, bool morph = false) : morph_(morph) {
    for (int i = 0; i < n; ++i) {
      RolloutMember m;
      m.name = "web-" + std::to_string(i);
      m.wave = waves > 0 ? "zone-" + std::string(1, static_cast<char>('a' + i % waves)) : "";
      m.kernel = "k1";
      m.up = true;
      members_.push_back(m);
    }
    view_.owner = "InstanceSet/web";
    view_.target = 1;
    view_.target_kernel = "k1";
    view_.revision_of_kernel = {{"k1", 1}};
    view_.kernel_of_revision = {{1, "k1"}};
    view_.morph = morph;
    view_.now = absl::FromUnixSeconds(1000000);
  }

  void NewRevision(const std::string& kernel) {
    ++view_.target;
    view_.target_kernel = kernel;
    view_.revision_of_kernel[kernel] = view_.target;
    view_.kernel_of_revision[view_.target] = kernel;
  }

  RolloutStep Step(absl::Duration dt = absl::Seconds(1)) {
    view_.members = members_;
    RolloutStep s = StepRollout(view_, &progress_);
    for (auto& e : s.events) events_.push_back(e.first);
    // Members move one stage per step.
    for (RolloutMember& m : members_) {
      uint32_t rev = s.revision_of.count(m.name) ? s.revision_of.at(m.name) : s.default_revision;
      const std::string& want = m.kernels.empty() ? view_.kernel_of_revision.at(rev) : m.kernels.at(rev);
      if (m.kernel != want) {
        if (morph_) {
          // A live update: the old kernel serves until it commits (or rolls back).
          if (bad_.count(want)) {
            m.failure = "live update rolled back: health hook failed";
            m.failed_kernel = want;
          } else {
            m.kernel = want;
          }
        } else {
          m.up = false;
          m.kernel = want;
        }
        touched_.insert(m.name);
      } else if (!m.up && m.kernel == want && !bad_.count(m.kernel)) {
        m.up = true;
      }
    }
    int down = 0;
    for (const RolloutMember& m : members_) down += !m.up;
    max_down_ = std::max(max_down_, down);
    view_.now += dt;
    return s;
  }

  // A RolloutPolicy's members: each has a kernel of its own ("<name>@1") in each revision.
  void OwnKernels() {
    for (RolloutMember& m : members_) {
      m.kernel = m.name + "@1";
      m.kernels = {{1, m.kernel}};
    }
    view_.owner = "RolloutPolicy/web";
    view_.target_kernel.clear();
    view_.kernel_of_revision.clear();
    view_.revision_of_kernel.clear();
  }
  // A policy revision: the members in `changed` get that kernel, the others keep theirs.
  void PolicyRevision(const std::map<std::string, std::string>& changed) {
    ++view_.target;
    for (RolloutMember& m : members_) {
      auto c = changed.find(m.name);
      m.kernels[view_.target] = c != changed.end() ? c->second : m.kernels.rbegin()->second;
    }
  }

  // Steps until the phase is `phase` (at most `limit` steps); returns the last step.
  RolloutStep StepUntil(const std::string& phase, int limit = 500) {
    RolloutStep s;
    for (int i = 0; i < limit; ++i) {
      s = Step();
      if (s.status.phase() == phase) return s;
    }
    ADD_FAILURE() << "no " << phase << " after " << limit << " steps; phase " << s.status.phase();
    return s;
  }

  int Count(const std::string& kernel) const {
    int n = 0;
    for (const RolloutMember& m : members_) n += m.kernel == kernel;
    return n;
  }

  // Members the progress marks canaries, and those let move, by name.
  std::vector<std::string> Canaries() const {
    std::vector<std::string> out;
    for (const auto& [name, mp] : progress_.members()) {
      if (mp.canary()) out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  std::vector<std::string> Admitted() const {
    std::vector<std::string> out;
    for (const auto& [name, mp] : progress_.members()) {
      if (mp.admitted_unix_ms() > 0) out.push_back(name);
    }
    std::sort(out.begin(), out.end());
    return out;
  }
  // The member is gone from what the hosts show.
  void Remove(const std::string& name) {
    members_.erase(std::remove_if(members_.begin(), members_.end(),
                                  [&](const RolloutMember& m) { return m.name == name; }),
                   members_.end());
  }

  v1::Rollout& policy() { return view_.policy; }
  RolloutView& view() { return view_; }
  v1::RolloutProgress& progress() { return progress_; }
  std::vector<RolloutMember>& members() { return members_; }
  std::set<std::string> bad_;
  std::set<std::string> touched_;
  std::vector<std::string> events_;
  int max_down_ = 0;

 private:
  bool morph_;
  std::vector<RolloutMember> members_;
  RolloutView view_;
  v1::RolloutProgress progress_;
};

TEST(RolloutTest, ResolveCountsAndRoundsPercentsUp) {
  v1::IntOrPercent v;
  EXPECT_EQ(Resolve(v, 100, 1, 1), 1u);
  v.set_percent(1);
  EXPECT_EQ(Resolve(v, 10000, 1, 1), 100u);
  EXPECT_EQ(Resolve(v, 150, 1, 1), 2u);
  v.set_count(7);
  EXPECT_EQ(Resolve(v, 3, 1, 1), 7u);
}

TEST(RolloutTest, FirstSightIsCompleteAndNothingMoves) {
  Fleet f(4, 0);
  RolloutStep s = f.Step();
  EXPECT_EQ(s.status.phase(), "Complete");
  EXPECT_THAT(s.revision_of, IsEmpty());
  EXPECT_TRUE(s.changed);
  EXPECT_FALSE(f.Step().changed);
}

TEST(RolloutTest, WavesFinishOneValueBeforeTheNextWithinTheBudget) {
  Fleet f(12, 3);
  f.policy().mutable_waves()->set_by("zone");
  f.policy().mutable_max_unavailable()->set_count(2);
  f.Step();
  f.NewRevision("k2");
  // Which wave each member was admitted in, in order of admission.
  std::vector<std::string> admitted_waves;
  std::set<std::string> seen;
  for (int i = 0; i < 200; ++i) {
    RolloutStep s = f.Step();
    for (const auto& [name, mp] : f.progress().members()) {
      if (mp.admitted_unix_ms() > 0 && seen.insert(name).second) {
        admitted_waves.push_back("zone-" + std::string(1, static_cast<char>('a' + std::stoi(name.substr(4)) % 3)));
      }
    }
    if (s.status.phase() == "Complete") break;
  }
  EXPECT_EQ(f.Count("k2"), 12);
  ASSERT_EQ(admitted_waves.size(), 12u);
  EXPECT_TRUE(std::is_sorted(admitted_waves.begin(), admitted_waves.end())) << "a wave started before the last ended";
  EXPECT_LE(f.max_down_, 2) << "maxUnavailable 2 exceeded";
  EXPECT_EQ(f.max_down_, 2) << "the budget was not used";
  EXPECT_THAT(f.events_, ::testing::Contains("WaveStarted"));
  EXPECT_EQ(f.events_.back(), "RolloutComplete");
}

TEST(RolloutTest, TheWaveOrderOfThePolicyComesFirst) {
  Fleet f(6, 3);
  f.policy().mutable_waves()->set_by("zone");
  f.policy().mutable_waves()->add_order("zone-c");
  f.Step();
  f.NewRevision("k2");
  f.Step();
  f.Step();
  for (const std::string& name : f.Admitted()) EXPECT_EQ(std::stoi(name.substr(4)) % 3, 2) << name << " is not in zone-c";
  EXPECT_EQ(f.progress().wave(), "zone-c");
}

TEST(RolloutTest, CanariesAreDeterministicAndInTheFirstWave) {
  auto canaries = [](int seed_skip) {
    Fleet f(100, 2);
    f.policy().mutable_waves()->set_by("zone");
    f.policy().mutable_canary()->set_percent(3);
    f.policy().set_pause_after_canary(true);
    f.Step();
    f.NewRevision("k2");
    for (int i = 0; i < seed_skip; ++i) f.Step(absl::Milliseconds(1));
    f.Step();
    return f.Canaries();
  };
  std::vector<std::string> a = canaries(0), b = canaries(3);
  ASSERT_EQ(a.size(), 3u);
  EXPECT_EQ(a, b);
  for (const std::string& name : a) EXPECT_EQ(std::stoi(name.substr(4)) % 2, 0) << name << " is not in zone-a";
}

TEST(RolloutTest, PauseAfterCanaryWaitsForResumeAndOnlyCanariesMove) {
  Fleet f(20, 0);
  f.policy().mutable_canary()->set_count(2);
  f.policy().set_pause_after_canary(true);
  f.policy().mutable_max_unavailable()->set_count(5);
  f.Step();
  f.NewRevision("k2");
  RolloutStep s = f.StepUntil("Paused");
  EXPECT_EQ(f.Count("k2"), 2);
  for (int i = 0; i < 20; ++i) f.Step();
  EXPECT_EQ(f.Count("k2"), 2) << "moved while paused";
  EXPECT_THAT(s.status.message(), HasSubstr("resume"));
  ASSERT_EQ(s.status.waves_size(), 2);
  EXPECT_EQ(s.status.waves(0).value(), "canary");
  EXPECT_EQ(s.status.waves(0).ready(), 2u);
  f.progress().set_paused(false);  // mkapply rollout resume
  f.StepUntil("Complete");
  EXPECT_EQ(f.Count("k2"), 20);
  EXPECT_LE(f.max_down_, 5);
}

TEST(RolloutTest, MinReadyHoldsAMemberUntilItHasBeenReadyThatLong) {
  Fleet f(2, 0);
  f.policy().set_min_ready(10000);
  f.Step();
  f.NewRevision("k2");
  f.Step();  // admits web-?; it goes down
  f.Step();  // up again at k2
  f.Step();  // Ready since now
  int steps = 0;
  while (f.Step().status.phase() != "Complete" && steps < 100) ++steps;
  // Two members one after the other, each Ready for 10 s at 1 s a step.
  EXPECT_GE(steps, 18);
  EXPECT_LT(steps, 30);
}

TEST(RolloutTest, ABadKernelFailsAtTheCanaryAndOnlyTheCanaryIsRolledBack) {
  Fleet f(50, 2);
  f.policy().mutable_waves()->set_by("zone");
  f.policy().mutable_canary()->set_count(1);
  f.policy().mutable_max_unavailable()->set_percent(10);
  f.policy().set_health_timeout(5000);
  f.Step();
  f.NewRevision("k2");
  f.bad_.insert("k2");
  RolloutStep s = f.StepUntil("RolledBack");
  EXPECT_EQ(f.touched_.size(), 1u) << "more than the canary was touched";
  EXPECT_EQ(f.Count("k1"), 50);
  EXPECT_EQ(s.status.failures(), 1u);
  EXPECT_THAT(s.status.reasons(0), HasSubstr("healthTimeout"));
  EXPECT_THAT(f.events_, ::testing::Contains("RolloutFailed"));
  // Held: nothing moves to the failed revision again.
  for (int i = 0; i < 30; ++i) EXPECT_EQ(f.Step().status.phase(), "RolledBack");
  EXPECT_EQ(f.Count("k2"), 0);
  // A new revision (the fix) rolls out from the stable one.
  f.bad_.clear();
  f.NewRevision("k3");
  f.StepUntil("Complete");
  EXPECT_EQ(f.Count("k3"), 50);
}

TEST(RolloutTest, WithoutAutoRollbackAFailedRolloutStopsAsItIs) {
  Fleet f(10, 0);
  f.policy().set_auto_rollback(false);
  f.policy().set_health_timeout(3000);
  f.policy().mutable_max_failures()->set_count(1);
  f.Step();
  f.NewRevision("k2");
  f.bad_.insert("k2");
  f.StepUntil("Failed");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(f.Step().status.phase(), "Failed");
  EXPECT_EQ(f.Count("k2"), 1) << "the failed member stays; nobody else moves";
}

TEST(RolloutTest, MaxFailuresCountsFailedMembersBeforeStopping) {
  // Live updates that roll back leave their member up: the rollout goes on past the first
  // failure and stops at the second.
  Fleet f(10, 0, /*morph=*/true);
  f.policy().mutable_max_failures()->set_count(2);
  f.Step();
  f.NewRevision("k2");
  f.bad_.insert("k2");
  RolloutStep s = f.StepUntil("RolledBack");
  EXPECT_EQ(s.status.failures(), 2u);
  EXPECT_EQ(f.touched_.size(), 2u);
  EXPECT_EQ(f.Count("k1"), 10);
}

TEST(RolloutTest, FailedMembersHoldingTheWholeBudgetStopTheRollout) {
  // Replace: a failed member stays down; below maxFailures it would stall the rollout for
  // ever, so a budget used up by failed members alone stops it.
  Fleet f(10, 0);
  f.policy().set_health_timeout(2000);
  f.policy().mutable_max_failures()->set_count(5);
  f.policy().mutable_max_unavailable()->set_count(2);
  f.Step();
  f.NewRevision("k2");
  f.bad_.insert("k2");
  RolloutStep s = f.StepUntil("RolledBack");
  EXPECT_EQ(s.status.failures(), 2u);
  EXPECT_THAT(s.status.reasons(), ::testing::Contains(HasSubstr("budget")));
  EXPECT_EQ(f.Count("k1"), 10);
}

TEST(RolloutTest, MorphPacesByMaxSurgeAndARolledBackMorphIsAFailure) {
  Fleet f(8, 0, /*morph=*/true);
  f.policy().mutable_max_surge()->set_count(2);
  f.Step();
  f.NewRevision("k2");
  uint32_t most = 0;
  for (int i = 0; i < 50; ++i) {
    RolloutStep s = f.Step();
    uint32_t moving = 0;
    for (const auto& [name, mp] : f.progress().members()) moving += mp.admitted_unix_ms() > 0 && !mp.done();
    most = std::max(most, moving);
    if (s.status.phase() == "Complete") break;
  }
  EXPECT_EQ(f.Count("k2"), 8);
  EXPECT_EQ(f.max_down_, 0) << "a live update never takes a member down";
  EXPECT_LE(most, 2u);
  f.NewRevision("k3");
  f.bad_.insert("k3");
  RolloutStep s = f.StepUntil("RolledBack");
  EXPECT_THAT(s.status.reasons(0), HasSubstr("live update rolled back"));
  EXPECT_EQ(f.Count("k3"), 0);
}

TEST(RolloutTest, ARestartFromStoredProgressAdmitsNobodyTwice) {
  Fleet f(30, 3);
  f.policy().mutable_waves()->set_by("zone");
  f.policy().mutable_max_unavailable()->set_count(3);
  f.Step();
  f.NewRevision("k2");
  for (int i = 0; i < 8; ++i) f.Step();
  // The controller dies; a new one reads the progress back from the store.
  std::string stored = f.progress().SerializeAsString();
  std::map<std::string, int64_t> admitted;
  for (const auto& [name, mp] : f.progress().members()) admitted[name] = mp.admitted_unix_ms();
  v1::RolloutProgress reread;
  ASSERT_TRUE(reread.ParseFromString(stored));
  f.progress() = reread;
  f.StepUntil("Complete");
  EXPECT_EQ(f.Count("k2"), 30);
  EXPECT_LE(f.max_down_, 3);
  // Members admitted before the restart kept their admission (none was admitted again):
  // every member was touched once.
  EXPECT_EQ(f.touched_.size(), 30u);
}

TEST(RolloutTest, PauseByTheUserStopsAdmissions) {
  Fleet f(10, 0);
  f.Step();
  f.NewRevision("k2");
  f.Step();
  f.progress().set_paused(true);
  f.Step();
  int before = f.Count("k2");
  for (int i = 0; i < 20; ++i) EXPECT_EQ(f.Step().status.phase(), "Paused");
  EXPECT_LE(f.Count("k2"), before + 1);  // the one admitted before the pause finishes
  f.progress().set_paused(false);
  f.StepUntil("Complete");
  EXPECT_EQ(f.Count("k2"), 10);
}

TEST(RolloutTest, NewMembersDuringARollbackGetTheStableRevision) {
  Fleet f(4, 0);
  f.policy().set_health_timeout(2000);
  f.Step();
  f.NewRevision("k2");
  f.bad_.insert("k2");
  f.StepUntil("RolledBack");
  RolloutMember fresh;
  fresh.name = "web-new";
  f.members().push_back(fresh);
  RolloutStep s = f.Step();
  // Seen or not yet (simulation seed 110: a member about to be created got the failed
  // revision), a new member runs the stable revision.
  EXPECT_EQ(s.revision_of.count("web-new") ? s.revision_of.at("web-new") : s.default_revision, 1u);
  EXPECT_EQ(s.default_revision, 1u);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// Defect (found by rollout_process_test): a restarted controller stepped a rollout before
// its hosts connected, saw no members, declared it complete, and every member was replaced
// at once. While frozen (a selected host not connected) nothing moves on.
TEST(RolloutTest, AFrozenRolloutNeitherCompletesNorAdmits) {
  Fleet f(6, 0);
  f.Step();
  f.NewRevision("k2");
  f.Step();  // admits one
  v1::RolloutProgress saved = f.progress();
  RolloutView view;
  view.owner = "InstanceSet/web";
  view.target = 2;
  view.target_kernel = "k2";
  view.revision_of_kernel = {{"k1", 1}, {"k2", 2}};
  view.kernel_of_revision = {{1, "k1"}, {2, "k2"}};
  view.now = absl::FromUnixSeconds(2000000);
  view.frozen = true;  // no host connected yet: no members seen
  RolloutStep s = StepRollout(view, &f.progress());
  EXPECT_EQ(s.status.phase(), "Progressing");
  EXPECT_FALSE(s.changed);
  EXPECT_EQ(f.progress().SerializeAsString(), saved.SerializeAsString());
  // Members seen while frozen run what they were told: nobody new is admitted.
  view.members = f.members();
  s = StepRollout(view, &f.progress());
  EXPECT_FALSE(s.changed);
  EXPECT_THAT(s.status.message(), HasSubstr("connect"));
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// Defect (found by rollout_process_test): a kernel that panics right after it booted was
// Ready for a moment; with minReady 0 the canary was done, the next wave began, and the
// crash afterwards counted for nothing. A done member that goes down again must be Ready
// again within healthTimeout, else it has failed.
TEST(RolloutTest, ADoneMemberThatGoesDownAgainMustRecoverOrFail) {
  Fleet f(10, 0);
  f.policy().mutable_canary()->set_count(1);
  f.policy().set_health_timeout(3000);
  f.Step();
  f.NewRevision("k2");
  // The canary boots and is Ready (minReady 0: done at once), then its kernel crashes.
  for (int i = 0; i < 4; ++i) f.Step();
  ASSERT_EQ(f.Canaries().size(), 1u);
  f.bad_.insert("k2");
  for (RolloutMember& m : f.members()) {
    if (m.kernel == "k2") m.up = false;  // crashed
  }
  RolloutStep s = f.StepUntil("RolledBack");
  EXPECT_EQ(s.status.failures(), 1u);
  EXPECT_THAT(f.events_, ::testing::Contains("MemberRegressed"));
  EXPECT_EQ(f.Count("k1"), 10);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// Defect (simulation seed 54): the canary's host was deleted before the canary was let move
// (the rollout was paused); the canary was never seen again and the rollout waited for it
// for ever. A canary gone before it moved is chosen anew.
TEST(RolloutTest, ACanaryThatIsGoneIsChosenAnew) {
  Fleet f(6, 0);
  f.policy().mutable_canary()->set_count(1);
  f.Step();
  f.NewRevision("k2");
  f.progress().set_paused(true);
  f.Step();  // the canary is chosen, not let move (paused)
  ASSERT_EQ(f.Canaries().size(), 1u);
  f.Remove(f.Canaries()[0]);
  f.progress().set_paused(false);
  f.StepUntil("Complete", 100);
  EXPECT_EQ(f.Count("k2"), 5);
}

// Defect (simulation seed 42014): a member down for its own reasons (never let move) held the
// whole budget (maxUnavailable 1) while the canary, up, waited for budget: the rollout stood
// at its canary for ever. A member that is down costs no budget to move: it is the canary.
TEST(RolloutTest, AMemberDownBeforeTheRolloutIsTheCanaryNotAHoldUp) {
  Fleet f(6, 2);
  f.policy().mutable_canary()->set_count(1);
  f.Step();
  f.NewRevision("k2");
  f.progress().set_paused(true);
  f.Step();  // a canary is chosen, not let move (paused)
  ASSERT_EQ(f.Canaries().size(), 1u);
  // Another member, of the other wave, goes down and stays down at its old kernel.
  std::string down;
  for (RolloutMember& m : f.members()) {
    if (m.name != f.Canaries()[0] && m.wave != f.members()[0].wave) {
      down = m.name;
      m.up = false;
      break;
    }
  }
  ASSERT_FALSE(down.empty());
  f.bad_.insert("k1");  // (only a member down at k1 stays down; k2 comes up)
  f.progress().set_paused(false);
  f.StepUntil("Complete", 100);
  EXPECT_EQ(f.Count("k2"), 6);
  EXPECT_LE(f.max_down_, 1) << "the budget (maxUnavailable 1) was exceeded";
}

// A member let move that is being re-created (not seen for a while) still holds the budget.
TEST(RolloutTest, AMemberBeingRecreatedHoldsTheBudget) {
  Fleet f(6, 0);
  f.Step();
  f.NewRevision("k2");
  f.Step();  // admits one (maxUnavailable 1)
  ASSERT_EQ(f.Admitted().size(), 1u);
  f.Remove(f.Admitted()[0]);
  for (RolloutMember& x : f.members()) x.up = true;
  f.Step();
  EXPECT_EQ(f.Admitted().size(), 1u) << "another member was let move while the first is re-created";
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// A RolloutPolicy: only the instances whose own spec changed move, within the budget and
// wave by wave; a bad change is caught at the canary and only the canary goes back.
TEST(RolloutTest, APolicyMovesOnlyTheChangedInstancesEachToItsOwnKernel) {
  Fleet f(12, 3);
  f.OwnKernels();
  f.policy().mutable_canary()->set_count(1);
  f.policy().mutable_max_unavailable()->set_count(2);
  f.policy().mutable_waves()->set_by("zone");
  EXPECT_EQ(f.Step().status.phase(), "Complete");
  std::map<std::string, std::string> changed;
  for (int i = 0; i < 12; i += 2) changed["web-" + std::to_string(i)] = "web-" + std::to_string(i) + "@2";
  f.PolicyRevision(changed);
  f.StepUntil("Complete");
  EXPECT_LE(f.max_down_, 2);
  EXPECT_EQ(f.touched_, (std::set<std::string>{"web-0", "web-2", "web-4", "web-6", "web-8", "web-10"}));
  for (const RolloutMember& m : f.members()) {
    EXPECT_EQ(m.kernel, changed.count(m.name) ? changed.at(m.name) : m.name + "@1") << m.name;
  }

  // A bad change of every instance: the canary fails, goes back to its own stable kernel.
  f.touched_.clear();
  f.events_.clear();
  std::map<std::string, std::string> bad;
  for (const RolloutMember& m : f.members()) {
    bad[m.name] = m.name + "@bad";
    f.bad_.insert(m.name + "@bad");
  }
  f.PolicyRevision(bad);
  f.policy().set_health_timeout(5000);
  RolloutStep s = f.StepUntil("RolledBack");
  const std::vector<std::string> canaries = f.Canaries();
  ASSERT_EQ(canaries.size(), 1u);
  EXPECT_EQ(f.touched_, std::set<std::string>(canaries.begin(), canaries.end()));
  EXPECT_EQ(s.status.revision(), 3u);
  EXPECT_EQ(s.status.stable(), 2u);
  for (const RolloutMember& m : f.members()) {
    EXPECT_EQ(m.kernel, changed.count(m.name) ? changed.at(m.name) : m.name + "@1") << m.name;
    EXPECT_TRUE(m.up) << m.name;
  }
  // Held: the failed revision stays out for every instance, the canary included.
  for (int i = 0; i < 5; ++i) s = f.Step();
  EXPECT_EQ(s.status.phase(), "RolledBack");
  EXPECT_EQ(f.Count("web-0@bad") + f.Count("web-1@bad"), 0);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// A rollback whose stable revision does not come up either (the sim's seed 35: an instance
// created with an image that cannot load) ends after healthTimeout instead of hanging.
TEST(RolloutTest, ARollbackToAStableRevisionThatCannotComeUpEndsAfterTheHealthTimeout) {
  Fleet f(4, 0);
  f.policy().mutable_canary()->set_count(1);
  f.policy().set_health_timeout(5000);
  f.Step();
  f.bad_ = {"k1", "k2"};  // from now on neither kernel comes up
  f.NewRevision("k2");
  RolloutStep s = f.StepUntil("RolledBack", 60);
  EXPECT_EQ(s.status.stable(), 1u);
  EXPECT_THAT(f.events_, ::testing::Contains("RolledBack"));
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// The sim's seed 1083: a member the rollout has not let move stays at the stable revision
// when it runs that one's kernel, not at a newer revision with the same kernel (another size
// or phase) that a later change superseded before it completed.
TEST(RolloutTest, AMemberNotLetMoveStaysAtTheStableRevisionWhenItRunsItsKernel) {
  Fleet f(4, 0);
  f.policy().set_min_ready(5000);
  f.policy().mutable_canary()->set_count(1);
  f.Step();             // revision 1 (k1): complete
  f.NewRevision("k1");  // revision 2: the same kernel, another spec
  f.Step();
  f.NewRevision("k3");  // revision 3 supersedes it before it completed: from stable 1
  RolloutStep s = f.Step();
  EXPECT_EQ(s.status.stable(), 1u);
  int held = 0;
  for (const auto& [name, revision] : s.revision_of) {
    EXPECT_EQ(revision, 1u) << name;
    ++held;
  }
  EXPECT_EQ(held, 3);  // all but the canary
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// The sim's seed 2097: a member down (at the old revision) and not yet let move held the
// whole Replace budget and so could never be let move: the rollout stalled for good. Moving
// a member that is down takes nothing from the budget (as Kubernetes replaces unhealthy old
// pods first).
TEST(RolloutTest, AMemberThatIsDownIsLetMoveWithoutTakingTheBudget) {
  Fleet f(3, 0);
  f.policy().mutable_max_unavailable()->set_count(1);
  f.Step();
  f.bad_ = {"k1"};  // the old kernel does not come up again
  f.members()[0].up = false;
  f.NewRevision("k2");
  f.StepUntil("Complete", 50);
  EXPECT_EQ(f.Count("k2"), 3);
  EXPECT_LE(f.max_down_, 1);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// The sim's seed 2097: a set shrank while its rollout ran; the members it let go (moved, then
// deleted) held the budget for healthTimeout as if being re-created, and the one left waited
// a minute to move. Those the last pass did not place hold nothing.
TEST(RolloutTest, MembersGoneWhenTheSetShrankHoldNoBudget) {
  Fleet f(3, 0);
  f.policy().mutable_max_unavailable()->set_count(1);
  f.policy().set_health_timeout(60000);
  f.Step();
  f.NewRevision("k2");
  f.Step();  // one let move
  ASSERT_EQ(f.Admitted().size(), 1u);
  const std::string moving = f.Admitted()[0];
  // The set shrinks to the one member not moving... (its count is now 1, and 1 is seen)
  std::string kept;
  for (const RolloutMember& m : f.members()) {
    if (m.name != moving && kept.empty()) kept = m.name;
  }
  for (const std::string& name : {std::string("web-0"), std::string("web-1"), std::string("web-2")}) {
    if (name != kept) f.Remove(name);
  }
  f.view().placed = std::set<std::string>{kept};  // the last pass placed only it
  f.StepUntil("Complete", 10);  // well within the 60 s healthTimeout
  EXPECT_EQ(f.Count("k2"), 1);
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// The sim's seed 9014: a member being created (placed, not seen yet) was not counted as down,
// so the engine let another move while the planner's own maxUnavailable guard held that one
// back; it was not Ready within healthTimeout and failed the rollout.
TEST(RolloutTest, AMemberBeingCreatedCountsAsDown) {
  Fleet f(3, 0);
  f.policy().mutable_max_unavailable()->set_count(1);
  f.Step();
  f.view().creating = {"web-9"};
  f.NewRevision("k2");
  f.Step();
  EXPECT_THAT(f.Admitted(), IsEmpty());
  f.view().creating.clear();  // it is there now
  f.StepUntil("Complete", 50);
  EXPECT_EQ(f.Count("k2"), 3);
}

}  // namespace
}  // namespace mkfleet::reconciler
