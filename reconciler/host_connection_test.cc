// HostConnection against a real Agent served in-process on a free loopback port.
#include "reconciler/host_connection.h"

#include <atomic>

#include "absl/strings/str_cat.h"

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
  // Views are copied every pass, for every host: the inventory is kept without what the
  // view has in another form (the topology parsed, the pool from the stream).
  EXPECT_FALSE(v.inventory.has_topology());
  EXPECT_FALSE(v.inventory.has_pool());

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

// The same on a pool of two threads (mkcontroller): no thread of its own, woken by its
// stream; several connections, one of them to nothing (its retries come by the pool's timer).
TEST_F(HostConnectionTest, APoolDrivesConnectionsWithoutAThreadEach) {
  std::atomic<int> changes{0};
  HostConnectionOptions options;
  options.on_change = [&](const std::string&) { ++changes; };
  auto pool = std::make_unique<ConnectionPool>(Clock::Real(), 2);
  auto conn = std::make_shared<HostConnection>("node-a", Address(), NewGrpcAgentClient(Address()), Clock::Real(),
                                               options);
  auto second = std::make_shared<HostConnection>("node-a", Address(), NewGrpcAgentClient(Address()), Clock::Real(),
                                                 options);
  HostConnectionOptions nothing;
  nothing.unreachable_after = absl::ZeroDuration();
  auto dead = std::make_shared<HostConnection>("node-z", "127.0.0.1:1", NewGrpcAgentClient("127.0.0.1:1"),
                                               Clock::Real(), nothing);
  pool->Add(conn);
  pool->Add(second);
  pool->Add(dead);
  ASSERT_TRUE(Eventually(*conn, [](const HostView& v) { return v.connected; })) << conn->View().error;
  ASSERT_TRUE(Eventually(*second, [](const HostView& v) { return v.connected; })) << second->View().error;
  auto r = conn->Execute(agents::BootBatch("web-1", {2, 18}, host_.vmlinux));
  ASSERT_TRUE(r.ok()) << r.status();
  for (auto* c : {conn.get(), second.get()}) {
    ASSERT_TRUE(Eventually(*c, [](const HostView& v) { return v.instances.count("web-1") == 1; }));
  }
  // The dead one was tried again and again (its backoff grows: 100 ms, 200 ms, ...).
  ASSERT_TRUE(Eventually(*dead, [](const HostView& v) { return v.error.find("127.0.0.1:1") != std::string::npos; }));
  EXPECT_FALSE(dead->View().reachable);
  ASSERT_TRUE(dead->RetryAt().has_value());
  // The agent goes away: the connections see it, and reconnect once it is back.
  served_.StopServing();
  ASSERT_TRUE(Eventually(*conn, [](const HostView& v) { return !v.connected; }));
  for (auto* c : {conn.get(), second.get(), dead.get()}) {
    c->Cancel();
    c->Stop();
  }
  conn.reset();
  second.reset();
  dead.reset();
  absl::Time before = absl::Now();
  pool.reset();
  EXPECT_LT(absl::Now() - before, absl::Seconds(2));
  EXPECT_GE(changes.load(), 4);
}

// An agent that takes its time to answer Inventory (a TLS handshake on a busy machine), and
// then is not there.
class SlowAgentClient final : public AgentClient {
 public:
  explicit SlowAgentClient(std::atomic<int>* calls) : calls_(calls) {}
  absl::StatusOr<v1::InventoryResponse> Inventory(absl::Duration) override {
    absl::SleepFor(absl::Milliseconds(20));
    ++*calls_;
    return absl::UnavailableError("slow agent: not there");
  }
  std::unique_ptr<WatchStream> Watch(const v1::WatchRequest&) override { return nullptr; }
  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ActionBatch&, absl::Duration) override {
    return absl::UnavailableError("slow agent: not there");
  }
  absl::Status SetPolicy(const v1::SetPolicyRequest&, absl::Duration) override {
    return absl::UnavailableError("slow agent: not there");
  }

 private:
  std::atomic<int>* calls_;
};

// A controller starting before thousands of agents connects to all of them through a few
// threads. What a connected host's stream brings goes before the connects still waiting:
// else no host counts as connected (and none is reconciled) until every connect was tried.
TEST_F(HostConnectionTest, APoolFoldsAConnectedHostsStreamBeforeConnectingTheOthers) {
  std::atomic<int> slow_calls{0};
  std::atomic<int> calls_when_connected{-1};
  auto pool = std::make_unique<ConnectionPool>(Clock::Real(), 1);
  HostConnectionOptions options;
  std::atomic<HostConnection*> watched{nullptr};
  options.on_change = [&](const std::string&) {
    HostConnection* c = watched.load();
    if (calls_when_connected.load() < 0 && c != nullptr && c->View().connected) calls_when_connected = slow_calls.load();
  };
  auto conn = std::make_shared<HostConnection>("node-a", Address(), NewGrpcAgentClient(Address()), Clock::Real(),
                                               options);
  watched = conn.get();
  std::vector<std::shared_ptr<HostConnection>> slow;
  for (int i = 0; i < 40; ++i) {
    slow.push_back(std::make_shared<HostConnection>(absl::StrCat("slow-", i), "slow:0",
                                                    std::make_unique<SlowAgentClient>(&slow_calls), Clock::Real()));
  }
  pool->Add(conn);
  for (auto& s : slow) pool->Add(s);
  ASSERT_TRUE(Eventually(*conn, [](const HostView& v) { return v.connected; })) << conn->View().error;
  for (int i = 0; i < 500 && calls_when_connected.load() < 0; ++i) absl::SleepFor(absl::Milliseconds(10));
  // Its stream's first message came while the others were still waiting to be tried.
  EXPECT_GE(calls_when_connected.load(), 0);
  EXPECT_LE(calls_when_connected.load(), 5) << "of 40 slow connects tried before the connected host was folded";
  for (auto& c : slow) c->Cancel();
  conn->Cancel();
  for (auto& c : slow) c->Stop();
  conn->Stop();
  slow.clear();
  conn.reset();
  pool.reset();
}

}  // namespace
}  // namespace mkfleet::reconciler

namespace mkfleet::reconciler {
namespace {

// HostView::instances is shared between a view and its copies (every pass copies every
// host's view) until one of them changes: a change must never show in another copy.
TEST(CowMapTest, CopiesShareTheMapUntilOneOfThemChangesIt) {
  CowMap<std::string, int> a;
  a["x"] = 1;
  CowMap<std::string, int> b = a;
  EXPECT_EQ(&*a.find("x"), &*b.find("x"));  // one map, not a copy per view
  b["x"] = 2;
  b["y"] = 3;
  EXPECT_EQ(a.at("x"), 1);
  EXPECT_EQ(a.count("y"), 0u);
  EXPECT_EQ(b.at("x"), 2);
  CowMap<std::string, int> c = b;
  EXPECT_EQ(c.erase("x"), 1u);
  EXPECT_EQ(b.count("x"), 1u);
  c.clear();
  EXPECT_EQ(b.size(), 2u);
  EXPECT_TRUE(c.empty());
  // The only holder changes its map in place.
  CowMap<std::string, int> d;
  d["k"] = 1;
  const int* before = &d.at("k");
  d["k"] = 5;
  EXPECT_EQ(&d.at("k"), before);
}

}  // namespace
}  // namespace mkfleet::reconciler
