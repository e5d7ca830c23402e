#include "common/state_dir.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class StateDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("statedir-" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_);
    chmod(root_.c_str(), 0755);
  }
  void TearDown() override { fs::remove_all(root_); }
  fs::path root_;
};

TEST_F(StateDirTest, CreatesPrivateDirectoriesAndLocksThem) {
  std::string dir = (root_ / "a" / "b").string();
  auto lock = OpenStateDir(dir);
  ASSERT_TRUE(lock.ok()) << lock.status();
  struct stat st {};
  ASSERT_EQ(stat(dir.c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  ASSERT_EQ(stat((root_ / "a").c_str(), &st), 0);
  EXPECT_EQ(st.st_mode & 0777, 0700u);
  // Defect (step 7): two agents on one directory handed out the same CPU and id.
  auto second = OpenStateDir(dir);
  EXPECT_EQ(second.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(second.status().message(), HasSubstr("is in use by pid " + std::to_string(getpid())));
  lock->reset();
  EXPECT_TRUE(OpenStateDir(dir).ok()) << "released with its holder";
}

TEST_F(StateDirTest, RefusesDirectoriesOthersCouldHavePrepared) {
  fs::create_directories(root_ / "shared");
  chmod((root_ / "shared").c_str(), 0777);
  EXPECT_THAT(OpenStateDir((root_ / "shared").string()).status().message(), HasSubstr("writable by group or others"));
  fs::create_directories(root_ / "real");
  chmod((root_ / "real").c_str(), 0700);
  fs::create_directory_symlink(root_ / "real", root_ / "link");
  EXPECT_THAT(OpenStateDir((root_ / "link").string()).status().message(), HasSubstr("symbolic link"));
  if (geteuid() == 0) {
    fs::create_directories(root_ / "theirs");
    ASSERT_EQ(chown((root_ / "theirs").c_str(), 65534, 65534), 0);
    EXPECT_THAT(OpenStateDir((root_ / "theirs").string()).status().message(), HasSubstr("owned by uid 65534"));
  }
  // A lock file planted as a symbolic link is not followed.
  fs::create_directories(root_ / "planted");
  chmod((root_ / "planted").c_str(), 0700);
  std::ofstream(root_ / "victim") << "precious";
  fs::create_symlink(root_ / "victim", root_ / "planted" / "lock");
  EXPECT_FALSE(OpenStateDir((root_ / "planted").string()).ok());
  std::ifstream in(root_ / "victim");
  std::string text;
  in >> text;
  EXPECT_EQ(text, "precious");
}

TEST_F(StateDirTest, StoreFilesAreCheckedAndLocked) {
  std::string path = (root_ / "store.db").string();
  auto lock = OpenStoreFile(path);
  ASSERT_TRUE(lock.ok()) << lock.status();
  EXPECT_THAT(OpenStoreFile(path).status().message(), HasSubstr("is in use by pid"));
  lock->reset();
  std::ofstream(path).close();  // 0 bytes
  EXPECT_THAT(OpenStoreFile(path).status().message(), HasSubstr("is empty"));
  std::ofstream(path) << "data";
  chmod(path.c_str(), 0666);
  EXPECT_THAT(OpenStoreFile(path).status().message(), HasSubstr("writable by group or others"));
  chmod(path.c_str(), 0600);
  EXPECT_TRUE(OpenStoreFile(path).ok());
  fs::create_directories(root_ / "open");
  chmod((root_ / "open").c_str(), 0777);
  EXPECT_THAT(OpenStoreFile((root_ / "open" / "s.db").string()).status().message(), HasSubstr("writable by everyone"));
}

}  // namespace
}  // namespace mkfleet
