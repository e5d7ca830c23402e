#include "kernel/memory_regions.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

using ::testing::ElementsAre;
using ::testing::Optional;

constexpr uint64_t kMi = 1ull << 20;

TEST(PickWholeRegionsTest, TakesTheLastAddedRegionsThatFit) {
  // Given back in this order: 256Mi, then 512Mi, then 128Mi.
  EXPECT_THAT(PickWholeRegions({256 * kMi, 512 * kMi, 128 * kMi}, 384 * kMi), Optional(ElementsAre(0, 2)));
  EXPECT_THAT(PickWholeRegions({256 * kMi, 512 * kMi, 128 * kMi}, 896 * kMi), Optional(ElementsAre(0, 1, 2)));
  EXPECT_THAT(PickWholeRegions({256 * kMi}, 0), Optional(ElementsAre()));
}

TEST(PickWholeRegionsTest, RegionsAreNeverSplit) {
  EXPECT_EQ(PickWholeRegions({512 * kMi}, 256 * kMi), std::nullopt);
  EXPECT_EQ(PickWholeRegions({}, 128 * kMi), std::nullopt);  // only the first region, which holds the image
  EXPECT_EQ(PickWholeRegions({256 * kMi, 256 * kMi}, 1024 * kMi), std::nullopt);
}

}  // namespace
}  // namespace mkfleet::kernel
