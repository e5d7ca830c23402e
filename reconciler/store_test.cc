#include "reconciler/store.h"

#include <filesystem>
#include <thread>

#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

using ::testing::ElementsAre;

class StoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/store-" + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
    store_ = *OpenSqliteStore(path_, clock_);
  }
  std::string path_;
  SimulatedClock clock_;
  std::unique_ptr<Store> store_;
};

TEST_F(StoreTest, PutGetListAndRevisions) {
  EXPECT_EQ(*store_->Revision(), 0);
  EXPECT_EQ(*store_->Put("/instances/web-1", "a"), 1);
  EXPECT_EQ(*store_->Put("/instances/web-2", "b"), 2);
  EXPECT_EQ(*store_->Put("/hosts/node-a", "h"), 3);
  EXPECT_EQ(*store_->Put("/instances/web-1", "a2"), 4);
  auto kv = *store_->Get("/instances/web-1");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->value, "a2");
  EXPECT_EQ(kv->create_revision, 1);
  EXPECT_EQ(kv->mod_revision, 4);
  auto list = *store_->List("/instances/");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].key, "/instances/web-1");
  EXPECT_EQ(list[1].key, "/instances/web-2");
  EXPECT_FALSE(store_->Get("/nope")->has_value());
  EXPECT_EQ(*store_->Delete("/instances/web-2"), 5);
  EXPECT_EQ(store_->Delete("/instances/web-2").status().code(), absl::StatusCode::kNotFound);
  // Binary values survive.
  std::string bin("a\0b\xff", 4);
  ASSERT_TRUE(store_->Put("/bin", bin).ok());
  EXPECT_EQ((*store_->Get("/bin"))->value, bin);
}

TEST_F(StoreTest, CompareAndSwap) {
  ASSERT_TRUE(store_->Put("/x", "1").ok());
  auto kv = *store_->Get("/x");
  EXPECT_TRUE(store_->Txn({{"/x", kv->mod_revision}}, {{Op::Type::kPut, "/x", "2", 0}}).ok());
  absl::Status stale = store_->Txn({{"/x", kv->mod_revision}}, {{Op::Type::kPut, "/x", "3", 0}}).status();
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(stale.message(), "store: /x is at revision 2, expected 1");
  EXPECT_EQ((*store_->Get("/x"))->value, "2");
  // Create only if absent.
  EXPECT_EQ(store_->Txn({{"/x", 0}}, {{Op::Type::kPut, "/x", "new", 0}}).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(store_->Txn({{"/y", 0}}, {{Op::Type::kPut, "/y", "new", 0}}).ok());
}

TEST_F(StoreTest, TransactionsAreAllOrNothing) {
  ASSERT_TRUE(store_->Put("/a", "1").ok());
  int64_t rev = *store_->Revision();
  absl::Status s = store_->Txn({{"/a", 1}, {"/b", 99}},
                               {{Op::Type::kPut, "/a", "2", 0}, {Op::Type::kPut, "/c", "3", 0}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(*store_->Revision(), rev);
  EXPECT_FALSE(store_->Get("/c")->has_value());
  auto r = store_->Txn({{"/a", 1}}, {{Op::Type::kPut, "/a", "2", 0}, {Op::Type::kPut, "/c", "3", 0}, {Op::Type::kDelete, "/a", "", 0}});
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, rev + 1);  // one revision for the whole transaction
  auto events = *store_->EventsSince(rev, "/");
  ASSERT_EQ(events.size(), 3u);
  EXPECT_EQ(events[0].key, "/a");
  EXPECT_EQ(events[1].key, "/c");
  EXPECT_EQ(events[2].type, Event::Type::kDelete);
  for (const auto& e : events) EXPECT_EQ(e.revision, rev + 1);
}

TEST_F(StoreTest, WatchHistoryInOrderWithPrefixAndCompaction) {
  ASSERT_TRUE(store_->Put("/i/a", "1").ok());  // 1
  ASSERT_TRUE(store_->Put("/h/x", "2").ok());  // 2
  ASSERT_TRUE(store_->Put("/i/b", "3").ok());  // 3
  ASSERT_TRUE(store_->Delete("/i/a").ok());    // 4
  auto events = *store_->EventsSince(1, "/i/");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].revision, 3);
  EXPECT_EQ(events[1].revision, 4);
  EXPECT_EQ(events[1].type, Event::Type::kDelete);
  ASSERT_TRUE(store_->Compact(2).ok());
  EXPECT_EQ(store_->EventsSince(1, "/").status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store_->EventsSince(2, "/")->size(), 2u);
}

TEST_F(StoreTest, SurvivesReopen) {
  ASSERT_TRUE(store_->Put("/k", "v").ok());
  ASSERT_TRUE(store_->Put("/k2", "v2").ok());
  store_.reset();
  auto again = OpenSqliteStore(path_, clock_);
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(*(*again)->Revision(), 2);
  EXPECT_EQ((*(*again)->Get("/k2"))->value, "v2");
  EXPECT_EQ(*(*again)->Put("/k3", "v3"), 3);
}

TEST_F(StoreTest, LeasesExpireTheirKeys) {
  int64_t lease = *store_->GrantLease(absl::Seconds(10));
  ASSERT_TRUE(store_->Put("/leader", "me", lease).ok());
  ASSERT_TRUE(store_->Put("/other", "x").ok());
  clock_.Advance(absl::Seconds(6));
  EXPECT_TRUE(store_->KeepAlive(lease).ok());
  clock_.Advance(absl::Seconds(6));
  EXPECT_EQ(*store_->ExpireLeases(), 0);  // kept alive
  EXPECT_TRUE(store_->Get("/leader")->has_value());
  clock_.Advance(absl::Seconds(11));
  EXPECT_EQ(*store_->ExpireLeases(), 1);
  EXPECT_FALSE(store_->Get("/leader")->has_value());
  EXPECT_TRUE(store_->Get("/other")->has_value());
  EXPECT_EQ(store_->KeepAlive(lease).code(), absl::StatusCode::kNotFound);
}

TEST_F(StoreTest, ConcurrentCompareAndSwapLosesNoUpdate) {
  ASSERT_TRUE(store_->Put("/counter", "0").ok());
  auto bump = [&] {
    for (int i = 0; i < 100; ++i) {
      while (true) {
        auto kv = *store_->Get("/counter");
        int n = std::stoi(kv->value);
        if (store_->Txn({{"/counter", kv->mod_revision}}, {{Op::Type::kPut, "/counter", std::to_string(n + 1), 0}}).ok()) break;
      }
    }
  };
  std::thread a(bump), b(bump);
  a.join();
  b.join();
  EXPECT_EQ((*store_->Get("/counter"))->value, "200");
}

TEST_F(StoreTest, TransactionsLargerThanSixtyFiveThousandOps) {
  // A pass writes every status of a large fleet in one transaction.
  std::vector<Op> ops;
  for (int i = 0; i < 70000; ++i) ops.push_back({Op::Type::kPut, "/status/x" + std::to_string(i), "v", 0});
  auto rev = store_->Txn({}, ops);
  ASSERT_TRUE(rev.ok()) << rev.status();
  ASSERT_TRUE(store_->Put("/after", "a").ok());
  auto events = store_->EventsSince(0, "/");
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 70001u);
  // In revision order, the transaction's changes in its order, all at one revision.
  EXPECT_EQ((*events)[0].key, "/status/x0");
  EXPECT_EQ((*events)[69999].key, "/status/x69999");
  EXPECT_EQ((*events)[69999].revision, *rev);
  EXPECT_EQ((*events)[70000].key, "/after");
  EXPECT_EQ((*events)[70000].revision, *rev + 1);
  auto since = store_->EventsSince(*rev, "/");
  ASSERT_EQ(since->size(), 1u);
  EXPECT_EQ((*since)[0].key, "/after");
}

TEST_F(StoreTest, CompactionKeepsTheFileBoundedUnderSteadyWrites) {
  // The same few keys rewritten forever (statuses of a steady fleet): with history
  // compacted to a window, the file stops growing.
  std::string value(2000, 'x');
  auto write_round = [&] {
    std::vector<Op> ops;
    for (int k = 0; k < 50; ++k) ops.push_back({Op::Type::kPut, "/status/k" + std::to_string(k), value, 0});
    return store_->Txn({}, ops);
  };
  for (int i = 0; i < 200; ++i) ASSERT_TRUE(write_round().ok());
  auto keep_window = [&] {
    int64_t rev = *store_->Revision();
    ASSERT_TRUE(store_->Compact(rev - 10).ok());
  };
  keep_window();
  int64_t size_after_first = *store_->SizeBytes();
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < 200; ++i) ASSERT_TRUE(write_round().ok());
    keep_window();
  }
  int64_t size_after_more = *store_->SizeBytes();
  EXPECT_LE(size_after_more, size_after_first * 12 / 10) << size_after_first << " -> " << size_after_more;
  EXPECT_EQ(store_->EventsSince(0, "/").status().code(), absl::StatusCode::kOutOfRange);
}

TEST_F(StoreTest, OpensAStoreOfTheFirstHistoryFormat) {
  store_.reset();
  for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
  {
    // What the first version wrote: history rows numbered revision * 65536 + position.
    std::string sql =
        "sqlite3 '" + path_ +
        "' \"CREATE TABLE kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL, "
        "mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0); CREATE TABLE history (rev INTEGER PRIMARY KEY, "
        "key TEXT NOT NULL, value BLOB, deleted INTEGER NOT NULL); CREATE TABLE meta (name TEXT PRIMARY KEY, value "
        "INTEGER NOT NULL); CREATE TABLE leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL, "
        "expires_ms INTEGER NOT NULL); INSERT INTO meta VALUES ('revision', 2), ('compacted', 0); INSERT INTO kv "
        "VALUES ('/a', 'A', 1, 1, 0), ('/b', 'B', 2, 2, 0); INSERT INTO history VALUES (65536, '/a', 'A', 0), "
        "(131072, '/b', 'B', 0), (131073, '/c', NULL, 1);\"";
    if (system(sql.c_str()) != 0) GTEST_SKIP() << "no sqlite3 command";
  }
  auto opened = OpenSqliteStore(path_, clock_);
  ASSERT_TRUE(opened.ok()) << opened.status();
  store_ = *std::move(opened);
  auto events = store_->EventsSince(0, "/");
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 3u);
  EXPECT_EQ((*events)[1].revision, 2);
  EXPECT_EQ((*events)[2].key, "/c");
  EXPECT_EQ((*events)[2].type, Event::Type::kDelete);
  EXPECT_EQ(*store_->Put("/d", "D"), 3);
}

}  // namespace
}  // namespace mkfleet::reconciler
