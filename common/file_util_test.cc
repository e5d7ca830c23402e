#include "common/file_util.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gtest/gtest.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;

class FileUtilTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("file-util-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_);
  }
  void TearDown() override { fs::remove_all(dir_); }
  fs::path dir_;
};

TEST_F(FileUtilTest, WritesReplacesAndLeavesNoTemporary) {
  std::string path = (dir_ / "f").string();
  ASSERT_TRUE(WriteFileAtomically(path, "one").ok());
  ASSERT_TRUE(WriteFileAtomically(path, "two, longer").ok());
  auto data = ReadFile(path);
  ASSERT_TRUE(data.ok()) << data.status();
  EXPECT_EQ(*data, "two, longer");
  EXPECT_FALSE(fs::exists(path + ".tmp"));
  struct stat st;
  ASSERT_EQ(stat(path.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0600u);
}

TEST_F(FileUtilTest, DoesNotFollowASymlinkedTemporary) {
  // A temporary name planted as a symlink (or a hard link) to another file must not
  // truncate that file: the planted name is removed and a new file made.
  std::string victim = (dir_ / "victim").string();
  std::ofstream(victim) << "precious";
  std::string path = (dir_ / "f").string();
  fs::create_symlink(victim, path + ".tmp");
  EXPECT_TRUE(WriteFileAtomically(path, "x").ok());
  EXPECT_EQ(*ReadFile(victim), "precious");
  EXPECT_EQ(*ReadFile(path), "x");
  fs::create_hard_link(victim, path + ".tmp");
  EXPECT_TRUE(WriteFileAtomically(path, "y").ok());
  EXPECT_EQ(*ReadFile(victim), "precious");
  // A state file that is a symbolic link is not read where it points.
  fs::create_symlink(victim, (dir_ / "state").string());
  EXPECT_FALSE(ReadFile((dir_ / "state").string(), /*follow_symlinks=*/false).ok());
}

TEST_F(FileUtilTest, ReadFileSaysNotFound) {
  auto data = ReadFile((dir_ / "absent").string());
  EXPECT_EQ(data.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(data.status().message().find("absent"), std::string::npos);
}

TEST_F(FileUtilTest, WriteIntoMissingDirectoryFailsWithPath) {
  absl::Status s = WriteFileAtomically((dir_ / "no" / "f").string(), "x");
  EXPECT_FALSE(s.ok());
  EXPECT_NE(s.message().find("/no/f.tmp"), std::string::npos) << s;
}

TEST(Crc32Test, KnownValue) {
  // The standard check value of CRC-32 (IEEE).
  EXPECT_EQ(Crc32("123456789"), 0xCBF43926u);
  EXPECT_EQ(Crc32(""), 0u);
}

TEST(FixedTest, LittleEndianRoundTrip) {
  std::string s;
  PutFixed32(&s, 0x01020304u);
  ASSERT_EQ(s.size(), 4u);
  EXPECT_EQ(s[0], 0x04);
  EXPECT_EQ(s[3], 0x01);
  EXPECT_EQ(GetFixed32(s.data()), 0x01020304u);
}

}  // namespace
}  // namespace mkfleet
