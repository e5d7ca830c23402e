// The mkapply commands that talk to mkcontroller over gRPC.
#include <chrono>
#include <iomanip>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/time/time.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "manifests/loader.h"
#include "manifests/printer.h"
#include "mkfleet/v1/controller.grpc.pb.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

std::unique_ptr<v1::Controller::Stub> Connect(const std::string& address) {
  return v1::Controller::NewStub(grpc::CreateChannel(address, grpc::InsecureChannelCredentials()));
}

void SetDeadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// Prints a failed call and maps it to an exit code.
// "hosts" -> "Host" ...; false (and the error on `err`) for an unknown kind.
bool ResolveKind(const std::string& given, std::string* kind, std::ostream& err) {
  *kind = CanonicalKind(given);
  if (kind->empty()) err << "error: unknown kind \"" << given << "\" (Host, KernelInstance or InstanceSet)\n";
  return !kind->empty();
}

// Loads manifests for the controller (which checks host references against its store
// too); false with every error on `err` when any is invalid.
bool LoadForController(const std::vector<std::string>& paths, manifests::LoadResult* loaded, std::ostream& err) {
  manifests::LoadOptions load_options;
  load_options.check_host_references = false;
  *loaded = manifests::LoadPaths(paths, load_options);
  if (loaded->ok()) return true;
  for (const manifests::Diagnostic& d : loaded->errors) err << d.ToString() << "\n";
  err << loaded->errors.size() << (loaded->errors.size() == 1 ? " error" : " errors") << "; nothing was changed\n";
  return false;
}

int Report(const grpc::Status& s, const std::string& controller, std::ostream& err) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      err << "error: cannot reach the controller at " << controller << ": " << s.error_message() << "\n";
      return kExitFailure;
    case grpc::StatusCode::INVALID_ARGUMENT:
      err << "error: " << s.error_message() << "\nnothing was changed\n";
      return kExitInvalid;
    default:
      err << "error: " << s.error_message() << "\n";
      return kExitFailure;
  }
}

bool IsReady(const v1::KernelInstance& ki) {
  if (ki.status().observed_generation() != ki.metadata().generation()) return false;
  for (const v1::Condition& c : ki.status().conditions()) {
    if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
  }
  return false;
}

// One line on what an instance waits for: its phase and the first condition that is not met.
std::string Progress(const v1::KernelInstance& ki) {
  std::string line = ki.status().phase().empty() ? "Pending" : ki.status().phase();
  for (const v1::Condition& c : ki.status().conditions()) {
    bool bad = c.type() == "Degraded" ? c.status() == v1::CONDITION_TRUE : c.status() != v1::CONDITION_TRUE;
    if (bad && c.type() != "Progressing") {
      line += " (" + c.type() + ": " + c.reason() + (c.message().empty() ? "" : ", " + c.message()) + ")";
      break;
    }
  }
  return line;
}

int WaitForInstances(v1::Controller::Stub& stub, const v1::ApplyResponse& applied, const ApplyOptions& options,
                     std::ostream& out, std::ostream& err) {
  std::map<std::string, bool> pending;  // name -> pruned (wait until gone)
  for (const v1::ObjectChange& c : applied.changes()) {
    if (c.kind() == "KernelInstance") pending[c.name()] = c.change() == "pruned";
  }
  std::map<std::string, std::string> last;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.wait_seconds);
  while (!pending.empty()) {
    for (auto it = pending.begin(); it != pending.end();) {
      grpc::ClientContext ctx;
      SetDeadline(ctx, options.timeout_seconds);
      v1::GetRequest req;
      req.set_kind("KernelInstance");
      req.set_name(it->first);
      v1::GetResponse resp;
      grpc::Status s = stub.Get(&ctx, req, &resp);
      std::string now;
      bool done = false;
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        now = "deleted";
        done = it->second;
      } else if (!s.ok()) {
        return Report(s, options.controller, err);
      } else if (resp.objects_size() == 1) {
        const v1::KernelInstance& ki = resp.objects(0).kernel_instance();
        now = Progress(ki);
        done = !it->second && IsReady(ki);
      }
      if (last[it->first] != now) {
        out << "KernelInstance/" << it->first << ": " << now << std::endl;
        last[it->first] = now;
      }
      it = done ? pending.erase(it) : std::next(it);
    }
    if (pending.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      err << "error: timed out after " << options.wait_seconds << "s; not ready:";
      for (const auto& [name, pruned] : pending) err << " " << name << " (" << last[name] << ")";
      err << "\n";
      return kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  out << "all ready\n";
  return kExitOk;
}

int ApplyOrDiff(const ApplyOptions& options, bool dry_run, std::ostream& out, std::ostream& err) {
  manifests::LoadResult loaded;
  if (!LoadForController(options.paths, &loaded, err)) return kExitInvalid;
  v1::ApplyRequest request;
  for (const manifests::LoadedObject& o : loaded.objects) *request.add_objects() = o.object;
  request.set_source(options.source.empty() ? absl::StrJoin(options.paths, ",") : options.source);
  request.set_prune(options.prune);
  request.set_dry_run(dry_run || options.dry_run);
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::ApplyResponse response;
  grpc::Status s = request.dry_run() ? stub->Diff(&ctx, request, &response) : stub->Apply(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  bool changes = false;
  for (const v1::ObjectChange& c : response.changes()) {
    out << c.kind() << "/" << c.name() << " " << c.change() << (request.dry_run() ? " (dry run)" : "") << "\n";
    if (c.change() != "unchanged") changes = true;
  }
  // diff: exit 1 when something would change, like diff(1).
  if (dry_run && changes) return kExitFailure;
  if (options.wait && !request.dry_run()) return WaitForInstances(*stub, response, options, out, err);
  return kExitOk;
}

}  // namespace

std::string CanonicalKind(const std::string& kind) {
  std::string k = absl::AsciiStrToLower(kind);
  if (k == "host" || k == "hosts") return "Host";
  if (k == "kernelinstance" || k == "kernelinstances" || k == "ki" || k == "instance" || k == "instances") {
    return "KernelInstance";
  }
  if (k == "instanceset" || k == "instancesets" || k == "set" || k == "sets") return "InstanceSet";
  return "";
}

int RunApply(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return ApplyOrDiff(options, false, out, err);
}

int RunDiff(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return ApplyOrDiff(options, true, out, err);
}

int RunGet(const GetOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::GetRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  v1::GetResponse response;
  grpc::Status s = stub->Get(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  std::vector<v1::Object> objects(response.objects().begin(), response.objects().end());
  if (options.output == "yaml") {
    out << manifests::PrintYaml(objects);
    return kExitOk;
  }
  if (options.output == "json") {
    google::protobuf::util::JsonPrintOptions json;
    json.add_whitespace = true;
    std::string text;
    auto st = google::protobuf::util::MessageToJsonString(response, &text, json);
    if (!st.ok()) {
      err << "error: " << st.ToString() << "\n";
      return kExitFailure;
    }
    out << text;
    return kExitOk;
  }
  if (objects.empty()) {
    err << "no " << kind << " objects\n";
    return kExitOk;
  }
  const bool instances = kind == "KernelInstance";
  out << std::left << std::setw(32) << "NAME";
  if (instances) out << std::setw(10) << "PHASE" << std::setw(14) << "HOST" << std::setw(10) << "CPUS";
  out << std::setw(12) << "GENERATION" << std::setw(10) << "REVISION" << "SOURCE\n";
  for (const v1::Object& o : objects) {
    const v1::ObjectMeta& m = manifests::MetadataOf(o);
    out << std::left << std::setw(32) << m.name();
    if (instances) {
      const v1::InstanceStatus& st = o.kernel_instance().status();
      std::string host = st.placement().host().empty() ? o.kernel_instance().spec().host() : st.placement().host();
      out << std::setw(10) << (st.phase().empty() ? "-" : st.phase()) << std::setw(14) << (host.empty() ? "-" : host)
          << std::setw(10) << st.placement().cpus_size();
    }
    out << std::setw(12) << m.generation() << std::setw(10) << m.revision() << m.source() << "\n";
  }
  return kExitOk;
}

int RunEvents(const EventsOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!options.kind.empty() && !ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  if (!options.follow) SetDeadline(ctx, options.timeout_seconds);
  v1::EventsRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  request.set_follow(options.follow);
  auto reader = stub->Events(&ctx, request);
  v1::Event e;
  bool header = false;
  while (reader->Read(&e)) {
    if (!header) {
      out << std::left << std::setw(10) << "TIME" << std::setw(9) << "TYPE" << std::setw(18) << "REASON"
          << std::setw(34) << "OBJECT" << "MESSAGE\n";
      header = true;
    }
    absl::Time t = absl::FromUnixMillis(e.time_unix_ms());
    out << std::left << std::setw(10) << absl::FormatTime("%H:%M:%S", t, absl::LocalTimeZone()) << std::setw(9)
        << e.type() << std::setw(18) << e.reason() << std::setw(34) << (e.kind() + "/" + e.name()) << e.message()
        << std::endl;
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return Report(s, options.controller, err);
  if (!header) err << "no events\n";
  return kExitOk;
}

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
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::DeleteRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  v1::DeleteResponse response;
  grpc::Status s = stub->Delete(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  out << kind << "/" << options.name << " deleted\n";
  return kExitOk;
}

}  // namespace mkfleet::cli
