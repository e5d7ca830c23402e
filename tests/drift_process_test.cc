// Drift through the real binaries: mkfault changes an emulated host's kernel out of band
// (as kerf would, not through the agent's executor), and mkcontroller finds each change
// within a resync, puts it back (driftPolicy Correct) or only reports it (Report), with the
// events; an unmanaged kernel is reported and left alone unless the Host says Remove; and
// once corrected the next passes send nothing.
#include <algorithm>

#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;

class DriftProcessTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    StartAgent("node-a", "100ms");
    StartController();
  }

  // node-a with `extra` spec lines, and web-1: 4 CPUs, memory as given, no failover (a halt
  // stays a halt: the agent's watchdog would restart it otherwise).
  void ApplyFleet(const std::string& extra, const std::string& memory = "512Mi") {
    std::string host = HostYaml("node-a");
    host.insert(host.find("  pool:"), extra);
    std::string web = InstanceYaml("web-1", "node-a", "cpus: 4");
    web.replace(web.find("memory: 512Mi"), 13, "memory: " + memory);
    web.insert(web.find("---"), "  failover: {policy: None}\n");
    std::string out;
    ASSERT_EQ(Mkapply({"apply", "-f", Write("fleet.yaml", host + web), "--wait", "--timeout", "60s"}, &out), 0) << out;
  }

  int64_t ActionsSent() {
    grpc::ClientContext ctx;
    ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(5));
    v1::StatsResponse s;
    return stub_->Stats(&ctx, v1::StatsRequest(), &s).ok() ? s.actions_sent() : -1;
  }

  // Occurrences of events with `reason` whose message has `text` (the same event again is
  // counted on the one kept).
  int CountEvents(const std::string& reason, const std::string& text) {
    int n = 0;
    for (const v1::Event& e : ControllerEvents()) {
      if (e.reason() == reason && e.message().find(text) != std::string::npos) n += std::max(1, e.count());
    }
    return n;
  }

  // After a correction: a few resyncs (1 s each) send nothing more.
  void ExpectNoMoreActions() {
    int64_t before = ActionsSent();
    std::this_thread::sleep_for(std::chrono::milliseconds(3500));
    EXPECT_EQ(ActionsSent(), before) << "a correction loop: actions are still being sent";
  }

  std::string Cpus(const v1::InstanceStatus& st) {
    std::vector<uint32_t> cpus(st.placement().cpus().begin(), st.placement().cpus().end());
    std::sort(cpus.begin(), cpus.end());
    std::string out;
    for (uint32_t c : cpus) out += std::to_string(c) + ",";
    return out;
  }
};

TEST_F(DriftProcessTest, EachOutOfBandChangeIsDetectedAndPutBack) {
  ApplyFleet("  driftPolicy: Correct\n");
  std::string out;
  // Memory first grows by hot-plug (a region a hot-remove can give back), then each change.
  ApplyFleet("  driftPolicy: Correct\n", "1Gi");
  const std::string cpus = Cpus(OnAgent("node-a").at("web-1"));
  struct Case {
    std::string fault, field;
  };
  for (const Case& c : {Case{"kerf-cpu-remove", "cpus"}, Case{"kerf-memory-remove", "memory"},
                        Case{"kerf-halt", "state"}, Case{"kerf-remove", "instance"}}) {
    SCOPED_TRACE(c.fault);
    // An out-of-band removal is three calls (halt, unload, remove), as with kerf's CLI: the
    // controller may see it halfway, halted, and start putting the state back before the
    // kernel is gone (under load, most runs). Then it is the state's drift, put back by a
    // create once the kernel is gone.
    std::vector<std::string> fields = {c.field};
    if (c.fault == "kerf-remove") fields.push_back("state");
    auto count = [&](const std::string& reason, const std::string& before, const std::string& after) {
      int n = 0;
      for (const std::string& f : fields) n += CountEvents(reason, before + f + after);
      return n;
    };
    const int detected = count("DriftDetected", "", ": wanted"), corrected = count("DriftCorrected", "put back: ", "");
    ASSERT_EQ(Mkfault("node-a", {c.fault, "--instance", "web-1"}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return count("DriftDetected", "", ": wanted") > detected; }, 10))
        << c.field << " drift not detected";
    ASSERT_TRUE(Eventually([&] { return count("DriftCorrected", "put back: ", "") > corrected; }, 20))
        << c.field << " not corrected";
    ASSERT_TRUE(Eventually([&] { return AllRunning({"web-1"}); }, 10));
    auto on_agent = OnAgent("node-a");
    ASSERT_TRUE(on_agent.count("web-1"));
    EXPECT_EQ(on_agent.at("web-1").kernel_state(), v1::KERNEL_STATE_ACTIVE);
    EXPECT_EQ(on_agent.at("web-1").placement().cpus_size(), 4);
    uint64_t memory = 0;
    for (const auto& m : on_agent.at("web-1").placement().memory()) memory += m.bytes();
    EXPECT_EQ(memory, 1ull << 30);
    ExpectNoMoreActions();
    ASSERT_EQ(Mkapply({"diff", "--live"}, &out), 0) << out;
    EXPECT_THAT(out, HasSubstr("no drift"));
  }
  (void)cpus;
}

TEST_F(DriftProcessTest, ReportLeavesTheChangeAsFoundAndSaysSo) {
  ApplyFleet("  driftPolicy: Report\n");
  std::string out;
  ASSERT_EQ(Mkfault("node-a", {"kerf-cpu-remove", "--instance", "web-1"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return CountEvents("DriftDetected", "left as found") > 0; }, 10));
  ASSERT_TRUE(Eventually([&] { return Status("web-1").phase() != "Running"; }, 5));
  bool drifted = false;
  const v1::InstanceStatus status = Status("web-1");
  for (const v1::Condition& c : status.conditions()) {
    drifted |= c.type() == "Drifted" && c.status() == v1::CONDITION_TRUE;
  }
  EXPECT_TRUE(drifted);
  ExpectNoMoreActions();
  EXPECT_EQ(OnAgent("node-a").at("web-1").placement().cpus_size(), 3) << "Report must not put it back";
  ASSERT_EQ(Mkapply({"diff", "--live"}, &out), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("KernelInstance/web-1"), HasSubstr("cpus"), HasSubstr("Report")));
  ASSERT_EQ(Mkapply({"describe", "host", "node-a"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("Drift policy: Report"), HasSubstr("Drift:        KernelInstance/web-1 cpus")));

  // Correct now: put back.
  ApplyFleet("  driftPolicy: Correct\n");
  EXPECT_EQ(OnAgent("node-a").at("web-1").placement().cpus_size(), 4);
  ASSERT_EQ(Mkapply({"diff", "--live"}, &out), 0) << out;
}

TEST_F(DriftProcessTest, UnmanagedKernelIsReportedAndLeftAloneUnlessTheHostSaysRemove) {
  ApplyFleet("");
  std::string out;
  ASSERT_EQ(Mkfault("node-a", {"kerf-create", "--instance", "stray"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return CountEvents("DriftDetected", "unmanaged kernel on node-a") > 0; }, 10));
  ExpectNoMoreActions();
  EXPECT_TRUE(OnAgent("node-a").count("stray")) << "an unmanaged kernel is never removed by default";
  ASSERT_EQ(Mkapply({"diff", "--live"}, &out), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("Kernel/stray"), HasSubstr("unmanaged"), HasSubstr("Keep")));
  ASSERT_EQ(Mkapply({"get", "ki", "--unmanaged"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("stray"));

  ApplyFleet("  unmanaged: Remove\n");
  ASSERT_TRUE(Eventually([&] { return !OnAgent("node-a").count("stray"); }, 10));
  ASSERT_TRUE(Eventually([&] { return CountEvents("DriftCorrected", "unmanaged kernel deleted") > 0; }, 10));
  EXPECT_TRUE(AllRunning({"web-1"}));
  ExpectNoMoreActions();
}

}  // namespace
}  // namespace mkfleet
