#include "reconciler/differ.h"

#include "absl/strings/str_cat.h"
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
  EXPECT_EQ(p.actions[0].id(), "h/a/g1/v0/create-create");
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
  // Memory by target: what node 0 holds after the change (running it twice changes nothing).
  EXPECT_EQ(p.actions[1].memory_remove().target(0).node(), 0u);
  EXPECT_EQ(p.actions[1].memory_remove().target(0).bytes(), 1024ull << 20);
  EXPECT_THAT(p.actions[3].cpu_add().cpus(), ElementsAre(6, 7));
  EXPECT_EQ(p.actions[3].id(), "h/a/g2/v0/cpu-add");
  EXPECT_EQ(p.changes.at("a").kind, InstanceChange::Kind::kResize);
  EXPECT_EQ(p.changes.at("a").summary, "hot-plug -2 CPUs, -1Gi on node 0, +2 CPUs");
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

TEST(ComputePlanTest, MorphStartsALiveUpdateOnTheSurge) {
  DesiredInstance a = Want("a", {2}, 128);
  v1::ObservedInstance running = Have(a, v1::KERNEL_STATE_ACTIVE);
  a.spec.mutable_kernel()->set_image("/k/vmlinux-new");
  a.spec.mutable_update()->set_strategy(v1::UPDATE_MORPH);
  a.spec.mutable_update()->mutable_morph()->set_commit(v1::MORPH_COMMIT_MANUAL);
  a.generation = 3;
  a.revision = KernelRevision(a.spec.kernel(), "");
  v1::Placement surge;
  surge.add_cpus(6);
  surge.add_devices()->set_pci("0000:01:00.0");  // never sent: devices move at the commit
  a.morph_surge = surge;
  a.morph_next = "a-next";
  Plan p = ComputePlan("h", {a}, {running});
  ASSERT_THAT(Steps(p), ElementsAre("morph-start:a"));
  const v1::Action& m = p.actions[0];
  EXPECT_EQ(m.expect(), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(m.morph_start().next(), "a-next");
  EXPECT_EQ(m.morph_start().morph_id(), absl::StrCat("h.a.g3.v", running.version()));
  EXPECT_THAT(m.morph_start().surge().cpus(), ElementsAre(6));
  EXPECT_EQ(m.morph_start().surge().devices_size(), 0);
  EXPECT_EQ(m.morph_start().load().kernel().image(), "/k/vmlinux-new");
  EXPECT_THAT(m.morph_start().target().cpus(), ElementsAre(2));
  EXPECT_TRUE(m.morph_start().manual_commit());
  EXPECT_EQ(m.morph_start().timeout_ms(), 60000u);
  EXPECT_EQ(m.morph_start().revision(), a.revision);
  EXPECT_NE(m.morph_start().previous_revision(), a.revision);
  EXPECT_EQ(p.changes.at("a").kind, InstanceChange::Kind::kMorph);
  EXPECT_FALSE(p.changes.at("a").disruptive);
}

TEST(ComputePlanTest, MorphOnlyKeepsAKernelRunningThatIsToRunOn) {
  // Found by the fleet simulation (seed 840 on 2 hosts): a kernel change with phase Loaded
  // live-updated the kernel, then halted the new one.
  DesiredInstance a = Want("a", {2}, 128, v1::PHASE_LOADED);
  v1::ObservedInstance running = Have(a, v1::KERNEL_STATE_ACTIVE);
  a.spec.mutable_kernel()->set_image("/k/vmlinux-new");
  a.spec.mutable_update()->set_strategy(v1::UPDATE_MORPH);
  v1::Placement surge;
  surge.add_cpus(6);
  a.morph_surge = surge;
  a.morph_next = "a-next";
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {running})), ElementsAre("replace-halt:a", "replace-unload:a", "replace-load:a"));
}

TEST(ComputePlanTest, MorphWithoutSurgeRoomTouchesNothingAndSaysWhy) {
  DesiredInstance a = Want("a", {2}, 128);
  v1::ObservedInstance running = Have(a, v1::KERNEL_STATE_ACTIVE);
  a.spec.mutable_kernel()->set_image("/k/vmlinux-new");
  a.spec.mutable_update()->set_strategy(v1::UPDATE_MORPH);
  a.morph_blocked = "MorphNoSurge: no room for the new kernel beside it: h: no free core";
  Plan p = ComputePlan("h", {a}, {running});
  EXPECT_THAT(p.actions, IsEmpty());
  EXPECT_EQ(p.notes.at("a"), a.morph_blocked);
}

TEST(ComputePlanTest, ARunningMorphIsLeftToTheAgent) {
  DesiredInstance a = Want("a", {2}, 128);
  v1::ObservedInstance old = Have(a, v1::KERNEL_STATE_ACTIVE);
  v1::MorphStatus* m = old.mutable_status()->mutable_morph();
  m->set_phase(v1::MORPH_TRANSFERRING);
  m->set_old_kernel("a");
  m->set_new_kernel("a-next");
  v1::ObservedInstance next = old;
  next.set_name("a-next");
  a.spec.mutable_kernel()->set_image("/k/vmlinux-new");
  a.spec.mutable_update()->set_strategy(v1::UPDATE_MORPH);
  a.placement.add_cpus(3);  // even a resize waits for the morph to end
  Plan p = ComputePlan("h", {a}, {old, next});
  EXPECT_THAT(p.actions, IsEmpty()) << p.DebugString();
  EXPECT_EQ(p.changes.at("a").kind, InstanceChange::Kind::kMorph);
  // Found by the fleet simulation (seed 10): a resize that needs a re-create (the boot CPU
  // leaves the placement) took the old kernel down in the middle of its live update.
  DesiredInstance moved = a;
  moved.placement.clear_cpus();
  moved.placement.add_cpus(5);
  Plan q = ComputePlan("h", {moved}, {old, next});
  EXPECT_THAT(q.actions, IsEmpty()) << q.DebugString();
  // Once it ended, the kernel nobody wants is deleted as usual.
  m->set_phase(v1::MORPH_ROLLED_BACK);
  EXPECT_THAT(Steps(ComputePlan("h", {a}, {old, next})), ::testing::Contains("delete-halt:a-next"));
}

TEST(ComputePlanTest, RevisionsAreStableAndFollowTheKernel) {
  v1::KernelSpec k;
  k.set_image("/k/vmlinux");
  k.set_cmdline("console=mktty0");
  v1::Provenance p;
  p.set_kernel_path("/k/vmlinux");
  p.set_cmdline("console=mktty0");
  EXPECT_EQ(KernelRevision(k, ""), ProvenanceRevision(p));
  EXPECT_EQ(KernelRevision(k, "").size(), 8u);
  k.set_cmdline("console=mktty0 quiet");
  EXPECT_NE(KernelRevision(k, ""), ProvenanceRevision(p));
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

TEST(ComputePlanTest, IdsOfALaterIncarnationNeverRepeatAnEarlierOnes) {
  // Defect 1: deletes used g0 and a re-created object restarts at generation 1, so the
  // agent's journal replayed the old incarnation's ids and nothing ran.
  DesiredInstance a = Want("a", {2}, 128);
  Plan first = ComputePlan("h", {a}, {}, /*host_version=*/100);
  Plan again = ComputePlan("h", {a}, {}, /*host_version=*/100);
  Plan later = ComputePlan("h", {a}, {}, /*host_version=*/250);
  EXPECT_EQ(first.actions[0].id(), again.actions[0].id());  // the same view: replayed
  EXPECT_NE(first.actions[0].id(), later.actions[0].id());  // after delete + re-create: runs
  v1::ObservedInstance one = Have(a, v1::KERNEL_STATE_ACTIVE), two = one;
  one.set_version(120);
  two.set_version(300);
  EXPECT_NE(ComputePlan("h", {}, {one}).actions[0].id(), ComputePlan("h", {}, {two}).actions[0].id());
  // A second crash in one generation: the start after it is a new action.
  v1::ObservedInstance crashed1 = Have(a, v1::KERNEL_STATE_LOADED), crashed2 = crashed1;
  crashed1.set_version(130);
  crashed2.set_version(170);
  Plan s1 = ComputePlan("h", {a}, {crashed1}), s2 = ComputePlan("h", {a}, {crashed2});
  ASSERT_THAT(Steps(s1), ElementsAre("phase-start:a"));
  EXPECT_NE(s1.actions[0].id(), s2.actions[0].id());
  EXPECT_EQ(s1.actions[0].id(), "h/a/g1/v130/phase-start");
}

TEST(ComputePlanTest, CreatesRecordTheOwnerAndAdoptionsClaim) {
  DesiredInstance a = Want("a", {2}, 128);
  a.owner = "KernelInstance/a";
  Plan p = ComputePlan("h", {a}, {});
  EXPECT_EQ(p.actions[0].create().owner(), "KernelInstance/a");
  // Found running, recorded for nobody: claimed, nothing else.
  Plan adopt = ComputePlan("h", {a}, {Have(a, v1::KERNEL_STATE_ACTIVE)});
  EXPECT_THAT(Steps(adopt), ElementsAre("claim:a"));
  EXPECT_EQ(adopt.actions[0].claim().owner(), "KernelInstance/a");
  v1::ObservedInstance owned = Have(a, v1::KERNEL_STATE_ACTIVE);
  owned.set_owner("KernelInstance/a");
  EXPECT_THAT(ComputePlan("h", {a}, {owned}).actions, IsEmpty());
}

TEST(ComputePlanTest, GrowingOntoAnotherNumaNodeRecreates) {
  DesiredInstance before = Want("a", {2, 3}, 512);
  before.placement.add_numa_nodes(0);
  DesiredInstance after = Want("a", {2, 3, 40, 41}, 512);
  after.placement.add_numa_nodes(0);
  after.placement.add_numa_nodes(1);
  Plan p = ComputePlan("h", {after}, {Have(before, v1::KERNEL_STATE_ACTIVE)});
  EXPECT_THAT(Steps(p), ElementsAre("recreate-halt:a", "recreate-unload:a", "recreate-remove:a", "recreate-create:a",
                                    "recreate-load:a", "recreate-start:a"));
  EXPECT_TRUE(p.changes.at("a").disruptive);
  EXPECT_EQ(p.changes.at("a").summary, "re-create: its CPUs move onto NUMA node 1, which it was not created on");
}

TEST(ComputePlanTest, MemoryPerNode) {
  DesiredInstance before = Want("a", {2}, 512);
  DesiredInstance after = Want("a", {2}, 512);
  auto* m = after.placement.add_memory();
  m->set_node(1);
  m->set_bytes(256ull << 20);
  Plan p = ComputePlan("h", {after}, {Have(before, v1::KERNEL_STATE_ACTIVE)});
  ASSERT_THAT(Steps(p), ElementsAre("memory-add:a"));
  ASSERT_EQ(p.actions[0].memory_add().target_size(), 1);
  EXPECT_EQ(p.actions[0].memory_add().target(0).node(), 1u);
  EXPECT_EQ(p.actions[0].memory_add().target(0).bytes(), 256ull << 20);
  // And back: node 1 goes, node 0 stays.
  Plan back = ComputePlan("h", {before}, {Have(after, v1::KERNEL_STATE_ACTIVE)});
  ASSERT_THAT(Steps(back), ElementsAre("memory-remove:a"));
  EXPECT_EQ(back.actions[0].memory_remove().target(0).node(), 1u);
  EXPECT_EQ(back.actions[0].memory_remove().target(0).bytes(), 0u);
}

}  // namespace
}  // namespace mkfleet::reconciler
