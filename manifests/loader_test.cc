#include "manifests/loader.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manifests/testing/test_util.h"

namespace mkfleet::manifests {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::ElementsAre;
using ::testing::HasSubstr;
using ::testing::IsEmpty;

// Loads a KernelInstance plus its Host so only the instance's own errors show.
std::vector<std::string> InstanceErrors(const std::string& doc) {
  return ErrorLines(LoadString(HostDoc() + "---\n" + doc));
}

// Line numbers below count from the Instance() document, which starts after the
// 6-line Host document and its "---" (so the instance's line 1 is file line 8).

// An apply's objects are checked again as protos; with a cache, those that passed as sent
// skip their own checks the next time, while the checks across objects still see them
// and an object that failed is checked again.
TEST(LoaderTest, RevalidationRemembersOnlyWhatPassedAsSent) {
  LoadResult loaded = LoadString(HostDoc() + "---\n" + Instance("", ""));
  ASSERT_THAT(ErrorLines(loaded), IsEmpty());
  std::vector<v1::Object> objects;
  for (const LoadedObject& o : loaded.objects) objects.push_back(o.object);
  RevalidationCache cache;
  auto first = RevalidateObjects(objects, &cache);
  ASSERT_TRUE(first.ok()) << first.status();
  auto again = RevalidateObjects(objects, &cache);
  ASSERT_TRUE(again.ok()) << again.status();
  ASSERT_EQ(again->size(), first->size());
  for (size_t i = 0; i < first->size(); ++i) EXPECT_EQ((*again)[i].DebugString(), (*first)[i].DebugString());
  // Across objects: the same Host twice is refused even though each passed alone.
  std::vector<v1::Object> twice = {objects[0], objects[0]};
  auto duplicate = RevalidateObjects(twice, &cache);
  ASSERT_FALSE(duplicate.ok());
  EXPECT_THAT(duplicate.status().message(), HasSubstr("duplicate name"));
  // A bad object stays bad, and a good one changed is checked (not taken for the old one).
  v1::Object bad = objects[1];
  bad.mutable_kernel_instance()->mutable_spec()->mutable_resources()->set_cpus(0);
  for (int round = 0; round < 2; ++round) {
    auto r = RevalidateObjects({objects[0], bad}, &cache);
    ASSERT_FALSE(r.ok()) << round;
    EXPECT_THAT(r.status().message(), HasSubstr("spec.resources.cpus")) << round;
  }
}

TEST(LoaderTest, ValidInstanceFillsTheMessage) {
  LoadResult r = LoadString(HostDoc() + "---\n" +
                            Instance("    smt: Any\n    placement: Spread\n    numaNodes: [0, 1]\n"
                                     "    llcWays: 2\n"
                                     "    devices:\n"
                                     "      - {name: nic0, select: {class: Network, vendor: \"0x8086\", numaLocal: true}, vfs: 2}\n"
                                     "    virtio: [{type: net, uplink: eth0, queues: 2}]\n",
                                     "  failover:\n    policy: Standby\n"
                                     "    heartbeat: {interval: 100ms, misses: 3}\n"
                                     "    standby: {cpus: 1, memory: 512Mi}\n"));
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  ASSERT_EQ(r.objects.size(), 2u);
  const auto& ki = r.objects[1].object.kernel_instance();
  EXPECT_EQ(ki.metadata().name(), "web-1");
  EXPECT_EQ(ki.spec().host(), "node-a");
  EXPECT_EQ(ki.spec().resources().cpus(), 4u);
  EXPECT_EQ(ki.spec().resources().memory(), 2ull << 30);
  EXPECT_EQ(ki.spec().resources().smt(), v1::SMT_ANY);
  EXPECT_EQ(ki.spec().resources().placement(), v1::PLACEMENT_SPREAD);
  EXPECT_THAT(ki.spec().resources().numa_nodes(), ElementsAre(0, 1));
  EXPECT_EQ(ki.spec().resources().llc_ways(), 2u);
  const auto& dev = ki.spec().resources().devices(0);
  EXPECT_EQ(dev.select().device_class(), v1::DEVICE_CLASS_NETWORK);
  EXPECT_EQ(dev.select().vendor(), "0x8086");
  EXPECT_TRUE(dev.select().numa_local());
  EXPECT_EQ(dev.vfs(), 2u);
  EXPECT_EQ(ki.spec().resources().virtio(0).type(), v1::VIRTIO_NET);
  EXPECT_EQ(ki.spec().failover().policy(), v1::FAILOVER_STANDBY);
  EXPECT_EQ(ki.spec().failover().heartbeat().interval(), 100u);
  EXPECT_EQ(ki.spec().failover().standby().memory(), 512ull << 20);
  EXPECT_EQ(r.objects[1].pos.line, 8);
  EXPECT_EQ(r.Summary(), "2 objects valid: 1 Host, 1 KernelInstance");
}

TEST(LoaderTest, UnknownFieldWithSuggestion) {
  EXPECT_THAT(InstanceErrors(Instance("    memroy: 2Gi\n")),
              ElementsAre("t.yaml:19:5: KernelInstance/web-1: spec.resources.memroy: unknown field "
                          "\"memroy\" (did you mean \"memory\"?)"));
}

TEST(LoaderTest, UnknownFieldWithoutSuggestion) {
  EXPECT_THAT(InstanceErrors(Instance("", "  colour: blue\n")),
              ElementsAre("t.yaml:19:3: KernelInstance/web-1: spec.colour: unknown field \"colour\""));
}

TEST(LoaderTest, CaseMistakeSuggestsTheRightSpelling) {
  EXPECT_THAT(InstanceErrors(Instance("    numanodes: [0]\n")),
              ElementsAre(HasSubstr("unknown field \"numanodes\" (did you mean \"numaNodes\"?)")));
}

TEST(LoaderTest, WrongTypes) {
  EXPECT_THAT(InstanceErrors(Instance("    numaNodes: 0\n", "  phase: [Running]\n")),
              ElementsAre("t.yaml:19:16: KernelInstance/web-1: spec.resources.numaNodes: expected a "
                          "list, got a scalar",
                          "t.yaml:20:10: KernelInstance/web-1: spec.phase: expected one of the listed "
                          "values, got a list"));
  EXPECT_THAT(InstanceErrors(Instance("    llcWays: four\n")),
              ElementsAre("t.yaml:19:14: KernelInstance/web-1: spec.resources.llcWays: expected a "
                          "whole number, got \"four\""));
  EXPECT_THAT(InstanceErrors(Instance("", "  kernel: /k/vmlinux\n")),
              ElementsAre(HasSubstr("spec.kernel: duplicate key (first at line 14)")));
}

TEST(LoaderTest, ScalarWhereMappingExpected) {
  EXPECT_THAT(InstanceErrors(Instance("", "  failover: Restart\n")),
              ElementsAre("t.yaml:19:13: KernelInstance/web-1: spec.failover: expected a mapping, "
                          "got a scalar"));
}

TEST(LoaderTest, BadUnits) {
  std::string doc = Instance("", "  failover:\n    heartbeat: {interval: 100, misses: 3}\n");
  doc.replace(doc.find("2Gi"), 3, "2G");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:18:13: KernelInstance/web-1: spec.resources.memory: invalid memory "
                          "quantity \"2G\": unknown unit \"G\" (binary units only: did you mean 2Gi?)",
                          "t.yaml:20:27: KernelInstance/web-1: spec.failover.heartbeat.interval: "
                          "invalid duration \"100\" (a unit is required: ms, s, m or h)"));
}

TEST(LoaderTest, MemoryMustBeAMultipleOf128Mi) {
  std::string doc = Instance();
  doc.replace(doc.find("2Gi"), 3, "100Mi");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:18:13: KernelInstance/web-1: spec.resources.memory: must be a "
                          "multiple of 128Mi, got 100Mi"));
}

TEST(LoaderTest, MemoryOverflow) {
  std::string doc = Instance();
  doc.replace(doc.find("2Gi"), 3, "99999999Ti");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre(HasSubstr("spec.resources.memory: memory quantity \"99999999Ti\" is too large")));
}

TEST(LoaderTest, OutOfRange) {
  EXPECT_THAT(InstanceErrors(Instance("    virtio: [{type: blk, queues: 9}]\n", "  id: 512\n")),
              ElementsAre("t.yaml:19:34: KernelInstance/web-1: spec.resources.virtio[0].queues: must "
                          "be between 1 and 8, got 9",
                          "t.yaml:20:7: KernelInstance/web-1: spec.id: must be between 1 and 511, got 512"));
  EXPECT_THAT(InstanceErrors(Instance("", "  id: 0\n")),
              ElementsAre(HasSubstr("spec.id: must be between 1 and 511, got 0")));
  EXPECT_THAT(InstanceErrors(Instance("", "  id: -3\n")),
              ElementsAre(HasSubstr("spec.id: must be between 1 and 511, got -3")));
  // The kernel's way mask is 32 bits wide.
  EXPECT_THAT(InstanceErrors(Instance("    llcWays: 33\n")),
              ElementsAre(HasSubstr("spec.resources.llcWays: must be between 1 and 32, got 33")));
  EXPECT_THAT(InstanceErrors(Instance("    llcWays: 99999999999999999999\n")),
              ElementsAre(HasSubstr("spec.resources.llcWays: expected a whole number, got "
                                    "\"99999999999999999999\"")));
}

TEST(LoaderTest, NamesMustBeDnsLabels) {
  std::string doc = Instance();
  doc.replace(doc.find("web-1"), 5, "Web_1");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:11:9: KernelInstance/Web_1: metadata.name: must be a DNS label "
                          "(lower-case letters, digits and '-', starting and ending with a letter or "
                          "digit), got \"Web_1\""));
  doc = Instance();
  doc.replace(doc.find("web-1"), 5, std::string(64, 'a'));
  EXPECT_THAT(InstanceErrors(doc), ElementsAre(HasSubstr("must be at most 63 characters, got 64")));
}

TEST(LoaderTest, RequiredFields) {
  std::string doc = Instance();
  doc.erase(doc.find("    memory: 2Gi\n"), 16);
  doc.erase(doc.find("    image: /k/vmlinux\n"), 22);
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:12:1: KernelInstance/web-1: spec.kernel: is required",
                          "t.yaml:15:3: KernelInstance/web-1: spec.resources.memory: is required"));
  doc = Instance("", "  rootfs: {entrypoint: [sh]}\n");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:19:3: KernelInstance/web-1: spec.rootfs.image: is required"));
}

TEST(LoaderTest, NullValueCountsAsMissing) {
  std::string doc = Instance();
  doc.replace(doc.find("2Gi"), 3, "");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:16:3: KernelInstance/web-1: spec.resources.memory: is required"));
}

TEST(LoaderTest, MutuallyExclusiveFields) {
  EXPECT_THAT(
      InstanceErrors(Instance("    cpuSet: \"8-11\"\n    devices:\n      - {name: d, pci: "
                              "\"0000:04:00.0\", vfs: 1, namespaces: 1}\n",
                              "  hostSelector: {matchLabels: {zone: z1}}\n")),
      ElementsAre("t.yaml:19:5: KernelInstance/web-1: spec.resources.cpuSet: cannot be combined "
                  "with \"cpus\" (set only one)",
                  "t.yaml:21:48: KernelInstance/web-1: spec.resources.devices[0].namespaces: cannot "
                  "be combined with \"vfs\" (set only one)",
                  "t.yaml:22:3: KernelInstance/web-1: spec.hostSelector: cannot be combined with "
                  "\"host\" (set only one)"));
}

TEST(LoaderTest, OneOfRequired) {
  std::string doc = Instance();
  doc.erase(doc.find("    cpus: 4\n"), 12);
  doc.erase(doc.find("  host: node-a\n"), 15);
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:15:3: KernelInstance/web-1: spec.resources: one of cpus, cpuSet is "
                          "required"));
  // The walk had an error, so the semantic host/hostSelector check did not run yet; alone:
  doc = Instance();
  doc.erase(doc.find("  host: node-a\n"), 15);
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:12:1: KernelInstance/web-1: spec: exactly one of host, "
                          "hostSelector is required"));
}

TEST(LoaderTest, OutputOnlyFieldsAreRejected) {
  EXPECT_THAT(InstanceErrors(Instance() + "status: {phase: Running}\n"),
              ElementsAre("t.yaml:19:1: KernelInstance/web-1: status: is set by mkfleet and cannot "
                          "be written in a manifest"));
}

TEST(LoaderTest, ApiVersionAndKind) {
  std::string doc = Instance();
  doc.replace(doc.find("mkfleet.io/v1"), 13, "mkfleet.io/v2");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:8:13: KernelInstance/web-1: apiVersion: unsupported "
                          "\"mkfleet.io/v2\" (expected mkfleet.io/v1)"));
  doc = Instance();
  doc.replace(doc.find("KernelInstance"), 14, "KernelInstanse");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:9:7: KernelInstanse/web-1: kind: unknown kind \"KernelInstanse\" "
                          "(expected Host, KernelInstance, InstanceSet, RolloutPolicy or RoleBinding; did you mean "
                          "\"KernelInstance\"?)"));
  doc = Instance();
  doc.erase(doc.find("kind: KernelInstance\n"), 21);
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:8:1: document 2: kind: is required (one of Host, KernelInstance, "
                          "InstanceSet, RolloutPolicy, RoleBinding)"));
}

TEST(LoaderTest, MorphUpdateFields) {
  LoadResult r = LoadString(HostDoc() + "---\n" +
                            Instance("", "  update:\n    strategy: Morph\n"
                                         "    morph: {surge: {cpus: 2, memory: 512Mi}, commit: Manual, timeout: 90s}\n"));
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  const auto& u = r.objects[1].object.kernel_instance().spec().update();
  EXPECT_EQ(u.strategy(), v1::UPDATE_MORPH);
  EXPECT_EQ(u.morph().surge().cpus(), 2u);
  EXPECT_EQ(u.morph().surge().memory(), 512ull << 20);
  EXPECT_EQ(u.morph().commit(), v1::MORPH_COMMIT_MANUAL);
  EXPECT_EQ(u.morph().timeout(), 90000u);
  // morph only with strategy Morph; the surge's memory in whole 128Mi blocks.
  EXPECT_THAT(InstanceErrors(Instance("", "  update:\n    morph: {commit: Manual}\n")),
              ElementsAre(HasSubstr("spec.update.morph: only allowed with strategy Morph")));
  EXPECT_THAT(InstanceErrors(Instance("", "  update:\n    strategy: Morph\n    morph: {surge: {memory: 100Mi}}\n")),
              ElementsAre(HasSubstr("spec.update.morph.surge.memory")));
}

TEST(LoaderTest, NextAndStandbySuffixesAreReserved) {
  std::string next = Instance();
  next.replace(next.find("name: web-1"), 11, "name: web-1-next");
  std::string standby = Instance();
  standby.replace(standby.find("name: web-1"), 11, "name: web-1-standby");
  LoadResult r = LoadString(HostDoc() + "---\n" + Instance() + "---\n" + next + "---\n" + standby);
  EXPECT_THAT(ErrorLines(r),
              ElementsAre(HasSubstr("KernelInstance/web-1-next: metadata.name: collides with the live update's new "
                                    "kernel of KernelInstance/web-1 (the \"-next\" suffix is reserved)"),
                          HasSubstr("KernelInstance/web-1-standby: metadata.name: collides with the standby kernel "
                                    "of KernelInstance/web-1")));
  // Alone, the name is fine.
  EXPECT_TRUE(LoadString(HostDoc() + "---\n" + next).ok());
}

TEST(LoaderTest, DuplicateNames) {
  LoadResult r = LoadString(HostDoc() + "---\n" + Instance() + "---\n" + Instance());
  EXPECT_THAT(ErrorLines(r),
              ElementsAre("t.yaml:23:9: KernelInstance/web-1: metadata.name: duplicate name (also "
                          "defined at t.yaml:8:1)"));
  // The same name in another kind is fine.
  EXPECT_TRUE(LoadString(HostDoc("web-1") + "---\n" + Instance() + "---\n" + HostDoc()).ok());
}

TEST(LoaderTest, DanglingHostReference) {
  std::string doc = Instance();
  doc.replace(doc.find("host: node-a"), 12, "host: node-b");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre("t.yaml:13:9: KernelInstance/web-1: spec.host: no Host named \"node-b\" "
                          "(did you mean \"node-a\"?)"));
  LoadOptions no_refs;
  no_refs.check_host_references = false;
  EXPECT_TRUE(LoadString(doc, "t.yaml", no_refs).ok());
}

TEST(LoaderTest, FixedIdUsedTwiceOnOneHost) {
  std::string a = Instance("", "  id: 7\n");
  std::string b = a;
  b.replace(b.find("web-1"), 5, "web-2");
  EXPECT_THAT(ErrorLines(LoadString(HostDoc() + "---\n" + a + "---\n" + b)),
              ElementsAre("t.yaml:32:7: KernelInstance/web-2: spec.id: id 7 is also used by "
                          "KernelInstance/web-1 on host node-a"));
}

TEST(LoaderTest, EmptyFiles) {
  EXPECT_THAT(ErrorLines(LoadString("")), ElementsAre("t.yaml:1:1: file has no manifest documents"));
  EXPECT_THAT(ErrorLines(LoadString("# only a comment\n---\n")),
              ElementsAre("t.yaml:1:1: file has no manifest documents"));
}

TEST(LoaderTest, DocumentMustBeAMapping) {
  EXPECT_THAT(ErrorLines(LoadString("- a\n- b\n")),
              ElementsAre("t.yaml:1:1: a manifest document must be a mapping, got a list"));
}

TEST(LoaderTest, YamlSyntaxError) {
  auto lines = ErrorLines(LoadString("kind: Host\nmetadata: {name: [a\n"));
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_THAT(lines[0], HasSubstr("YAML syntax error"));
  EXPECT_THAT(lines[0], ::testing::StartsWith("t.yaml:"));
}

TEST(LoaderTest, NotUtf8) {
  EXPECT_THAT(ErrorLines(LoadString("kind: Host\nmetadata: {name: \xe9t\xe9}\n")),
              ElementsAre("t.yaml:2:18: file is not valid UTF-8 (byte 0xe9)"));
}

TEST(LoaderTest, RecursiveAliasIsRejected) {
  EXPECT_THAT(ErrorLines(LoadString("kind: Host\nmetadata: &m {name: *m}\n")),
              ElementsAre("t.yaml:2:21: alias refers to a node that contains it (recursive "
                          "structures are not allowed)"));
}

TEST(LoaderTest, AliasesOfCompleteNodesAreExpanded) {
  std::string doc = Instance("    devices:\n      - &d {name: a, pci: \"0000:01:00.0\"}\n"
                             "    virtio: [&v {type: blk}, *v]\n");
  LoadResult r = LoadString(HostDoc() + "---\n" + doc);
  ASSERT_THAT(ErrorLines(r), IsEmpty());
  EXPECT_EQ(r.objects[1].object.kernel_instance().spec().resources().virtio_size(), 2);
}

TEST(LoaderTest, AliasExpansionStopsAtTheNodeBudget) {
  // 40 aliases of one 5-node device: few tree nodes, but 200 to walk.
  std::string devices = "    devices:\n      - &d {name: a, pci: \"0000:01:00.0\"}\n";
  for (int i = 0; i < 40; ++i) devices += "      - *d\n";
  LoadOptions small;
  small.max_nodes = 120;
  std::vector<std::string> lines = ErrorLines(LoadString(Instance(devices), "t.yaml", small));
  EXPECT_THAT(lines, ::testing::Contains(HasSubstr(
                         "document is too large (too many nodes after expanding aliases)")));
  // With the default budget the same document walks (and fails only on the duplicates).
  lines = ErrorLines(LoadString(HostDoc() + "---\n" + Instance(devices)));
  EXPECT_EQ(lines.size(), 80u);
  EXPECT_THAT(lines, ::testing::Each(::testing::AnyOf(HasSubstr("is also used by devices[0]"),
                                                      HasSubstr("is also requested by devices[0]"))));
}

TEST(LoaderTest, InvalidLabels) {
  std::string doc = Instance();
  doc.replace(doc.find("  name: web-1\n"), 14, "  name: web-1\n  labels: {\"bad key!\": x, app: \"a b\"}\n");
  EXPECT_THAT(InstanceErrors(doc),
              ElementsAre(HasSubstr("t.yaml:12:12: KernelInstance/web-1: metadata.labels.bad key!: "
                                    "invalid label key"),
                          "t.yaml:12:32: KernelInstance/web-1: metadata.labels.app: invalid label "
                          "value \"a b\" (letters, digits, '-', '_', '.', at most 63 characters)"));
}

TEST(LoaderTest, ReportsEveryErrorSortedByPosition) {
  std::string doc = Instance("    smt: Wholecore\n    llcWays: 0\n", "  phase: Runing\n");
  doc.replace(doc.find("/k/vmlinux"), 10, "vmlinux");
  auto lines = InstanceErrors(doc);
  ASSERT_EQ(lines.size(), 4u);
  EXPECT_THAT(lines[0], HasSubstr("t.yaml:15:12: KernelInstance/web-1: spec.kernel.image: must be "
                                  "an absolute path"));
  EXPECT_THAT(lines[1], HasSubstr("t.yaml:19:10: KernelInstance/web-1: spec.resources.smt: unknown "
                                  "value \"Wholecore\" (expected one of WholeCore, Any; did you mean "
                                  "\"WholeCore\"?)"));
  EXPECT_THAT(lines[2], HasSubstr("t.yaml:20:14: KernelInstance/web-1: spec.resources.llcWays"));
  EXPECT_THAT(lines[3], HasSubstr("t.yaml:21:10: KernelInstance/web-1: spec.phase: unknown value "
                                  "\"Runing\""));
}

TEST(LoadPathsTest, DirectoriesRecursiveAndSortedAcrossFiles) {
  namespace fs = std::filesystem;
  fs::path dir = fs::path(::testing::TempDir()) / "loadpaths";
  fs::remove_all(dir);
  fs::create_directories(dir / "sub");
  std::ofstream(dir / "b.yaml") << HostDoc();
  std::string bad = Instance();
  bad.replace(bad.find("2Gi"), 3, "1Mi");
  std::ofstream(dir / "sub" / "a.yml") << bad;
  std::ofstream(dir / "notes.txt") << "not yaml: [";
  LoadResult r = LoadPaths({dir.string(), (dir / "missing.yaml").string()});
  auto lines = ErrorLines(r);
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0], (dir / "missing.yaml").string() + ":1:1: no such file or directory");
  EXPECT_EQ(lines[1], (dir / "sub" / "a.yml").string() +
                          ":11:13: KernelInstance/web-1: spec.resources.memory: must be a multiple "
                          "of 128Mi, got 1Mi");
  EXPECT_EQ(r.objects.size(), 2u);
  fs::remove_all(dir);
}

}  // namespace
}  // namespace mkfleet::manifests
