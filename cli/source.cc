// mkapply sync|suspend|resume source NAME.
#include "absl/strings/str_cat.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

int RunSource(const SourceOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (kind != "GitSource") {
    err << "error: " << options.verb << " works on GitSources (" << options.verb << " source NAME), not " << kind << "\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  if (options.verb == "sync") out << "GitSource/" << options.name << ": fetching...\n" << std::flush;
  v1::SourceRequest request;
  request.set_verb(options.verb);
  request.set_name(options.name);
  auto r = (*client)->Source(request);
  if (!r.ok()) {
    // A failed fetch, verification or apply: the reason (every file:line:col error of a
    // refused commit) is the message; exit 1, as for a failed wait.
    if (r.status().code() == absl::StatusCode::kInvalidArgument && options.verb == "sync") {
      err << "error: " << r.status().message() << "\n";
      return kExitFailure;
    }
    return Report(r.status(), options.controller, err);
  }
  out << "GitSource/" << options.name << ": " << r->message() << "\n";
  return kExitOk;
}

}  // namespace mkfleet::cli
