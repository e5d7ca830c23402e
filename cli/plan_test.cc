#include <sstream>
#include <string>

#include "cli/commands.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "nlohmann/json.hpp"

namespace mkfleet::cli {
namespace {

using ::testing::HasSubstr;

TEST(PlanTest, ExamplesPlaceAndPrintATable) {
  std::ostringstream out, err;
  PlanOptions options;
  options.paths = {"examples"};
  EXPECT_EQ(RunPlan(options, out, err), kExitOk) << err.str() << out.str();
  EXPECT_THAT(out.str(), HasSubstr("HOST node-a"));
  EXPECT_THAT(out.str(), HasSubstr("free whole cores"));
  EXPECT_THAT(out.str(), HasSubstr("web-1-standby"));
  EXPECT_THAT(out.str(), HasSubstr("nic0=0000:81:00.0"));
  EXPECT_THAT(out.str(), HasSubstr("0 unschedulable"));
}

TEST(PlanTest, JsonHasTheShapeOfDesignMd) {
  std::ostringstream out, err;
  PlanOptions options;
  options.paths = {"examples"};
  options.output = "json";
  ASSERT_EQ(RunPlan(options, out, err), kExitOk) << err.str();
  auto doc = nlohmann::json::parse(out.str());
  ASSERT_TRUE(doc.contains("hosts"));
  ASSERT_TRUE(doc.contains("unschedulable"));
  const auto& host = doc["hosts"][0];
  EXPECT_EQ(host["name"], "node-a");
  EXPECT_TRUE(host["pool"]["cpus"].is_array());
  EXPECT_TRUE(host["pool"]["memory"][0].contains("node"));
  EXPECT_TRUE(host["pool"]["memory"][0].contains("bytes"));
  EXPECT_TRUE(host["pool"]["devices"].is_array());
  bool saw_web = false;
  for (const auto& i : host["instances"]) {
    for (const char* key : {"name", "host", "cpus", "physicalCpus", "bootCpu", "numaNodes", "memory", "devices",
                            "virtio", "llcMask"}) {
      EXPECT_TRUE(i.contains(key)) << key;
    }
    EXPECT_EQ(i["cpus"][0], i["bootCpu"]);
    EXPECT_EQ(i["cpus"].size(), i["physicalCpus"].size());
    if (i["name"] == "web-1") {
      saw_web = true;
      EXPECT_EQ(i["devices"][0]["name"], "nic0");
      EXPECT_EQ(i["devices"][0]["pci"], "0000:81:00.0");
      EXPECT_TRUE(i["devices"][0]["vf"].is_null());
      EXPECT_TRUE(i["devices"][0]["namespace"].is_null());
      EXPECT_EQ(i["virtio"][0]["type"], "net");
      EXPECT_EQ(i["virtio"][0]["uplink"], "eth0");
      EXPECT_EQ(i["virtio"][0]["queues"], 2);
      EXPECT_TRUE(i["llcMask"].is_null());
      EXPECT_EQ(i["numaNodes"], nlohmann::json::array({1}));
    }
  }
  EXPECT_TRUE(saw_web);
}

TEST(PlanTest, UnschedulableExits3WithTheReason) {
  std::ostringstream out, err;
  PlanOptions options;
  options.paths = {"examples"};
  // A much smaller machine for node-a.
  options.topologies = {"node-a=synthetic:pack:1 numa:1(memory=8GiB) core:4 pu:2"};
  options.output = "json";
  EXPECT_EQ(RunPlan(options, out, err), kExitInvalid);  // its pool names CPUs it lacks
  EXPECT_THAT(err.str(), HasSubstr("Host/node-a: spec.pool.cpus: CPU 8 is not an online CPU"));
}

TEST(PlanTest, TooBigInstanceIsExplained) {
  std::ostringstream out, err;
  PlanOptions options;
  options.paths = {"testdata/plan/big.yaml"};
  EXPECT_EQ(RunPlan(options, out, err), kExitUnschedulable) << err.str();
  EXPECT_THAT(out.str(), HasSubstr("UNSCHEDULABLE\n  huge: n1: needs 9 whole cores on one NUMA node; "
                                   "free whole cores: node0=3, node1=4"));
}

TEST(PlanTest, MissingTopologyIsInvalidInput) {
  std::ostringstream out, err;
  PlanOptions options;
  options.paths = {"testdata/plan/big.yaml"};
  options.topologies = {"nohost=live"};
  EXPECT_EQ(RunPlan(options, out, err), kExitInvalid);
  EXPECT_THAT(err.str(), HasSubstr("--topology nohost=live: no Host named \"nohost\""));
}

}  // namespace
}  // namespace mkfleet::cli
