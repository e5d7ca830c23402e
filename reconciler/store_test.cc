// The Store contract (store.h), run against every backend: SQLite, and a real etcd
// (Debian's etcd-server) started on loopback ports for the suite, each test under its own
// key prefix. Revisions are counted from the store's revision when the test starts (etcd's
// are global to the cluster). Then what only one backend has.
#include "reconciler/store.h"

#include <filesystem>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/testing/simulated_clock.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/etcd_store.h"
#include "tests/etcd_cluster.h"

namespace mkfleet::reconciler {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

class StoreTest : public ::testing::TestWithParam<std::string> {
 protected:
  static void SetUpTestSuite() {
    if (testing::EtcdCluster::Available()) etcd_ = new testing::EtcdCluster(::testing::TempDir() + "/etcd-contract");
  }
  static void TearDownTestSuite() {
    delete etcd_;
    etcd_ = nullptr;
  }

  void SetUp() override {
    const std::string test = ::testing::UnitTest::GetInstance()->current_test_info()->name();
    name_ = test.substr(0, test.find('/'));
    if (etcd()) {
      // scripts/setup installs etcd-server: its absence is a failure, not a skip.
      ASSERT_TRUE(etcd_ != nullptr) << "no " << testing::EtcdCluster::kBinary << " (run scripts/setup)";
      ASSERT_TRUE(etcd_->ok()) << etcd_->Log(0);
    } else {
      path_ = ::testing::TempDir() + "/store-" + name_ + ".db";
      for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
    }
    Open();
    base_ = *store_->Revision();
  }

  bool etcd() const { return GetParam() == "etcd"; }
  void Open() {
    store_.reset();
    if (etcd()) {
      EtcdStoreOptions o;
      o.endpoints = etcd_->endpoints();
      o.prefix = "/contract/" + name_;
      auto s = OpenEtcdStore(o);
      ASSERT_TRUE(s.ok()) << s.status();
      store_ = *std::move(s);
    } else {
      store_ = *OpenSqliteStore(path_, clock_);
    }
  }
  // Lets `d` pass for leases: the simulated clock for SQLite, real time for etcd.
  void Pass(absl::Duration d) {
    if (etcd()) {
      absl::SleepFor(d);
    } else {
      clock_.Advance(d);
    }
  }

  static testing::EtcdCluster* etcd_;
  std::string name_;
  std::string path_;
  SimulatedClock clock_;
  std::unique_ptr<Store> store_;
  int64_t base_ = 0;
};

testing::EtcdCluster* StoreTest::etcd_ = nullptr;

TEST_P(StoreTest, PutGetListAndRevisions) {
  const int64_t b = base_;
  EXPECT_EQ(*store_->Put("/instances/web-1", "a"), b + 1);
  EXPECT_EQ(*store_->Put("/instances/web-2", "b"), b + 2);
  EXPECT_EQ(*store_->Put("/hosts/node-a", "h"), b + 3);
  EXPECT_EQ(*store_->Put("/instances/web-1", "a2"), b + 4);
  EXPECT_EQ(*store_->Revision(), b + 4);
  auto kv = *store_->Get("/instances/web-1");
  ASSERT_TRUE(kv.has_value());
  EXPECT_EQ(kv->key, "/instances/web-1");
  EXPECT_EQ(kv->value, "a2");
  EXPECT_EQ(kv->create_revision, b + 1);
  EXPECT_EQ(kv->mod_revision, b + 4);
  auto list = *store_->List("/instances/");
  ASSERT_EQ(list.size(), 2u);
  EXPECT_EQ(list[0].key, "/instances/web-1");
  EXPECT_EQ(list[1].key, "/instances/web-2");
  EXPECT_EQ(store_->List("/")->size(), 3u);
  EXPECT_FALSE(store_->Get("/nope")->has_value());
  EXPECT_EQ(*store_->Delete("/instances/web-2"), b + 5);
  EXPECT_EQ(store_->Delete("/instances/web-2").status().code(), absl::StatusCode::kNotFound);
  // Binary values survive.
  std::string bin("a\0b\xff", 4);
  ASSERT_TRUE(store_->Put("/bin", bin).ok());
  EXPECT_EQ((*store_->Get("/bin"))->value, bin);
}

TEST_P(StoreTest, ListsManyKeysInOrder) {
  // More keys than one etcd page (2,000), written in chunks.
  std::vector<Op> ops;
  for (int i = 0; i < 4500; ++i) ops.push_back({Op::Type::kPut, absl::StrFormat("/many/k%05d", i), "v", 0});
  ASSERT_TRUE(store_->Txn({}, ops).ok());
  ASSERT_TRUE(store_->Put("/manz", "outside").ok());
  auto list = *store_->List("/many/");
  ASSERT_EQ(list.size(), 4500u);
  for (int i = 0; i < 4500; ++i) ASSERT_EQ(list[i].key, absl::StrFormat("/many/k%05d", i));
}

TEST_P(StoreTest, CompareAndSwap) {
  ASSERT_TRUE(store_->Put("/x", "1").ok());
  auto kv = *store_->Get("/x");
  auto second = store_->Txn({{"/x", kv->mod_revision}}, {{Op::Type::kPut, "/x", "2", 0}});
  ASSERT_TRUE(second.ok());
  absl::Status stale = store_->Txn({{"/x", kv->mod_revision}}, {{Op::Type::kPut, "/x", "3", 0}}).status();
  EXPECT_EQ(stale.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(stale.message(), absl::StrCat("store: /x is at revision ", *second, ", expected ", kv->mod_revision));
  EXPECT_EQ((*store_->Get("/x"))->value, "2");
  // Create only if absent.
  EXPECT_EQ(store_->Txn({{"/x", 0}}, {{Op::Type::kPut, "/x", "new", 0}}).status().code(), absl::StatusCode::kAborted);
  EXPECT_TRUE(store_->Txn({{"/y", 0}}, {{Op::Type::kPut, "/y", "new", 0}}).ok());
  // The second compare is the one named.
  absl::Status second_fails = store_->Txn({{"/y", (*store_->Get("/y"))->mod_revision}, {"/z", 7}}, {}).status();
  EXPECT_EQ(second_fails.message(), "store: /z is at revision 0, expected 7");
}

TEST_P(StoreTest, TransactionsAreAllOrNothing) {
  ASSERT_TRUE(store_->Put("/a", "1").ok());
  int64_t rev = *store_->Revision();
  absl::Status s = store_->Txn({{"/a", rev}, {"/b", 99}},
                               {{Op::Type::kPut, "/a", "2", 0}, {Op::Type::kPut, "/c", "3", 0}}).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(*store_->Revision(), rev);
  EXPECT_FALSE(store_->Get("/c")->has_value());
  // A key written twice keeps its last op.
  auto r = store_->Txn({{"/a", rev}}, {{Op::Type::kPut, "/a", "2", 0}, {Op::Type::kPut, "/c", "3", 0},
                                       {Op::Type::kDelete, "/a", "", 0}, {Op::Type::kDelete, "/absent", "", 0}});
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, rev + 1);  // one revision for the whole transaction
  EXPECT_FALSE(store_->Get("/a")->has_value());
  auto events = *store_->EventsSince(rev, "/");
  ASSERT_EQ(events.size(), 2u);  // no event for the absent key
  EXPECT_EQ(events[0].key, "/a");
  EXPECT_EQ(events[0].type, Event::Type::kDelete);
  EXPECT_EQ(events[1].key, "/c");
  for (const auto& e : events) EXPECT_EQ(e.revision, rev + 1);
  // Nothing to write: no revision.
  EXPECT_EQ(*store_->Txn({}, {}), rev + 1);
  EXPECT_EQ(*store_->Revision(), rev + 1);
}

TEST_P(StoreTest, WatchHistoryInOrderWithPrefixAndCompaction) {
  const int64_t b = base_;
  ASSERT_TRUE(store_->Put("/i/a", "1").ok());  // b+1
  ASSERT_TRUE(store_->Put("/h/x", "2").ok());  // b+2
  ASSERT_TRUE(store_->Put("/i/b", "3").ok());  // b+3
  ASSERT_TRUE(store_->Delete("/i/a").ok());    // b+4
  auto events = *store_->EventsSince(b + 1, "/i/");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[0].revision, b + 3);
  EXPECT_EQ(events[0].value, "3");
  EXPECT_EQ(events[1].revision, b + 4);
  EXPECT_EQ(events[1].type, Event::Type::kDelete);
  EXPECT_TRUE(store_->EventsSince(b + 4, "/")->empty());
  ASSERT_TRUE(store_->Compact(b + 2).ok());
  ASSERT_TRUE(store_->Compact(b + 1).ok());  // already: fine
  EXPECT_EQ(store_->EventsSince(b + 1, "/").status().code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(store_->EventsSince(b + 2, "/")->size(), 2u);
}

// A prefix's history holds its keys only, next to keys that sort right beside it ("/i0"
// follows "/i/" byte-wise), in revision order and, in one transaction, in op order.
TEST_P(StoreTest, EventsOfAPrefixAreItsKeysOnlyInOrder) {
  const int64_t b = base_;
  ASSERT_TRUE(store_->Put("/i", "outside").ok());      // b+1
  ASSERT_TRUE(store_->Put("/i0", "outside").ok());     // b+2
  ASSERT_TRUE(store_->Put("/i/z", "1").ok());          // b+3
  ASSERT_TRUE(store_->Txn({}, {{Op::Type::kPut, "/i/b", "2", 0}, {Op::Type::kPut, "/h", "outside", 0},
                               {Op::Type::kPut, "/i/a", "3", 0}})
                  .ok());                                // b+4
  ASSERT_TRUE(store_->Put("/i/", "4").ok());           // b+5
  ASSERT_TRUE(store_->Delete("/i/z").ok());            // b+6
  auto events = store_->EventsSince(b, "/i/");
  ASSERT_TRUE(events.ok()) << events.status();
  std::vector<std::string> seen;
  for (const Event& e : *events) {
    seen.push_back(absl::StrCat(e.revision - b, " ", e.key, e.type == Event::Type::kDelete ? " deleted" : ""));
  }
  EXPECT_THAT(seen, ::testing::ElementsAre("3 /i/z", "4 /i/b", "4 /i/a", "5 /i/", "6 /i/z deleted"));
  EXPECT_EQ(store_->EventsSince(b + 4, "/i/")->size(), 2u);
}

TEST_P(StoreTest, WaitForRevisionWakesOnAWrite) {
  if (!etcd()) store_ = *OpenSqliteStore(path_, Clock::Real());  // waits on real time here
  const int64_t b = base_;
  EXPECT_EQ(*store_->WaitForRevision(b, absl::Milliseconds(50)), b);  // nothing new: times out
  std::thread writer([&] {
    absl::SleepFor(absl::Milliseconds(100));
    (void)store_->Put("/wake", "up");
  });
  auto t0 = absl::Now();
  auto rev = store_->WaitForRevision(b, absl::Seconds(20));
  writer.join();
  ASSERT_TRUE(rev.ok()) << rev.status();
  EXPECT_EQ(*rev, b + 1);
  EXPECT_LT(absl::Now() - t0, absl::Seconds(10));
  EXPECT_EQ(*store_->WaitForRevision(b, absl::Seconds(20)), b + 1);  // already past: at once
}

TEST_P(StoreTest, SurvivesReopen) {
  ASSERT_TRUE(store_->Put("/k", "v").ok());
  ASSERT_TRUE(store_->Put("/k2", "v2").ok());
  Open();
  EXPECT_EQ(*store_->Revision(), base_ + 2);
  EXPECT_EQ((*store_->Get("/k2"))->value, "v2");
  EXPECT_EQ(*store_->Put("/k3", "v3"), base_ + 3);
}

TEST_P(StoreTest, LeasesExpireTheirKeys) {
  // 2 s: etcd's shortest lease with its default timings.
  int64_t lease = *store_->GrantLease(absl::Seconds(2));
  ASSERT_TRUE(store_->Put("/leader", "me", lease).ok());
  EXPECT_EQ((*store_->Get("/leader"))->lease, lease);
  ASSERT_TRUE(store_->Put("/other", "x").ok());
  Pass(absl::Milliseconds(1200));
  EXPECT_TRUE(store_->KeepAlive(lease).ok());
  Pass(absl::Milliseconds(1200));
  ASSERT_TRUE(store_->ExpireLeases().ok());
  EXPECT_TRUE(store_->Get("/leader")->has_value());  // kept alive
  Pass(absl::Seconds(3));
  int expired = *store_->ExpireLeases();
  if (!etcd()) EXPECT_EQ(expired, 1);
  // etcd's leader revokes expired leases on its own, within half a second or so.
  for (int i = 0; i < 50 && store_->Get("/leader")->has_value(); ++i) absl::SleepFor(absl::Milliseconds(100));
  EXPECT_FALSE(store_->Get("/leader")->has_value());
  EXPECT_TRUE(store_->Get("/other")->has_value());
  EXPECT_EQ(store_->KeepAlive(lease).code(), absl::StatusCode::kNotFound);
  // The expiry is an event like any delete.
  auto events = *store_->EventsSince(base_, "/leader");
  ASSERT_EQ(events.size(), 2u);
  EXPECT_EQ(events[1].type, Event::Type::kDelete);
}

TEST_P(StoreTest, ConcurrentCompareAndSwapLosesNoUpdate) {
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

TEST_P(StoreTest, TransactionsLargerThanSixtyFiveThousandOps) {
  // A pass writes every status of a large fleet in one transaction (on etcd, without
  // compares, in chunks under its limits).
  std::vector<Op> ops;
  for (int i = 0; i < 70000; ++i) ops.push_back({Op::Type::kPut, "/status/x" + std::to_string(i), "v", 0});
  auto rev = store_->Txn({}, ops);
  ASSERT_TRUE(rev.ok()) << rev.status();
  ASSERT_TRUE(store_->Put("/after", "a").ok());
  auto events = store_->EventsSince(base_, "/");
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 70001u);
  // In revision order, the transaction's changes in its order.
  EXPECT_EQ((*events)[0].key, "/status/x0");
  EXPECT_EQ((*events)[69999].key, "/status/x69999");
  EXPECT_EQ((*events)[69999].revision, *rev);
  if (!etcd()) EXPECT_EQ((*events)[0].revision, *rev);  // SQLite: all at one revision
  EXPECT_EQ((*events)[70000].key, "/after");
  EXPECT_EQ((*events)[70000].revision, *rev + 1);
  auto since = store_->EventsSince(*rev, "/");
  ASSERT_EQ(since->size(), 1u);
  EXPECT_EQ((*since)[0].key, "/after");
}

TEST_P(StoreTest, CompactionKeepsTheStoreBoundedUnderSteadyWrites) {
  // The same few keys rewritten forever (statuses of a steady fleet): with history
  // compacted to a window, the store stops growing.
  std::string value(2000, 'x');
  auto write_round = [&] {
    std::vector<Op> ops;
    for (int k = 0; k < 50; ++k) ops.push_back({Op::Type::kPut, "/status/k" + std::to_string(k), value, 0});
    return store_->Txn({}, ops);
  };
  const int rounds = etcd() ? 60 : 200;  // etcd syncs each transaction
  for (int i = 0; i < rounds; ++i) ASSERT_TRUE(write_round().ok());
  auto keep_window = [&] {
    int64_t rev = *store_->Revision();
    ASSERT_TRUE(store_->Compact(rev - 10).ok());
  };
  keep_window();
  int64_t size_after_first = *store_->SizeBytes();
  for (int round = 0; round < 5; ++round) {
    for (int i = 0; i < rounds; ++i) ASSERT_TRUE(write_round().ok());
    keep_window();
  }
  int64_t size_after_more = *store_->SizeBytes();
  EXPECT_LE(size_after_more, size_after_first * 12 / 10) << size_after_first << " -> " << size_after_more;
  EXPECT_EQ(store_->EventsSince(base_, "/").status().code(), absl::StatusCode::kOutOfRange);
}

INSTANTIATE_TEST_SUITE_P(Backends, StoreTest, ::testing::Values("sqlite", "etcd"),
                         [](const auto& info) { return info.param; });

// Only etcd: a transaction with compares must fit etcd's limits whole (an apply is
// all-or-nothing): refused, naming the flags, with nothing written.
TEST(EtcdStoreTest, RefusesACompareTransactionPastItsLimits) {
  testing::EtcdCluster etcd(::testing::TempDir() + "/etcd-limits");
  ASSERT_TRUE(etcd.ok()) << etcd.Log(0);
  EtcdStoreOptions o;
  o.endpoints = etcd.endpoints();
  o.max_txn_ops = 4;
  auto store = *OpenEtcdStore(o);
  std::vector<Op> ops;
  for (int i = 0; i < 5; ++i) ops.push_back({Op::Type::kPut, "/k" + std::to_string(i), "v", 0});
  absl::Status s = store->Txn({{"/k0", 0}}, ops).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(s.message(), HasSubstr("--max-txn-ops"));
  EXPECT_TRUE(store->List("/")->empty());
  // Without compares: written in chunks of 4.
  int64_t before = *store->Revision();
  EXPECT_EQ(*store->Txn({}, ops), before + 2);
  EXPECT_EQ(store->List("/")->size(), 5u);
  // Our limit above etcd's (here 128 ops): etcd's refusal, with what to do.
  o.max_txn_ops = 1000;
  auto loose = *OpenEtcdStore(o);
  std::vector<Compare> compares;
  std::vector<Op> many;
  for (int i = 0; i < 200; ++i) many.push_back({Op::Type::kPut, "/m" + std::to_string(i), "v", 0});
  s = loose->Txn({{"/m0", 0}}, many).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_THAT(s.message(), HasSubstr("--max-txn-ops"));
}

TEST(EtcdStoreTest, MovesToTheNextEndpointWhenOneIsDown) {
  testing::EtcdCluster etcd(::testing::TempDir() + "/etcd-endpoints");
  ASSERT_TRUE(etcd.ok()) << etcd.Log(0);
  EtcdStoreOptions o;
  o.endpoints = {"http://127.0.0.1:" + std::to_string(testing::FreePort()), etcd.endpoint(0)};
  o.call_timeout = absl::Seconds(3);
  auto store = OpenEtcdStore(o);
  ASSERT_TRUE(store.ok()) << store.status();
  EXPECT_TRUE((*store)->Put("/k", "v").ok());
  // None answering: Unavailable, not a hang.
  o.endpoints = {"http://127.0.0.1:" + std::to_string(testing::FreePort())};
  o.call_timeout = absl::Seconds(1);
  EXPECT_EQ(OpenEtcdStore(o).status().code(), absl::StatusCode::kUnavailable);
}

TEST(EtcdStoreTest, ParsesEndpoints) {
  EXPECT_THAT(*ParseEtcdEndpoints("etcd:http://10.0.0.1:2379,http://h2:2379"),
              ElementsAre("http://10.0.0.1:2379", "http://h2:2379"));
  EXPECT_THAT(ParseEtcdEndpoints("sqlite:/x").status().message(), HasSubstr("want etcd:"));
  EXPECT_THAT(ParseEtcdEndpoints("etcd:h:2379").status().message(), HasSubstr("\"h:2379\": want http://HOST:PORT"));
  EXPECT_THAT(ParseEtcdEndpoints("etcd:https://h:2379").status().message(), HasSubstr("https"));
  EXPECT_THAT(ParseEtcdEndpoints("etcd:http://h:2379/x").status().message(), HasSubstr("want http://HOST:PORT"));
}

// Only SQLite.
class SqliteStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    path_ = ::testing::TempDir() + "/sqlite-" + ::testing::UnitTest::GetInstance()->current_test_info()->name() + ".db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path_ + suffix);
    store_ = *OpenSqliteStore(path_, clock_);
  }
  std::string path_;
  SimulatedClock clock_;
  std::unique_ptr<Store> store_;
};

TEST_F(SqliteStoreTest, AnEmptyStoreIsAtRevisionZero) {
  EXPECT_EQ(*store_->Revision(), 0);
  EXPECT_EQ(*store_->Put("/a", "1"), 1);
}

TEST_F(SqliteStoreTest, AListVisitsOnlyItsPrefixsRows) {
  // A fleet's statuses sort after its objects: listing the few InstanceSets must not walk
  // every status to the end of the table (it did, ten times a second under `--wait`).
  std::vector<Op> ops;
  for (int i = 0; i < 2000; ++i) ops.push_back({Op::Type::kPut, absl::StrCat("/status/KernelInstance/k", i), "s", 0});
  ops.push_back({Op::Type::kPut, "/objects/InstanceSet/a", "1", 0});
  ops.push_back({Op::Type::kPut, "/objects/InstanceSet/b", "2", 0});
  ops.push_back({Op::Type::kPut, "/objects/InstanceSetX", "3", 0});   // shares the text, not the prefix
  ops.push_back({Op::Type::kPut, "/objects/InstanceSet0", "4", 0});   // the byte after '/'
  ASSERT_TRUE(store_->Txn({}, ops).ok());
  auto sets = store_->List("/objects/InstanceSet/");
  ASSERT_TRUE(sets.ok());
  ASSERT_EQ(sets->size(), 2u);
  EXPECT_EQ((*sets)[0].key, "/objects/InstanceSet/a");
  EXPECT_EQ((*sets)[1].key, "/objects/InstanceSet/b");
  EXPECT_LT(SqliteLastReadStepsForTest(), 200);
  // The last prefix of the table, and a prefix whose end is past every byte.
  EXPECT_EQ(store_->List("/status/KernelInstance/")->size(), 2000u);
  ASSERT_TRUE(store_->Put(std::string("/\xff\xff"), "5").ok());
  EXPECT_EQ(store_->List(std::string("/\xff"))->size(), 1u);
  EXPECT_EQ(store_->List("")->size(), 2005u);
}

TEST_F(SqliteStoreTest, AHistoryReadVisitsOnlyItsPrefixsNewRows) {
  // The controller polls the objects' history a few times a second: after a fleet's
  // 2,000 objects were written, reading what changed since must visit what changed since,
  // not every object's history row in the window (nor the statuses written after them).
  std::vector<Op> objects, statuses;
  for (int i = 0; i < 2000; ++i) {
    objects.push_back({Op::Type::kPut, absl::StrCat("/objects/KernelInstance/k", i), "o", 0});
    statuses.push_back({Op::Type::kPut, absl::StrCat("/status/KernelInstance/k", i), "s", 0});
  }
  ASSERT_TRUE(store_->Txn({}, objects).ok());
  const int64_t seen = *store_->Revision();
  ASSERT_TRUE(store_->Txn({}, statuses).ok());
  ASSERT_TRUE(store_->Put("/objects/InstanceSet/a", "1").ok());
  ASSERT_TRUE(store_->Put("/objectsX", "2").ok());   // shares the text, not the prefix
  ASSERT_TRUE(store_->Delete("/objects/KernelInstance/k7").ok());

  auto changed = store_->EventsSince(seen, "/objects/");
  ASSERT_TRUE(changed.ok()) << changed.status();
  ASSERT_EQ(changed->size(), 2u);
  EXPECT_EQ((*changed)[0].key, "/objects/InstanceSet/a");
  EXPECT_EQ((*changed)[1].key, "/objects/KernelInstance/k7");
  EXPECT_EQ((*changed)[1].type, Event::Type::kDelete);
  EXPECT_LT(SqliteLastReadStepsForTest(), 200);
  // A narrower prefix, the same way.
  auto sets = store_->EventsSince(seen, "/objects/InstanceSet/");
  ASSERT_TRUE(sets.ok());
  ASSERT_EQ(sets->size(), 1u);
  EXPECT_LT(SqliteLastReadStepsForTest(), 200);
  // Every prefix still reads all of its history, in revision order.
  EXPECT_EQ(store_->EventsSince(0, "/objects/KernelInstance/")->size(), 2001u);
  EXPECT_EQ(store_->EventsSince(seen, "/status/")->size(), 2000u);
  auto all = store_->EventsSince(seen, "/");
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 2003u);
  EXPECT_EQ((*all)[2000].key, "/objects/InstanceSet/a");
  EXPECT_EQ((*all)[2001].key, "/objectsX");
  EXPECT_EQ(store_->EventsSince(seen, "/objects")->size(), 3u);  // no second '/': a prefix of the text
  EXPECT_EQ(store_->EventsSince(seen, "")->size(), 2003u);
}

TEST_F(SqliteStoreTest, OpensAStoreOfTheFirstHistoryFormat) {
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
