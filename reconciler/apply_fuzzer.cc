// libFuzzer target for the controller's Apply path (scripts/fuzz builds and runs it): the
// input is an ApplyRequest in protobuf's binary form, as a client would send it, run
// through the checks the controller runs on every Apply (manifests::RevalidateObjects) and
// then a dry-run Objects::Apply against a store.
//
// Properties checked beyond "no crash, no hang, no leak" (ASan):
// - an accepted request's objects all have a kind and a DNS-label name, and checking them
//   again accepts them unchanged (the checks are idempotent);
// - a refusal is InvalidArgument with a message, and never longer than 16 KiB whatever the input.
// With MKFLEET_FUZZ_SEEDS=DIR set, it first writes seed requests built from examples/ into DIR.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "common/clock.h"
#include "google/protobuf/util/message_differencer.h"
#include "manifests/formats.h"
#include "manifests/loader.h"
#include "mkfleet/v1/controller.pb.h"
#include "reconciler/objects.h"
#include "reconciler/store.h"

namespace {

namespace v1 = mkfleet::v1;
using namespace mkfleet;

reconciler::Store* TheStore() {
  static reconciler::Store* store = [] {
    std::string path = "/tmp/mkfleet-apply-fuzzer-" + std::to_string(getpid()) + ".db";
    auto s = reconciler::OpenSqliteStore(path, Clock::Real());
    if (!s.ok()) abort();
    return s->release();
  }();
  return store;
}

void WriteSeeds(const std::string& dir) {
  manifests::LoadOptions o;
  o.check_host_references = false;
  auto loaded = manifests::LoadPaths({"examples"}, o);
  v1::ApplyRequest all;
  all.set_source("examples");
  for (const auto& lo : loaded.objects) *all.add_objects() = lo.object;
  int n = 0;
  auto write = [&](const v1::ApplyRequest& r) {
    std::ofstream(dir + "/seed-" + std::to_string(n++), std::ios::binary) << r.SerializeAsString();
  };
  write(all);
  for (const auto& lo : loaded.objects) {
    v1::ApplyRequest one;
    *one.add_objects() = lo.object;
    write(one);
    if (lo.object.has_kernel_instance()) {
      v1::ApplyRequest bad = one;
      auto* r = bad.mutable_objects(0)->mutable_kernel_instance()->mutable_spec()->mutable_resources();
      r->set_cpus(0);
      r->set_memory(0);
      write(bad);
    }
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("MKFLEET_FUZZ_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::ApplyRequest request;
  if (!request.ParseFromArray(data, static_cast<int>(size))) return 0;
  std::vector<v1::Object> objects(request.objects().begin(), request.objects().end());
  auto checked = manifests::RevalidateObjects(objects);
  if (!checked.ok()) {
    if (checked.status().code() != absl::StatusCode::kInvalidArgument || checked.status().message().empty() ||
        checked.status().message().size() > 16384) {
      fprintf(stderr, "bad refusal: %s\n", checked.status().ToString().substr(0, 2000).c_str());
      abort();
    }
    return 0;
  }
  for (const v1::Object& o : *checked) {
    if (manifests::KindOf(o).empty() || !manifests::IsDnsLabel(manifests::MetadataOf(o).name())) {
      fprintf(stderr, "accepted an object without a kind or with a bad name\n");
      abort();
    }
  }
  auto again = manifests::RevalidateObjects(*checked);
  if (!again.ok() || again->size() != checked->size()) abort();
  for (size_t i = 0; i < again->size(); ++i) {
    // Compared as messages: map fields serialize in no fixed order.
    if (!google::protobuf::util::MessageDifferencer::Equals((*again)[i], (*checked)[i])) {
      fprintf(stderr, "checking again changed object %zu:\n%s\n--- became ---\n%s\n", i,
              (*checked)[i].DebugString().c_str(), (*again)[i].DebugString().c_str());
      abort();
    }
  }
  reconciler::Objects store_objects(*TheStore());
  reconciler::ApplyOptions options;
  options.dry_run = true;
  options.source = "fuzz";
  (void)store_objects.Apply(*checked, options);
  return 0;
}
