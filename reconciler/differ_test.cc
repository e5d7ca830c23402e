#include "reconciler/differ.h"

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::ElementsAre;
using ::testing::IsEmpty;

DesiredInstance Want(const std::string& name, std::vector<uint32_t> cpus, uint64_t mib, v1::Phase phase = v1::PHASE_RUNNING) {
  DesiredInstance d;
  d.name = name;
  d.generation = 1;
  d.spec.set_phase(phase);
  d.spec.mutable_kernel()->set_image("/k/vmlinux");
  d.spec.mutable_kernel()->set_cmdline("console=mktty0");
  for (uint32_t c : cpus) d.placement.add_cpus(c);
  d.placement.set_boot_cpu(cpus.front());
  auto* m = d.placement.add_memory();
  m->set_node(0);
  m->set_bytes(mib << 20);
  return d;
}

v1::ObservedInstance Have(const DesiredInstance& d, v1::KernelState state) {
  v1::ObservedInstance o;
  o.set_name(d.name);
  o.mutable_status()->set_kernel_state(state);
  *o.mutable_status()->mutable_placement() = d.placement;
  if (state == v1::KERNEL_STATE_LOADED || state == v1::KERNEL_STATE_ACTIVE) {
    o.mutable_status()->mutable_provenance()->set_kernel_path(d.spec.kernel().image());
    o.mutable_status()->mutable_provenance()->set_cmdline(d.spec.kernel().cmdline());
  }
  return o;
}

// "step:instance" for each action, e.g. "create-start:web-1".
std::vector<std::string> Steps(const Plan& p) {
  std::vector<std::string> out;
  for (const auto& a : p.actions) out.push_back(a.id().substr(a.id().rfind('/') + 1) + ":" + a.instance());
  return out;
}

TEST(ComputePlanTest, CreatesUpToTheDesiredPhase) {
  EXPECT_THAT(Steps(ComputePlan("h", {Want("a", {2, 3}, 1024)}, {})),
              ElementsAre("create-create:a", "create-load:a", "create-start:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {Want("a", {2}, 128, v1::PHASE_LOADED)}, {})),
              ElementsAre("create-create:a", "create-load:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {Want("a", {2}, 128, v1::PHASE_READY)}, {})), ElementsAre("create-create:a"));
  Plan p = ComputePlan("h", {Want("a", {2, 3}, 1024)}, {});
  EXPECT_EQ(p.actions[0].id(), "h/a/g1/create-create");
  EXPECT_EQ(p.actions[0].expect(), v1::KERNEL_STATE_ABSENT);
  EXPECT_EQ(p.actions[1].expect(), v1::KERNEL_STATE_READY);
  EXPECT_EQ(p.actions[2].expect(), v1::KERNEL_STATE_LOADED);
  EXPECT_EQ(p.actions[1].load().kernel().image(), "/k/vmlinux");
}

TEST(ComputePlanTest, NothingToDoWhenItMatches) {
  DesiredInstance a = Want("a", {2, 3}, 1024);
  Plan p = ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_ACTIVE)});
  EXPECT_THAT(p.actions, IsEmpty());
  EXPECT_THAT(p.notes, IsEmpty());
}

TEST(ComputePlanTest, DeletesHaltBeforeUnloadBeforeRemove) {
  DesiredInstance a = Want("a", {2}, 128);
  EXPECT_THAT(Steps(ComputePlan("h", {}, {Have(a, v1::KERNEL_STATE_ACTIVE)})),
              ElementsAre("delete-halt:a", "delete-unload:a", "delete-remove:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {}, {Have(a, v1::KERNEL_STATE_READY)})), ElementsAre("delete-remove:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {}, {Have(a, v1::KERNEL_STATE_FAILED)})),
              ElementsAre("delete-force-halt:a", "delete-unload:a", "delete-remove:a"));
}

TEST(ComputePlanTest, ReleasesBeforeAcquisitions) {
  // b is deleted, c is created on b's CPUs: b's removal comes first.
  DesiredInstance b = Want("b", {4, 5}, 512);
  DesiredInstance c = Want("c", {4, 5}, 512);
  EXPECT_THAT(Steps(ComputePlan("h", {c}, {Have(b, v1::KERNEL_STATE_ACTIVE)})),
              ElementsAre("delete-halt:b", "delete-unload:b", "delete-remove:b", "create-create:c", "create-load:c",
                          "create-start:c"));
}

TEST(ComputePlanTest, ResizeByHotplugRemovalsFirst) {
  DesiredInstance before = Want("a", {2, 3, 4, 5}, 2048);
  DesiredInstance after = Want("a", {2, 3, 6, 7}, 1024);
  after.generation = 2;
  DesiredInstance other_before = Want("b", {8, 9}, 512);
  other_before.placement.add_devices()->set_pci("0000:04:00.0");
  DesiredInstance other_after = Want("b", {8, 9}, 512);
  DesiredInstance gets_device = Want("c", {10}, 128);
  gets_device.placement.add_devices()->set_pci("0000:04:00.0");
  DesiredInstance c_now = Want("c", {10}, 128);
  Plan p = ComputePlan("h", {after, other_after, gets_device},
                       {Have(before, v1::KERNEL_STATE_ACTIVE), Have(other_before, v1::KERNEL_STATE_ACTIVE),
                        Have(c_now, v1::KERNEL_STATE_ACTIVE)});
  EXPECT_THAT(Steps(p), ElementsAre("cpu-remove:a", "memory-remove:a", "device-remove:b", "cpu-add:a", "device-add:c"));
  EXPECT_THAT(p.actions[0].cpu_remove().cpus(), ElementsAre(4, 5));
  EXPECT_EQ(p.actions[1].memory_remove().memory(0).bytes(), 1024ull << 20);
  EXPECT_THAT(p.actions[3].cpu_add().cpus(), ElementsAre(6, 7));
  EXPECT_EQ(p.actions[3].id(), "h/a/g2/cpu-add");
}

TEST(ComputePlanTest, MovingTheBootCpuRecreates) {
  DesiredInstance before = Want("a", {2, 3}, 512);
  DesiredInstance after = Want("a", {6, 7}, 512);
  after.generation = 3;
  EXPECT_THAT(Steps(ComputePlan("h", {after}, {Have(before, v1::KERNEL_STATE_ACTIVE)})),
              ElementsAre("recreate-halt:a", "recreate-unload:a", "recreate-remove:a", "recreate-create:a",
                          "recreate-load:a", "recreate-start:a"));
}

TEST(ComputePlanTest, KernelChangeWithReplace) {
  DesiredInstance a = Want("a", {2}, 128);
  v1::ObservedInstance running = Have(a, v1::KERNEL_STATE_ACTIVE);
  a.spec.mutable_kernel()->set_cmdline("console=mktty0 quiet");
  a.generation = 4;
  Plan p = ComputePlan("h", {a}, {running});
  EXPECT_THAT(Steps(p), ElementsAre("replace-halt:a", "replace-unload:a", "replace-load:a", "replace-start:a"));
  EXPECT_EQ(p.actions[2].load().kernel().cmdline(), "console=mktty0 quiet");
}

TEST(ComputePlanTest, MorphIsNotSupportedYetAndSaysSo) {
  DesiredInstance a = Want("a", {2}, 128);
  v1::ObservedInstance running = Have(a, v1::KERNEL_STATE_ACTIVE);
  a.spec.mutable_kernel()->set_image("/k/vmlinux-new");
  a.spec.mutable_update()->set_strategy(v1::UPDATE_MORPH);
  Plan p = ComputePlan("h", {a}, {running});
  EXPECT_THAT(p.actions, IsEmpty());
  EXPECT_THAT(p.notes, ElementsAre("a: update strategy Morph (live update) is not supported yet; use Replace"));
}

TEST(ComputePlanTest, PhaseChanges) {
  DesiredInstance a = Want("a", {2}, 128, v1::PHASE_LOADED);
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_ACTIVE)})), ElementsAre("halt:a"));
  a.spec.set_phase(v1::PHASE_READY);
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_ACTIVE)})), ElementsAre("halt:a", "unload:a"));
  a.spec.set_phase(v1::PHASE_RUNNING);
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_LOADED)})), ElementsAre("phase-start:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_READY)})), ElementsAre("phase-load:a", "phase-start:a"));
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_FAILED)})), ElementsAre("rescue-force-halt:a", "phase-start:a"));
}

TEST(ComputePlanTest, DeterministicAndComparable) {
  std::vector<DesiredInstance> want = {Want("b", {4}, 128), Want("a", {2}, 128)};
  Plan one = ComputePlan("h", want, {});
  std::reverse(want.begin(), want.end());
  Plan two = ComputePlan("h", want, {});
  EXPECT_TRUE(one == two);
  EXPECT_EQ(one.DebugString(), two.DebugString());
  EXPECT_THAT(Steps(one)[0], "create-create:a");  // by name
  two.actions.pop_back();
  EXPECT_FALSE(one == two);
}

}  // namespace
}  // namespace mkfleet::reconciler
