// manifest_bench: loads and validates a generated fleet of manifests on one core and
// prints documents per second (target: >= 20,000 documents/s for 10,000 documents).
//
// Usage: manifest_bench [--documents N] [--runs R]
// The fleet: 10% Hosts, 85% KernelInstances (varied resources, devices, failover), 5%
// InstanceSets, written as 100-document files in a temporary directory and loaded with
// LoadPaths, the same path `mkapply validate -f DIR` takes.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "manifests/loader.h"

namespace {

std::string HostDoc(int i) {
  return absl::StrCat(
      "apiVersion: mkfleet.io/v1\nkind: Host\nmetadata:\n  name: host-", i,
      "\n  labels: {rack: r", i % 40, ", zone: z", i % 4, ", role: edge}\nspec:\n  agent: 10.0.",
      i / 250, ".", i % 250, ":7101\n  pool:\n    cpus: \"4-95\"\n    memory:\n"
      "      - {node: 0, size: 96Gi}\n      - {node: 1, size: 96Gi}\n"
      "    devices: [\"0000:04:00.0\", \"0000:81:00.0\", eth2]\n");
}

std::string InstanceDoc(int i, int hosts) {
  std::string doc = absl::StrCat(
      "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata:\n  name: inst-", i,
      "\n  labels: {app: app", i % 17, ", tier: t", i % 3, "}\nspec:\n  host: host-", i % hosts,
      "\n  kernel:\n    image: /var/lib/mkfleet/kernels/vmlinux-6.12-", i % 5,
      "\n    cmdline: \"console=mktty0 quiet\"\n  resources:\n    cpus: ", 2 * (1 + i % 8),
      "\n    placement: ", (i % 2 ? "Compact" : "NearDevices"), "\n    memory: ", 1 + i % 32,
      "Gi\n");
  if (i % 2 == 0 || i % 3 == 0) {
    absl::StrAppend(&doc, "    devices:\n      - name: nic0\n        select: {class: Network, numaLocal: true}\n"
                          "        vfs: 1\n");
  }
  if (i % 4 == 0) absl::StrAppend(&doc, "    virtio:\n      - {type: net, uplink: eth0, queues: 2}\n");
  if (i % 5 == 0) {
    absl::StrAppend(&doc, "  failover:\n    policy: Standby\n    heartbeat: {interval: 100ms, misses: 3}\n"
                          "    standby: {cpus: 1, memory: 512Mi}\n");
  }
  return doc;
}

std::string SetDoc(int i) {
  return absl::StrCat(
      "apiVersion: mkfleet.io/v1\nkind: InstanceSet\nmetadata: {name: set-", i,
      "}\nspec:\n  hostSelector: {matchLabels: {zone: z", i % 4, "}}\n  replicas: ", 4 + i % 20,
      "\n  spreadBy: rack\n  template:\n    metadata: {labels: {app: set", i,
      "}}\n    spec:\n      kernel: {image: /k/vmlinux, cmdline: \"console=mktty0\"}\n"
      "      resources: {cpus: 2, memory: 1Gi}\n  rollout: {maxUnavailable: 25%, canary: 1, "
      "healthTimeout: 60s}\n");
}

}  // namespace

int main(int argc, char** argv) {
  int documents = 10000;
  int runs = 5;
  for (int i = 1; i < argc; ++i) {
    if (!strcmp(argv[i], "--documents") && i + 1 < argc) {
      documents = atoi(argv[++i]);
    } else if (!strcmp(argv[i], "--runs") && i + 1 < argc) {
      runs = atoi(argv[++i]);
    } else {
      const bool help = !strcmp(argv[i], "--help") || !strcmp(argv[i], "-h");
      fprintf(help ? stdout : stderr, "usage: manifest_bench [--documents N] [--runs R]\n");
      return help ? 0 : 2;
    }
  }
  namespace fs = std::filesystem;
  fs::path dir = fs::temp_directory_path() / absl::StrCat("mkfleet-manifest-bench-", getpid());
  fs::create_directories(dir);
  int hosts = std::max(1, documents / 10);
  int sets = documents / 20;
  int instances = documents - hosts - sets;
  std::vector<std::string> docs;
  for (int i = 0; i < hosts; ++i) docs.push_back(HostDoc(i));
  for (int i = 0; i < instances; ++i) docs.push_back(InstanceDoc(i, hosts));
  for (int i = 0; i < sets; ++i) docs.push_back(SetDoc(i));
  size_t bytes = 0;
  for (size_t f = 0; f * 100 < docs.size(); ++f) {
    std::ofstream out(dir / absl::StrCat("fleet-", f, ".yaml"));
    for (size_t d = f * 100; d < std::min(docs.size(), (f + 1) * 100); ++d) {
      out << docs[d] << "---\n";
      bytes += docs[d].size() + 4;
    }
  }
  printf("manifest_bench: %zu documents (%d Host, %d KernelInstance, %d InstanceSet), %.1f MiB\n",
         docs.size(), hosts, instances, sets, bytes / 1048576.0);
  std::vector<double> seconds;
  for (int r = 0; r < runs; ++r) {
    auto start = std::chrono::steady_clock::now();
    mkfleet::manifests::LoadResult result = mkfleet::manifests::LoadPaths({dir.string()});
    double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
    if (!result.ok() || result.objects.size() != docs.size()) {
      fprintf(stderr, "manifest_bench: unexpected result: %zu objects, %zu errors%s%s\n",
              result.objects.size(), result.errors.size(), result.ok() ? "" : "; first: ",
              result.ok() ? "" : result.errors[0].ToString().c_str());
      fs::remove_all(dir);
      return 1;
    }
    seconds.push_back(s);
  }
  fs::remove_all(dir);
  std::sort(seconds.begin(), seconds.end());
  double median = seconds[seconds.size() / 2];
  printf("load+validate: best %.3f s, median %.3f s over %d runs\n", seconds.front(), median, runs);
  printf("throughput: %.0f documents/s (median; best %.0f), %.1f MiB/s; target >= 20000 documents/s\n",
         docs.size() / median, docs.size() / seconds.front(), bytes / 1048576.0 / median);
  return 0;
}
