#include "manifests/units.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::manifests {
namespace {

using ::testing::ElementsAre;
using ::testing::HasSubstr;

TEST(ParseBytesTest, BinarySuffixesAndPlainBytes) {
  EXPECT_EQ(*ParseBytes("512Mi"), 512ull << 20);
  EXPECT_EQ(*ParseBytes("2Gi"), 2ull << 30);
  EXPECT_EQ(*ParseBytes("1Ti"), 1ull << 40);
  EXPECT_EQ(*ParseBytes("4Ki"), 4096u);
  EXPECT_EQ(*ParseBytes("4096"), 4096u);
  EXPECT_EQ(*ParseBytes("0"), 0u);
  EXPECT_EQ(*ParseBytes("16777215Ti"), 16777215ull << 40);
}

TEST(ParseBytesTest, RejectsOverflow) {
  auto r = ParseBytes("99999999Ti");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().message(), "memory quantity \"99999999Ti\" is too large");
  EXPECT_FALSE(ParseBytes("16777216Ti").ok());  // exactly 2^64
  EXPECT_FALSE(ParseBytes("18446744073709551616").ok());
  EXPECT_EQ(*ParseBytes("18446744073709551615"), 18446744073709551615ull);
}

TEST(ParseBytesTest, RejectsDecimalUnitsWithHint) {
  auto r = ParseBytes("2G");
  ASSERT_FALSE(r.ok());
  EXPECT_THAT(r.status().message(), HasSubstr("did you mean 2Gi?"));
  EXPECT_THAT(ParseBytes("2GB").status().message(), HasSubstr("did you mean 2Gi?"));
  EXPECT_THAT(ParseBytes("2Xi").status().message(), HasSubstr("unknown unit \"Xi\""));
}

TEST(ParseBytesTest, RejectsMalformed) {
  for (const char* bad : {"", "Gi", "-1Gi", "1.5Gi", " 2Gi", "2 Gi", "0x10"}) {
    EXPECT_FALSE(ParseBytes(bad).ok()) << bad;
  }
}

TEST(FormatBytesTest, ShortestExactUnit) {
  EXPECT_EQ(FormatBytes(2ull << 30), "2Gi");
  EXPECT_EQ(FormatBytes(1536ull << 20), "1536Mi");
  EXPECT_EQ(FormatBytes(1000), "1000");
  EXPECT_EQ(FormatBytes(0), "0");
  EXPECT_EQ(FormatBytes(3ull << 40), "3Ti");
}

TEST(FormatBytesTest, ApproxForMessages) {
  EXPECT_EQ(FormatBytesApprox(2ull << 30), "2Gi");
  EXPECT_EQ(FormatBytesApprox(34330173440ull), "31.97Gi");
  EXPECT_EQ(FormatBytesApprox(1000), "1000");
}

TEST(DurationTest, ParsesUnitsAndSequences) {
  EXPECT_EQ(*ParseDurationMs("100ms"), 100u);
  EXPECT_EQ(*ParseDurationMs("5s"), 5000u);
  EXPECT_EQ(*ParseDurationMs("2m"), 120000u);
  EXPECT_EQ(*ParseDurationMs("1h"), 3600000u);
  EXPECT_EQ(*ParseDurationMs("1m30s"), 90000u);
  EXPECT_EQ(*ParseDurationMs("0s"), 0u);
}

TEST(DurationTest, RejectsMissingOrUnknownUnitsAndOverflow) {
  EXPECT_THAT(ParseDurationMs("100").status().message(), HasSubstr("a unit is required"));
  EXPECT_THAT(ParseDurationMs("5d").status().message(), HasSubstr("unknown unit \"d\""));
  EXPECT_THAT(ParseDurationMs("99999999999999999999h").status().message(),
              HasSubstr("too large"));
  EXPECT_THAT(ParseDurationMs("9999999999999999h").status().message(), HasSubstr("too large"));
  EXPECT_FALSE(ParseDurationMs("").ok());
  EXPECT_FALSE(ParseDurationMs("s").ok());
  EXPECT_FALSE(ParseDurationMs("-5s").ok());
}

TEST(DurationTest, FormatsShortestUnit) {
  EXPECT_EQ(FormatDurationMs(100), "100ms");
  EXPECT_EQ(FormatDurationMs(90000), "90s");
  EXPECT_EQ(FormatDurationMs(120000), "2m");
  EXPECT_EQ(FormatDurationMs(7200000), "2h");
  EXPECT_EQ(FormatDurationMs(0), "0s");
}

TEST(CpuListTest, ParsesRangesAndSingles) {
  EXPECT_THAT(*ParseCpuList("0-3,8,10-11"), ElementsAre(0, 1, 2, 3, 8, 10, 11));
  EXPECT_THAT(*ParseCpuList("5"), ElementsAre(5));
  EXPECT_THAT(*ParseCpuList("8, 2-3"), ElementsAre(2, 3, 8));
  EXPECT_THAT(*ParseCpuList("7-7"), ElementsAre(7));
}

TEST(CpuListTest, RejectsBadLists) {
  EXPECT_EQ(ParseCpuList("5-3").status().message(), "invalid CPU list \"5-3\": range \"5-3\" is reversed");
  EXPECT_EQ(ParseCpuList("0-3,2").status().message(), "invalid CPU list \"0-3,2\": CPU 2 is listed twice");
  EXPECT_THAT(ParseCpuList("0,,1").status().message(), HasSubstr("empty item"));
  EXPECT_THAT(ParseCpuList("a-b").status().message(), HasSubstr("is not a CPU number"));
  EXPECT_THAT(ParseCpuList("0-99999").status().message(), HasSubstr("is not a CPU number"));
  EXPECT_THAT(ParseCpuList("99999999999999999999").status().message(), HasSubstr("is not a CPU"));
  EXPECT_EQ(ParseCpuList("").status().message(), "CPU list is empty");
  EXPECT_FALSE(ParseCpuList("1-").ok());
  EXPECT_FALSE(ParseCpuList("-1").ok());
}

TEST(CpuListTest, FormatsRanges) {
  EXPECT_EQ(FormatCpuList({0, 1, 2, 3, 8, 10, 11}), "0-3,8,10-11");
  EXPECT_EQ(FormatCpuList({11, 10, 3}), "3,10-11");
  EXPECT_EQ(FormatCpuList({}), "");
}

TEST(PercentTest, ParsesAndBounds) {
  EXPECT_EQ(*ParsePercent("25%"), 25u);
  EXPECT_EQ(*ParsePercent("0%"), 0u);
  EXPECT_EQ(*ParsePercent("100%"), 100u);
  EXPECT_THAT(ParsePercent("101%").status().message(), HasSubstr("0 to 100"));
  EXPECT_FALSE(ParsePercent("25").ok());
  EXPECT_FALSE(ParsePercent("%").ok());
}

TEST(ParseUnsignedTest, Bounds) {
  EXPECT_EQ(*ParseUnsigned("511", 511), 511u);
  EXPECT_EQ(ParseUnsigned("512", 511).status().message(), "must be at most 511, got 512");
  EXPECT_FALSE(ParseUnsigned("", 10).ok());
  EXPECT_FALSE(ParseUnsigned("1e3", 10000).ok());
}

}  // namespace
}  // namespace mkfleet::manifests
