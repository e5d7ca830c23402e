// Prometheus metrics of the real daemons (mkcontroller, mkagent with --metrics-listen) on
// loopback: both scrapes pass `promtool check metrics`, and their values follow known
// actions (one instance booted, one injected panic restarted by the agent's watchdog).
#include <optional>
#include <string>

#include "common/testing/scrape.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/fleet_fixture.h"

namespace mkfleet {
namespace {

using testing::HttpGet;
using testing::Promtool;
using testing::SeriesValue;

using MetricsProcessTest = ProcessFleetTest;

TEST_F(MetricsProcessTest, BothDaemonsServeMetricsThatFollowWhatHappened) {
  agent_flags_ = controller_flags_ = {"--metrics-listen", "127.0.0.1:0"};
  StartAgent("node-a", "0ms");
  const int agent_metrics = std::stoi(agents_["node-a"].process->WaitFor("metrics on port ([0-9]+)"));
  StartController();
  const int controller_metrics = std::stoi(controller_->WaitFor("metrics on port ([0-9]+)"));
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", Write("a.yaml", HostYaml("node-a") + InstanceYaml("a-1", "node-a"))}, &out), 0)
      << out;
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();

  // The gauge of phases moves once the pass that wrote the status has counted it, a moment
  // after `get` can read the status (a scrape in between failed this test once).
  std::string text;
  EXPECT_TRUE(Eventually([&] {
    text = HttpGet(controller_metrics);
    return SeriesValue(text, "mkfleet_instances{phase=\"Running\"}") == 1.0;
  })) << text;
  auto [rc, said] = Promtool(text, dir_.string());
  EXPECT_EQ(rc, 0) << said << "\n" << text;
  // The controller: one instance booted is a create and a start sent (once, or twice when
  // a pass planned from a view that did not show them done yet), and done as often.
  for (const char* type : {"create", "start"}) {
    const std::string quoted = std::string("{type=\"") + type + "\"}";
    const double sent = SeriesValue(text, "mkfleet_actions_sent_total" + quoted).value_or(0);
    EXPECT_GE(sent, 1) << text;
    EXPECT_LE(sent, 2) << text;
    // (A response may still be on its way when the agent's report shows Running.)
    EXPECT_TRUE(Eventually([&] {
      const std::string now = HttpGet(controller_metrics);
      return SeriesValue(now, "mkfleet_actions_done_total" + quoted) ==
             SeriesValue(now, "mkfleet_actions_sent_total" + quoted);
    })) << HttpGet(controller_metrics);
  }
  EXPECT_EQ(SeriesValue(text, "mkfleet_actions_failed_total{type=\"start\"}"), std::nullopt) << text;
  EXPECT_EQ(SeriesValue(text, "mkfleet_hosts{state=\"connected\"}"), 1.0) << text;
  EXPECT_EQ(SeriesValue(text, "mkfleet_instances{phase=\"Running\"}"), 1.0) << text;
  EXPECT_GE(SeriesValue(text, "mkfleet_reconcile_pass_duration_seconds_count{kind=\"whole\"}").value_or(0), 1) << text;
  EXPECT_GE(SeriesValue(text, "mkfleet_store_operation_duration_seconds_count{op=\"txn\"}").value_or(0), 1) << text;
  // mkapply's apply reached the controller's gRPC server, and was counted.
  EXPECT_GE(SeriesValue(text, "mkfleet_grpc_server_handled_total{code=\"OK\",method=\"Apply\",service=\"mkfleet.v1."
                              "Controller\"}")
                .value_or(0),
            1)
      << text;

  // The agent: one panic, restarted in place by its watchdog (the default policy): one
  // restart, no failover.
  text = HttpGet(agent_metrics);
  EXPECT_EQ(SeriesValue(text, "mkfleet_agent_restarts_total"), std::nullopt) << text;  // none yet
  ASSERT_EQ(Mkfault("node-a", {"panic", "--instance", "a-1"}, &out), 0) << out;
  ASSERT_TRUE(Eventually([&] {
    return SeriesValue(HttpGet(agent_metrics), "mkfleet_agent_restarts_total").value_or(0) >= 1;
  })) << HttpGet(agent_metrics);
  ASSERT_TRUE(Eventually([&] { return AllRunning({"a-1"}); })) << controller_->Log();
  text = HttpGet(agent_metrics);
  std::tie(rc, said) = Promtool(text, dir_.string());
  EXPECT_EQ(rc, 0) << said << "\n" << text;
  EXPECT_EQ(SeriesValue(text, "mkfleet_agent_restarts_total"), 1.0) << text;
  EXPECT_EQ(SeriesValue(text, "mkfleet_agent_restart_latency_seconds_count"), 1.0) << text;
  EXPECT_EQ(SeriesValue(text, "mkfleet_agent_failovers_total"), 0.0) << text;
  EXPECT_GE(SeriesValue(text, "mkfleet_grpc_server_handled_total{code=\"OK\",method=\"Execute\",service=\"mkfleet.v1."
                              "Agent\"}")
                .value_or(0),
            1)
      << text;
}

}  // namespace
}  // namespace mkfleet
