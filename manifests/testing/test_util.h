// Test helpers for the manifest loader.
#ifndef MKFLEET_MANIFESTS_TESTING_TEST_UTIL_H_
#define MKFLEET_MANIFESTS_TESTING_TEST_UTIL_H_

#include <string>
#include <vector>

#include "manifests/loader.h"

namespace mkfleet::manifests {

// Loads `text` as file `file` and runs the cross-object checks.
inline LoadResult LoadString(const std::string& text, const std::string& file = "t.yaml",
                             LoadOptions options = {}) {
  LoadResult result;
  LoadText(file, text, options, &result);
  CheckObjects(options, &result);
  return result;
}

// The error lines, in order.
inline std::vector<std::string> ErrorLines(const LoadResult& result) {
  std::vector<std::string> lines;
  for (const Diagnostic& d : result.errors) lines.push_back(d.ToString());
  return lines;
}

// A valid KernelInstance document with `extra` spliced into its spec.resources.
inline std::string Instance(const std::string& resources_extra = "",
                            const std::string& spec_extra = "") {
  return "apiVersion: mkfleet.io/v1\n"
         "kind: KernelInstance\n"
         "metadata:\n"
         "  name: web-1\n"
         "spec:\n"
         "  host: node-a\n"
         "  kernel:\n"
         "    image: /k/vmlinux\n"
         "  resources:\n"
         "    cpus: 4\n"
         "    memory: 2Gi\n" +
         resources_extra + spec_extra;
}

inline std::string HostDoc(const std::string& name = "node-a") {
  return "apiVersion: mkfleet.io/v1\n"
         "kind: Host\n"
         "metadata: {name: " + name + "}\n"
         "spec:\n"
         "  agent: 127.0.0.1:7101\n"
         "  pool: {hostReserved: {cores: 2, memory: 4Gi}}\n";
}

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_TESTING_TEST_UTIL_H_
