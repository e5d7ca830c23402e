// kernel_bench: the kernel driver against the emulated kernel (zero boot time).
//  1. Lifecycle: create + load + start + halt + unload + remove of 500 instances on an
//     emulated 768-PU host (synthetic pack:8 numa:2 l3:2 core:12 pu:2).
//  2. Hot-plug storm: 10,000 cpu-add/remove pairs through the driver.
// Target: >= 20,000 overlay transactions/s through the driver.
// Its floor, measured first in the same run: one overlay write and one read of its status
// straight on the emulated kernel, without validation (an injected failure skips decoding
// and checking the overlay); the transaction rates are also given as multiples of it.
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "planner/topology_source.h"

namespace mkfleet::kernel {
namespace {

using Clock = std::chrono::steady_clock;
double Seconds(Clock::duration d) { return std::chrono::duration<double>(d).count(); }

void Check(const absl::Status& s, const char* what) {
  if (!s.ok()) {
    fprintf(stderr, "%s: %s\n", what, std::string(s.message()).c_str());
    exit(1);
  }
}

}  // namespace

int Main() {
  auto topo = planner::NewSyntheticTopologySource("pack:8 numa:2(memory=16GiB) l3:2 core:12 pu:2")->Load();
  Check(topo.status(), "topology");
  EmulatorOptions machine = MachineFromTopology(*topo);
  EmulatedKernel emu(machine);
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / absl::StrCat("mkfleet-kernel-bench-", getpid());
  fs::create_directories(dir);
  std::string vmlinux = (dir / "vmlinux").string();
  std::ofstream(vmlinux, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(1 << 20, 'k');
  // Lock files on tmpfs, as /var/run is on a real host (the kerf lock is created and
  // unlinked on every transaction).
  fs::path run = fs::exists("/dev/shm") ? fs::path("/dev/shm") : dir;
  HostKernelOptions ho;
  ho.host = "bench";
  ho.lock_path = (run / absl::StrCat("mkfleet-bench-", getpid(), ".lock")).string();
  ho.kerf_lock_path = (run / absl::StrCat("mkfleet-bench-", getpid(), "-kerf.lock")).string();
  ho.state_dir = (dir / "state").string();
  ho.images.dirs = {dir.string()};
  HostKernel hk(emu, emu, ho);

  PoolState pool;
  for (size_t i = 2; i < machine.cpus.size(); ++i) pool.cpus.push_back(machine.cpus[i]);  // the host keeps core 0
  for (const MachineMemory& m : machine.memory) pool.memory.push_back({0, m.size / 2, m.numa});
  Check(hk.SetPool(pool), "pool");
  printf("emulated host: %zu CPUs, %zu NUMA nodes; pool %zu CPUs\n", machine.cpus.size(), machine.memory.size(),
         pool.cpus.size());

  // 0. The floor: a raw overlay write + status read, no validation, median of 2,000.
  std::vector<double> raw;
  uint32_t next_tx = 1;  // the emulator numbers transactions from 1; the highest listed + 1
  if (auto listed = emu.List("overlays"); listed.ok()) {
    for (const std::string& e : *listed) {
      uint32_t n = 0;
      if (e.rfind("tx_", 0) == 0 && absl::SimpleAtoi(e.substr(3), &n)) next_tx = std::max(next_tx, n + 1);
    }
  }
  for (int i = 0; i < 2000; ++i) {
    auto f0 = Clock::now();
    emu.FailNextOverlay(EINVAL);
    (void)emu.Write("overlays/new", "floor");
    auto st = emu.Read(absl::StrCat("overlays/tx_", next_tx++, "/status"));
    raw.push_back(Seconds(Clock::now() - f0));
    if (!st.ok()) Check(st.status(), "floor read");
  }
  std::sort(raw.begin(), raw.end());
  const double floor_s = raw[raw.size() / 2];
  printf("0. floor: one overlay write + status read on the emulated kernel, no validation, median of 2000: %.1f us "
         "(%.0f tx/s)\n",
         floor_s * 1e6, 1 / floor_s);

  // 1. Lifecycle of 500 instances, step by step across all of them.
  const int n = 500;
  KernelImage image{vmlinux, "", "console=mktty0", "", ""};
  auto t0 = Clock::now();
  for (int i = 0; i < n; ++i) {
    InstanceResources r;
    r.memory_bytes = 128ull << 20;
    r.cpus = {pool.cpus[i]};
    r.numa_nodes = {machine.memory[i % machine.memory.size()].numa};
    Check(hk.Create(absl::StrCat("i", i), std::nullopt, r), "create");
  }
  auto t1 = Clock::now();
  for (int i = 0; i < n; ++i) Check(hk.Load(absl::StrCat("i", i), image), "load");
  for (int i = 0; i < n; ++i) Check(hk.Start(absl::StrCat("i", i)), "start");
  for (int i = 0; i < n; ++i) Check(hk.Halt(absl::StrCat("i", i), false), "halt");
  for (int i = 0; i < n; ++i) Check(hk.Unload(absl::StrCat("i", i)), "unload");
  auto t2 = Clock::now();
  for (int i = 0; i < n; ++i) Check(hk.Remove(absl::StrCat("i", i)), "remove");
  auto t3 = Clock::now();
  double total = Seconds(t3 - t0);
  double tx = Seconds(t1 - t0) + Seconds(t3 - t2);
  printf("1. lifecycle of %d instances: %.3f s for %d operations = %.0f ops/s; create+remove (overlay "
         "transactions): %.0f tx/s (%.1fx the floor per transaction); load+start+halt+unload (syscalls, sha256 of a "
         "1 MiB image): %.0f ops/s\n",
         n, total, 6 * n, 6 * n / total, 2 * n / tx, tx / (2 * n) / floor_s, 4 * n / Seconds(t2 - t1));

  // 2. Hot-plug storm on one running instance.
  InstanceResources r;
  r.memory_bytes = 1ull << 30;
  r.cpus = {pool.cpus[0]};
  r.pool_cpus = {pool.cpus[0], pool.cpus[1]};
  Check(hk.Create("storm", std::nullopt, r), "create storm");
  Check(hk.Load("storm", image), "load storm");
  Check(hk.Start("storm"), "start storm");
  const int pairs = 10000;
  int before = emu.counters().overlays;
  auto s0 = Clock::now();
  for (int i = 0; i < pairs; ++i) {
    Check(hk.AddCpus("storm", {{pool.cpus[1], 0, 0}}), "cpu-add");
    Check(hk.RemoveCpus("storm", {{pool.cpus[1], 0, 0}}), "cpu-remove");
  }
  double storm = Seconds(Clock::now() - s0);
  int txs = emu.counters().overlays - before;
  printf("2. hot-plug storm: %d cpu-add/remove pairs = %d overlay transactions in %.3f s: %.0f tx/s, %.1fx the "
         "floor per transaction (target >= 20000 tx/s)\n",
         pairs, txs, storm, txs / storm, storm / txs / floor_s);
  fs::remove_all(dir);
  fs::remove(ho.lock_path);
  return 0;
}

}  // namespace mkfleet::kernel

int main(int argc, char** argv) {
  // No options: it measures fixed workloads.
  if (argc > 1) {
    bool help = !strcmp(argv[1], "--help") || !strcmp(argv[1], "-h");
    fprintf(help ? stdout : stderr, "usage: kernel_bench (no options)\n");
    return help ? 0 : 2;
  }
  return mkfleet::kernel::Main();
}
