// Live update (Morph) with real processes: mkcontroller, mkagent (emulated kernel on an
// XML topology with NICs), mkapply, and the real mkguest in every instance, whose hooks keep
// a workload counter that the old guest increments, checkpoints and the new one restores.
#include <signal.h>

#include <cstdlib>
#include <sstream>

#include "agents/testing/workload_log.h"
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

constexpr char kXml[] = "examples/topologies/24em64t-2n6c2t-pci.xml";

class MorphProcessTest : public ProcessFleetTest {
 protected:
  void SetUp() override {
    ProcessFleetTest::SetUp();
    hooks_ = (dir_ / "hooks").string();
    data_ = (dir_ / "data").string();
    fs::create_directories(hooks_ + "/wl");
    fs::create_directories(data_);
    auto script = [](const std::string& path, const std::string& body) {
      std::ofstream(path) << body;
      fs::permissions(path, fs::perms::owner_all);
    };
    const std::string d = "D=\"" + data_ + "\"\nID=$MKGUEST_INSTANCE_ID\n";
    script(data_ + "/step", "#!/bin/sh\nD=\"" + data_ +
                                "\"\n[ -e \"$D/serving.$1\" ] || exit 0\nv=$(( $(cat \"$D/counter.$1\") + 1 ))\n"
                                "echo $v > \"$D/counter.$1\"\necho \"$1 $v\" >> \"$D/log\"\n");
    script(data_ + "/workload", "#!/bin/sh\nD=\"" + data_ +
                                    "\"\nwhile [ -d \"$D\" ]; do flock \"$D/lock\" \"$D/step\" $1; sleep 0.005; done\n");
    script(hooks_ + "/wl/start", "#!/bin/sh\n" + d +
                                     "if [ ! -e \"$D/first\" ]; then echo $ID > \"$D/first\"; echo 0 > \"$D/counter.$ID\"; "
                                     "touch \"$D/serving.$ID\"; fi\n\"$D/workload\" $ID </dev/null >/dev/null 2>&1 &\n");
    script(hooks_ + "/wl/quiesce", "#!/bin/sh\n" + d +
                                       "[ -e \"$D/fail-quiesce\" ] && { echo 'cannot quiesce' >&2; exit 3; }\n"
                                       "[ -e \"$D/slow-quiesce\" ] && sleep 30\n"
                                       "flock \"$D/lock\" rm -f \"$D/serving.$ID\"\n");
    script(hooks_ + "/wl/checkpoint", "#!/bin/sh\n" + d + "cat \"$D/counter.$ID\"\n");
    script(hooks_ + "/wl/restore", "#!/bin/sh\n" + d + "cat > \"$D/counter.$ID\"\n");
    script(hooks_ + "/wl/validate", "#!/bin/sh\n" + d +
                                        "[ -e \"$D/fail-validate\" ] && { echo 'not ready' >&2; exit 1; }\nexit 0\n");
    script(hooks_ + "/wl/commit", "#!/bin/sh\n" + d + "flock \"$D/lock\" touch \"$D/serving.$ID\"\n");
    script(hooks_ + "/wl/resume", "#!/bin/sh\n" + d + "flock \"$D/lock\" touch \"$D/serving.$ID\"\n");
    std::ofstream(dir_ / "vmlinux-2", std::ios::binary) << std::string("\x7f" "ELF", 4) << "the new kernel";
    std::ofstream(dir_ / "vmlinux-panics", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                             << "mkfleet-emulator:panic-after-ms=0";
  }
  void TearDown() override {
    unsetenv("MKAGENT_TEST_KILL_AT_MORPH_PHASE");
    ProcessFleetTest::TearDown();
  }

  // A guest binary for the agent: the real mkguest, but for profile "bad" a hostile guest
  // that answers with bytes that are no KMP frame.
  std::string GuestWrapper() {
    std::string path = (dir_ / "guest-wrapper").string();
    std::string mkguest = fs::absolute("guest/mkguest").string(), bad = fs::absolute("tests/bad_guest").string();
    std::ofstream(path) << "#!/bin/sh\ncase \"$*\" in\n  *hooks/bad*) exec \"" << bad << "\" \"$@\" ;;\nesac\nexec \""
                        << mkguest << "\" \"$@\"\n";
    fs::permissions(path, fs::perms::owner_all);
    return path;
  }

  void StartMorphAgent(const std::string& kill_at = "") {
    AgentSpec& a = agents_["node-a"];
    a.name = "node-a";
    const bool first = a.port == 0;  // then the agent picks a free port (see StartAgent)
    a.process.reset();
    if (kill_at.empty()) {
      unsetenv("MKAGENT_TEST_KILL_AT_MORPH_PHASE");
    } else {
      setenv("MKAGENT_TEST_KILL_AT_MORPH_PHASE", kill_at.c_str(), 1);
    }
    a.process = std::make_unique<testing::Process>(
        std::vector<std::string>{"agents/mkagent", "--topology", kXml, "--listen", "127.0.0.1:" + std::to_string(a.port),
                                 "--state-dir", (dir_ / "node-a").string(), "--reserve-cores", "1", "--reserve-memory",
                                 "1Gi", "--host", "node-a", "--tls-dir", pki_->agent("node-a"), "--image-dir",
                                 dir_.string(), "--guest-hooks", hooks_, "--guest-binary", GuestWrapper()},
        (dir_ / ("node-a-" + std::to_string(++runs_) + ".log")).string());
    unsetenv("MKAGENT_TEST_KILL_AT_MORPH_PHASE");
    const std::string port = a.process->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(port.empty()) << a.process->Log();
    if (first) a.port = std::stoi(port);
  }

  // node-a lends its two NICs too.
  std::string Host() {
    return "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: node-a\nspec:\n  agent: 127.0.0.1:" +
           std::to_string(agents_["node-a"].port) +
           "\n  pool:\n    hostReserved: {cores: 1, memory: 1Gi}\n    devices: [\"0000:04:00.0\", \"0000:04:00.1\"]\n---\n";
  }
  std::string WebYaml(const std::string& image, const std::string& extra_morph = "", int cpus = 2) {
    return Host() + "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: web\nspec:\n"
           "  host: node-a\n  kernel:\n    image: " + image +
           "\n    cmdline: \"console=mktty0 mkfleet.guest=wl\"\n  resources:\n    cpus: " + std::to_string(cpus) +
           "\n    memory: 512Mi\n    devices:\n      - {name: nic0, select: {class: Network}}\n"
           "  update:\n    strategy: Morph\n" + extra_morph;
  }
  // Brings web up on vmlinux and waits until its workload counts.
  void StartWeb(const std::string& extra_morph = "", int cpus = 2) {
    std::string out;
    ASSERT_EQ(Mkapply({"apply", "-f", Write("web.yaml", WebYaml(vmlinux_, extra_morph, cpus))}, &out), 0) << out;
    ASSERT_TRUE(Eventually([&] { return Status("web").phase() == "Running"; }))
        << controller_->Log() << agents_["node-a"].process->Log();
    ASSERT_TRUE(Eventually([&] { return Counter() > 5; })) << "the workload never started";
  }
  int Change(const std::string& image, const std::string& extra_morph = "", int cpus = 2) {
    std::string out;
    return Mkapply({"apply", "-f", Write("web.yaml", WebYaml(image, extra_morph, cpus))}, &out);
  }
  v1::MorphPhase Phase() { return Status("web").morph().phase(); }
  bool Ended() { return Phase() == v1::MORPH_COMMITTED || Phase() == v1::MORPH_ROLLED_BACK; }

  int64_t Counter() { return agents::testing::LastCount(data_ + "/log"); }
  // No increment lost or repeated; the ids that served, in order.
  std::vector<int64_t> CheckLog() { return agents::testing::CheckWorkloadLog(data_ + "/log"); }
  bool CountsAgain() {
    int64_t at = Counter();
    return Eventually([&] { return Counter() > at + 3; });
  }
  // Each device held by at most one kernel, and the NIC by `serving` only.
  void ExpectOneOwner(const std::string& serving) {
    std::map<std::string, std::vector<std::string>> owners;
    auto on_agent = OnAgent("node-a");
    for (const auto& [name, st] : on_agent) {
      for (const auto& d : st.placement().devices()) owners[d.pci()].push_back(name);
    }
    for (const auto& [pci, who] : owners) EXPECT_EQ(who.size(), 1u) << pci << " owned by " << who.size();
    ASSERT_TRUE(on_agent.count(serving)) << serving << " is not on the agent";
    EXPECT_EQ(on_agent[serving].placement().devices_size(), 1);
    EXPECT_EQ(on_agent.size(), 1u) << "both kernels are still there";
  }
  bool HasEvent(const std::string& reason) {
    for (const v1::Event& e : ControllerEvents()) {
      if (e.reason() == reason) return true;
    }
    return false;
  }
  // How many times kernel `name` stopped, from the emulated kernel's state (agent stopped).
  int StopsOf(const std::string& name) {
    agents_["node-a"].process->Kill(SIGTERM);
    auto t = planner::NewXmlTopologySource(kXml, planner::TopologyOptions{})->Load();
    kernel::EmulatorOptions o = kernel::MachineFromTopology(*t);
    o.state_file = (dir_ / "node-a" / "emulated-kernel.state").string();
    kernel::EmulatedKernel k(o);
    auto stops = k.StopsOf(name);
    return stops.ok() ? *stops : -1;
  }

  std::string hooks_, data_;
};

TEST_F(MorphProcessTest, AutoMorphHandsOverWithoutLosingAnIncrement) {
  StartMorphAgent();
  StartController();
  StartWeb();
  std::string before = Status("web").revision();
  ASSERT_FALSE(before.empty());
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string()), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_COMMITTED && Status("web").phase() == "Running"; }))
      << controller_->Log() << agents_["node-a"].process->Log();
  v1::InstanceStatus st = Status("web");
  EXPECT_EQ(st.kernel(), "web-next");
  EXPECT_EQ(st.previous_revision(), before);
  EXPECT_NE(st.revision(), before);
  EXPECT_EQ(st.provenance().kernel_path(), (dir_ / "vmlinux-2").string());
  EXPECT_EQ(st.placement().cpus_size(), 2);
  ASSERT_TRUE(CountsAgain()) << "the new kernel does not serve";
  EXPECT_EQ(CheckLog().size(), 2u);
  ExpectOneOwner("web-next");
  EXPECT_TRUE(HasEvent("MorphPreparing"));
  EXPECT_TRUE(HasEvent("MorphCommitted"));
  std::string out;
  ASSERT_EQ(Mkapply({"describe", "instance", "web"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Revision:     " + st.revision() + "  (previous " + before + ")"));
  EXPECT_THAT(out, ::testing::HasSubstr("Live update:  Committed  web -> web-next"));
  // A second update goes back to the name web.
  ASSERT_EQ(Change(vmlinux_), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_COMMITTED && Status("web").kernel() == "web"; }))
      << controller_->Log();
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 3u);
  ExpectOneOwner("web");
}

TEST_F(MorphProcessTest, ManualMorphWaitsForCommit) {
  StartMorphAgent();
  StartController();
  const std::string manual = "    morph: {commit: Manual}\n";
  StartWeb(manual);
  std::string out;
  EXPECT_EQ(Mkapply({"morph", "commit", "instance", "web"}, &out), 1) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("no live update of KernelInstance/web is in progress"));
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string(), manual), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_VALIDATING; })) << controller_->Log();
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_EQ(Phase(), v1::MORPH_VALIDATING) << "it must wait for the commit";
  EXPECT_EQ(Status("web").kernel(), "web");
  // Found by the demo: `apply --wait` said web Ready while its live update had just begun.
  EXPECT_NE(Status("web").phase(), "Running") << "not Ready while a live update runs";
  ASSERT_EQ(Mkapply({"morph", "status", "instance", "web"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("waiting for `mkapply morph commit instance web`"));
  ASSERT_EQ(Mkapply({"morph", "commit", "instance", "web", "--wait"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("Committed"));
  ASSERT_EQ(Mkapply({"audit"}, &out), 0) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("morph commit"));
  EXPECT_THAT(out, ::testing::HasSubstr("FAILED_PRECONDITION"));  // the refused commit before
  ASSERT_TRUE(Eventually([&] { return Status("web").kernel() == "web-next"; }));
  EXPECT_EQ(Mkapply({"morph", "commit", "instance", "web"}, &out), 1) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("already committed"));
  EXPECT_EQ(Mkapply({"morph", "rollback", "instance", "web"}, &out), 1) << out;
  EXPECT_THAT(out, ::testing::HasSubstr("too late to roll back"));
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 2u);
}

TEST_F(MorphProcessTest, ManualRollbackKeepsTheOldKernel) {
  StartMorphAgent();
  StartController();
  const std::string manual = "    morph: {commit: Manual}\n";
  StartWeb(manual);
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string(), manual), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_VALIDATING; })) << controller_->Log();
  std::string out;
  ASSERT_EQ(Mkapply({"morph", "rollback", "instance", "web", "--reason", "not today", "--wait"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; }));
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("not today"));
  // Held: the same revision does not start again by itself.
  std::this_thread::sleep_for(std::chrono::seconds(2));
  EXPECT_EQ(Phase(), v1::MORPH_ROLLED_BACK);
  const v1::Condition* progressing = nullptr;
  v1::InstanceStatus st = Status("web");
  for (const auto& c : st.conditions()) {
    if (c.type() == "Progressing") progressing = &c;
  }
  ASSERT_NE(progressing, nullptr);
  EXPECT_EQ(progressing->reason(), "MorphRolledBack");
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 1u);
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0);
}

TEST_F(MorphProcessTest, PanickingNewKernelRollsBackAndTheOldNeverStops) {
  StartMorphAgent();
  StartController();
  StartWeb();
  ASSERT_EQ(Change((dir_ / "vmlinux-panics").string(), "    morph: {timeout: 3s}\n"), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; }, 60))
      << controller_->Log() << agents_["node-a"].process->Log();
  EXPECT_TRUE(HasEvent("MorphRolledBack"));
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 1u);
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0) << "the old kernel stopped";
}

TEST_F(MorphProcessTest, SecondMorphToAKernelPanickingOnBootRollsBackBesideAStandby) {
  StartMorphAgent();
  StartController();
  const std::string standby =
      "  failover:\n    policy: Standby\n    standby: {cpus: 2, memory: 512Mi}\n";
  // The standby comes after web's workload started (its guest runs the same hooks, and the
  // first guest up serves).
  StartWeb();
  ASSERT_EQ(Change(vmlinux_, standby), 0);
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").count("web-standby") > 0; }));
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string(), standby), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_COMMITTED && Status("web").phase() == "Running"; }))
      << Status("web").DebugString() << agents_["node-a"].process->Log();
  std::ofstream(dir_ / "vmlinux-late-panic", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                               << "mkfleet-emulator:panic-after-ms=0";
  ASSERT_EQ(Change((dir_ / "vmlinux-late-panic").string(), standby), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; })) << [&] {
    std::string all;
    for (const auto& e : ControllerEvents()) all += e.name() + " " + e.reason() + " " + e.message() + "\n";
    return all;
  }();
  std::this_thread::sleep_for(std::chrono::seconds(2));
  v1::InstanceStatus st = Status("web");
  EXPECT_EQ(st.kernel(), "web-next") << controller_->Log() << agents_["node-a"].process->Log();
  EXPECT_EQ(st.morph().phase(), v1::MORPH_ROLLED_BACK);
  auto on_agent = OnAgent("node-a");
  EXPECT_EQ(on_agent.count("web"), 0u) << "the failed new kernel is still there";
  EXPECT_EQ(on_agent.count("web-standby"), 1u);
  ASSERT_TRUE(on_agent.count("web-next"));
  EXPECT_EQ(on_agent["web-next"].placement().devices_size(), 1);
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 2u);
}

TEST_F(MorphProcessTest, HangingNewKernelRollsBack) {
  StartMorphAgent();
  StartController();
  StartWeb();
  std::ofstream(dir_ / "vmlinux-hangs", std::ios::binary) << std::string("\x7f" "ELF", 4)
                                                          << "mkfleet-emulator:hang-on-boot";
  ASSERT_EQ(Change((dir_ / "vmlinux-hangs").string(), "    morph: {timeout: 3s}\n"), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; })) << controller_->Log();
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("did not answer"));
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 1u);
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0);
}

TEST_F(MorphProcessTest, FailingAndTimedOutHooksRollBack) {
  StartMorphAgent();
  StartController();
  StartWeb("    morph: {timeout: 4s}\n");
  std::ofstream(data_ + "/fail-quiesce") << "";
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string(), "    morph: {timeout: 4s}\n"), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; })) << controller_->Log();
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("cannot quiesce"));
  fs::remove(data_ + "/fail-quiesce");
  // A hook that outlives the morph's timeout (and the guest's hook timeout, 10 s).
  std::ofstream(data_ + "/slow-quiesce") << "";
  std::string out;
  std::string id = Status("web").morph().id();
  ASSERT_EQ(Mkapply({"morph", "prepare", "instance", "web"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return Status("web").morph().id() != id && Phase() == v1::MORPH_ROLLED_BACK; }))
      << controller_->Log();
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("no answer within"));
  fs::remove(data_ + "/slow-quiesce");
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0);
}

TEST_F(MorphProcessTest, CorruptKmpFramesRollBack) {
  StartMorphAgent();
  StartController();
  StartWeb();
  // The new kernel's command line picks the hostile guest.
  std::string yaml = WebYaml((dir_ / "vmlinux-2").string());
  yaml.replace(yaml.find("mkfleet.guest=wl"), 16, "mkfleet.guest=bad");
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("web.yaml", yaml)}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; })) << controller_->Log();
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("the guest of web-next: corrupt KMP frame"));
  EXPECT_TRUE(agents_["node-a"].process->Running()) << "the agent must survive a bad frame";
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 1u);
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0);
}

TEST_F(MorphProcessTest, FailedValidationRollsBack) {
  StartMorphAgent();
  StartController();
  StartWeb();
  std::ofstream(data_ + "/fail-validate") << "";
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string()), 0);
  ASSERT_TRUE(Eventually([&] { return Phase() == v1::MORPH_ROLLED_BACK; })) << controller_->Log();
  EXPECT_THAT(Status("web").morph().reason(), ::testing::HasSubstr("validation failed: "));
  fs::remove(data_ + "/fail-validate");
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 1u);
  // `prepare` tries the held revision again, and now it goes through.
  std::string out;
  ASSERT_EQ(Mkapply({"morph", "prepare", "instance", "web", "--wait"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] { return Status("web").kernel() == "web-next"; }));
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 2u);
}

TEST_F(MorphProcessTest, NoSurgeRoomTouchesNothing) {
  StartMorphAgent();
  StartController();
  // 22 of the pool's 22 CPUs: no core is left for the new kernel.
  StartWeb("", 22);
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string(), "", 22), 0);
  ASSERT_TRUE(Eventually([&] {
    v1::InstanceStatus now = Status("web");
    for (const auto& c : now.conditions()) {
      if (c.type() == "Progressing" && c.reason() == "MorphNoSurge") return true;
    }
    return false;
  })) << controller_->Log();
  v1::InstanceStatus st = Status("web");
  EXPECT_EQ(st.kernel(), "web");
  EXPECT_EQ(st.provenance().kernel_path(), vmlinux_);
  EXPECT_FALSE(st.has_morph());
  ExpectOneOwner("web");
  EXPECT_EQ(StopsOf("web"), 0);
}

// The agent SIGKILLed as a morph enters each phase; restarted, it ends the morph COMMITTED
// or ROLLED_BACK with exactly one owner per device.
class MorphKillTest : public MorphProcessTest, public ::testing::WithParamInterface<const char*> {};

TEST_P(MorphKillTest, AgentKilledInAPhaseEndsTheMorph) {
  StartMorphAgent(GetParam());
  StartController();
  StartWeb();
  ASSERT_EQ(Change((dir_ / "vmlinux-2").string()), 0);
  ASSERT_TRUE(Eventually([&] { return !agents_["node-a"].process->Running(); }, 30))
      << "the agent was not killed in " << GetParam();
  EXPECT_THAT(agents_["node-a"].process->Log(), ::testing::HasSubstr(std::string("killed in morph phase ") + GetParam()));
  StartMorphAgent();
  ASSERT_TRUE(Eventually([&] { return Ended(); }, 60))
      << controller_->Log() << agents_["node-a"].process->Log();
  std::string serving = Status("web").kernel();
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 1; }));
  ExpectOneOwner(serving);
  EXPECT_EQ(serving, Phase() == v1::MORPH_COMMITTED ? "web-next" : "web");
  ASSERT_TRUE(CountsAgain()) << "nobody serves";
  CheckLog();
  if (Phase() == v1::MORPH_ROLLED_BACK) {
    EXPECT_EQ(StopsOf("web"), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Phases, MorphKillTest,
                         ::testing::Values("Preparing", "Negotiating", "Transferring", "Validating", "Committing"));

TEST_F(MorphProcessTest, SetMemberMorphs) {
  StartMorphAgent();
  StartController();
  auto set = [&](const std::string& image) {
    return Host() +
           "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata:\n  name: edge\nspec:\n  hostSelector: {}\n"
           "  replicas: 1\n  template:\n    spec:\n      kernel:\n        image: " + image +
           "\n        cmdline: \"mkfleet.guest=wl\"\n      resources: {cpus: 2, memory: 512Mi}\n"
           "      update: {strategy: Morph}\n";
  };
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("set.yaml", set(vmlinux_))}, &out), 0) << out;
  const std::string member = "edge-node-a-0";
  ASSERT_TRUE(Eventually([&] { return Status(member).phase() == "Running"; })) << controller_->Log();
  ASSERT_TRUE(Eventually([&] { return Counter() > 5; }));
  ASSERT_EQ(Mkapply({"apply", "-f", Write("set.yaml", set((dir_ / "vmlinux-2").string()))}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    v1::InstanceStatus st = Status(member);
    return st.morph().phase() == v1::MORPH_COMMITTED && st.phase() == "Running";
  })) << Status(member).DebugString() << [&] {
    std::string all;
    for (const auto& e : ControllerEvents()) all += e.name() + " " + e.reason() + " " + e.message() + "\n";
    return all;
  }();
  EXPECT_EQ(Status(member).kernel(), member + "-next");
  ASSERT_TRUE(CountsAgain());
  EXPECT_EQ(CheckLog().size(), 2u);
}

}  // namespace
}  // namespace mkfleet
