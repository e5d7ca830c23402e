// The web console in a real browser: a fleet of two emulated hosts and mkcontroller --http
// on loopback, and tests/console_browser.py driving headless Chromium through WebDriver
// (the fleet page lists the hosts, the host page's picture has one PU shape per CPU and
// web-1's in its colour, an injected panic shows as a standby takeover on web-1's page within
// 2 s without a reload, no browser error). Screenshots go to the test's outputs.
#include <cstdlib>
#include <iostream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/topology_source.h"
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

using ConsoleBrowserTest = ProcessFleetTest;

TEST_F(ConsoleBrowserTest, PagesShowTheFleetAndFollowATakeoverLive) {
  controller_flags_ = {"--http", "127.0.0.1:0"};
  StartAgent("node-a");
  StartAgent("node-b");
  StartController();
  const std::string console = controller_->WaitFor("console on port ([0-9]+)");
  ASSERT_FALSE(console.empty()) << controller_->Log();
  const std::string web =
      "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: web-1\nspec:\n  host: node-a\n"
      "  kernel:\n    image: " + vmlinux_ + "\n    cmdline: \"console=mktty0\"\n  resources:\n    cpus: 4\n"
      "    memory: 512Mi\n  failover:\n    policy: Standby\n    heartbeat: {interval: 100ms, misses: 3}\n"
      "    standby: {cpus: 2, memory: 512Mi}\n---\n";
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("fleet.yaml", HostYaml("node-a") + HostYaml("node-b") + web +
                                                            InstanceYaml("db-1", "node-b"))},
                    &out),
            0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"web-1", "db-1"}) && Status("web-1").role() == "primary"; }))
      << controller_->Log();
  ASSERT_TRUE(Eventually([&] { return OnAgent("node-a").size() == 2; })) << controller_->Log();  // and its standby

  auto topology = planner::NewSyntheticTopologySource(kTopology)->Load();
  ASSERT_TRUE(topology.ok());
  const char* outputs = std::getenv("TEST_UNDECLARED_OUTPUTS_DIR");
  std::vector<std::string> argv = {"/usr/bin/python3", "tests/console_browser.py",
                                   "--url", "http://127.0.0.1:" + console,
                                   "--hosts", "node-a,node-b", "--host", "node-a",
                                   "--pus", std::to_string(topology->pu_count()),
                                   "--instance", "web-1", "--within", "2",
                                   "--out", outputs != nullptr ? outputs : (dir_ / "browser").string(),
                                   "--panic", "agents/mkfault", "panic", "--instance", "web-1",
                                   "--agent", "127.0.0.1:" + std::to_string(agents_["node-a"].port),
                                   "--host", "node-a", "--tls-dir", pki_->controller()};
  const int rc = Run(argv, &out);
  std::cout << out;  // what the browser saw, and how long the takeover took to show
  EXPECT_EQ(rc, 0) << out << "\n--- controller:\n" << controller_->Log();
  EXPECT_THAT(out, ::testing::HasSubstr("all browser checks passed")) << out;
}

}  // namespace
}  // namespace mkfleet
