// mkapply audit.
#include <iostream>

#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "google/protobuf/util/json_util.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

int RunAudit(const AuditOptions& options, std::ostream& out, std::ostream& err) {
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::AuditRequest request;
  if (options.since > absl::ZeroDuration()) request.set_since_unix_ms(absl::ToUnixMillis(absl::Now() - options.since));
  request.set_limit(options.limit);
  auto response = (*client)->Audit(request);
  if (!response.ok()) return Report(response.status(), options.controller, err);
  if (options.output == "json") {
    out << "[";
    for (int i = 0; i < response->records_size(); ++i) {
      std::string text;
      (void)google::protobuf::util::MessageToJsonString(response->records(i), &text);
      out << (i > 0 ? ",\n " : "") << text;
    }
    out << "]\n";
    return kExitOk;
  }
  if (response->records_size() == 0) {
    out << "No audit records.\n";
    return kExitOk;
  }
  Table table({"TIME", "IDENTITY", "VERB", "OBJECTS", "RESULT", "SOURCE", "MESSAGE"});
  for (const v1::AuditRecord& r : response->records()) {
    std::string objects = r.objects_size() > 3 ? absl::StrCat(absl::StrJoin(r.objects().begin(), r.objects().begin() + 3, ","),
                                                              " +", r.objects_size() - 3)
                                               : absl::StrJoin(r.objects(), ",");
    std::string source = r.source();
    if (!r.commit().empty()) absl::StrAppend(&source, "@", r.commit().substr(0, 12));
    table.Add({ClockTime(r.time_unix_ms()), r.identity(), r.verb(), objects, r.result(), source.empty() ? "-" : source,
               r.message()});
  }
  table.Print(out);
  return kExitOk;
}

}  // namespace mkfleet::cli
