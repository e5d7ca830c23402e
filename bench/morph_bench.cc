// morph_bench: live updates (docs/morph.md) on one emulated host, through the agent's morph
// state machine (agents/morph.h) and the real mkguest in every kernel, with 0 ms boot and
// halt times. Prints the handover gap (the old guest's quiesce acknowledgement to the new
// kernel owning the devices and acknowledging COMMIT) p50/p99/max and the whole morph's
// time p50/p99, and, measured in the same run, the floors the gap is made of: one overlay
// transaction (the devices' move) and one KMP round trip (a heartbeat), so the gap shows as
// a multiple of them. Targets: gap p99 <= 10 ms, total p99 <= 1 s.
//   morph_bench [--morphs 100] [--guest PATH]
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "agents/action_journal.h"
#include "agents/executor.h"
#include "agents/morph.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/guests.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "kmp/connection.h"
#include "mkfleet/v1/kmp.pb.h"
#include "planner/topology_source.h"

namespace {

namespace v1 = mkfleet::v1;
using namespace mkfleet;

double Percentile(std::vector<double> v, double p) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  size_t i = static_cast<size_t>(p * (v.size() - 1) + 0.5);
  return v[std::min(i, v.size() - 1)];
}

v1::Placement Place(std::vector<uint32_t> cpus, uint64_t bytes, std::vector<std::string> devices = {}) {
  v1::Placement p;
  for (uint32_t c : cpus) p.add_cpus(c);
  p.add_numa_nodes(0);
  auto* m = p.add_memory();
  m->set_node(0);
  m->set_bytes(bytes);
  for (const auto& d : devices) p.add_devices()->set_pci(d);
  return p;
}

int Fail(const std::string& why) {
  std::fprintf(stderr, "morph_bench: %s\n", why.c_str());
  return 1;
}

}  // namespace

int main(int argc, char** argv) {
  int morphs = 100;
  std::string guest;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      std::printf("usage: morph_bench [--morphs N] [--guest PATH-TO-MKGUEST]\n");
      return 0;
    }
    if (i + 1 >= argc) return Fail(a + " needs a value");
    std::string v = argv[++i];
    if (a == "--morphs" && absl::SimpleAtoi(v, &morphs) && morphs > 0) continue;
    if (a == "--guest") {
      guest = v;
      continue;
    }
    return Fail("bad flag " + a);
  }
  if (guest.empty()) {
    std::error_code ec;
    auto self = std::filesystem::read_symlink("/proc/self/exe", ec);
    guest = (self.parent_path().parent_path() / "guest" / "mkguest").string();
  }
  if (access(guest.c_str(), X_OK) != 0) return Fail("no mkguest at " + guest + " (--guest PATH)");

  char tmpl[] = "/tmp/morph_bench.XXXXXX";
  std::string dir = mkdtemp(tmpl);
  std::filesystem::create_directories(dir + "/hooks/bench");
  std::ofstream(dir + "/vmlinux-a", std::ios::binary) << std::string("\x7f" "ELF", 4) << "kernel a";
  std::ofstream(dir + "/vmlinux-b", std::ios::binary) << std::string("\x7f" "ELF", 4) << "kernel b";
  auto topo = planner::NewSyntheticTopologySource("pack:1 numa:1(memory=16GiB) core:8 pu:2",
                                                  planner::TopologyOptions{12, 0})
                  ->Load();
  if (!topo.ok()) return Fail(std::string(topo.status().message()));
  auto topology = std::make_shared<const planner::Topology>(*topo);
  kernel::EmulatorOptions o = kernel::MachineFromTopology(*topology);
  o.pci_devices = {"0000:04:00.0", "0000:05:00.0"};
  o.guests.binary = guest;
  o.guests.socket_dir = dir + "/vsock";
  o.guests.hooks_root = dir + "/hooks";
  kernel::EmulatedKernel emu(o);
  kernel::HostKernelOptions ho;
  ho.host = "bench";
  ho.state_dir = dir + "/provenance";
  ho.images.dirs = {dir};
  kernel::HostKernel hk(emu, emu, ho);
  kernel::PoolState pool;
  for (size_t i = 2; i < o.cpus.size(); ++i) pool.cpus.push_back(o.cpus[i]);
  pool.memory.push_back({0, 8ull << 30, 0});
  pool.devices = {{"nic0", "0000:04:00.0", 0, 0}, {"nvme0", "0000:05:00.0", 0, 0}};
  if (auto s = hk.SetPool(pool); !s.ok()) return Fail(std::string(s.message()));
  auto journal = agents::ActionJournal::Open(dir + "/journal");
  if (!journal.ok()) return Fail(std::string(journal.status().message()));
  agents::Executor executor(hk, **journal, topology);

  // The instance: 2 cores, 1 GiB, two devices, running mkguest (no hooks: the mechanism alone).
  v1::ActionBatch boot;
  auto add = [&](const std::string& id) {
    v1::Action* a = boot.add_actions();
    a->set_id(id);
    a->set_instance("web");
    return a;
  };
  *add("c")->mutable_create()->mutable_placement() = Place({2, 3, 4, 5}, 1ull << 30, {"0000:04:00.0", "0000:05:00.0"});
  auto* k = add("l")->mutable_load()->mutable_kernel();
  k->set_image(dir + "/vmlinux-a");
  k->set_cmdline("console=mktty0 mkfleet.guest=bench");
  add("s")->mutable_start();
  auto booted = executor.Execute(boot);
  if (!booted.ok()) return Fail(std::string(booted.status().message()));
  for (const auto& r : booted->results()) {
    if (r.code() != 0) return Fail(r.message());
  }
  auto dial = [&](uint32_t id) {
    return kmp::DialUnix(kernel::VsockPath(dir + "/vsock", id, kernel::kGuestPort), absl::Milliseconds(200));
  };

  // Floor 1: one KMP round trip (a heartbeat to the running guest).
  std::vector<double> kmp_us;
  {
    absl::StatusOr<std::unique_ptr<kmp::Connection>> conn = absl::UnavailableError("");
    for (int i = 0; i < 500 && !conn.ok(); ++i) {
      conn = dial(1);
      if (!conn.ok()) absl::SleepFor(absl::Milliseconds(2));
    }
    if (!conn.ok()) return Fail("the guest does not answer: " + std::string(conn.status().message()));
    for (int i = 0; i < 1000; ++i) {
      absl::Time t = absl::Now();
      auto r = (*conn)->Call(kmp::MsgType::kHeartbeatReq, v1::KmpHeartbeat(), absl::Seconds(1));
      if (!r.ok()) return Fail(std::string(r.status().message()));
      kmp_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t));
    }
  }
  // Floor 2: one overlay transaction (written, applied, read back, under the driver's lock),
  // here a CPU hot-added to a spare instance: the commit's device move is one of these.
  std::vector<double> tx_us;
  {
    kernel::InstanceResources r;
    r.memory_bytes = 256ull << 20;
    r.numa_nodes = {0};
    r.cpus = {topology->physical_ids.at(14)};
    r.pool_cpus = {topology->physical_ids.at(13), topology->physical_ids.at(14)};
    if (auto s = hk.Create("spare-a", std::nullopt, r); !s.ok()) return Fail(std::string(s.message()));
    std::vector<kernel::CpuEntry> cpu = {{topology->physical_ids.at(13), 0, 0}};
    for (int i = 0; i < 200; ++i) {
      absl::Time t = absl::Now();
      if (auto s = hk.AddCpus("spare-a", cpu); !s.ok()) return Fail(std::string(s.message()));
      tx_us.push_back(absl::ToDoubleMicroseconds(absl::Now() - t));
      if (auto s = hk.RemoveCpus("spare-a", cpu); !s.ok()) return Fail(std::string(s.message()));
    }
    (void)hk.Remove("spare-a");
  }

  agents::MorphOptions mo;
  mo.dir = dir + "/morph";
  agents::Morpher morpher(mo, hk, topology, dial, Clock::Real(), agents::MorphHooks{});
  std::vector<double> gap_us, total_us;
  std::string serving = "web";
  int failed = 0;
  std::printf("%d morphs of one instance (2 cores, 1 GiB, 2 devices), 0 ms boots, real mkguest\n", morphs);
  for (int i = 0; i < morphs; ++i) {
    std::string next = serving == "web" ? "web-next" : "web";
    // Where the serving kernel is now (the target: the planner keeps a running placement),
    // and a free core beside it for the surge (what the planner would pick).
    std::vector<uint32_t> now;
    std::set<uint32_t> used;
    auto obs = hk.Observe();
    if (!obs.ok()) return Fail(std::string(obs.status().message()));
    std::map<uint64_t, uint32_t> logical;
    for (const auto& [l, p] : topology->physical_ids) logical[p] = l;
    for (const auto& in : obs->instances) {
      for (uint64_t c : in.resources.cpus) {
        used.insert(logical[c]);
        if (in.name == serving) now.push_back(logical[c]);
      }
    }
    std::vector<uint32_t> surge;
    for (uint32_t c = 2; c + 1 < 16 && surge.empty(); c += 2) {
      if (!used.count(c) && !used.count(c + 1)) surge = {c, c + 1};
    }
    if (surge.empty()) return Fail("no free core for the surge");
    v1::MorphStart s;
    s.set_morph_id(absl::StrCat("bench.", i));
    s.set_next(next);
    *s.mutable_surge() = Place(surge, 512ull << 20);
    auto* kk = s.mutable_load()->mutable_kernel();
    kk->set_image(dir + (i % 2 == 0 ? "/vmlinux-b" : "/vmlinux-a"));
    kk->set_cmdline("console=mktty0 mkfleet.guest=bench");
    *s.mutable_target() = Place(now, 1ull << 30);
    s.set_timeout_ms(60000);
    if (auto st = morpher.Start(serving, s); !st.ok()) return Fail(std::string(st.message()));
    morpher.Wait();
    auto st = morpher.StatusOf(next);
    if (!st || st->phase() != v1::MORPH_COMMITTED) {
      auto back = morpher.StatusOf(serving);
      ++failed;
      std::fprintf(stderr, "morph %d did not commit: %s\n", i, back ? back->reason().c_str() : "?");
      continue;
    }
    gap_us.push_back(static_cast<double>(st->handover_gap_us()));
    total_us.push_back(static_cast<double>(st->total_us()));
    serving = next;
    if ((i + 1) % 25 == 0) std::printf("  %d/%d done\n", i + 1, morphs);
    std::fflush(stdout);
  }
  (void)hk.Halt(serving, /*force=*/true);  // its guest goes with it
  std::filesystem::remove_all(dir);

  double kmp = Percentile(kmp_us, 0.5), tx = Percentile(tx_us, 0.5);
  std::printf("floor: KMP round trip (heartbeat)   p50 %8.1f us  p99 %8.1f us\n", kmp, Percentile(kmp_us, 0.99));
  std::printf("floor: overlay transaction (CPU add) p50 %8.1f us  p99 %8.1f us\n", tx, Percentile(tx_us, 0.99));
  double g50 = Percentile(gap_us, 0.5), g99 = Percentile(gap_us, 0.99), gmax = Percentile(gap_us, 1.0);
  std::printf("handover gap   p50 %8.2f ms  p99 %8.2f ms  max %8.2f ms   (target p99 <= 10 ms) %s\n", g50 / 1000,
              g99 / 1000, gmax / 1000, g99 <= 10000 ? "OK" : "MISSED");
  std::printf("               p50 = %.1f x KMP round trip = %.1f x overlay transaction\n", g50 / kmp, g50 / tx);
  double t50 = Percentile(total_us, 0.5), t99 = Percentile(total_us, 0.99);
  std::printf("whole morph    p50 %8.2f ms  p99 %8.2f ms                  (target p99 <= 1 s) %s\n", t50 / 1000,
              t99 / 1000, t99 <= 1e6 ? "OK" : "MISSED");
  std::printf("committed %zu of %d\n", gap_us.size(), morphs);
  return failed == 0 ? 0 : 1;
}
