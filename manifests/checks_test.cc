// Semantic checks: combinations the schema walk cannot express.
#include "manifests/checks.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "manifests/testing/test_util.h"

namespace mkfleet::manifests {
namespace {

using ::testing::ElementsAre;
using ::testing::IsEmpty;
using ::testing::HasSubstr;

std::string HostWithPool(const std::string& pool) {
  return "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata: {name: node-a}\nspec:\n"
         "  agent: 127.0.0.1:7101\n  pool:\n" + pool;
}

TEST(PoolChecksTest, HostReservedExcludesExplicitCpus) {
  EXPECT_THAT(ErrorLines(LoadString(HostWithPool("    hostReserved: {cores: 2}\n    cpus: \"4-7\"\n"
                                                 "    memory: [{node: 0, size: 1Gi}]\n"))),
              ElementsAre("t.yaml:7:5: Host/node-a: spec.pool.hostReserved: cannot be combined "
                          "with explicit cpus or memory"));
}

TEST(PoolChecksTest, ExplicitCpusNeedMemory) {
  EXPECT_THAT(ErrorLines(LoadString(HostWithPool("    cpus: \"4-7\"\n"))),
              ElementsAre("t.yaml:7:5: Host/node-a: spec.pool.cpus: explicit cpus need explicit "
                          "memory per NUMA node"));
}

TEST(PoolChecksTest, EmptyPool) {
  EXPECT_THAT(ErrorLines(LoadString(HostWithPool("    devices: [eth0]\n"))),
              ElementsAre("t.yaml:6:3: Host/node-a: spec.pool: needs hostReserved, or explicit "
                          "cpus and memory"));
}

TEST(PoolChecksTest, DuplicateNodesAndDevices) {
  EXPECT_THAT(ErrorLines(LoadString(HostWithPool(
                  "    cpus: \"4-7\"\n    memory: [{node: 0, size: 1Gi}, {node: 0, size: 2Gi}]\n"
                  "    devices: [eth0, \"0000:04:00.1\", eth0]\n"))),
              ElementsAre("t.yaml:8:43: Host/node-a: spec.pool.memory[1].node: node 0 is listed "
                          "twice (also memory[0])",
                          "t.yaml:9:37: Host/node-a: spec.pool.devices[2]: device \"eth0\" is "
                          "listed twice"));
}

TEST(PoolChecksTest, BadDeviceAndAgentFormats) {
  std::string doc = HostWithPool("    hostReserved: {cores: 2}\n    devices: [\"04:00.1\"]\n");
  doc.replace(doc.find("127.0.0.1:7101"), 14, "localhost");
  EXPECT_THAT(ErrorLines(LoadString(doc)),
              ElementsAre("t.yaml:5:10: Host/node-a: spec.agent: must be host:port with a port "
                          "from 1 to 65535, got \"localhost\"",
                          "t.yaml:8:15: Host/node-a: spec.pool.devices[0]: must be a PCI address "
                          "like 0000:04:00.1 or a device name like eth2, got \"04:00.1\""));
}

TEST(InstanceChecksTest, StandbyNeedsItsFootprintAndOnlyThere) {
  EXPECT_THAT(ErrorLines(LoadString(HostDoc() + "---\n" +
                                    Instance("", "  failover: {policy: Standby}\n"))),
              ElementsAre("t.yaml:19:14: KernelInstance/web-1: spec.failover.policy: policy Standby "
                          "needs failover.standby (cpus, memory)"));
  EXPECT_THAT(ErrorLines(LoadString(HostDoc() + "---\n" +
                                    Instance("", "  failover: {standby: {cpus: 1, memory: 128Mi}}\n"))),
              ElementsAre("t.yaml:19:14: KernelInstance/web-1: spec.failover.standby: only allowed "
                          "with policy Standby"));
}

TEST(InstanceChecksTest, DevicesAndVirtio) {
  EXPECT_THAT(
      ErrorLines(LoadString(
          HostDoc() + "---\n" +
          Instance("    devices:\n"
                   "      - {name: a, select: {class: Network}, namespaces: 1}\n"
                   "      - {name: a, select: {class: GPU}, vfs: 1}\n"
                   "      - {name: b, pci: \"0000:04:00.0\"}\n"
                   "      - {name: c, pci: \"0000:04:00.0\"}\n"
                   "    virtio: [{type: blk, uplink: eth0}]\n"
                   "    placement: NearDevices\n"))),
      ElementsAre("t.yaml:20:57: KernelInstance/web-1: spec.resources.devices[0].namespaces: only "
                  "Storage devices have NVMe namespaces",
                  "t.yaml:21:16: KernelInstance/web-1: spec.resources.devices[1].name: name \"a\" is "
                  "also used by devices[0]",
                  "t.yaml:21:46: KernelInstance/web-1: spec.resources.devices[1].vfs: GPU functions "
                  "are given whole (no SR-IOV VFs)",
                  "t.yaml:23:24: KernelInstance/web-1: spec.resources.devices[3].pci: function "
                  "0000:04:00.0 is also requested by devices[2]",
                  "t.yaml:24:34: KernelInstance/web-1: spec.resources.virtio[0].uplink: only allowed "
                  "for type net"));
}

TEST(InstanceChecksTest, NearDevicesNeedsDevices) {
  EXPECT_THAT(ErrorLines(LoadString(HostDoc() + "---\n" + Instance("    placement: NearDevices\n"))),
              ElementsAre("t.yaml:19:16: KernelInstance/web-1: spec.resources.placement: NearDevices "
                          "needs at least one entry in devices"));
}

std::string Set(const std::string& spec_extra, const std::string& template_extra = "") {
  return "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: edge}\nspec:\n" +
         spec_extra +
         "  template:\n    spec:\n      kernel: {image: /k/vmlinux}\n"
         "      resources: {cpus: 2, memory: 1Gi}\n" +
         template_extra;
}

TEST(InstanceSetChecksTest, ValidSet) {
  LoadResult r = LoadString(Set("  replicas: 3\n  spreadBy: rack\n  rollout: {maxUnavailable: 25%, canary: 1}\n"));
  EXPECT_THAT(ErrorLines(r), IsEmpty());
  const auto& set = r.objects[0].object.instance_set();
  EXPECT_EQ(set.spec().replicas(), 3u);
  EXPECT_EQ(set.spec().rollout().max_unavailable().percent(), 25u);
}

TEST(InstanceSetChecksTest, CountIsRequiredAndExclusive) {
  EXPECT_THAT(ErrorLines(LoadString(Set(""))),
              ElementsAre("t.yaml:4:1: InstanceSet/edge: spec: one of replicas, perHost is required"));
  EXPECT_THAT(ErrorLines(LoadString(Set("  replicas: 2\n  perHost: 1\n"))),
              ElementsAre("t.yaml:6:3: InstanceSet/edge: spec.perHost: cannot be combined with "
                          "\"replicas\" (set only one)"));
}

TEST(InstanceSetChecksTest, TemplateMayNotPickHostsOrIds) {
  EXPECT_THAT(ErrorLines(LoadString(Set("  perHost: 1\n", "      host: node-a\n      id: 3\n"))),
              ElementsAre("t.yaml:10:7: InstanceSet/edge: spec.template.spec.host: not allowed in a "
                          "template (the set picks hosts with spec.hostSelector)",
                          "t.yaml:11:7: InstanceSet/edge: spec.template.spec.id: not allowed in a "
                          "template (replicas would share the id)"));
}

TEST(InstanceSetChecksTest, RolloutLimits) {
  EXPECT_THAT(ErrorLines(LoadString(Set("  replicas: 2\n  rollout: {canary: 3, maxUnavailable: 0}\n"))),
              ElementsAre("t.yaml:6:21: InstanceSet/edge: spec.rollout.canary: must be at most "
                          "replicas (2), got 3",
                          "t.yaml:6:40: InstanceSet/edge: spec.rollout.maxUnavailable: must be at "
                          "least 1 (or 1%), or no update could proceed"));
  EXPECT_THAT(ErrorLines(LoadString(Set("  replicas: 2\n  rollout: {maxUnavailable: 120%}\n"))),
              ElementsAre("t.yaml:6:29: InstanceSet/edge: spec.rollout.maxUnavailable: invalid "
                          "percentage \"120%\" (a whole number from 0 to 100)"));
}

TEST(InstanceSetChecksTest, RolloutBudgetsAndWaves) {
  // The fields of docs/manifests.md's rollout block load, with counts or percents.
  LoadResult ok = LoadString(Set("  replicas: 4\n  rollout: {canary: \"25%\", maxSurge: \"10%\", waves: {by: zone, "
                                 "order: [z2]}, minReady: 30s, maxFailures: 2, autoRollback: false}\n"));
  ASSERT_TRUE(ok.ok()) << ::testing::PrintToString(ErrorLines(ok));
  const mkfleet::v1::Rollout& r = ok.objects[0].object.instance_set().spec().rollout();
  EXPECT_EQ(r.canary().percent(), 25u);
  EXPECT_EQ(r.max_surge().percent(), 10u);
  EXPECT_EQ(r.waves().by(), "zone");
  EXPECT_EQ(r.waves().order(0), "z2");
  EXPECT_EQ(r.min_ready(), 30000u);
  EXPECT_EQ(r.max_failures().count(), 2u);
  EXPECT_FALSE(r.auto_rollback());
  // Budgets of 0 could never let a member move; waves need the label they go by.
  EXPECT_THAT(ErrorLines(LoadString(Set("  replicas: 2\n  rollout: {maxSurge: 0, maxFailures: 0%, waves: {order: [a]}}\n"))),
              ElementsAre(HasSubstr("spec.rollout.maxSurge: must be at least 1"),
                          HasSubstr("spec.rollout.maxFailures: must be at least 1"),
                          HasSubstr("spec.rollout.waves.by: required")));
}

TEST(RolloutPolicyChecksTest, LoadsAndChecksItsSelectorAndBudgets) {
  const std::string head = "apiVersion: mkfleet.io/v1\nkind: RolloutPolicy\nmetadata: {name: web}\nspec:\n";
  LoadResult ok = LoadString(head + "  selector: {matchLabels: {tier: web}}\n  rollout: {canary: 1%, waves: {by: zone}}\n");
  ASSERT_TRUE(ok.ok()) << ::testing::PrintToString(ErrorLines(ok));
  const mkfleet::v1::RolloutPolicy& p = ok.objects[0].object.rollout_policy();
  EXPECT_EQ(p.spec().selector().match_labels().at("tier"), "web");
  EXPECT_EQ(p.spec().rollout().canary().percent(), 1u);
  // A selector that selects everything, or none at all, is refused; so is a budget of 0.
  EXPECT_THAT(ErrorLines(LoadString(head + "  selector: {matchLabels: {}}\n  rollout: {maxUnavailable: 0}\n")),
              ElementsAre(HasSubstr("RolloutPolicy/web: spec.selector.matchLabels: required: at least one label"),
                          HasSubstr("RolloutPolicy/web: spec.rollout.maxUnavailable: must be at least 1")));
  EXPECT_THAT(ErrorLines(LoadString(head + "  rollout: {canary: 1}\n")),
              ElementsAre(HasSubstr("RolloutPolicy/web: spec.selector: ")));
}

TEST(InstanceSetChecksTest, SpreadByOnlyWithReplicas) {
  EXPECT_THAT(ErrorLines(LoadString(Set("  perHost: 1\n  spreadBy: rack\n"))),
              ElementsAre("t.yaml:6:3: InstanceSet/edge: spec.spreadBy: only applies with replicas "
                          "(perHost places on every host)"));
}

std::string Source(const std::string& spec) {
  return "apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: prod}\nspec:\n" + spec;
}

TEST(GitSourceChecksTest, ValidSources) {
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: file:///srv/git/fleet.git\n  path: clusters/prod\n"
                                           "  interval: 30s\n  prune: true\n"))),
              IsEmpty());
  EXPECT_THAT(ErrorLines(LoadString(Source(
                  "  url: ssh://git@git.example.com:2222/infra/fleet.git\n  ref: {tag: v1.4}\n"
                  "  credentials: {sshKeyFile: /etc/k, knownHostsFile: /etc/kh}\n  verify: {keyring: /etc/t.gpg}\n"))),
              IsEmpty());
}

TEST(GitSourceChecksTest, EveryBadFieldIsReported) {
  auto lines = ErrorLines(LoadString(Source(
      "  url: ftp://example.com/x\n  path: ../etc\n  interval: 10ms\n")));
  EXPECT_THAT(lines, ElementsAre(HasSubstr("spec.url: must be a git URL"),
                                 HasSubstr("spec.path: must be a folder inside the repository"),
                                 HasSubstr("spec.interval: must be at least 1s, got 10ms")));
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: file:///x\n  ref: {branch: main, tag: v1}\n"))),
              ElementsAre(HasSubstr("spec.ref: at most one of branch, tag, commit")));
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: ssh://git@h/x.git\n"))),
              ElementsAre(HasSubstr("spec.credentials: an ssh:// url needs sshKeyFile and knownHostsFile")));
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: file:///x\n  credentials: {tokenFile: /t}\n"))),
              ElementsAre(HasSubstr("tokenFile and username only apply to an https:// url")));
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: file:///x\n  ref: {commit: abc}\n"))),
              ElementsAre(HasSubstr("spec.ref.commit: must be a full commit id")));
  EXPECT_THAT(ErrorLines(LoadString(Source("  url: file:///x\n  verify: {}\n"))),
              ElementsAre(HasSubstr("spec.verify.keyring")));
}

}  // namespace
}  // namespace mkfleet::manifests
