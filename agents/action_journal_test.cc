#include "agents/action_journal.h"

#include <filesystem>
#include <fstream>

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

}  // namespace
}  // namespace mkfleet::agents
