#include "cli/remote_util.h"

#include <signal.h>
#include <unistd.h>

#include <cstring>
#include <map>

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "cli/commands.h"

namespace mkfleet::cli {

namespace {

const char* interrupt_message = "";

void OnInterrupt(int) {
  ssize_t ignored = write(STDERR_FILENO, interrupt_message, strlen(interrupt_message));
  (void)ignored;
  _exit(130);
}

}  // namespace

void ExitOnInterruptSaying(const char* message) {
  interrupt_message = message;
  struct sigaction interrupt = {};
  interrupt.sa_handler = OnInterrupt;
  sigemptyset(&interrupt.sa_mask);
  sigaction(SIGINT, &interrupt, nullptr);
}

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

bool Selector::Matches(const google::protobuf::Map<std::string, std::string>& labels) const {
  for (const Requirement& r : requirements) {
    auto it = labels.find(r.key);
    const bool has = it != labels.end();
    switch (r.op) {
      case Requirement::kEquals:
        if (!has || it->second != r.value) return false;
        break;
      case Requirement::kNotEquals:
        if (has && it->second == r.value) return false;
        break;
      case Requirement::kExists:
        if (!has) return false;
        break;
      case Requirement::kNotExists:
        if (has) return false;
        break;
    }
  }
  return true;
}

bool ParseSelector(const std::string& text, Selector* selector, std::ostream& err) {
  selector->requirements.clear();
  if (absl::StripAsciiWhitespace(text).empty()) return true;
  for (absl::string_view part : absl::StrSplit(text, ',')) {
    part = absl::StripAsciiWhitespace(part);
    Selector::Requirement r;
    size_t at;
    if ((at = part.find("!=")) != absl::string_view::npos) {
      r.op = Selector::Requirement::kNotEquals;
      r.key = std::string(part.substr(0, at));
      r.value = std::string(part.substr(at + 2));
    } else if ((at = part.find("==")) != absl::string_view::npos) {
      r.key = std::string(part.substr(0, at));
      r.value = std::string(part.substr(at + 2));
    } else if ((at = part.find('=')) != absl::string_view::npos) {
      r.key = std::string(part.substr(0, at));
      r.value = std::string(part.substr(at + 1));
    } else if (absl::StartsWith(part, "!")) {
      r.op = Selector::Requirement::kNotExists;
      r.key = std::string(part.substr(1));
    } else {
      r.op = Selector::Requirement::kExists;
      r.key = std::string(part);
    }
    r.key = std::string(absl::StripAsciiWhitespace(r.key));
    r.value = std::string(absl::StripAsciiWhitespace(r.value));
    if (r.key.empty() || r.key.find_first_of("=!, ") != std::string::npos) {
      err << "error: -l " << text << ": \"" << part
          << "\" is not a requirement (KEY=VALUE, KEY!=VALUE, KEY or !KEY, joined by commas)\n";
      return false;
    }
    selector->requirements.push_back(std::move(r));
  }
  return true;
}

bool ResolveTargets(const std::vector<std::string>& args, const std::string& verb, const Selector& selector,
                    std::vector<Target>* targets, std::ostream& err) {
  targets->clear();
  if (args.empty()) {
    err << "error: " << verb << " needs TYPE [NAME...] or TYPE/NAME... (mkapply api-resources lists the types)\n";
    return false;
  }
  const bool slashed = args[0].find('/') != std::string::npos;
  for (size_t i = 0; i < args.size(); ++i) {
    const std::string& a = args[i];
    const size_t slash = a.find('/');
    if ((slash != std::string::npos) != slashed && (slashed || i == 0)) {
      err << "error: " << verb << ": \"" << a << "\": give TYPE NAME... or TYPE/NAME..., not both\n";
      return false;
    }
    if (slashed) {
      if (slash == 0 || slash + 1 == a.size() || a.find('/', slash + 1) != std::string::npos) {
        err << "error: " << verb << ": \"" << a << "\" is not TYPE/NAME\n";
        return false;
      }
      Target t;
      if (!ResolveKind(a.substr(0, slash), &t.kind, err)) return false;
      t.name = a.substr(slash + 1);
      targets->push_back(t);
    } else if (i > 0) {
      if (slash != std::string::npos) {
        err << "error: " << verb << ": \"" << a << "\": give TYPE NAME... or TYPE/NAME..., not both\n";
        return false;
      }
      targets->push_back({(*targets)[0].kind, a});
    } else {
      Target t;
      if (!ResolveKind(a, &t.kind, err)) return false;
      targets->push_back(t);
    }
  }
  // TYPE NAME...: the names, not the whole kind.
  if (!slashed && targets->size() > 1) targets->erase(targets->begin());
  if (!selector.empty() && (slashed || args.size() > 1)) {
    err << "error: " << verb << ": names cannot be given with a selector (-l)\n";
    return false;
  }
  return true;
}

int ExpandTargets(const GetOptions& options, const std::string& verb, bool whole_type_needs_selector,
                  std::vector<Target>* targets, std::ostream& err) {
  Selector selector;
  if (!ParseSelector(options.selector, &selector, err)) return kExitInvalid;
  std::vector<Target> given;
  if (!ResolveTargets(options.args, verb, selector, &given, err)) return kExitInvalid;
  targets->clear();
  for (const Target& t : given) {
    if (!t.name.empty()) {
      targets->push_back(t);
      continue;
    }
    if (whole_type_needs_selector && selector.empty()) {
      err << "error: " << verb << " needs names, a selector (-l) or -f; it never takes a whole type\n";
      return kExitInvalid;
    }
    auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
    if (!client.ok()) return ReportSetup(client.status(), err);
    mkfleet::v1::GetRequest request;
    request.set_kind(t.kind);
    auto got = (*client)->Get(request);
    if (!got.ok()) return Report(got.status(), options.controller, err);
    for (const mkfleet::v1::Object& o : got->objects()) {
      const mkfleet::v1::ObjectMeta& m = manifests::MetadataOf(o);
      if (selector.Matches(m.labels())) targets->push_back({t.kind, m.name()});
    }
  }
  if (targets->empty()) {
    err << "no " << given[0].kind << " objects" << (selector.empty() ? "" : " match -l " + options.selector) << "\n";
  }
  return kExitOk;
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
