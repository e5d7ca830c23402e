#include "cli/remote_util.h"

#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"

namespace mkfleet::cli {

int Report(const absl::Status& s, const std::string& controller, std::ostream& err) {
  std::string message(s.message());
  if (message.empty()) message = absl::StatusCodeToString(s.code());
  switch (s.code()) {
    case absl::StatusCode::kUnavailable:
    case absl::StatusCode::kDeadlineExceeded:
      err << "error: cannot reach the controller at " << controller << ": " << message << "\n";
      return kExitFailure;
    case absl::StatusCode::kInvalidArgument:
      err << "error: " << message << "\nnothing was changed\n";
      return kExitInvalid;
    default:
      err << "error: " << message << "\n";
      return kExitFailure;
  }
}

int ReportSetup(const absl::Status& s, std::ostream& err) {
  err << "error: " << s.message() << "\n";
  return kExitInvalid;
}

std::string LabelsText(const google::protobuf::Map<std::string, std::string>& labels, const char* sep) {
  std::map<std::string, std::string> sorted(labels.begin(), labels.end());
  std::vector<std::string> parts;
  for (const auto& [k, v] : sorted) parts.push_back(k + "=" + v);
  return absl::StrJoin(parts, sep);
}

std::string RoleText(mkfleet::v1::Role role) {
  std::string text = absl::AsciiStrToLower(mkfleet::v1::Role_Name(role));
  return absl::StartsWith(text, "role_") ? text.substr(5) : text;
}

std::string SourceText(const mkfleet::v1::ObjectMeta& meta) {
  if (meta.source().empty()) return "-";
  if (meta.source_commit().empty()) return meta.source();
  return meta.source() + "@" + meta.source_commit().substr(0, 7);
}

std::string RefText(const mkfleet::v1::GitRef& ref, bool short_commit) {
  if (!ref.tag().empty()) return "tag " + ref.tag();
  if (!ref.commit().empty()) return "commit " + (short_commit ? ref.commit().substr(0, 7) : ref.commit());
  return "branch " + (ref.branch().empty() ? std::string("main") : ref.branch());
}

std::string CanonicalKind(const std::string& kind) {
  std::string k = absl::AsciiStrToLower(kind);
  if (k == "host" || k == "hosts") return "Host";
  if (k == "kernelinstance" || k == "kernelinstances" || k == "ki" || k == "instance" || k == "instances") {
    return "KernelInstance";
  }
  if (k == "instanceset" || k == "instancesets" || k == "set" || k == "sets") return "InstanceSet";
  if (k == "rolebinding" || k == "rolebindings" || k == "rb") return "RoleBinding";
  if (k == "rolloutpolicy" || k == "rolloutpolicies" || k == "policy" || k == "policies" || k == "rp") {
    return "RolloutPolicy";
  }
  if (k == "gitsource" || k == "gitsources" || k == "source" || k == "sources" || k == "gs") return "GitSource";
  return "";
}

bool ResolveKind(const std::string& given, std::string* kind, std::ostream& err) {
  *kind = CanonicalKind(given);
  if (kind->empty()) {
    err << "error: unknown kind \"" << given << "\" (Host, KernelInstance, InstanceSet, RolloutPolicy, RoleBinding or GitSource)\n";
  }
  return !kind->empty();
}

int WithHosts(const std::string& controller, absl::Duration request_timeout, const security::TlsOptions& tls,
              std::ostream& err, const std::function<int(const mkfleet::v1::GetResponse&)>& print) {
  auto client = NewGrpcControllerClient(controller, request_timeout, tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  mkfleet::v1::GetRequest request;
  request.set_kind("Host");
  auto got = (*client)->Get(request);
  if (!got.ok()) return Report(got.status(), controller, err);
  return print(*got);
}

bool LoadForController(const std::vector<std::string>& paths, manifests::LoadResult* loaded, std::ostream& err) {
  manifests::LoadOptions load_options;
  load_options.check_host_references = false;
  *loaded = manifests::LoadPaths(paths, load_options);
  if (loaded->ok()) return true;
  for (const manifests::Diagnostic& d : loaded->errors) err << d.ToString() << "\n";
  err << loaded->errors.size() << (loaded->errors.size() == 1 ? " error" : " errors") << "; nothing was changed\n";
  return false;
}

}  // namespace mkfleet::cli
