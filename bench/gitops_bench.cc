// gitops_bench: how fast does a commit become the fleet's desired state? A repository of
// HOSTS Hosts (default 1,000) and 10 KernelInstances each (10,000) across HOSTS files is
// made with the git CLI; a GitSource points at it (file://), and the controller's source
// controller (in process, SQLite store in a file, no agents: their work is not counted)
// fetches, loads, validates and applies it. Figures:
//   full apply      the first commit, from `git commit` returning to applied (a fresh mirror:
//                   the whole repository is fetched, every file loaded);
//   no-op fetch     a fetch that finds the applied commit (median of 10);
//   one-file change a commit changing one instance's memory, to applied (median of 10).
// Floor, measured in the same run: one fsync of a 4 KiB file in the store's folder.
// Targets on 2 cores: full apply <= 5 s, no-op fetch <= 100 ms, one-file change <= 500 ms.
// Usage: gitops_bench [--hosts N]
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/testing/simulated_clock.h"
#include "gitops/source_controller.h"
#include "gitops/testing/git_fixture.h"

namespace {

using namespace mkfleet;
namespace v1 = mkfleet::v1;
using WallClock = std::chrono::steady_clock;

double Ms(WallClock::duration d) { return std::chrono::duration<double, std::milli>(d).count(); }

std::string HostFile(int h, int memory_mi) {
  std::string name = absl::StrFormat("host-%04d", h);
  std::string out = absl::StrCat("apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: ", name,
                                 "\n  labels: {rack: r", h % 40, ", zone: z", h % 4, "}\nspec:\n  agent: 127.0.0.1:",
                                 10000 + h, "\n  pool:\n    cpus: \"2-63\"\n    memory:\n      - {node: 0, size: 64Gi}\n",
                                 "      - {node: 1, size: 64Gi}\n");
  for (int i = 0; i < 10; ++i) {
    absl::StrAppend(&out, "---\napiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: ", name, "-k", i,
                    "\n  labels: {app: web, tier: t", i % 3, "}\nspec:\n  host: ", name,
                    "\n  kernel:\n    image: /var/lib/mkfleet/kernels/vmlinux-6.12\n    cmdline: \"console=mktty0 "
                    "quiet\"\n  resources:\n    cpus: 2\n    memory: ",
                    i == 0 ? memory_mi : 1024, "Mi\n  failover:\n    policy: Restart\n");
  }
  return out;
}

double FsyncFloorMs(const std::string& dir) {
  std::vector<double> times;
  std::string block(4096, 'x');
  for (int i = 0; i < 20; ++i) {
    std::string path = dir + "/floor";
    int fd = open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    auto start = WallClock::now();
    if (write(fd, block.data(), block.size()) < 0) perror("write");
    fsync(fd);
    times.push_back(Ms(WallClock::now() - start));
    close(fd);
  }
  std::sort(times.begin(), times.end());
  return times[times.size() / 2];
}

double Median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  int hosts = 1000;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--hosts") && i + 1 < argc) {
      hosts = std::max(1, atoi(argv[++i]));
    } else {
      fputs("usage: gitops_bench [--hosts N]\n", !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ? stdout : stderr);
      return !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h") ? 0 : 2;
    }
  }
  mkfleet::testing::TempDir tmp;
  const std::string dir = tmp.path();
  mkfleet::testing::TestRepo repo(dir + "/repo");
  std::cout << "repository: " << hosts << " files, " << hosts << " Hosts, " << hosts * 10 << " KernelInstances"
            << std::endl;
  for (int h = 0; h < hosts; ++h) repo.Write(absl::StrFormat("fleet/rack-%02d/host-%04d.yaml", h % 40, h), HostFile(h, 1024));
  repo.Commit("the whole fleet");

  SimulatedClock clock;
  auto store = reconciler::OpenSqliteStore(dir + "/store.db", clock);
  if (!store.ok()) {
    std::cerr << store.status() << "\n";
    return 1;
  }
  reconciler::Objects objects(**store);
  auto events = reconciler::EventLog::Open(**store, clock);
  gitops::SourceControllerOptions options;
  options.cache_dir = dir + "/cache";
  gitops::SourceController sources(**store, objects, events->get(), nullptr, clock, options);
  manifests::LoadResult loaded;
  manifests::LoadText("source.yaml",
                      absl::StrCat("apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: fleet}\nspec:\n  url: ",
                                   repo.url(), "\n  path: fleet\n  interval: 30s\n  prune: true\n"),
                      {}, &loaded);
  reconciler::ApplyOptions apply;
  apply.source = "source.yaml";
  if (!loaded.ok() || !objects.Apply({loaded.objects[0].object}, apply).ok()) {
    std::cerr << "cannot apply the GitSource\n";
    return 1;
  }
  const double floor = FsyncFloorMs(dir);

  // Full apply: the first fetch and apply of the whole repository.
  auto start = WallClock::now();
  int fetched = sources.RunOnce();
  const double full = Ms(WallClock::now() - start);
  auto source = objects.Get("GitSource", "fleet");
  const v1::GitSourceStatus& st = (*source)->git_source().status();
  if (fetched != 1 || st.objects() != static_cast<uint32_t>(hosts * 11)) {
    std::cerr << "the first commit was not applied: " << st.DebugString() << "\n";
    return 1;
  }

  // No-op fetches: the interval passes, nothing new.
  std::vector<double> noop;
  for (int i = 0; i < 10; ++i) {
    clock.Advance(absl::Minutes(1));
    start = WallClock::now();
    sources.RunOnce();
    noop.push_back(Ms(WallClock::now() - start));
  }

  // One-file changes: one instance's memory, committed, then the next fetch applies it.
  std::vector<double> one;
  for (int i = 0; i < 10; ++i) {
    int h = (i * 97) % hosts;
    repo.Write(absl::StrFormat("fleet/rack-%02d/host-%04d.yaml", h % 40, h), HostFile(h, 2048 + 128 * i));
    repo.Commit(absl::StrCat("resize host-", h, "-k0"));
    clock.Advance(absl::Minutes(1));
    start = WallClock::now();
    sources.RunOnce();
    one.push_back(Ms(WallClock::now() - start));
    auto ki = objects.Get("KernelInstance", absl::StrFormat("host-%04d-k0", h));
    if (!ki.ok() || !ki->has_value() ||
        (*ki)->kernel_instance().spec().resources().memory() != static_cast<uint64_t>(2048 + 128 * i) << 20) {
      std::cerr << "change " << i << " was not applied\n";
      return 1;
    }
  }
  const double noop_ms = Median(noop), one_ms = Median(one);
  std::cout << absl::StrFormat("floor (fsync of 4 KiB):     %8.3f ms\n", floor);
  std::cout << absl::StrFormat("full apply (%5d objects): %8.1f ms  = %7.0fx floor   target <= 5000 ms: %s\n",
                               hosts * 11, full, full / floor, full <= 5000 ? "met" : "MISSED");
  std::cout << absl::StrFormat("no-op fetch (median of 10): %7.1f ms  = %7.0fx floor   target <= 100 ms: %s\n", noop_ms,
                               noop_ms / floor, noop_ms <= 100 ? "met" : "MISSED");
  std::cout << absl::StrFormat("one-file change (median):   %7.1f ms  = %7.0fx floor   target <= 500 ms: %s\n", one_ms,
                               one_ms / floor, one_ms <= 500 ? "met" : "MISSED");
  return 0;
}
