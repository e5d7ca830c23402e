#include "agents/action_journal.h"

#include <signal.h>
#include <sys/resource.h>

#include <filesystem>
#include <fstream>
#include <iterator>

#include "gtest/gtest.h"

namespace mkfleet::agents {
namespace {

mkfleet::v1::ActionResult Result(const std::string& id, int code) {
  mkfleet::v1::ActionResult r;
  r.set_id(id);
  r.set_code(code);
  r.set_message("m-" + id);
  return r;
}

std::string TempPath(const std::string& name) {
  std::string p = ::testing::TempDir() + "/" + name;
  std::filesystem::remove(p);
  return p;
}

TEST(ActionJournalTest, SurvivesReopen) {
  std::string path = TempPath("journal-reopen");
  {
    auto j = ActionJournal::Open(path);
    ASSERT_TRUE(j.ok()) << j.status();
    ASSERT_TRUE((*j)->Record(Result("a", 0)).ok());
    ASSERT_TRUE((*j)->Record(Result("b", 9)).ok());
  }
  auto j = ActionJournal::Open(path);
  ASSERT_TRUE(j.ok());
  ASSERT_TRUE((*j)->Lookup("b").has_value());
  EXPECT_EQ((*j)->Lookup("b")->code(), 9);
  EXPECT_EQ((*j)->Lookup("b")->message(), "m-b");
  EXPECT_FALSE((*j)->Lookup("c").has_value());
}

TEST(ActionJournalTest, TornTailIsIgnoredAndOverwritten) {
  std::string path = TempPath("journal-torn");
  {
    auto j = ActionJournal::Open(path);
    ASSERT_TRUE((*j)->Record(Result("a", 0)).ok());
  }
  std::ofstream(path, std::ios::app | std::ios::binary) << std::string("\x50\x00\x00\x00partial", 11);
  {
    auto j = ActionJournal::Open(path);
    ASSERT_TRUE(j.ok());
    EXPECT_EQ((*j)->size(), 1u);
    ASSERT_TRUE((*j)->Record(Result("b", 0)).ok());
  }
  auto j = ActionJournal::Open(path);
  EXPECT_TRUE((*j)->Lookup("a").has_value());
  EXPECT_TRUE((*j)->Lookup("b").has_value());
}

// Step 7: the journal's cap is in bytes as well as entries: large results cannot grow the
// file (or the agent) without bound.
TEST(ActionJournalTest, BoundedInBytesToo) {
  std::string path = TempPath("journal-bytes");
  ActionJournal::Options o;
  o.max_entries = 100000;
  o.max_bytes = 64 << 10;
  o.sync = false;
  auto j = ActionJournal::Open(path, o);
  ASSERT_TRUE(j.ok());
  for (int i = 0; i < 2000; ++i) {
    mkfleet::v1::ActionResult r = Result("id-" + std::to_string(i), 0);
    r.set_message(std::string(1000, 'm'));
    ASSERT_TRUE((*j)->Record(r, false).ok());
  }
  EXPECT_LE(std::filesystem::file_size(path), 3 * o.max_bytes);
  EXPECT_LT((*j)->size(), 70u);
  EXPECT_TRUE((*j)->Lookup("id-1999").has_value());
  EXPECT_FALSE((*j)->Lookup("id-0").has_value());
  j->reset();
  auto again = ActionJournal::Open(path, o);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Lookup("id-1999").has_value());
}

// A full disk (here: a file size limit, EFBIG) fails the append, says so, and leaves no half
// record behind: the next append after space comes back is not corruption mid-file.
TEST(ActionJournalTest, AFailedAppendIsCutBackAndReported) {
  std::string path = TempPath("journal-full");
  auto j = ActionJournal::Open(path);
  ASSERT_TRUE((*j)->Record(Result("a", 0)).ok());
  const uintmax_t size = std::filesystem::file_size(path);
  signal(SIGXFSZ, SIG_IGN);
  struct rlimit old {};
  getrlimit(RLIMIT_FSIZE, &old);
  struct rlimit tight = old;
  tight.rlim_cur = size + 10;  // room for part of a record only
  ASSERT_EQ(setrlimit(RLIMIT_FSIZE, &tight), 0);
  mkfleet::v1::ActionResult big = Result("b", 0);
  big.set_message(std::string(200, 'x'));
  absl::Status s = (*j)->Record(big);
  setrlimit(RLIMIT_FSIZE, &old);
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("append to journal"), std::string::npos) << s;
  EXPECT_EQ(std::filesystem::file_size(path), size);
  ASSERT_TRUE((*j)->Record(Result("c", 0)).ok());
  j->reset();
  auto again = ActionJournal::Open(path);
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_TRUE((*again)->Lookup("c").has_value());
  EXPECT_EQ((*again)->recovery_note(), "");
}

TEST(ActionJournalTest, BoundedWithCompaction) {
  std::string path = TempPath("journal-bounded");
  auto j = ActionJournal::Open(path, 10);
  for (int i = 0; i < 35; ++i) ASSERT_TRUE((*j)->Record(Result("id" + std::to_string(i), 0)).ok());
  EXPECT_EQ((*j)->size(), 10u);
  EXPECT_FALSE((*j)->Lookup("id0").has_value());
  EXPECT_TRUE((*j)->Lookup("id34").has_value());
  // The file was compacted: at most twice the bound of records.
  EXPECT_LT(std::filesystem::file_size(path), 25u * 20u);
  j->reset();
  auto again = ActionJournal::Open(path, 10);
  EXPECT_TRUE((*again)->Lookup("id30").has_value());
  EXPECT_EQ((*again)->size(), 10u);
}

TEST(ActionJournalTest, PortableHeaderLengthsAndChecksums) {
  std::string path = TempPath("journal-format");
  {
    auto j = ActionJournal::Open(path);
    ASSERT_TRUE((*j)->Record(Result("a", 0)).ok());
  }
  std::ifstream in(path, std::ios::binary);
  std::string data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  ASSERT_GE(data.size(), 16u);
  EXPECT_EQ(data.substr(0, 8), "MKJRNL01");
  mkfleet::v1::JournalRecord r;
  *r.mutable_result() = Result("a", 0);
  std::string body = r.SerializeAsString();
  // Little-endian length whatever the machine, then the CRC-32 of the body.
  EXPECT_EQ(static_cast<unsigned char>(data[8]), body.size() & 0xff);
  EXPECT_EQ(data[9], 0);
  EXPECT_EQ(data.substr(16), body);
}

// Step 7: a bad record followed by more records is corruption, not a torn write: the agent
// refuses to start (a journal with a hole would run actions again), naming the offset, and
// leaves the file as it is. Only a damaged last record (a torn write) is dropped.
TEST(ActionJournalTest, CorruptionBeforeTheTailRefusesToOpenWithTheOffset) {
  std::string path = TempPath("journal-corrupt");
  {
    auto j = ActionJournal::Open(path);
    for (const char* id : {"a", "b", "c"}) ASSERT_TRUE((*j)->Record(Result(id, 0)).ok());
  }
  auto flip = [&](const std::string& text) {
    std::fstream f(path, std::ios::in | std::ios::out | std::ios::binary);
    std::string data((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
    size_t at = data.find(text);
    EXPECT_NE(at, std::string::npos);
    f.seekp(at);
    f.put('X');
    return data;
  };
  std::string before = flip("m-b");
  auto j = ActionJournal::Open(path);
  EXPECT_EQ(j.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(j.status().message().find("corrupt record at offset "), std::string::npos) << j.status();
  std::ifstream in(path, std::ios::binary);
  std::string after((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(after.size(), before.size()) << "a refused journal is not rewritten";

  // The last record damaged: a torn write, dropped and reported; the log goes on.
  std::string path2 = TempPath("journal-torn-last");
  {
    auto w = ActionJournal::Open(path2);
    for (const char* id : {"a", "b", "c"}) ASSERT_TRUE((*w)->Record(Result(id, 0)).ok());
  }
  path.swap(path2);
  flip("m-c");
  auto torn = ActionJournal::Open(path);
  ASSERT_TRUE(torn.ok()) << torn.status();
  EXPECT_TRUE((*torn)->Lookup("b").has_value());
  EXPECT_FALSE((*torn)->Lookup("c").has_value());
  EXPECT_NE((*torn)->recovery_note().find("dropped"), std::string::npos);
  ASSERT_TRUE((*torn)->Record(Result("d", 0)).ok());
  torn->reset();
  auto again = ActionJournal::Open(path);
  EXPECT_TRUE((*again)->Lookup("d").has_value());
  EXPECT_EQ((*again)->recovery_note(), "");
}

TEST(ActionJournalTest, AFileThatIsNoJournalOrALinkIsRefused) {
  std::string path = TempPath("journal-foreign");
  std::ofstream(path, std::ios::binary) << "root:$6$secret:19000:0:99999:7:::\n";
  auto j = ActionJournal::Open(path);
  EXPECT_EQ(j.status().code(), absl::StatusCode::kDataLoss) << j.status();
  std::ifstream in(path);
  std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  EXPECT_EQ(text, "root:$6$secret:19000:0:99999:7:::\n");
  std::string link = TempPath("journal-link");
  std::filesystem::create_symlink(path, link);
  EXPECT_FALSE(ActionJournal::Open(link).ok());
  std::ifstream again(path);
  std::string still((std::istreambuf_iterator<char>(again)), std::istreambuf_iterator<char>());
  EXPECT_EQ(still, text) << "the link's target is never written";
}

TEST(ActionJournalTest, ReadsAndRewritesTheFirstFormat) {
  std::string path = TempPath("journal-legacy");
  {
    std::ofstream out(path, std::ios::binary);
    for (const char* id : {"old-1", "old-2"}) {
      std::string body = Result(id, 0).SerializeAsString();
      uint32_t n = body.size();
      out.write(reinterpret_cast<const char*>(&n), 4);
      out << body;
    }
  }
  auto j = ActionJournal::Open(path);
  ASSERT_TRUE(j.ok()) << j.status();
  EXPECT_TRUE((*j)->Lookup("old-1").has_value());
  EXPECT_TRUE((*j)->Lookup("old-2").has_value());
  j->reset();
  std::ifstream in(path, std::ios::binary);
  std::string head(8, '\0');
  in.read(head.data(), 8);
  EXPECT_EQ(head, "MKJRNL01");
}

TEST(ActionJournalTest, FenceOnlyMovesForwardAndSurvivesReopenAndCompaction) {
  std::string path = TempPath("journal-fence");
  auto fence = [](int64_t epoch, int64_t seq) {
    mkfleet::v1::Fence f;
    f.set_epoch(epoch);
    f.set_sequence(seq);
    return f;
  };
  {
    auto j = ActionJournal::Open(path, 3);
    ASSERT_TRUE((*j)->RecordFence(fence(2, 7)).ok());
    ASSERT_TRUE((*j)->RecordFence(fence(1, 99)).ok());  // older epoch: ignored
    EXPECT_EQ((*j)->fence().epoch(), 2);
    EXPECT_EQ((*j)->fence().sequence(), 7);
    for (int i = 0; i < 20; ++i) ASSERT_TRUE((*j)->Record(Result("id" + std::to_string(i), 0)).ok());
  }
  auto j = ActionJournal::Open(path, 3);
  EXPECT_EQ((*j)->fence().epoch(), 2);
  EXPECT_EQ((*j)->fence().sequence(), 7);
  EXPECT_TRUE(FenceBefore(fence(2, 6), (*j)->fence()));
  EXPECT_FALSE(FenceBefore(fence(2, 7), (*j)->fence()));
}

}  // namespace
}  // namespace mkfleet::agents
