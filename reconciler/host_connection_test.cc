// HostConnection against a real Agent served in-process on a free loopback port.
#include "reconciler/host_connection.h"

#include <atomic>

#include "agents/testing/served_agent.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

// Polls `pred` on the connection's view for up to 20 s.
template <typename Pred>
bool Eventually(HostConnection& c, Pred pred) {
  for (int i = 0; i < 2000; ++i) {
    if (pred(c.View())) return true;
    absl::SleepFor(absl::Milliseconds(10));
  }
  return false;
}

class HostConnectionTest : public ::testing::Test {
 protected:
  std::string Address() const { return served_.Address(); }
  agents::ServedAgent served_{"hostconn", "node-a"};
  agents::TestHost& host_ = served_.host;
};

TEST_F(HostConnectionTest, InventoryThenWatchFollowsTheHost) {
  std::atomic<int> changes{0};
  HostConnectionOptions options;
  options.on_change = [&](const std::string& host) {
    EXPECT_EQ(host, "node-a");
    ++changes;
  };
  HostConnection conn("node-a", Address(), NewGrpcAgentClient(Address()), Clock::Real(), options);
  conn.Start();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return v.connected; })) << conn.View().error;
  HostView v = conn.View();
  EXPECT_TRUE(v.reachable);
  EXPECT_EQ(v.inventory.host(), "node-a");
  ASSERT_NE(v.topology, nullptr);
  EXPECT_EQ(v.topology->Summary(), host_.topology->Summary());
  EXPECT_TRUE(v.instances.empty());
  EXPECT_GT(v.pool.cpus_size(), 0);

  // An instance booted through the connection shows up in the view via the Watch stream.
  auto r = conn.Execute(agents::BootBatch("web-1", {2, 18}, host_.vmlinux));
  ASSERT_TRUE(r.ok()) << r.status();
  ASSERT_EQ(r->results_size(), 3);
  for (const auto& result : r->results()) EXPECT_EQ(result.code(), 0) << result.id() << ": " << result.message();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return v.instances.count("web-1") == 1; }))
      << "connected=" << conn.View().connected << " error=" << conn.View().error
      << " instances=" << conn.View().instances.size() << " rv=" << conn.View().resource_version;
  EXPECT_GT(conn.View().resource_version, v.resource_version);
  EXPECT_GE(changes.load(), 2);
  conn.Stop();
}

TEST_F(HostConnectionTest, AgentGoingAwayMakesTheHostUnreachableAfterTheGrace) {
  HostConnectionOptions options;
  options.unreachable_after = absl::Milliseconds(300);
  HostConnection conn("node-a", Address(), NewGrpcAgentClient(Address()), Clock::Real(), options);
  conn.Start();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return v.connected; })) << conn.View().error;
  served_.StopServing();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return !v.connected; }));
  // Down, but still inside the grace period right after the break.
  HostView down = conn.View();
  EXPECT_FALSE(down.error.empty());
  EXPECT_THAT(down.error, HasSubstr("agent " + Address()));
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return !v.reachable; }));
  EXPECT_EQ(conn.Execute(v1::ActionBatch()).status().code(), absl::StatusCode::kUnavailable);
  conn.Stop();
}

TEST(HostConnectionNoAgentTest, NothingListeningIsReportedAndStopIsPrompt) {
  HostConnectionOptions options;
  options.unreachable_after = absl::ZeroDuration();
  // Port 1 on loopback: nothing listens there on a test machine.
  HostConnection conn("node-z", "127.0.0.1:1", NewGrpcAgentClient("127.0.0.1:1"), Clock::Real(), options);
  conn.Start();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return v.error.find("127.0.0.1:1") != std::string::npos; }));
  HostView v = conn.View();
  EXPECT_FALSE(v.connected);
  EXPECT_FALSE(v.reachable);
  absl::Time before = absl::Now();
  conn.Stop();
  EXPECT_LT(absl::Now() - before, absl::Seconds(5));
}

}  // namespace
}  // namespace mkfleet::reconciler
