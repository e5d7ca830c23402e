#include "reconciler/controller_service.h"

#include <fstream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/grpc_server.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // Never an error without a message: a client has nothing else to show.
  std::string message(s.message());
  if (message.empty()) message = absl::StrCat(absl::StatusCodeToString(s.code()), " (no details)");
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), message);
}

grpc::Status UnknownKind(const std::string& kind) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("kind: unknown kind \"", kind, "\" (Host, KernelInstance or InstanceSet)"));
}

}  // namespace

bool IsKnownKind(const std::string& kind) {
  return kind == "Host" || kind == "KernelInstance" || kind == "InstanceSet";
}

grpc::Status ControllerService::DoApply(const v1::ApplyRequest& request, bool dry_run, v1::ApplyResponse* response) {
  std::vector<v1::Object> objects(request.objects().begin(), request.objects().end());
  ApplyOptions options;
  options.source = request.source();
  options.dry_run = dry_run;
  options.prune = request.prune();
  auto result = objects_.Apply(objects, options);
  if (!result.ok()) return ToGrpc(result.status());
  *response = *std::move(result);
  if (dry_run && preview_) {
    // What the change would do to running kernels ("would re-create web-1 ...").
    auto lines = preview_(objects);
    for (v1::ObjectChange& c : *response->mutable_changes()) {
      auto it = lines.find(absl::StrCat(c.kind(), "/", c.name()));
      if (it == lines.end()) continue;
      for (const std::string& line : it->second) c.add_actions(line);
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::Apply(grpc::ServerContext*, const v1::ApplyRequest* request,
                                      v1::ApplyResponse* response) {
  return DoApply(*request, request->dry_run(), response);
}

grpc::Status ControllerService::Diff(grpc::ServerContext*, const v1::ApplyRequest* request,
                                     v1::ApplyResponse* response) {
  return DoApply(*request, /*dry_run=*/true, response);
}

grpc::Status ControllerService::Get(grpc::ServerContext*, const v1::GetRequest* request, v1::GetResponse* response) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  if (request->name().empty()) {
    auto list = objects_.List(request->kind(), /*with_members=*/true);
    if (!list.ok()) return ToGrpc(list.status());
    for (auto& o : *list) *response->add_objects() = std::move(o);
    return grpc::Status::OK;
  }
  auto one = objects_.Get(request->kind(), request->name(), /*with_members=*/true);
  if (!one.ok()) return ToGrpc(one.status());
  if (!one->has_value()) {
    return grpc::Status(grpc::StatusCode::NOT_FOUND,
                        absl::StrCat(request->kind(), "/", request->name(), " does not exist"));
  }
  *response->add_objects() = **one;
  return grpc::Status::OK;
}

grpc::Status ControllerService::Delete(grpc::ServerContext*, const v1::DeleteRequest* request,
                                      v1::DeleteResponse* response) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  auto result =
      objects_.Delete(request->kind(), request->name(), absl::ToUnixMillis(clock_.Now()), request->force());
  if (!result.ok()) return ToGrpc(result.status());
  response->set_result(*result);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Watch(grpc::ServerContext* context, const v1::ObjectWatchRequest* request,
                                     grpc::ServerWriter<v1::ObjectWatchEvent>* writer) {
  const std::string prefix = "/objects/";
  int64_t revision = request->revision();
  if (revision == 0) {
    // The snapshot: read the revision first so no change between it and the list is lost
    // (a change seen in both is sent twice, harmless for a level-triggered watcher).
    auto rev = store_.Revision();
    if (!rev.ok()) return ToGrpc(rev.status());
    revision = *rev;
    auto kvs = store_.List(prefix);
    if (!kvs.ok()) return ToGrpc(kvs.status());
    for (const KeyValue& kv : *kvs) {
      v1::ObjectWatchEvent event;
      event.set_revision(kv.mod_revision);
      if (!event.mutable_object()->ParseFromString(kv.value)) continue;
      if (!writer->Write(event)) return grpc::Status::OK;
    }
  }
  while (!context->IsCancelled()) {
    // Everything up to `now` is in the events read next; later keys outside the prefix
    // must not make WaitForRevision return at once forever.
    auto now = store_.Revision();
    if (!now.ok()) return ToGrpc(now.status());
    auto events = store_.EventsSince(revision, prefix);
    if (!events.ok()) return ToGrpc(events.status());
    for (const Event& e : *events) {
      v1::ObjectWatchEvent event;
      event.set_revision(e.revision);
      if (e.type == Event::Type::kDelete) {
        // /objects/<Kind>/<name>: a deleted object is sent with only its kind and name.
        std::vector<std::string> parts = absl::StrSplit(e.key, '/');
        if (parts.size() != 4) continue;
        event.set_deleted(true);
        v1::Object& o = *event.mutable_object();
        if (parts[2] == "Host") o.mutable_host()->mutable_metadata()->set_name(parts[3]);
        if (parts[2] == "KernelInstance") o.mutable_kernel_instance()->mutable_metadata()->set_name(parts[3]);
        if (parts[2] == "InstanceSet") o.mutable_instance_set()->mutable_metadata()->set_name(parts[3]);
      } else if (!event.mutable_object()->ParseFromString(e.value)) {
        continue;
      }
      if (!writer->Write(event)) return grpc::Status::OK;
      revision = e.revision;
    }
    revision = std::max(revision, *now);
    auto next = store_.WaitForRevision(revision, absl::Milliseconds(200));
    if (!next.ok()) return ToGrpc(next.status());
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::Events(grpc::ServerContext* context, const v1::EventsRequest* request,
                                      grpc::ServerWriter<v1::Event>* writer) {
  if (events_ == nullptr) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller keeps no events");
  auto rev = store_.Revision();  // before the list: nothing between is lost
  if (!rev.ok()) return ToGrpc(rev.status());
  int64_t seen = *rev;
  EventFilter filter;
  filter.kind = request->kind();
  filter.name = request->name();
  filter.type = request->type();
  filter.since_unix_ms = request->since_unix_ms();
  auto past = events_->List(filter);
  if (!past.ok()) return ToGrpc(past.status());
  for (const v1::Event& e : *past) {
    if (!writer->Write(e)) return grpc::Status::OK;
  }
  if (!request->follow()) return grpc::Status::OK;
  while (!context->IsCancelled()) {
    auto now = store_.Revision();
    if (!now.ok()) return ToGrpc(now.status());
    auto changes = store_.EventsSince(seen, kEventPrefix);
    if (changes.status().code() == absl::StatusCode::kOutOfRange) {
      // The history was compacted past a slow follower: go on from now.
      seen = *now;
      continue;
    }
    if (!changes.ok()) return ToGrpc(changes.status());
    for (const Event& c : *changes) {
      seen = std::max(seen, c.revision);
      v1::Event e;
      if (c.type != Event::Type::kPut || !e.ParseFromString(c.value)) continue;
      if (!EventMatches(e, filter)) continue;
      if (!writer->Write(e)) return grpc::Status::OK;
    }
    seen = std::max(seen, *now);
    auto next = store_.WaitForRevision(seen, absl::Milliseconds(200));
    if (!next.ok()) return ToGrpc(next.status());
  }
  return grpc::Status::OK;
}

std::unique_ptr<grpc::Server> StartControllerServer(ControllerService& service, const std::string& address,
                                                    int* port) {
  return StartGrpcServer(service, "mkfleet.v1.Controller", address, port);
}

grpc::Status ControllerService::Stats(grpc::ServerContext*, const v1::StatsRequest*, v1::StatsResponse* response) {
  if (stats_) *response = stats_();
  // Peak resident set of this process (VmHWM), for fleet-scale checks.
  std::ifstream status("/proc/self/status");
  std::string line;
  while (std::getline(status, line)) {
    int64_t kb = 0;
    if (line.rfind("VmHWM:", 0) == 0 && absl::SimpleAtoi(absl::StripAsciiWhitespace(line.substr(6, line.size() - 9)), &kb)) {
      response->set_peak_rss_bytes(kb * 1024);
    }
  }
  return grpc::Status::OK;
}

}  // namespace mkfleet::reconciler
