#include "agents/executor.h"

#include "agents/testing/agent_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

v1::Action Act(const std::string& id, const std::string& instance, v1::KernelState expect) {
  v1::Action a;
  a.set_id(id);
  a.set_instance(instance);
  a.set_expect(expect);
  return a;
}

class ExecutorTest : public ::testing::Test {
 protected:
  TestHost host_{"exec"};
  Executor exec_{*host_.hk, *host_.journal, host_.topology};
  v1::ExecuteResponse r_;

  // web-1 (1 GiB, with a device) and web-2 (6 GiB on CPUs 4,5,20,21): node 0's 8 GiB pool
  // keeps 1 GiB free.
  void BootWebOneAndTwo() {
    ASSERT_TRUE(exec_.Execute(Boot("web-1", "b1")).ok());
    v1::ActionBatch other = Boot("web-2", "b2");
    auto* p = other.mutable_actions(0)->mutable_create()->mutable_placement();
    p->clear_cpus();
    for (uint32_t c : {4, 5, 20, 21}) p->add_cpus(c);
    p->set_boot_cpu(4);
    p->clear_devices();
    p->mutable_memory(0)->set_bytes(6ull << 30);
    ASSERT_TRUE(exec_.Execute(other).ok());
    ASSERT_EQ(*host_.hk->StateOf("web-2"), v1::KERNEL_STATE_ACTIVE);
  }

  v1::ActionBatch Boot(const std::string& name, const std::string& prefix) {
    v1::ActionBatch b;
    v1::Action create = Act(prefix + "-create", name, v1::KERNEL_STATE_ABSENT);
    v1::Placement* p = create.mutable_create()->mutable_placement();
    for (uint32_t c : {2, 3, 18, 19}) p->add_cpus(c);
    p->set_boot_cpu(2);
    p->add_numa_nodes(0);
    auto* m = p->add_memory();
    m->set_node(0);
    m->set_bytes(1ull << 30);
    p->add_devices()->set_pci("0000:04:00.0");
    *b.add_actions() = create;
    v1::Action load = Act(prefix + "-load", name, v1::KERNEL_STATE_READY);
    load.mutable_load()->mutable_kernel()->set_image(host_.vmlinux);
    load.mutable_load()->mutable_kernel()->set_cmdline("console=mktty0");
    *b.add_actions() = load;
    v1::Action start = Act(prefix + "-start", name, v1::KERNEL_STATE_LOADED);
    start.mutable_start();
    *b.add_actions() = start;
    return b;
  }
};

TEST_F(ExecutorTest, RunsABatchInOrderAndMapsLogicalCpus) {
  v1::ExecuteResponse r = *exec_.Execute(Boot("web-1", "b1"));
  ASSERT_EQ(r.results_size(), 3);
  for (const auto& res : r.results()) EXPECT_EQ(res.code(), 0) << res.id() << ": " << res.message();
  auto obs = host_.hk->Observe();
  ASSERT_EQ(obs->instances.size(), 1u);
  EXPECT_EQ(obs->instances[0].state, v1::KERNEL_STATE_ACTIVE);
  // Logical CPUs 2,3,18,19 as physical ids, boot CPU first.
  EXPECT_EQ(obs->instances[0].resources.cpus[0], host_.topology->physical_ids.at(2));
  EXPECT_EQ(obs->instances[0].resources.cpus.size(), 4u);
}

TEST_F(ExecutorTest, ResentActionsReturnTheRecordedResultWithoutRunning) {
  ASSERT_TRUE(exec_.Execute(Boot("web-1", "b1")).ok());
  auto before = host_.emu->counters();
  v1::ExecuteResponse again = *exec_.Execute(Boot("web-1", "b1"));
  for (const auto& res : again.results()) {
    EXPECT_TRUE(res.replayed()) << res.id();
    EXPECT_EQ(res.code(), 0);
  }
  auto after = host_.emu->counters();
  EXPECT_EQ(after.creates, before.creates);
  EXPECT_EQ(after.loads, before.loads);
  EXPECT_EQ(after.starts, before.starts);
  // Also with a new executor and journal reopened from disk (an agent restart).
  host_.journal.reset();
  host_.journal = *ActionJournal::Open((host_.dir / "journal").string());
  Executor restarted(*host_.hk, *host_.journal, host_.topology);
  v1::ExecuteResponse third = *restarted.Execute(Boot("web-1", "b1"));
  EXPECT_TRUE(third.results(2).replayed());
  EXPECT_EQ(host_.emu->counters().starts, before.starts);
}

TEST_F(ExecutorTest, StopsAtTheFirstFailureAndChecksPreconditions) {
  v1::ActionBatch b = Boot("web-1", "b1");
  b.mutable_actions(1)->set_expect(v1::KERNEL_STATE_LOADED);  // wrong: it will be ready
  v1::ExecuteResponse r = *exec_.Execute(b);
  EXPECT_EQ(r.results(0).code(), 0);
  EXPECT_EQ(r.results(1).code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(r.results(1).message(), "action b1-load on web-1: expected the instance loaded, it is ready");
  EXPECT_EQ(r.results(2).code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(host_.emu->counters().loads, 0);
}

TEST_F(ExecutorTest, FailuresAreNotRecordedAndRunAgainWhenResent) {
  v1::ActionBatch b = Boot("web-1", "b1");
  b.mutable_actions(1)->set_expect(v1::KERNEL_STATE_LOADED);
  EXPECT_NE(exec_.Execute(b)->results(1).code(), 0);
  b.mutable_actions(1)->set_expect(v1::KERNEL_STATE_READY);  // the same id, now right
  v1::ExecuteResponse r = *exec_.Execute(b);
  EXPECT_TRUE(r.results(0).replayed());
  EXPECT_FALSE(r.results(1).replayed());
  EXPECT_EQ(r.results(1).code(), 0);
  EXPECT_EQ(host_.emu->counters().loads, 1);
}

TEST_F(ExecutorTest, KernelErrorsCarryTheErrno) {
  v1::ActionBatch b = Boot("web-1", "b1");
  b.mutable_actions(0)->mutable_create()->mutable_placement()->set_cpus(0, 0);  // the host's CPU
  v1::ExecuteResponse r = *exec_.Execute(b);
  EXPECT_EQ(r.results(0).code(), static_cast<int>(absl::StatusCode::kFailedPrecondition));
  EXPECT_EQ(r.results(0).message(), "action b1-create: CPU 0 (physical id 0) is not in this host's pool");
  EXPECT_EQ(host_.emu->counters().overlays, 0);  // the kernel was not touched
  // What the kernel itself refuses keeps its errno: a CPU lent to another instance.
  ASSERT_TRUE(exec_.Execute(Boot("web-1", "ok")).ok());
  v1::ActionBatch clash = Boot("web-2", "b2");
  r = *exec_.Execute(clash);
  EXPECT_EQ(r.results(0).code(), static_cast<int>(absl::StatusCode::kUnavailable));
  EXPECT_THAT(r.results(0).message(), HasSubstr("EBUSY"));
  v1::Action bad = Act("x", "web-1", v1::KERNEL_STATE_UNKNOWN);
  v1::ActionBatch b2;
  *b2.add_actions() = bad;
  EXPECT_EQ(exec_.Execute(b2)->results(0).message(), "action x: no operation");
}

TEST_F(ExecutorTest, HotplugMemoryAndCpus) {
  ASSERT_TRUE(exec_.Execute(Boot("web-1", "b1")).ok());
  v1::ActionBatch b;
  v1::Action add = Act("m1", "web-1", v1::KERNEL_STATE_ACTIVE);
  auto* m = add.mutable_memory_add()->add_memory();
  m->set_node(0);
  m->set_bytes(512ull << 20);
  *b.add_actions() = add;
  v1::Action cpus = Act("c1", "web-1", v1::KERNEL_STATE_ACTIVE);
  cpus.mutable_cpu_add()->add_cpus(4);
  *b.add_actions() = cpus;
  v1::ExecuteResponse r = *exec_.Execute(b);
  for (const auto& res : r.results()) ASSERT_EQ(res.code(), 0) << res.message();
  auto obs = host_.hk->Observe();
  EXPECT_EQ(obs->instances[0].resources.memory_bytes, (1ull << 30) + (512ull << 20));
  EXPECT_EQ(obs->instances[0].resources.cpus.size(), 5u);
  v1::ActionBatch b2;
  v1::Action remove = Act("m2", "web-1", v1::KERNEL_STATE_ACTIVE);
  auto* rm = remove.mutable_memory_remove()->add_memory();
  rm->set_node(0);
  rm->set_bytes(512ull << 20);
  *b2.add_actions() = remove;
  r = *exec_.Execute(b2);
  ASSERT_EQ(r.results(0).code(), 0) << r.results(0).message();
  EXPECT_EQ(host_.hk->Observe()->instances[0].resources.memory_bytes, 1ull << 30);
}

TEST_F(ExecutorTest, OneFailingInstanceDoesNotStopTheOthers) {
  // Defect: every other instance's actions came back "not run: an earlier action of the
  // batch failed".
  v1::ActionBatch b = Boot("web-1", "a");
  b.mutable_actions(1)->mutable_load()->mutable_kernel()->set_image("/nonexistent/vmlinux");
  v1::ActionBatch other = Boot("web-2", "b");
  auto* p = other.mutable_actions(0)->mutable_create()->mutable_placement();
  p->clear_cpus();
  for (uint32_t c : {4, 5, 20, 21}) p->add_cpus(c);
  p->set_boot_cpu(4);
  p->clear_devices();
  for (const auto& a : other.actions()) *b.add_actions() = a;
  v1::ExecuteResponse r = *exec_.Execute(b);
  ASSERT_EQ(r.results_size(), 6);
  EXPECT_EQ(r.results(0).code(), 0);
  EXPECT_NE(r.results(1).code(), 0);
  EXPECT_THAT(r.results(1).message(), HasSubstr("/nonexistent/vmlinux"));
  EXPECT_EQ(r.results(2).code(), static_cast<int>(absl::StatusCode::kAborted));
  EXPECT_EQ(r.results(2).message(), "not run: a-load of web-1 failed earlier in the batch");
  for (int i = 3; i < 6; ++i) EXPECT_EQ(r.results(i).code(), 0) << r.results(i).id() << ": " << r.results(i).message();
  EXPECT_EQ(*host_.hk->StateOf("web-2"), v1::KERNEL_STATE_ACTIVE);
}

TEST_F(ExecutorTest, AReplacementsImageIsCheckedBeforeTheOldKernelGoes) {
  ASSERT_TRUE(exec_.Execute(Boot("web-1", "b1")).ok());
  v1::ActionBatch b;
  v1::Action halt = Act("r-halt", "web-1", v1::KERNEL_STATE_ACTIVE);
  halt.mutable_halt();
  *b.add_actions() = halt;
  v1::Action unload = Act("r-unload", "web-1", v1::KERNEL_STATE_LOADED);
  unload.mutable_unload();
  *b.add_actions() = unload;
  v1::Action load = Act("r-load", "web-1", v1::KERNEL_STATE_READY);
  load.mutable_load()->mutable_kernel()->set_image("/nonexistent/vmlinux-2");
  *b.add_actions() = load;
  v1::ExecuteResponse r = *exec_.Execute(b);
  EXPECT_NE(r.results(0).code(), 0);
  EXPECT_THAT(r.results(0).message(), HasSubstr("not taken down: its new kernel would not load"));
  EXPECT_THAT(r.results(0).message(), HasSubstr("/nonexistent/vmlinux-2"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(host_.emu->counters().halts, 0);
}

// A batch that re-creates `name` (down, removed, created again) with `bytes` on NUMA node 0.
v1::ActionBatch Recreate(const std::string& name, const std::string& prefix, const v1::ActionBatch& boot,
                         uint64_t bytes) {
  v1::ActionBatch b;
  v1::Action halt = Act(prefix + "-halt", name, v1::KERNEL_STATE_ACTIVE);
  halt.mutable_halt();
  *b.add_actions() = halt;
  v1::Action unload = Act(prefix + "-unload", name, v1::KERNEL_STATE_LOADED);
  unload.mutable_unload();
  *b.add_actions() = unload;
  v1::Action remove = Act(prefix + "-remove", name, v1::KERNEL_STATE_READY);
  remove.mutable_remove();
  *b.add_actions() = remove;
  for (int i = 0; i < boot.actions_size(); ++i) {
    v1::Action a = boot.actions(i);
    a.set_id(prefix + "-" + a.id());
    if (a.has_create()) a.mutable_create()->mutable_placement()->mutable_memory(0)->set_bytes(bytes);
    *b.add_actions() = a;
  }
  return b;
}

// Sim seed 595 (sharded): a re-create planned into memory that another instance was to give
// back (its shrink failed earlier in the batch: its new kernel would not load) took the
// running kernel down, then its create failed EBUSY, every retry, for good.
TEST_F(ExecutorTest, AReCreateThatWouldNotFitDoesNotTakeTheKernelDown) {
  BootWebOneAndTwo();

  // 3 GiB > its own 1 GiB + 1 GiB free: refused before the halt, web-1 runs on.
  v1::ExecuteResponse r = *exec_.Execute(Recreate("web-1", "big", Boot("web-1", "b1"), 3ull << 30));
  EXPECT_EQ(r.results(0).code(), static_cast<int>(absl::StatusCode::kResourceExhausted)) << r.results(0).message();
  EXPECT_THAT(r.results(0).message(), HasSubstr("not taken down: its new placement would not fit"));
  EXPECT_THAT(r.results(0).message(), HasSubstr("NUMA node 0"));
  for (int i = 1; i < r.results_size(); ++i) EXPECT_THAT(r.results(i).message(), HasSubstr("not run"));
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(host_.emu->counters().halts, 0);

  // 2 GiB fits (its own and the free): re-created.
  r = *exec_.Execute(Recreate("web-1", "fits", Boot("web-1", "b1"), 2ull << 30));
  for (const auto& res : r.results()) EXPECT_EQ(res.code(), 0) << res.id() << ": " << res.message();
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ((*host_.hk->InstanceMemory("web-1"))[0], 2ull << 30);
}

TEST_F(ExecutorTest, AReCreateCountsWhatTheBatchRemovesBeforeItsCreate) {
  BootWebOneAndTwo();
  // web-1 goes down first, web-2 is deleted next, then web-1 comes back with 7 GiB and
  // web-2's CPUs: it fits once web-2 is gone, which happens before its create.
  v1::ActionBatch b = Recreate("web-1", "grow", Boot("web-1", "b1"), 7ull << 30);
  v1::ActionBatch mixed;
  for (int i = 0; i < 3; ++i) *mixed.add_actions() = b.actions(i);
  for (const char* op : {"halt", "unload", "remove"}) {
    v1::Action a = Act(std::string("del-") + op, "web-2",
                       std::string(op) == "halt"     ? v1::KERNEL_STATE_ACTIVE
                       : std::string(op) == "unload" ? v1::KERNEL_STATE_LOADED
                                                     : v1::KERNEL_STATE_READY);
    if (std::string(op) == "halt") a.mutable_halt();
    if (std::string(op) == "unload") a.mutable_unload();
    if (std::string(op) == "remove") a.mutable_remove();
    *mixed.add_actions() = a;
  }
  for (int i = 3; i < b.actions_size(); ++i) *mixed.add_actions() = b.actions(i);
  auto* cp = mixed.mutable_actions(6)->mutable_create()->mutable_placement();
  ASSERT_TRUE(mixed.actions(6).has_create());
  cp->clear_cpus();
  for (uint32_t c : {4, 5, 20, 21}) cp->add_cpus(c);
  cp->set_boot_cpu(4);
  v1::ExecuteResponse r = *exec_.Execute(mixed);
  for (const auto& res : r.results()) EXPECT_EQ(res.code(), 0) << res.id() << ": " << res.message();
  EXPECT_EQ(*host_.hk->StateOf("web-1"), v1::KERNEL_STATE_ACTIVE);
  EXPECT_EQ(*host_.hk->StateOf("web-2"), v1::KERNEL_STATE_ABSENT);
}

TEST_F(ExecutorTest, StaleFencesAreRefusedAlsoAfterARestart) {
  v1::ActionBatch newer = Boot("web-1", "n");
  newer.mutable_fence()->set_epoch(3);
  newer.mutable_fence()->set_sequence(10);
  ASSERT_TRUE(exec_.Execute(newer).ok());
  // A delayed batch of the same controller: refused whole, nothing run.
  v1::ActionBatch delayed;
  v1::Action halt = Act("d-halt", "web-1", v1::KERNEL_STATE_ACTIVE);
  halt.mutable_halt();
  *delayed.add_actions() = halt;
  delayed.mutable_fence()->set_epoch(3);
  delayed.mutable_fence()->set_sequence(9);
  auto r = exec_.Execute(delayed);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kAborted);
  EXPECT_THAT(r.status().message(), HasSubstr("stale batch"));
  EXPECT_EQ(host_.emu->counters().halts, 0);
  // The same sequence again (a duplicated call) is taken: its ids replay.
  EXPECT_TRUE(exec_.Execute(newer).ok());
  // After the agent restarts (a new journal object on the same file), still refused.
  host_.journal.reset();
  host_.journal = *ActionJournal::Open((host_.dir / "journal").string());
  Executor restarted(*host_.hk, *host_.journal, host_.topology);
  EXPECT_EQ(restarted.Execute(delayed).status().code(), absl::StatusCode::kAborted);
  // A newer controller epoch starts its sequence over.
  delayed.mutable_fence()->set_epoch(4);
  delayed.mutable_fence()->set_sequence(1);
  EXPECT_TRUE(restarted.Execute(delayed).ok());
  EXPECT_EQ(host_.emu->counters().halts, 1);
}

TEST_F(ExecutorTest, MemoryOverSeveralNodesAndTargetsThatDoNotRunTwice) {
  v1::ActionBatch b = Boot("web-1", "b1");
  auto* p = b.mutable_actions(0)->mutable_create()->mutable_placement();
  auto* m1 = p->add_memory();
  m1->set_node(1);
  m1->set_bytes(512ull << 20);
  v1::ExecuteResponse r = *exec_.Execute(b);
  for (const auto& res : r.results()) ASSERT_EQ(res.code(), 0) << res.message();
  auto mem = host_.hk->InstanceMemory("web-1");
  ASSERT_TRUE(mem.ok()) << mem.status();
  EXPECT_EQ((*mem)[0], 1ull << 30);
  EXPECT_EQ((*mem)[1], 512ull << 20);
  // Grow node 1 to 1Gi by target: twice under two ids, it still adds only once.
  for (const char* id : {"t1", "t2"}) {
    v1::ActionBatch grow;
    v1::Action add = Act(id, "web-1", v1::KERNEL_STATE_UNKNOWN);
    auto* t = add.mutable_memory_add()->add_target();
    t->set_node(1);
    t->set_bytes(1ull << 30);
    *grow.add_actions() = add;
    r = *exec_.Execute(grow);
    ASSERT_EQ(r.results(0).code(), 0) << r.results(0).message();
  }
  EXPECT_EQ((*host_.hk->InstanceMemory("web-1"))[1], 1ull << 30);
  // One in the create's transaction (node 1's share), one for the growth.
  EXPECT_EQ(host_.emu->counters().memory_adds, 2);
  EXPECT_EQ(host_.emu->counters().overlays, 2);
}

TEST_F(ExecutorTest, OwnersAreRecordedClaimedAndNamesChecked) {
  v1::ActionBatch b = Boot("web-1", "b1");
  b.mutable_actions(0)->mutable_create()->set_owner("KernelInstance/web-1");
  ASSERT_TRUE(exec_.Execute(b).ok());
  auto obs = host_.hk->Observe();
  ASSERT_EQ(obs->instances.size(), 1u);
  EXPECT_EQ(obs->instances[0].owner, "KernelInstance/web-1");
  v1::ActionBatch claim;
  v1::Action c = Act("claim", "web-1", v1::KERNEL_STATE_UNKNOWN);
  c.mutable_claim()->set_owner("InstanceSet/web");
  *claim.add_actions() = c;
  ASSERT_EQ(exec_.Execute(claim)->results(0).code(), 0);
  EXPECT_EQ(host_.hk->Observe()->instances[0].owner, "InstanceSet/web");
  // A name that is no DNS label never reaches the kernel (it also names the agent's files).
  v1::ActionBatch bad = Boot("../../pwn", "x");
  r_ = *exec_.Execute(bad);
  EXPECT_EQ(r_.results(0).code(), static_cast<int>(absl::StatusCode::kInvalidArgument));
  EXPECT_THAT(r_.results(0).message(), HasSubstr("not a DNS label"));
  EXPECT_EQ(host_.emu->counters().creates, 1);
}

}  // namespace
}  // namespace mkfleet::agents
