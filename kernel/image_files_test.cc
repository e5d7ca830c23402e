#include "kernel/image_files.h"

#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

namespace fs = std::filesystem;
using ::testing::HasSubstr;

class ImageFilesTest : public ::testing::Test {
 protected:
  void SetUp() override {
    root_ = fs::path(::testing::TempDir()) / ("images-" + std::to_string(getpid()));
    fs::remove_all(root_);
    fs::create_directories(root_ / "kernels" / "sub");
    fs::create_directories(root_ / "outside");
    Write(root_ / "kernels" / "vmlinux", std::string("\x7f" "ELF", 4) + std::string(100000, 'k'));
    Write(root_ / "kernels" / "sub" / "initrd", "initrd");
    Write(root_ / "outside" / "secret", "secret");
    dirs_.dirs = {(root_ / "kernels").string()};
  }
  void TearDown() override { fs::remove_all(root_); }
  static void Write(const fs::path& p, const std::string& data) { std::ofstream(p, std::ios::binary) << data; }
  absl::StatusOr<ImageFile> Open(const std::string& path) { return OpenImageFile(dirs_, path, "kernel image", Clock::Real()); }
  // The refusal with the path taken out: the same text for every refused file.
  std::string Refusal(const std::string& path) {
    auto f = Open(path);
    EXPECT_EQ(f.status().code(), absl::StatusCode::kPermissionDenied) << path;
    std::string m(f.status().message());
    size_t at = m.find(path);
    return at == std::string::npos ? m : m.erase(at, path.size());
  }

  fs::path root_;
  ImageDirs dirs_;
};

TEST_F(ImageFilesTest, OpensAndHashesAnAllowedRegularFile) {
  auto f = Open((root_ / "kernels" / "vmlinux").string());
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_GE(f->fd(), 0);
  EXPECT_EQ(f->size(), 100004u);
  EXPECT_EQ(f->sha256().size(), 64u);
  EXPECT_TRUE(CheckElfVmlinux(f->head(), "x").ok());
  EXPECT_TRUE(Open((root_ / "kernels" / "sub" / "initrd").string()).ok());
  // The same bytes hash the same.
  Write(root_ / "kernels" / "copy", std::string("\x7f" "ELF", 4) + std::string(100000, 'k'));
  EXPECT_EQ(Open((root_ / "kernels" / "copy").string())->sha256(), f->sha256());
}

TEST_F(ImageFilesTest, EveryRefusalIsTheSameAndRevealsNothing) {
  dirs_.max_bytes = 1024;
  const std::string base = Refusal("/etc/shadow");
  EXPECT_THAT(base, HasSubstr("not an allowed file"));
  fs::create_symlink(root_ / "outside" / "secret", root_ / "kernels" / "link");
  fs::create_symlink(root_ / "outside", root_ / "kernels" / "dirlink");
  ASSERT_EQ(mkfifo((root_ / "kernels" / "fifo").c_str(), 0600), 0);
  Write(root_ / "kernels" / "big", std::string(2048, 'b'));
  for (const std::string& p :
       {std::string("/dev/zero"), std::string("/etc/nonexistent-file"), (root_ / "kernels" / "missing").string(),
        (root_ / "kernels" / "link").string(), (root_ / "kernels" / "dirlink" / "secret").string(),
        (root_ / "kernels" / "fifo").string(), (root_ / "kernels" / "sub").string(),
        (root_ / "kernels" / "big").string(), (root_ / "kernels" / ".." / "outside" / "secret").string(),
        (root_ / "kernels").string() + "/", (root_ / "kernelsX" / "vmlinux").string(), std::string("relative"),
        (root_ / "outside" / "secret").string()}) {
    EXPECT_EQ(Refusal(p), base) << p;
  }
  dirs_.dirs.clear();
  dirs_.max_bytes = 1u << 30;
  EXPECT_EQ(Open((root_ / "kernels" / "vmlinux").string()).status().code(), absl::StatusCode::kPermissionDenied);
}

TEST_F(ImageFilesTest, ExplainsABzImage) {
  std::string head(0x300, '\0');
  head.replace(0x202, 4, "HdrS");
  EXPECT_THAT(CheckElfVmlinux(head, "/k/bz").message(), HasSubstr("is a bzImage"));
  EXPECT_THAT(CheckElfVmlinux("MZ", "/k/pe").message(), HasSubstr("is not an ELF vmlinux"));
}

}  // namespace
}  // namespace mkfleet::kernel
