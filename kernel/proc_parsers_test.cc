#include "kernel/proc_parsers.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

constexpr char kIomem[] =
    "00000000-00000fff : Reserved\n"
    "00001000-0009ffff : System RAM\n"
    "100000000-87fffffff : System RAM\n"
    "  200000000-3ffffffff : Multikernel Memory Pool\n"
    "    200000000-27fffffff : mk-instance-7-web-1-region-0\n"
    "    280000000-2bfffffff : mk-instance-12-db-primary-region-1\n"
    "  400000000-43fffffff : daxfs\n";

TEST(IomemTest, ParsesNestingAndInstanceRegions) {
  auto regions = ParseIomem(kIomem);
  ASSERT_TRUE(regions.ok()) << regions.status();
  ASSERT_EQ(regions->size(), 7u);
  EXPECT_EQ((*regions)[3].depth, 1);
  EXPECT_EQ((*regions)[3].start, 0x200000000ull);
  EXPECT_EQ((*regions)[3].size(), 8ull << 30);
  PoolRegions pool = FindPoolRegions(*regions);
  ASSERT_EQ(pool.pool.size(), 1u);
  ASSERT_EQ(pool.instances.size(), 2u);
  EXPECT_EQ(pool.instances[0].id, 7u);
  EXPECT_EQ(pool.instances[0].instance, "web-1");
  EXPECT_EQ(pool.instances[1].instance, "db-primary");
  EXPECT_EQ(pool.instances[1].index, 1u);
  EXPECT_EQ(pool.instances[1].region.size(), 1ull << 30);
  ASSERT_EQ(pool.daxfs.size(), 1u);
}

TEST(IomemTest, Malformed) {
  EXPECT_EQ(ParseIomem("00000-0fff Reserved\n").status().message(),
            "/proc/iomem line 1: expected \"start-end : name\": \"00000-0fff Reserved\"");
  EXPECT_EQ(ParseIomem("ok-0fff : x\n").status().message(), "/proc/iomem line 1: bad address: \"ok-0fff : x\"");
  EXPECT_EQ(ParseIomem("0fff-0000 : x\n").status().message(), "/proc/iomem line 1: end before start: \"0fff-0000 : x\"");
  EXPECT_FALSE(ParseIomem("00000000000000000-1 : x\n").ok());  // 17 hex digits
  // Names that do not follow the instance pattern are not instance regions.
  auto r = ParseIomem("200000000-27fffffff : mk-instance-x-region-0\n");
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(FindPoolRegions(*r).instances.empty());
}

TEST(KimageTest, ParsesTableWithCmdlineSpaces) {
  auto e = ParseKimage(
      "MK_ID Type Start-Address Segments Mode Cmdline\n"
      "7 multikernel 0x200000000 4 file console=mktty0 quiet\n"
      "12 multikernel 0x280000000 3 file\n");
  ASSERT_TRUE(e.ok()) << e.status();
  ASSERT_EQ(e->size(), 2u);
  EXPECT_EQ((*e)[0].id, 7u);
  EXPECT_EQ((*e)[0].start_address, 0x200000000ull);
  EXPECT_EQ((*e)[0].segments, 4u);
  EXPECT_EQ((*e)[0].cmdline, "console=mktty0 quiet");
  EXPECT_EQ((*e)[1].cmdline, "");
}

TEST(KimageTest, Malformed) {
  EXPECT_EQ(ParseKimage("x multikernel 0x0 1 file\n").status().message(),
            "/proc/kimage line 1: bad MK_ID: \"x multikernel 0x0 1 file\"");
  EXPECT_EQ(ParseKimage("1 multikernel zz 1 file\n").status().message(),
            "/proc/kimage line 1: bad start address: \"1 multikernel zz 1 file\"");
  EXPECT_EQ(ParseKimage("1 multikernel\n").status().message(),
            "/proc/kimage line 1: expected 5 or more columns: \"1 multikernel\"");
}

}  // namespace
}  // namespace mkfleet::kernel
