#include "cli/output.h"

#include "cli/commands.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

v1::Object Instance(const std::string& name, const std::string& phase, std::vector<uint32_t> cpus) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->set_api_version("mkfleet.io/v1");
  ki->set_kind("KernelInstance");
  ki->mutable_metadata()->set_name(name);
  (*ki->mutable_metadata()->mutable_labels())["app"] = "web";
  ki->mutable_spec()->set_host("node-a");
  ki->mutable_spec()->mutable_resources()->set_memory(4ull << 30);
  ki->mutable_status()->set_phase(phase);
  ki->mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
  for (uint32_t c : cpus) ki->mutable_status()->mutable_placement()->add_cpus(c);
  return o;
}

const std::vector<v1::Object> kTwo = {Instance("web-1", "Running", {2, 3}), Instance("web-2", "Pending", {})};

TEST(OutputTest, JsonIsTheObjectAsStoredUnwrappedWhenOne) {
  Json one = Json::parse(*FormatObjects({kTwo[0]}, /*single=*/true, "json"));
  EXPECT_EQ(one["kind"], "KernelInstance");
  EXPECT_EQ(one["spec"]["resources"]["memory"], "4Gi");  // a quantity, not "4294967296"
  EXPECT_EQ(one["status"]["kernelState"], "Active");     // as manifests spell it, not KERNEL_STATE_ACTIVE
  EXPECT_EQ(one["status"]["placement"]["cpus"], Json({2, 3}));
  Json list = Json::parse(*FormatObjects(kTwo, /*single=*/false, "json"));
  EXPECT_EQ(list["kind"], "List");
  ASSERT_EQ(list["items"].size(), 2u);
  EXPECT_EQ(list["items"][1]["metadata"]["name"], "web-2");
  const std::string yaml = *FormatObjects(kTwo, false, "yaml");
  EXPECT_THAT(yaml, HasSubstr("kernelState: Active"));
  EXPECT_THAT(yaml, HasSubstr("---\n"));
  EXPECT_THAT(yaml, HasSubstr("memory: 4Gi"));
}

TEST(OutputTest, YamlAndJsonShowTheDefaultsTheControllerActsOn) {
  v1::Object o;
  v1::InstanceSet* set = o.mutable_instance_set();
  set->set_api_version("mkfleet.io/v1");
  set->set_kind("InstanceSet");
  set->mutable_metadata()->set_name("edge");
  set->mutable_spec()->set_replicas(3);
  set->mutable_spec()->mutable_rollout()->mutable_max_unavailable()->set_percent(25);
  set->mutable_spec()->mutable_template_()->mutable_spec()->mutable_resources()->set_cpus(2);
  const std::string yaml = *FormatObjects({o}, true, "yaml");
  EXPECT_THAT(yaml, HasSubstr("    maxUnavailable: \"25%\"\n"));  // as written
  EXPECT_THAT(yaml, HasSubstr("    maxSurge: 1\n"));
  EXPECT_THAT(yaml, HasSubstr("    healthTimeout: 1m\n"));
  EXPECT_THAT(yaml, HasSubstr("    autoRollback: true\n"));
  EXPECT_THAT(yaml, HasSubstr("    maxFailures: 1\n"));
  EXPECT_THAT(yaml, HasSubstr("  revisionHistoryLimit: 10\n"));
  EXPECT_THAT(yaml, HasSubstr("phase: Running"));      // an enum's zero, as manifests spell it
  EXPECT_THAT(yaml, HasSubstr("strategy: Replace"));
  Json j = Json::parse(*FormatObjects({o}, true, "json"));
  EXPECT_EQ(j["spec"]["rollout"]["maxSurge"], 1);  // a number
  EXPECT_EQ(j["spec"]["rollout"]["maxUnavailable"], "25%");
  EXPECT_EQ(j["spec"]["template"]["spec"]["update"]["strategy"], "Replace");
  // A Host: unmanaged Keep; driftPolicy is the controller's flag, so not shown.
  v1::Object h;
  h.mutable_host()->set_kind("Host");
  h.mutable_host()->mutable_metadata()->set_name("a");
  h.mutable_host()->mutable_spec()->set_agent("10.0.0.1:7101");
  Json hj = Json::parse(*FormatObjects({h}, true, "json"));
  EXPECT_EQ(hj["spec"]["unmanaged"], "Keep");
  EXPECT_FALSE(hj["spec"].contains("driftPolicy"));
}

TEST(OutputTest, NameIsKindSlashName) {
  EXPECT_EQ(*FormatObjects(kTwo, false, "name"), "KernelInstance/web-1\nKernelInstance/web-2\n");
}


TEST(OutputTest, JsonPathTheWaysKubectlUsersWriteIt) {
  EXPECT_EQ(*FormatObjects(kTwo, false, "jsonpath={.items[*].metadata.name}"), "web-1 web-2");
  EXPECT_EQ(*FormatObjects(kTwo, false, "jsonpath={.items[0].status.phase}"), "Running");
  EXPECT_EQ(*FormatObjects(kTwo, false, "jsonpath={.items[-1].status.phase}"), "Pending");
  EXPECT_EQ(*FormatObjects({kTwo[0]}, true, "jsonpath={.status.placement.cpus}"), "[2,3]");
  EXPECT_EQ(*FormatObjects({kTwo[0]}, true, "jsonpath={.status.placement.cpus[*]}"), "2 3");
  EXPECT_EQ(*FormatObjects({kTwo[0]}, true, "jsonpath={.metadata.labels['app']}"), "web");
  EXPECT_EQ(*FormatObjects(kTwo, false,
                           "jsonpath={range .items[*]}{.metadata.name}{\"\\t\"}{.status.phase}{\"\\n\"}{end}"),
            "web-1\tRunning\nweb-2\tPending\n");
  EXPECT_EQ(*FormatObjects(kTwo, false, "jsonpath=names: {range .items}{.metadata.name},{end}\\n"),
            "names: web-1,web-2,\n");
  EXPECT_EQ(*FormatObjects({kTwo[1]}, true, "jsonpath={.status.missing}"), "");  // missing: nothing
  for (const char* bad : {"jsonpath={.items[*].metadata.name", "jsonpath={range .items}x", "jsonpath={end}",
                          "jsonpath={..name}", "jsonpath={.items[x]}", "jsonpath={}"}) {
    auto got = FormatObjects(kTwo, false, bad);
    EXPECT_EQ(got.status().code(), absl::StatusCode::kInvalidArgument) << bad;
    EXPECT_THAT(got.status().message(), HasSubstr("jsonpath")) << bad;
  }
}

TEST(OutputTest, CustomColumns) {
  EXPECT_EQ(*FormatObjects(kTwo, false, "custom-columns=NAME:.metadata.name,PHASE:.status.phase,CPUS:.status.placement.cpus[*]"),
            "NAME   PHASE    CPUS\n"
            "web-1  Running  2,3\n"
            "web-2  Pending  <none>\n");
  auto bad = FormatObjects(kTwo, false, "custom-columns=NAME");
  EXPECT_THAT(bad.status().message(), HasSubstr("\"NAME\" is not HEADER:PATH"));
  EXPECT_FALSE(IsObjectFormat("wide"));
  EXPECT_TRUE(IsObjectFormat("custom-columns=A:.a"));
}

TEST(UnifiedDiffTest, HunksAsDiffUPrintsThem) {
  EXPECT_EQ(UnifiedDiff("a", "b", "x\ny\n", "x\ny\n"), "");
  EXPECT_EQ(UnifiedDiff("live/KernelInstance/w", "new/KernelInstance/w",
                        "kind: KernelInstance\nspec:\n  host: a\n  resources:\n    cpus: 2\n    memory: 1Gi\n",
                        "kind: KernelInstance\nspec:\n  host: a\n  resources:\n    cpus: 4\n    memory: 1Gi\n"),
            "--- live/KernelInstance/w\n+++ new/KernelInstance/w\n@@ -2,5 +2,5 @@\n spec:\n   host: a\n   resources:\n"
            "-    cpus: 2\n+    cpus: 4\n     memory: 1Gi\n");
  // Created: everything added, from /dev/null.
  EXPECT_EQ(UnifiedDiff("/dev/null", "new/Host/h", "", "a\nb\n"), "--- /dev/null\n+++ new/Host/h\n@@ -0,0 +1,2 @@\n+a\n+b\n");
  // Two changes far apart: two hunks.
  std::string from, to;
  for (int i = 0; i < 20; ++i) {
    from += "l" + std::to_string(i) + "\n";
    to += (i == 2 || i == 15 ? "L" : "l") + std::to_string(i) + "\n";
  }
  const std::string d = UnifiedDiff("a", "b", from, to, 1);
  EXPECT_EQ(d, "--- a\n+++ b\n@@ -2,3 +2,3 @@\n l1\n-l2\n+L2\n l3\n@@ -15,3 +15,3 @@\n l14\n-l15\n+L15\n l16\n");
}

}  // namespace
}  // namespace mkfleet::cli
