// A RolloutPolicy with real processes: six standalone KernelInstances (one per mkagent, in
// three zones) labelled tier=web, paced by the policy `web`. One apply changing all six
// kernels goes canary first, then zone by zone, never more than maxUnavailable down (sampled
// from the agents throughout); a kernel that panics is caught at the canary and only the
// canary goes back, the others never touched and the failed change held; `mkapply rollout
// undo policy/web` applies the instances' good specs again.
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

const std::vector<std::string> kHosts = {"node-a", "node-b", "node-c", "node-d", "node-e", "node-f"};
constexpr char kRollout[] = "{canary: 1, waves: {by: zone}, maxUnavailable: 1, minReady: 1s, healthTimeout: 4s}";

class PolicyRolloutProcessTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    std::ofstream(dir_ / "vmlinux-2", std::ios::binary) << std::string("\x7f" "ELF", 4) << "the new kernel";
    std::ofstream(dir_ / "vmlinux-panics", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                             << "mkfleet-emulator:panic-after-ms=0";
    for (const std::string& h : kHosts) StartAgent(h, "100ms");
    StartController();
    for (size_t i = 0; i < kHosts.size(); ++i) {
      hosts_yaml_ += "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: " + kHosts[i] +
                     "\n  labels: {zone: z" + std::to_string(i / 2) + "}\nspec:\n  agent: 127.0.0.1:" +
                     std::to_string(agents_[kHosts[i]].port) + "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n---\n";
    }
  }

  // The hosts, the policy and one instance per host ("web-a" on node-a, ...) with `image`.
  std::string Yaml(const std::string& image) {
    std::string y = hosts_yaml_ +
                    "apiVersion: mkfleet.io/v1\nkind: RolloutPolicy\nmetadata: {name: web}\nspec:\n"
                    "  selector: {matchLabels: {tier: web}}\n  rollout: " + std::string(kRollout) + "\n";
    for (const std::string& h : kHosts) {
      y += "---\napiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: web-" + h.substr(5) +
           ", labels: {tier: web}}\nspec:\n  host: " + h + "\n  kernel: {image: " + image +
           ", cmdline: \"console=mktty0\"}\n  resources: {cpus: 2, memory: 512Mi}\n";
    }
    return y;
  }
  int Apply(const std::string& yaml, const std::string& message) {
    std::string out;
    int rc = Mkapply({"apply", "-f", Write("web-" + std::to_string(++applies_) + ".yaml", yaml), "-m", message}, &out);
    EXPECT_EQ(rc, 0) << out;
    return rc;
  }
  v1::RolloutPolicyStatus PolicyStatus() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetRequest req;
    req.set_kind("RolloutPolicy");
    req.set_name("web");
    v1::GetResponse r;
    if (!stub_->Get(&ctx, req, &r).ok() || r.objects_size() != 1) return {};
    return r.objects(0).rollout_policy().status();
  }
  // Instance name -> its Ready condition's reason ("" when Ready).
  std::map<std::string, std::string> NotReady() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::GetRequest req;
    req.set_kind("KernelInstance");
    v1::GetResponse r;
    std::map<std::string, std::string> out;
    if (!stub_->Get(&ctx, req, &r).ok()) return {{"get", "failed"}};
    for (const v1::Object& o : r.objects()) {
      std::string why = "no Ready condition";
      for (const v1::Condition& c : o.kernel_instance().status().conditions()) {
        if (c.type() == "Ready") why = c.status() == v1::CONDITION_TRUE ? "" : c.reason() + ": " + c.message();
      }
      if (!why.empty()) out[o.kernel_instance().metadata().name()] = why;
    }
    return out;
  }
  // The policy's rollout to `revision` has `phase` and it is Ready (every instance too).
  bool At(uint32_t revision, const std::string& phase) {
    v1::RolloutPolicyStatus st = PolicyStatus();
    bool ready = false;
    for (const v1::Condition& c : st.conditions()) ready |= c.type() == "Ready" && c.status() == v1::CONDITION_TRUE;
    return st.update_revision() == revision && st.rollout().phase() == phase && ready;
  }
  std::string hosts_yaml_;
  int applies_ = 0;
};

TEST_F(PolicyRolloutProcessTest, AChangeOfSixInstancesGoesCanaryFirstThenZoneByZoneAndABadOneIsRolledBack) {
  ASSERT_EQ(Apply(Yaml(vmlinux_), "first"), 0);
  ASSERT_TRUE(Eventually([&] { return At(1, "Complete") && NotReady().empty(); }, 30))
      << PolicyStatus().DebugString() << controller_->Log();
  EXPECT_EQ(PolicyStatus().members(), 6u);

  // One apply changes all six kernels: the policy paces it.
  ASSERT_EQ(Apply(Yaml((dir_ / "vmlinux-2").string()), "kernel 2 for the web tier"), 0);
  Sampled s = SampleUntil(kHosts, "vmlinux-2", [&] { return At(2, "Complete") && NotReady().empty(); });
  EXPECT_LE(s.max_down, 1) << "maxUnavailable 1 exceeded\n" << s.worst;
  const std::vector<std::string>& order = s.order;
  ASSERT_EQ(order.size(), 6u) << PolicyStatus().DebugString() << controller_->Log();
  auto zone = [](const std::string& h) { return (h[5] - 'a') / 2; };
  for (size_t i = 1; i < order.size(); ++i) EXPECT_LE(zone(order[i - 1]), zone(order[i])) << order[i];
  std::string out;
  EXPECT_EQ(Mkapply({"rollout", "status", "policy/web", "--watch"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("RolloutPolicy/web: revision 2 (stable 2), Complete"));
  EXPECT_EQ(Mkapply({"rollout", "history", "policy/web"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("kernel 2 for the web tier"));
  EXPECT_EQ(Mkapply({"get", "policies"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::ContainsRegex("web +tier=web +6 +2 +Complete"));
  EXPECT_EQ(Mkapply({"describe", "instance", "web-a"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Rollout:      RolloutPolicy/web, runs revision 2"));

  // A kernel that panics: the canary fails, goes back; the other five are never touched.
  ASSERT_EQ(Apply(Yaml((dir_ / "vmlinux-panics").string()), "a bad kernel"), 0);
  EXPECT_EQ(Mkapply({"rollout", "status", "policy/web", "--watch", "--timeout", "60s"}, &out), 1) << out;
  ASSERT_TRUE(Eventually([&] { return At(3, "RolledBack"); }, 30)) << PolicyStatus().DebugString() << controller_->Log();
  ASSERT_TRUE(Eventually([&] { return RunningImages(kHosts).size() == 6; }));
  for (const auto& [h, k] : RunningImages(kHosts)) EXPECT_EQ(k, "vmlinux-2") << h;
  // Held: every instance waits at its stable spec (not Ready: its spec is not what runs), and
  // the policy says why.
  std::map<std::string, std::string> held = NotReady();
  EXPECT_EQ(held.size(), 6u);
  for (const auto& [name, why] : held) EXPECT_THAT(why, ::testing::HasSubstr("RolloutPolicy/web holds it at revision 2"));
  bool failed_condition = false;
  const v1::RolloutPolicyStatus st = PolicyStatus();
  for (const v1::Condition& c : st.conditions()) failed_condition |= c.reason() == "RolloutFailed";
  EXPECT_TRUE(failed_condition);
  EXPECT_EQ(Mkapply({"describe", "policy", "web"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Selector:     tier=web (6 instance(s))"));
  EXPECT_THAT(out, ::testing::HasSubstr("Revision:     2 (newest 3)"));
  EXPECT_THAT(out, ::testing::HasSubstr("Rollout:      RolledBack"));

  // Undo: the instances get the specs of revision 2 again (a new revision, nothing moves).
  EXPECT_EQ(Mkapply({"rollout", "undo", "policy/web"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("revision 2 applied again to 6 instance(s)"));
  ASSERT_TRUE(Eventually([&] { return At(4, "Complete") && NotReady().empty(); }, 30))
      << PolicyStatus().DebugString() << controller_->Log();
  for (const auto& [h, k] : RunningImages(kHosts)) EXPECT_EQ(k, "vmlinux-2") << h;
  // Only the canary's host booted the bad kernel: two boots on each host (the first kernel,
  // kernel 2), more only on the canary's (the bad kernel, and back).
  int touched = 0;
  std::string counts;
  for (const std::string& h : kHosts) {
    const int starts = StopAndCount(h).starts;
    counts += h + "=" + std::to_string(starts) + " ";
    if (starts != 2) ++touched;
  }
  EXPECT_EQ(touched, 1) << "only the canary may boot the bad kernel: " << counts;
}

}  // namespace
}  // namespace mkfleet
