#include "kernel/fdt.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(FdtTest, RoundTripsNodesAndTypedProperties) {
  DtNode root;
  root.SetString("compatible", "multikernel-v1");
  DtNode& res = root.Add("resources");
  res.SetU64s("cpus", {4, 5, 0x100000000ull});
  res.SetU32("numa-node-id", 1);
  res.SetStrings("names", {"a", "bc"});
  res.Add("memory@0").SetU64("size", 1ull << 30);
  auto blob = ToDtb(root);
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto back = FromDtb(*blob);
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(*back->String("compatible"), "multikernel-v1");
  const DtNode* r = back->Find("resources");
  ASSERT_NE(r, nullptr);
  EXPECT_THAT(*r->U64s("cpus"), ElementsAre(4, 5, 0x100000000ull));
  EXPECT_EQ(*r->U32("numa-node-id"), 1u);
  EXPECT_THAT(*r->Strings("names"), ElementsAre("a", "bc"));
  EXPECT_EQ(*r->Find("memory@0")->U64("size"), 1ull << 30);
}

TEST(FdtTest, TypedReadErrorsNameTheProperty) {
  DtNode n;
  n.name = "cpu@0";
  n.SetU32("reg", 7);
  EXPECT_EQ(n.U64("reg").status().message(), "cpu@0: property reg: size 4 is not a multiple of 8");
  EXPECT_EQ(n.U32("flags").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(n.U32("flags").status().message(), "cpu@0: property flags is missing");
}

TEST(FdtTest, RejectsMalformedBlobs) {
  EXPECT_THAT(FromDtb("short").status().message(), HasSubstr("device tree blob of 5 bytes"));
  DtNode root;
  root.Add("a");
  std::string blob = *ToDtb(root);
  std::string longer = blob + std::string(8, '\0');
  EXPECT_THAT(FromDtb(longer).status().message(), HasSubstr("totalsize does not match"));
  std::string corrupt = blob;
  corrupt[0] = 'x';  // magic
  EXPECT_FALSE(FromDtb(corrupt).ok());
}

TEST(FdtTest, NamesAreSharedOrRepeatedAsAsked) {
  DtNode root;
  for (int i = 0; i < 10; ++i) root.Add("cpu@" + std::to_string(i)).SetU32("reg", i);
  auto shared = ToDtb(root);
  auto repeated = ToDtb(root, DtbNames::kRepeated);
  ASSERT_TRUE(shared.ok()) << shared.status();
  ASSERT_TRUE(repeated.ok()) << repeated.status();
  // "reg\0" once in the strings block, or once per property: 9 more copies of 4 bytes.
  EXPECT_EQ(repeated->size() - shared->size(), 9u * 4);
  for (const std::string* blob : {&*shared, &*repeated}) {
    auto back = FromDtb(*blob);
    ASSERT_TRUE(back.ok()) << back.status();
    ASSERT_EQ(back->children.size(), 10u);
    EXPECT_EQ(*back->children[7].U32("reg"), 7u);
  }
}

TEST(FdtTest, BlobsOfEveryShapeFitTheirBufferOrGrowIt) {
  // The buffer is sized from the tree; names and values of every length up to past 4-byte
  // alignment, nesting, and trees past the old 4 KiB first buffer.
  for (int props : {0, 1, 5, 300}) {
    for (int value_len : {0, 1, 3, 4, 5, 17}) {
      DtNode root;
      DtNode* at = &root;
      for (int depth = 0; depth < 3; ++depth) {
        for (int p = 0; p < props; ++p) {
          at->props.emplace_back(std::string(1 + (p % 7), 'a' + depth) + std::to_string(p), std::string(value_len, 'x'));
        }
        at = &at->Add(std::string(1 + depth, 'n'));
      }
      for (DtbNames names : {DtbNames::kShared, DtbNames::kRepeated}) {
        auto blob = ToDtb(root, names);
        ASSERT_TRUE(blob.ok()) << props << " " << value_len << ": " << blob.status();
        auto back = FromDtb(*blob);
        ASSERT_TRUE(back.ok()) << back.status();
        EXPECT_EQ(back->props.size(), static_cast<size_t>(props));
        ASSERT_EQ(back->children.size(), 1u);
        EXPECT_EQ(back->children[0].children[0].props.size(), static_cast<size_t>(props));
        if (props > 0) {
          EXPECT_EQ(back->props[0].second, std::string(value_len, 'x'));
        }
      }
    }
  }
}

TEST(FdtTest, TooLargeForTheKernel) {
  DtNode root;
  root.SetU64s("big", std::vector<uint64_t>(kMaxBlobBytes / 8, 1));
  EXPECT_EQ(ToDtb(root).status().message(), "device tree is larger than 1 MiB");
}

}  // namespace
}  // namespace mkfleet::kernel
