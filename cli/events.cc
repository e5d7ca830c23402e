// mkapply events.
#include <iomanip>
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "google/protobuf/util/json_util.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

int RunEvents(const EventsOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!options.kind.empty() && !ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (!options.type.empty() && options.type != "Normal" && options.type != "Warning") {
    err << "error: --type: want Normal or Warning, got \"" << options.type << "\"\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::EventsRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  request.set_type(options.type);
  request.set_follow(options.follow);
  if (options.since > absl::ZeroDuration()) request.set_since_unix_ms(absl::ToUnixMillis(absl::Now() - options.since));
  const bool json = options.output == "json";
  bool any = false, header_printed = false;
  Table table({"TIME", "TYPE", "REASON", "OBJECT", "COUNT", "MESSAGE"});
  google::protobuf::util::JsonPrintOptions json_options;
  json_options.preserve_proto_field_names = false;
  if (json && !options.follow) out << "[";
  absl::Status s = (*client)->Events(request, [&](const v1::Event& e) {
    if (json) {
      std::string text;
      (void)google::protobuf::util::MessageToJsonString(e, &text, json_options);
      // A JSON array, or with follow one object a line (a stream has no end to close).
      out << (options.follow ? "" : any ? ",\n " : "") << text << (options.follow ? "\n" : "");
      out.flush();
      any = true;
      return true;
    }
    any = true;
    std::vector<std::string> row = {ClockTime(e.time_unix_ms()), e.type(), e.reason(), e.kind() + "/" + e.name(),
                                    e.count() > 1 ? absl::StrCat("x", e.count()) : "-", e.message()};
    if (!options.follow) {
      table.Add(std::move(row));
      return true;
    }
    // Followed: printed as they come, in fixed columns.
    if (!header_printed) {
      out << std::left << std::setw(10) << "TIME" << std::setw(9) << "TYPE" << std::setw(18) << "REASON"
          << std::setw(34) << "OBJECT" << std::setw(7) << "COUNT" << "MESSAGE\n";
      header_printed = true;
    }
    out << std::left << std::setw(10) << row[0] << std::setw(9) << row[1] << std::setw(18) << row[2] << std::setw(34)
        << row[3] << std::setw(7) << row[4] << row[5] << std::endl;
    return true;
  });
  if (json && !options.follow) out << "]\n";
  if (!json && !options.follow && any) table.Print(out);
  if (!s.ok()) return Report(s, options.controller, err);
  if (!any && !json) err << "no events\n";
  return kExitOk;
}

}  // namespace mkfleet::cli
