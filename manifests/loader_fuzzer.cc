// libFuzzer target for the manifest loader (scripts/fuzz builds and runs it).
//
// Properties checked on every input, beyond "no crash, no hang, no leak" (ASan):
// - a valid input prints to canonical YAML that loads again without errors, and
// - printing that second load gives the same text (the printer is a fixed point).
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <vector>

#include "manifests/loader.h"
#include "manifests/printer.h"

namespace {

std::vector<mkfleet::v1::Object> Objects(const mkfleet::manifests::LoadResult& r) {
  std::vector<mkfleet::v1::Object> out;
  for (const auto& o : r.objects) out.push_back(o.object);
  return out;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace mkfleet::manifests;
  LoadOptions options;
  options.max_nodes = 1 << 16;
  options.check_host_references = false;
  LoadResult first;
  LoadText("fuzz.yaml", std::string(reinterpret_cast<const char*>(data), size), options, &first);
  CheckObjects(options, &first);
  for (const Diagnostic& d : first.errors) {
    if (d.ToString().empty()) abort();
  }
  if (!first.ok()) return 0;
  std::string printed = PrintYaml(Objects(first));
  LoadResult second;
  LoadText("printed.yaml", printed, options, &second);
  CheckObjects(options, &second);
  if (!second.ok()) {
    fprintf(stderr, "canonical output does not load:\n%s\n%s\n", printed.c_str(),
            second.errors[0].ToString().c_str());
    abort();
  }
  if (PrintYaml(Objects(second)) != printed) {
    fprintf(stderr, "printer is not a fixed point:\n%s\n", printed.c_str());
    abort();
  }
  return 0;
}
