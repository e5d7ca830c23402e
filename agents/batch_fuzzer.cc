// libFuzzer target for the agent's request checks (scripts/fuzz builds and runs it): the
// input is an ActionBatch in protobuf's binary form, as a caller would send Execute.
//
// Properties checked beyond "no crash, no hang, no leak" (ASan): an accepted batch has at
// most kMaxBatchActions actions, unique printable ids of at most kMaxIdBytes, an operation
// and (but for pool changes) a valid instance name on each, and kernel paths that are
// absolute without "..": what the agent then runs, journals and names files after is
// bounded and confined. A refusal is InvalidArgument with a bounded message.
// With MKFLEET_FUZZ_SEEDS=DIR set, it first writes seed batches into DIR.
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <set>
#include <string>

#include "absl/strings/str_split.h"
#include "agents/request_checks.h"
#include "mkfleet/v1/agent.pb.h"

namespace {

namespace v1 = mkfleet::v1;
using namespace mkfleet::agents;

void WriteSeeds(const std::string& dir) {
  v1::ActionBatch b;
  v1::Action* c = b.add_actions();
  c->set_id("h1/web-1/g1/v1/create-create");
  c->set_instance("web-1");
  c->mutable_create()->mutable_placement()->add_cpus(2);
  c->mutable_create()->mutable_placement()->add_memory()->set_bytes(512ull << 20);
  c->mutable_create()->set_owner("KernelInstance/web-1@3");
  v1::Action* l = b.add_actions();
  l->set_id("h1/web-1/g1/v1/create-load");
  l->set_instance("web-1");
  l->mutable_load()->mutable_kernel()->set_image("/var/lib/mkfleet/kernels/vmlinuz");
  l->mutable_load()->mutable_kernel()->set_initrd("/var/lib/mkfleet/kernels/initrd");
  l->mutable_load()->mutable_kernel()->set_cmdline("console=mktty0");
  v1::Action* s = b.add_actions();
  s->set_id("h1/web-1/g1/v1/create-start");
  s->set_instance("web-1");
  s->mutable_start();
  v1::Action* p = b.add_actions();
  p->set_id("h1/pool");
  p->mutable_pool_change()->add_cpus(3);
  p->mutable_pool_change()->add_devices("0000:04:00.0");
  std::ofstream(dir + "/seed-batch", std::ios::binary) << b.SerializeAsString();
}

bool Printable(const std::string& s) {
  for (char ch : s) {
    if (ch < 0x21 || ch > 0x7e) return false;
  }
  return true;
}

bool Confined(const std::string& path) {
  if (path.empty() || path[0] != '/') return false;
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return false;
  }
  return true;
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  if (const char* dir = getenv("MKFLEET_FUZZ_SEEDS")) WriteSeeds(dir);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  v1::ActionBatch batch;
  if (!batch.ParseFromArray(data, static_cast<int>(size))) return 0;
  absl::Status s = CheckBatch(batch);
  if (!s.ok()) {
    if (s.code() != absl::StatusCode::kInvalidArgument || s.message().empty() || s.message().size() > 4096) abort();
    return 0;
  }
  if (static_cast<size_t>(batch.actions_size()) > kMaxBatchActions) abort();
  std::set<std::string> ids;
  for (const v1::Action& a : batch.actions()) {
    if (a.id().empty() || a.id().size() > kMaxIdBytes || !Printable(a.id()) || !ids.insert(a.id()).second) abort();
    if (a.op_case() == v1::Action::OP_NOT_SET) abort();
    if (a.op_case() != v1::Action::kPoolChange && !IsInstanceName(a.instance())) abort();
    if (a.has_load()) {
      if (!Confined(a.load().kernel().image())) abort();
      if (!a.load().kernel().initrd().empty() && !Confined(a.load().kernel().initrd())) abort();
      if (a.load().kernel().cmdline().size() > kMaxCmdlineBytes) abort();
    }
  }
  return 0;
}
