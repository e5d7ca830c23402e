// mkapply delete.
#include <algorithm>

#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "manifests/loader.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

int RunDelete(const GetOptions& options, std::ostream& out, std::ostream& err) {
  if (!options.paths.empty()) {
    manifests::LoadResult loaded;
    if (!LoadForController(options.paths, &loaded, err)) return kExitInvalid;
    // Instances before the hosts they name, so a failure part-way leaves no dangling reference.
    std::vector<const manifests::LoadedObject*> order;
    for (const auto& o : loaded.objects) if (!o.object.has_host()) order.push_back(&o);
    for (const auto& o : loaded.objects) if (o.object.has_host()) order.push_back(&o);
    int code = kExitOk;
    for (const manifests::LoadedObject* o : order) {
      GetOptions one = options;
      one.paths.clear();
      one.kind = std::string(manifests::KindOf(o->object));
      one.name = manifests::MetadataOf(o->object).name();
      int c = RunDelete(one, out, err);
      if (c != kExitOk && code == kExitOk) code = c;
    }
    return code;
  }
  if (!options.args.empty()) {
    std::vector<Target> targets;
    if (int c = ExpandTargets(options, "delete", /*whole_type_needs_selector=*/true, &targets, err); c != kExitOk) {
      return c;
    }
    // Instances before the hosts they name, as for -f.
    std::stable_sort(targets.begin(), targets.end(),
                     [](const Target& a, const Target& b) { return a.kind != "Host" && b.kind == "Host"; });
    int code = kExitOk;
    for (const Target& t : targets) {
      GetOptions one = options;
      one.args.clear();
      one.selector.clear();
      one.kind = t.kind;
      one.name = t.name;
      const int c = RunDelete(one, out, err);
      if (c != kExitOk && code == kExitOk) code = c;
    }
    return code;
  }
  if (options.kind.empty()) {
    err << "error: delete needs KIND NAME or -f PATH\n";
    return kExitInvalid;
  }
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (options.name.empty()) {
    err << "error: delete needs KIND NAME or -f PATH\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::DeleteRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  request.set_force(options.force);
  request.set_force_conflicts(options.force_conflicts);
  auto response = (*client)->Delete(request);
  if (!response.ok()) return Report(response.status(), options.controller, err);
  if (response->result() == "terminating") {
    out << kind << "/" << options.name << " terminating: its instances are deleted first\n";
  } else {
    out << kind << "/" << options.name << " deleted\n";
  }
  return kExitOk;
}

}  // namespace mkfleet::cli
