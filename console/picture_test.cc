#include "console/picture.h"

#include <regex>
#include <set>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "planner/topology_source.h"

namespace mkfleet::console {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

v1::TopologyInfo Synthetic(const std::string& description) {
  auto t = planner::NewSyntheticTopologySource(description)->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  return t->ToProto();
}

v1::TopologyInfo FromXml(const std::string& file) {
  auto t = planner::NewXmlTopologySource("testdata/topologies/" + file)->Load();
  EXPECT_TRUE(t.ok()) << t.status();
  return t->ToProto();
}

v1::Object Instance(const std::string& name, const std::string& host, std::vector<uint32_t> cpus,
                    std::vector<std::string> devices = {}, const std::string& phase = "Running") {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->mutable_metadata()->set_name(name);
  ki->mutable_status()->set_phase(phase);
  v1::Placement* p = ki->mutable_status()->mutable_placement();
  p->set_host(host);
  for (uint32_t c : cpus) p->add_cpus(c);
  for (const auto& d : devices) p->add_devices()->set_pci(d);
  return o;
}

v1::HostStatus Pool(std::vector<uint32_t> cpus) {
  v1::HostStatus st;
  for (uint32_t c : cpus) st.mutable_pool()->add_cpus(c);
  return st;
}

size_t Count(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t at = text.find(what); at != std::string::npos; at = text.find(what, at + what.size())) ++n;
  return n;
}

// The attributes of the <rect class="pu"> of `cpu`.
std::string PuRect(const std::string& svg, uint32_t cpu) {
  std::smatch m;
  std::regex re("<rect class=\"pu\"[^>]*data-cpu=\"" + std::to_string(cpu) + "\"[^>]*>");
  return std::regex_search(svg, m, re) ? m.str() : "";
}

TEST(PictureTest, SvgHasOneShapePerCpuColouredByItsOwner) {
  // The 384-CPU, 24-node server of the issue: 4 packages of 6 nodes of 8 cores of 2 CPUs.
  v1::TopologyInfo t = Synthetic("pack:4 numa:6 l3:1 core:8 pu:2");
  std::vector<uint32_t> pool;
  for (uint32_t c = 8; c < 384; ++c) pool.push_back(c);
  std::vector<v1::Object> instances = {Instance("web-1", "big", {8, 9, 10, 11}), Instance("db", "big", {100, 101}),
                                       Instance("elsewhere", "other", {12, 13})};
  HostPicture p = BuildPicture("big", t, Pool(pool), instances);
  ASSERT_EQ(p.owners.size(), 2u);  // "elsewhere" is on another host
  const std::string svg = Svg(p);
  EXPECT_EQ(Count(svg, "<rect class=\"pu\""), 384u);
  EXPECT_EQ(Count(svg, "class=\"numa\""), 24u);
  EXPECT_EQ(Count(svg, "class=\"package\""), 4u);
  ASSERT_EQ(p.owners[1].name, "web-1");
  const std::string web = p.owners[1].colour;
  EXPECT_EQ(Count(svg, "data-owner=\"web-1\" fill=\"" + web + "\""), 4u);
  EXPECT_EQ(Count(svg, "data-owner=\"db\""), 2u + 1u);  // two CPUs and its legend entry
  EXPECT_THAT(PuRect(svg, 9), HasSubstr("fill=\"" + web + "\""));
  EXPECT_THAT(PuRect(svg, 0), HasSubstr(std::string("fill=\"") + kHostColour + "\""));  // outside the pool
  EXPECT_THAT(PuRect(svg, 200), HasSubstr(std::string("fill=\"") + kFreeColour + "\""));
  EXPECT_THAT(svg, HasSubstr("<g class=\"legend-item\" data-owner=\"web-1\"><rect x="));
  EXPECT_THAT(svg, HasSubstr("web-1 (Running, 4 CPUs)"));
  EXPECT_NE(p.owners[0].colour, web);
  // Stable: the same owners get the same colours again.
  EXPECT_EQ(BuildPicture("big", t, Pool(pool), instances).owners[1].colour, web);
  // Readable: nothing wider than the page's 1,400 px and every CPU a 14 px square.
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("width=\"([0-9]+)\" height=\"([0-9]+)\" viewBox")));
  EXPECT_LE(std::stoi(m[1]), 1420);
  EXPECT_LE(std::stoi(m[2]), 1600);
}

TEST(PictureTest, DevicesBesideTheirNodeWithTheirOwner) {
  v1::TopologyInfo t = FromXml("24em64t-2n6c2t-pci.xml");
  ASSERT_GT(t.pci_size(), 0);
  const v1::PciFunctionInfo& nic = t.pci(0);
  HostPicture p = BuildPicture("node-a", t, v1::HostStatus(), {Instance("web-1", "node-a", {2, 3}, {nic.bdf()})});
  const std::string svg = Svg(p);
  EXPECT_EQ(Count(svg, "<rect class=\"dev\""), static_cast<size_t>(t.pci_size()));
  EXPECT_THAT(svg, HasSubstr("data-bdf=\"" + nic.bdf() + "\" data-owner=\"web-1\" fill=\"" + p.owners[0].colour));
  std::string text = TextMap(p);
  EXPECT_THAT(text, HasSubstr(nic.bdf()));
  EXPECT_THAT(text, ::testing::ContainsRegex(nic.bdf() + " .* w web-1\n"));
}

TEST(PictureTest, TextMapHasANodePerRowAndALetterPerCpu) {
  v1::TopologyInfo t = Synthetic("pack:2 numa:1(memory=32GiB) l3:2 core:4 pu:2");
  std::vector<uint32_t> pool;
  for (uint32_t c = 2; c < 32; ++c) pool.push_back(c);
  // Two names with the same initial get different letters.
  HostPicture p = BuildPicture("node-a", t, Pool(pool),
                               {Instance("web-1", "node-a", {2, 3, 4, 5}), Instance("web-2", "node-a", {16, 17})});
  const std::string text = TextMap(p);
  EXPECT_THAT(text, HasSubstr("node-a: 2 packages, 2 NUMA nodes, 16 cores, 32 CPUs (2 per core)"));
  // Node 0: cores 0-7 (CPUs 0-15) in two L3 domains of 4 cores; CPUs 0-1 the host's.
  EXPECT_THAT(text, HasSubstr("\n0     0    32Gi       -- ww ww .. | .. .. .. ..\n"));
  EXPECT_THAT(text, HasSubstr("\n1     1    32Gi       WW .. .. .. | .. .. .. ..\n"));
  EXPECT_THAT(text, HasSubstr("w web-1 (Running, 4 CPUs)"));
  EXPECT_THAT(text, HasSubstr("W web-2 (Running, 2 CPUs)"));
  EXPECT_THAT(text, HasSubstr("- host kernel"));
}

TEST(PictureTest, UnmanagedKernelsAndMemoryOnlyNodes) {
  v1::TopologyInfo t = FromXml("64intel64-fakeKNL-SNC4-hybrid.xml");
  v1::HostStatus st;
  v1::KernelRef* k = st.add_unmanaged();
  k->set_name("stray");
  k->mutable_placement()->add_cpus(t.cores(0).pus(0));
  HostPicture p = BuildPicture("knl", t, st, {});
  ASSERT_EQ(p.owners.size(), 1u);
  EXPECT_EQ(p.owners[0].phase, "unmanaged");
  EXPECT_THAT(TextMap(p), HasSubstr("(memory only)"));
  const std::string svg = Svg(p);
  EXPECT_THAT(svg, HasSubstr("Memory-only NUMA nodes"));
  EXPECT_THAT(PuRect(svg, t.cores(0).pus(0)), HasSubstr("data-owner=\"stray\""));
  int pus = 0;
  for (const auto& c : t.cores()) pus += c.pus_size();
  EXPECT_EQ(Count(svg, "<rect class=\"pu\""), static_cast<size_t>(pus));
}

// The legend wraps inside the picture, however many owners a small host has.
TEST(PictureTest, TheLegendStaysInsideThePicture) {
  v1::TopologyInfo t = Synthetic("pack:1 numa:1 core:8 pu:1");
  std::vector<v1::Object> instances;
  for (uint32_t i = 0; i < 8; ++i) instances.push_back(Instance("a-rather-long-instance-name-" + std::to_string(i), "h", {i}));
  const std::string svg = Svg(BuildPicture("h", t, v1::HostStatus(), instances));
  std::smatch m;
  ASSERT_TRUE(std::regex_search(svg, m, std::regex("width=\"([0-9]+)\" height")));
  const int width = std::stoi(m[1]);
  EXPECT_LE(width, 1420);
  std::regex item("<g class=\"legend-item\" data-owner=\"[^\"]*\"><rect x=\"([0-9]+)\"[^>]*/><text[^>]*>([^<]*)</text>");
  int items = 0;
  for (auto it = std::sregex_iterator(svg.begin(), svg.end(), item); it != std::sregex_iterator(); ++it) {
    ++items;
    EXPECT_LE(std::stoi((*it)[1]) + 18 + 7 * static_cast<int>((*it)[2].length()), width) << (*it)[2];
  }
  EXPECT_EQ(items, 8 + 1);  // and "free"
}

// Every owner of a host has a colour of its own, also past the palette's 19.
TEST(PictureTest, OwnersOfAHostHaveDistinctColours) {
  v1::TopologyInfo t = Synthetic("pack:1 numa:1 core:32 pu:1");
  std::vector<v1::Object> instances;
  for (uint32_t i = 0; i < 30; ++i) instances.push_back(Instance("i-" + std::to_string(i), "h", {i}));
  HostPicture p = BuildPicture("h", t, v1::HostStatus(), instances);
  std::set<std::string> colours;
  for (const Owner& o : p.owners) colours.insert(o.colour);
  EXPECT_EQ(colours.size(), 30u);
  EXPECT_EQ(colours.count(kHostColour) + colours.count(kFreeColour), 0u);
}

TEST(PictureTest, NamesAreEscaped) {
  v1::TopologyInfo t = Synthetic("pack:1 numa:1 core:2 pu:1");
  HostPicture p = BuildPicture("a<b", t, v1::HostStatus(), {Instance("x\"&y", "a<b", {0})});
  const std::string svg = Svg(p);
  EXPECT_THAT(svg, HasSubstr("data-owner=\"x&quot;&amp;y\""));
  EXPECT_THAT(svg, HasSubstr("data-host=\"a&lt;b\""));
  EXPECT_THAT(svg, ::testing::Not(HasSubstr("x\"&y")));
}

}  // namespace
}  // namespace mkfleet::console
