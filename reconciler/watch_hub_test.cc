#include "reconciler/watch_hub.h"

#include <filesystem>
#include <atomic>
#include <thread>

#include "absl/strings/match.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "reconciler/testing/forwarding_store.h"

namespace mkfleet::reconciler {
namespace {

// A store that counts the change reads (EventsSince) made of it.
class CountingStore : public ForwardingStore {
 public:
  using ForwardingStore::ForwardingStore;
  std::atomic<int> reads{0};
  absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) override {
    ++reads;
    return ForwardingStore::EventsSince(after, prefix);
  }
};

class WatchHubTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string path = ::testing::TempDir() + "/hub.db";
    for (const char* suffix : {"", "-wal", "-shm"}) std::filesystem::remove(path + suffix);
    inner_ = *OpenSqliteStore(path, Clock::Real());
    store_ = std::make_unique<CountingStore>(*inner_);
  }
  std::unique_ptr<Store> inner_;
  std::unique_ptr<CountingStore> store_;
};

TEST_F(WatchHubTest, ManyFollowersShareOneReader) {
  WatchHub hub(*store_);
  const int64_t start = *store_->Revision();
  std::atomic<int> got{0};
  std::vector<std::thread> followers;
  for (int i = 0; i < 50; ++i) {
    followers.emplace_back([&] {
      int64_t after = start;
      int mine = 0;
      while (mine < 3) {
        int64_t seen = after;
        auto events = hub.Next(after, "/objects/", absl::Seconds(5), &seen);
        ASSERT_TRUE(events.ok()) << events.status();
        for (const Event& e : *events) {
          EXPECT_TRUE(absl::StartsWith(e.key, "/objects/"));
          ++mine;
        }
        after = seen;
      }
      got += mine;
    });
  }
  for (int i = 0; i < 3; ++i) {
    ASSERT_TRUE(store_->Put("/objects/Host/h" + std::to_string(i), "v", 0).ok());
    ASSERT_TRUE(store_->Put("/status/Host/h" + std::to_string(i), "s", 0).ok());  // not watched
  }
  for (auto& t : followers) t.join();
  EXPECT_EQ(got.load(), 150);
  // The changes were read by the hub (a read per prefix per new revision), not per follower.
  EXPECT_LE(store_->reads.load(), 2 * 6 + 4);
}

TEST_F(WatchHubTest, KeysOnlyKeepsWhatChangedNotToWhat) {
  WatchHubOptions options;
  options.keys_only = true;
  options.max_bytes = 400;  // ten 1 KiB values would not fit; their keys do
  WatchHub hub(*store_, options);
  const int64_t start = *store_->Revision();
  for (int i = 0; i < 10; ++i) ASSERT_TRUE(store_->Put("/objects/Host/h" + std::to_string(i), std::string(1024, 'v'), 0).ok());
  const int64_t last = *store_->Revision();
  std::vector<Event> all;
  int64_t after = start;
  while (after < last) {
    int64_t seen = after;
    auto events = hub.Next(after, "/objects/", absl::Seconds(5), &seen);
    ASSERT_TRUE(events.ok()) << events.status();
    all.insert(all.end(), events->begin(), events->end());
    after = seen;
  }
  ASSERT_EQ(all.size(), 10u);
  EXPECT_EQ(all[9].key, "/objects/Host/h9");
  for (const Event& e : all) EXPECT_EQ(e.value, "");
}

TEST_F(WatchHubTest, AFollowerTooFarBehindStartsAgain) {
  WatchHubOptions o;
  o.max_changes = 2;
  WatchHub hub(*store_, o);
  const int64_t start = *store_->Revision();
  for (int i = 0; i < 5; ++i) ASSERT_TRUE(store_->Put("/objects/Host/h" + std::to_string(i), "v", 0).ok());
  int64_t seen = 0;
  // Let the hub read them.
  for (int i = 0; i < 50; ++i) {
    auto latest = hub.Next(*store_->Revision() - 1, "/objects/", absl::Milliseconds(100), &seen);
    if (latest.ok() && !latest->empty()) break;
  }
  auto old = hub.Next(start, "/objects/", absl::Milliseconds(100), &seen);
  EXPECT_EQ(old.status().code(), absl::StatusCode::kOutOfRange);
  auto recent = hub.Next(*store_->Revision() - 2, "/objects/", absl::Milliseconds(100), &seen);
  ASSERT_TRUE(recent.ok()) << recent.status();
  EXPECT_EQ(recent->size(), 2u);
  hub.Stop();
  EXPECT_EQ(hub.Next(seen, "/objects/", absl::Milliseconds(10), &seen).status().code(),
            absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mkfleet::reconciler
