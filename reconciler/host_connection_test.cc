// HostConnection against a real Agent served in-process on a free loopback port.
#include "reconciler/host_connection.h"

#include <atomic>

#include "agents/agent_service.h"
#include "agents/liveness.h"
#include "agents/testing/agent_fixture.h"
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
  void SetUp() override {
    probe_ = agents::NewEmulatorProbe(*host_.emu);
    agents::AgentOptions o;
    o.host = "node-a";
    // The watchdog (Start) publishes what the kernel runs every poll interval.
    agent_ = std::make_unique<agents::Agent>(o, *host_.hk, host_.topology, *host_.journal, *probe_, Clock::Real());
    agent_->Start();
    service_ = std::make_unique<agents::AgentService>(*agent_, host_.emu.get(), false);
    server_ = agents::StartAgentServer(*service_, "127.0.0.1:0", &port_);
    ASSERT_NE(server_, nullptr);
  }
  void TearDown() override {
    if (server_) server_->Shutdown(std::chrono::system_clock::now() + std::chrono::seconds(1));
    agent_->Stop();
  }
  std::string Address() const { return "127.0.0.1:" + std::to_string(port_); }

  agents::TestHost host_{"hostconn"};
  std::unique_ptr<agents::LivenessProbe> probe_;
  std::unique_ptr<agents::Agent> agent_;
  std::unique_ptr<agents::AgentService> service_;
  std::unique_ptr<grpc::Server> server_;
  int port_ = 0;
};

TEST_F(HostConnectionTest, InventoryThenWatchFollowsTheHost) {
  std::atomic<int> changes{0};
  HostConnectionOptions options;
  options.on_change = [&](const std::string& host) {
    EXPECT_EQ(host, "node-a");
    ++changes;
  };
  HostConnection conn("node-a", Address(), Clock::Real(), options);
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
  HostConnection conn("node-a", Address(), Clock::Real(), options);
  conn.Start();
  ASSERT_TRUE(Eventually(conn, [](const HostView& v) { return v.connected; })) << conn.View().error;
  server_->Shutdown(std::chrono::system_clock::now() + std::chrono::milliseconds(100));
  server_.reset();
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
  HostConnection conn("node-z", "127.0.0.1:1", Clock::Real(), options);
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
