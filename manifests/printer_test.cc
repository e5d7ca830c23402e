#include "manifests/printer.h"
#include "manifests/json.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>

#include "gmock/gmock.h"
#include "google/protobuf/util/message_differencer.h"
#include "gtest/gtest.h"
#include "manifests/testing/test_util.h"

namespace mkfleet::manifests {
namespace {

using ::testing::HasSubstr;
using ::testing::IsEmpty;

std::vector<v1::Object> Objects(const LoadResult& r) {
  std::vector<v1::Object> out;
  for (const LoadedObject& o : r.objects) out.push_back(o.object);
  return out;
}

// YAML -> proto -> YAML -> proto: the two protos are equal, and printing is a fixed point.
void ExpectRoundTrip(const LoadResult& first) {
  ASSERT_THAT(ErrorLines(first), IsEmpty());
  std::string printed = PrintYaml(Objects(first));
  LoadResult second = LoadString(printed, "printed.yaml");
  ASSERT_THAT(ErrorLines(second), IsEmpty()) << printed;
  ASSERT_EQ(first.objects.size(), second.objects.size());
  for (size_t i = 0; i < first.objects.size(); ++i) {
    std::string diff;
    google::protobuf::util::MessageDifferencer d;
    d.set_message_field_comparison(google::protobuf::util::MessageDifferencer::EQUIVALENT);
    d.ReportDifferencesToString(&diff);
    EXPECT_TRUE(d.Compare(first.objects[i].object, second.objects[i].object))
        << first.objects[i].label << ": " << diff << "\n" << printed;
  }
  EXPECT_EQ(PrintYaml(Objects(second)), printed);
}

TEST(PrinterTest, RoundTripsEveryExample) {
  LoadResult r = LoadPaths({"examples"});
  ASSERT_GE(r.objects.size(), 7u);
  ExpectRoundTrip(r);
}

// Inputs the fuzzer once broke: each must load or fail cleanly, and round-trip if valid.
TEST(PrinterTest, FuzzRegressions) {
  int files = 0;
  for (const auto& entry : std::filesystem::directory_iterator("manifests/fuzz_regressions")) {
    ++files;
    std::ifstream in(entry.path());
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    LoadOptions options;
    options.check_host_references = false;
    LoadResult r = LoadString(text, entry.path().string(), options);
    if (r.ok()) ExpectRoundTrip(r);
  }
  EXPECT_GT(files, 0);
}

TEST(PrinterTest, EmptyButPresentMessagesSurvive) {
  LoadResult r = LoadString(
      "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata: {name: n1}\n"
      "spec:\n  agent: 127.0.0.1:1\n  pool:\n    hostReserved:\n      cores:\n");
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  EXPECT_THAT(PrintYaml(r.objects[0].object), HasSubstr("hostReserved: {}"));
  ExpectRoundTrip(r);
}

TEST(PrinterTest, CanonicalUnitsAndDefaultsOmitted) {
  std::string doc = Instance("", "  failover: {policy: Restart, heartbeat: {interval: 60000ms}}\n");
  doc.replace(doc.find("    cpus: 4\n"), 12, "    cpuSet: \"11,8-10\"\n    smt: WholeCore\n");
  doc.replace(doc.find("2Gi"), 3, "2048Mi");
  LoadResult r = LoadString(HostDoc() + "---\n" + doc);
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  std::string out = PrintYaml(r.objects[1].object);
  EXPECT_THAT(out, HasSubstr("cpuSet: \"8-11\""));
  EXPECT_THAT(out, HasSubstr("memory: 2Gi"));
  EXPECT_THAT(out, HasSubstr("interval: 1m"));
  EXPECT_THAT(out, ::testing::Not(HasSubstr("smt")));      // the default
  EXPECT_THAT(out, ::testing::Not(HasSubstr("policy")));   // the default
  EXPECT_THAT(out, HasSubstr("  failover:\n    heartbeat:\n      interval: 1m\n"));
  ExpectRoundTrip(r);
}

TEST(PrinterTest, QuotesStringsThatLookLikeOtherTypes) {
  LoadResult r = LoadString(
      "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: n1\n  labels: {a: \"true\", b: \"1\"}\n"
      "spec:\n  agent: 127.0.0.1:1\n  pool: {hostReserved: {cores: 1}, devices: [\"0000:04:00.1\"]}\n");
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  std::string out = PrintYaml(r.objects[0].object);
  EXPECT_THAT(out, HasSubstr("\"0000:04:00.1\""));
  EXPECT_THAT(out, HasSubstr("a: \"true\""));
  ExpectRoundTrip(r);
}

TEST(PrinterTest, OutputOnlyFieldsOnRequest) {
  v1::Object o;
  o.mutable_kernel_instance()->mutable_metadata()->set_name("x");
  o.mutable_kernel_instance()->mutable_metadata()->set_generation(3);
  o.mutable_kernel_instance()->mutable_status()->set_phase("Running");
  EXPECT_THAT(PrintYaml(o), ::testing::Not(HasSubstr("status")));
  PrintOptions with;
  with.include_output_only = true;
  EXPECT_THAT(PrintYaml(o, with), HasSubstr("generation: 3"));
  EXPECT_THAT(PrintYaml(o, with), HasSubstr("phase: Running"));
}

// Output-only enums have no manifest spelling: they print as manifests would spell them
// (the words after the values' common prefix), never as numbers or PHASE_RUNNING.
TEST(PrinterTest, OutputOnlyEnumsPrintInTheManifestsStyle) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->mutable_metadata()->set_name("x");
  ki->mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
  v1::Condition* c = ki->mutable_status()->add_conditions();
  c->set_type("Ready");
  c->set_status(v1::CONDITION_TRUE);
  PrintOptions with;
  with.include_output_only = true;
  const std::string yaml = PrintYaml(o, with);
  EXPECT_THAT(yaml, HasSubstr("kernelState: Active"));
  EXPECT_THAT(yaml, HasSubstr("status: \"True\""));  // quoted: YAML would read a boolean
  EXPECT_THAT(yaml, ::testing::Not(HasSubstr("KERNEL_STATE")));
}

TEST(PrinterTest, JsonHasJsonTypesInSchemaOrder) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->set_api_version("mkfleet.io/v1");
  ki->set_kind("KernelInstance");
  ki->mutable_metadata()->set_name("web-1");
  ki->mutable_metadata()->set_generation(3);
  (*ki->mutable_metadata()->mutable_labels())["tier"] = "007";
  ki->mutable_spec()->mutable_resources()->set_cpus(4);
  ki->mutable_spec()->mutable_resources()->set_memory(4ull << 30);
  ki->mutable_status()->set_phase("Running");
  ki->mutable_status()->set_kernel_state(v1::KERNEL_STATE_ACTIVE);
  ki->mutable_status()->mutable_placement()->add_cpus(2);
  ki->mutable_status()->mutable_placement()->add_cpus(3);
  v1::Condition* c = ki->mutable_status()->add_conditions();
  c->set_type("Ready");
  c->set_status(v1::CONDITION_TRUE);
  PrintOptions with;
  with.include_output_only = true;
  nlohmann::ordered_json j = PrintJson(o, with);
  EXPECT_EQ(j["kind"], "KernelInstance");
  EXPECT_EQ(j["metadata"]["generation"], 3);
  EXPECT_EQ(j["metadata"]["labels"]["tier"], "007");  // a string that looks like a number stays one
  EXPECT_EQ(j["spec"]["resources"]["cpus"], 4);
  EXPECT_EQ(j["spec"]["resources"]["memory"], "4Gi");
  EXPECT_EQ(j["status"]["phase"], "Running");
  EXPECT_EQ(j["status"]["kernelState"], "Active");
  EXPECT_EQ(j["status"]["placement"]["cpus"], nlohmann::ordered_json({2, 3}));
  EXPECT_EQ(j["status"]["conditions"][0]["status"], "True");
  std::vector<std::string> keys;
  for (const auto& [k, v] : j.items()) keys.push_back(k);
  EXPECT_THAT(keys, ::testing::ElementsAre("apiVersion", "kind", "metadata", "spec", "status"));
}

}  // namespace
}  // namespace mkfleet::manifests
