#include "kernel/emulator/first_fit.h"

#include <random>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::kernel {
namespace {

using ::testing::ElementsAre;

constexpr uint64_t kB = 128;  // a block, in test units

TEST(FirstFitTest, TakesTheFirstFreeBlocksAroundWhatIsHeld) {
  std::vector<MemRange> pool = {{0, 8 * kB, 0}, {16 * kB, 8 * kB, 1}};
  std::vector<MemRange> used = {{kB, 2 * kB, 0}, {5 * kB, kB, 0}};
  auto got = FirstFit(pool, used, 3 * kB, std::nullopt, kB);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, ElementsAre(MemRange{0, kB, 0}, MemRange{3 * kB, 2 * kB, 0}));
  // Rounded up to a block; only node 1 when asked.
  got = FirstFit(pool, used, kB + 1, 1, kB);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, ElementsAre(MemRange{16 * kB, 2 * kB, 1}));
  // Does not fit.
  EXPECT_FALSE(FirstFit(pool, used, 9 * kB, 1, kB).has_value());
  // Unaligned chunk starts and a region reaching in from before the chunk.
  got = FirstFit({{kB / 2, 4 * kB, 0}}, {{0, kB + 10, 0}}, kB, std::nullopt, kB);
  ASSERT_TRUE(got.has_value());
  EXPECT_THAT(*got, ElementsAre(MemRange{2 * kB, kB, 0}));
}

// The oracle: block by block, in address order, every aligned block of a chunk that no held
// region touches.
std::optional<std::vector<MemRange>> Oracle(std::vector<MemRange> chunks, const std::vector<MemRange>& used,
                                            uint64_t bytes, std::optional<uint32_t> numa, uint64_t block) {
  uint64_t left = (bytes + block - 1) / block * block;
  std::sort(chunks.begin(), chunks.end(), [](const MemRange& a, const MemRange& b) { return a.base < b.base; });
  std::vector<MemRange> out;
  for (const MemRange& c : chunks) {
    if (numa && c.numa != *numa) continue;
    for (uint64_t b = (c.base + block - 1) / block * block; b + block <= c.base + c.size && left > 0; b += block) {
      bool free = true;
      for (const MemRange& u : used) free &= b + block <= u.base || u.base + u.size <= b;
      if (!free) continue;
      if (!out.empty() && out.back().base + out.back().size == b) {
        out.back().size += block;
      } else {
        out.push_back({b, block, c.numa});
      }
      left -= block;
    }
  }
  if (left > 0) return std::nullopt;
  return out;
}

TEST(FirstFitTest, AgreesWithBlockByBlockOracle) {
  std::mt19937_64 rng(7);
  int fits = 0, misses = 0;
  for (int trial = 0; trial < 3000; ++trial) {
    std::vector<MemRange> chunks, used;
    uint64_t at = rng() % (2 * kB);
    for (int i = 0, n = 1 + rng() % 4; i < n; ++i) {
      uint64_t size = 1 + rng() % (10 * kB);
      chunks.push_back({at, size, static_cast<uint32_t>(rng() % 2)});
      at += size + rng() % (3 * kB);
    }
    // Held regions: disjoint, anywhere in the address range.
    uint64_t u = rng() % kB;
    while (u < at && used.size() < 6) {
      uint64_t size = 1 + rng() % (3 * kB);
      if (rng() % 2) used.push_back({u, size, 0});
      u += size + rng() % (4 * kB);
    }
    uint64_t bytes = 1 + rng() % (12 * kB);
    std::optional<uint32_t> numa = rng() % 3 == 0 ? std::optional<uint32_t>(rng() % 2) : std::nullopt;
    auto got = FirstFit(chunks, used, bytes, numa, kB);
    auto want = Oracle(chunks, used, bytes, numa, kB);
    ASSERT_EQ(got.has_value(), want.has_value()) << "trial " << trial;
    if (got) {
      ASSERT_EQ(*got, *want) << "trial " << trial;
      ++fits;
    } else {
      ++misses;
    }
  }
  // The generator exercises both outcomes.
  EXPECT_GT(fits, 300);
  EXPECT_GT(misses, 300);
}

}  // namespace
}  // namespace mkfleet::kernel
