#include <vector>

#include "cli/commands.h"
#include "cli/remote_util.h"
#include "manifests/loader.h"
#include "manifests/printer.h"

namespace mkfleet::cli {

int RunValidate(const ValidateOptions& options, std::ostream& out, std::ostream& err) {
  manifests::LoadOptions load;
  load.check_host_references = !options.skip_host_checks;
  if (options.hosts_from_controller) {
    const int code = WithHosts(options.controller, options.request_timeout, options.tls, err,
                               [&](const mkfleet::v1::GetResponse& hosts) {
                                 for (const auto& o : hosts.objects()) load.known_hosts.push_back(o.host().metadata().name());
                                 return kExitOk;
                               });
    if (code != kExitOk) return code;
  }
  manifests::LoadResult result = manifests::LoadPaths(options.paths, load);
  if (!result.ok()) {
    for (const manifests::Diagnostic& d : result.errors) err << d.ToString() << "\n";
    err << result.errors.size() << (result.errors.size() == 1 ? " error" : " errors")
        << "; nothing was changed\n";
    return kExitInvalid;
  }
  if (options.output == "yaml") {
    std::vector<mkfleet::v1::Object> objects;
    for (const manifests::LoadedObject& o : result.objects) objects.push_back(o.object);
    out << manifests::PrintYaml(objects);
    return kExitOk;
  }
  out << result.Summary() << "\n";
  return kExitOk;
}

}  // namespace mkfleet::cli
