#include <sys/stat.h>

#include <cerrno>
#include <filesystem>
#include <fstream>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "kernel/errno_status.h"
#include "kernel/kernel_fs.h"
#include "kernel/syscalls.h"

namespace mkfleet::kernel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ErrnoStatusTest, NamesCodesAndPayload) {
  absl::Status s = ErrnoStatus(EBUSY, "host a: cpu-add 12 to web-1", "CPU not free in the pool");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_EQ(s.message(), "host a: cpu-add 12 to web-1: EBUSY (CPU not free in the pool)");
  EXPECT_EQ(ErrnoOf(s), EBUSY);
  EXPECT_EQ(ErrnoStatus(ENOENT, "x").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(ErrnoStatus(EINVAL, "x").code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ErrnoStatus(EPERM, "x").code(), absl::StatusCode::kPermissionDenied);
  EXPECT_EQ(ErrnoStatus(9999, "x").message(), "x: errno 9999");
  EXPECT_EQ(ErrnoOf(absl::InternalError("plain")), 0);
}

TEST(KexecFlagsTest, EncodesIdAndFlags) {
  EXPECT_EQ(KexecFlags(7, false, true), 0x10u | (7u << 5));
  EXPECT_EQ(KexecFlags(7, false, false), 0x10u | (7u << 5) | 0x4u);
  EXPECT_EQ(KexecFlags(511, true, false), 0x10u | (511u << 5) | 0x1u);
  EXPECT_EQ(KexecFlags(2048, false, true) & kKexecIdMask, 0u);  // 11 bits only
}

TEST(PosixKernelFsTest, ReadWriteListRmdirOnAPlainDirectory) {
  namespace fs = std::filesystem;
  fs::path root = fs::path(::testing::TempDir()) / "mkfs";
  fs::remove_all(root);
  fs::create_directories(root / "overlays" / "tx_1");
  fs::create_directories(root / "overlays" / "tx_2");
  std::ofstream(root / "device_tree") << "blob";
  fs::create_directories(root / "proc");
  std::ofstream(root / "proc" / "iomem") << "0-1 : x\n";
  auto kfs = NewPosixKernelFs(root.string(), (root / "proc").string());
  EXPECT_EQ(*kfs->Read("device_tree"), "blob");
  ASSERT_TRUE(kfs->Write("device_tree", "new").ok());
  EXPECT_EQ(*kfs->Read("device_tree"), "new");
  EXPECT_THAT(*kfs->List("overlays"), ElementsAre("tx_1", "tx_2"));
  ASSERT_TRUE(kfs->Rmdir("overlays/tx_1").ok());
  EXPECT_THAT(*kfs->List("overlays"), ElementsAre("tx_2"));
  EXPECT_EQ(*kfs->ReadProc("iomem"), "0-1 : x\n");
  absl::Status missing = kfs->Read("instances/nope/status").status();
  EXPECT_EQ(missing.code(), absl::StatusCode::kNotFound);
  EXPECT_THAT(missing.message(), HasSubstr("instances/nope/status: ENOENT"));
  fs::remove_all(root);
}

}  // namespace
}  // namespace mkfleet::kernel
