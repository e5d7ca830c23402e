// libFuzzer target for the agent's side of KMP (scripts/fuzz): a morph (agents/morph.h) runs
// against an emulated kernel whose "guests" are a hostile peer answering every request the
// agent sends with the next frame cut from the input (a type byte, a sequence choice, a
// length byte, that much payload). Whatever it answers, the agent must never crash or hang,
// and the morph must end COMMITTED or ROLLED_BACK with the instance's device owned by exactly
// one kernel.
#include <sys/socket.h>
#include <unistd.h>

#include <cstdint>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <string>
#include <thread>

#include "agents/morph.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "kmp/connection.h"
#include "kmp/frame.h"
#include "planner/topology_source.h"

namespace {

namespace v1 = mkfleet::v1;
using namespace mkfleet;

struct Script {
  std::mutex mu;
  const uint8_t* data = nullptr;
  size_t size = 0, at = 0;
  // The next answer to a request with `sequence`, or false when the input is used up.
  bool Next(uint32_t sequence, kmp::Frame* out) {
    static const uint16_t kTypes[] = {1, 2, 3, 32, 33, 34, 35, 36, 37, 48, 49, 77};
    std::lock_guard<std::mutex> lock(mu);
    if (at + 3 > size) return false;
    out->type = kTypes[data[at] % (sizeof(kTypes) / sizeof(kTypes[0]))];
    out->sequence = data[at + 1] % 4 == 0 ? data[at + 1] : sequence;  // mostly the request's
    size_t n = std::min<size_t>(data[at + 2], size - at - 3);
    out->payload.assign(reinterpret_cast<const char*>(data) + at + 3, n);
    at += 3 + n;
    return true;
  }
};

const std::string& Dir() {
  static const std::string dir = [] {
    char tmpl[] = "/tmp/morph_fuzzer.XXXXXX";
    std::string d = mkdtemp(tmpl);
    std::ofstream(d + "/vmlinux", std::ios::binary) << std::string("\x7f" "ELF", 4) << "k";
    return d;
  }();
  return dir;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  static auto topology = std::make_shared<const planner::Topology>(
      *planner::NewSyntheticTopologySource("pack:1 numa:1(memory=4GiB) core:4 pu:1", planner::TopologyOptions{})
           ->Load());
  kernel::EmulatorOptions o = kernel::MachineFromTopology(*topology);
  o.pci_devices = {"0000:04:00.0"};
  kernel::EmulatedKernel emu(o);
  kernel::HostKernelOptions ho;
  ho.images.dirs = {Dir()};
  kernel::HostKernel hk(emu, emu, ho);
  kernel::PoolState pool;
  for (size_t i = 1; i < o.cpus.size(); ++i) pool.cpus.push_back(o.cpus[i]);
  pool.memory.push_back({0, 2ull << 30, 0});
  pool.devices = {{"nic0", "0000:04:00.0", 0, 0}};
  if (!hk.SetPool(pool).ok()) abort();
  kernel::InstanceResources r;
  r.memory_bytes = 512ull << 20;
  r.numa_nodes = {0};
  r.cpus = {o.cpus[1]};
  r.pool_cpus = {o.cpus[1], o.cpus[2], o.cpus[3]};
  r.devices = {{"0000:04:00.0", "vfio-pci"}};
  kernel::KernelImage image;
  image.kernel_path = Dir() + "/vmlinux";
  if (!hk.Create("web", std::nullopt, r).ok() || !hk.Load("web", image).ok() || !hk.Start("web").ok()) abort();

  Script script;
  script.data = data;
  script.size = size;
  std::vector<std::thread> peers;
  std::mutex peers_mu;
  auto dial = [&](uint32_t) -> absl::StatusOr<std::unique_ptr<kmp::Connection>> {
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return absl::UnavailableError("socketpair");
    std::lock_guard<std::mutex> lock(peers_mu);
    peers.emplace_back([&script, fd = fds[1]] {
      kmp::Connection peer(fd);
      while (true) {
        auto req = peer.Receive(absl::Seconds(2));
        if (!req.ok()) break;
        kmp::Frame answer;
        if (!script.Next(req->sequence, &answer) || !peer.SendFrame(answer).ok()) break;
      }
    });
    return std::make_unique<kmp::Connection>(fds[0]);
  };
  std::filesystem::remove_all(Dir() + "/morph");
  agents::MorphOptions mo;
  mo.dir = Dir() + "/morph";
  mo.call_timeout = absl::Milliseconds(200);
  mo.heartbeat_wait = absl::Milliseconds(200);
  {
    agents::Morpher morpher(mo, hk, topology, dial, Clock::Real(), agents::MorphHooks{});
    v1::MorphStart s;
    s.set_morph_id("fuzz");
    s.set_next("web-next");
    v1::Placement surge;
    surge.add_cpus(2);
    surge.add_numa_nodes(0);
    auto* m = surge.add_memory();
    m->set_bytes(256ull << 20);
    *s.mutable_surge() = surge;
    v1::Placement target = surge;
    target.set_cpus(0, 1);
    target.mutable_memory(0)->set_bytes(512ull << 20);
    *s.mutable_target() = target;
    s.mutable_load()->mutable_kernel()->set_image(Dir() + "/vmlinux");
    s.set_timeout_ms(5000);
    if (!morpher.Start("web", s).ok()) abort();
    morpher.Wait();
    auto a = morpher.StatusOf("web");
    auto b = morpher.StatusOf("web-next");
    v1::MorphStatus st = a ? *a : b ? *b : v1::MorphStatus();
    if (!agents::MorphEnded(st.phase())) abort();
    // Exactly one owner of the device: the kernel that serves.
    auto obs = hk.Observe();
    if (!obs.ok()) abort();
    int owners = 0;
    for (const auto& in : obs->instances) owners += static_cast<int>(in.resources.devices.size());
    if (owners != 1 || obs->instances.size() != 1) abort();
  }
  for (auto& t : peers) t.join();
  return 0;
}
