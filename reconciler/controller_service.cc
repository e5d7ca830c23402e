#include "reconciler/controller_service.h"

#include <fstream>
#include <iostream>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"

#include <algorithm>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/grpc_server.h"
#include "common/status_macros.h"
#include "common/version.h"
#include "manifests/formats.h"
#include "reconciler/follow_reactor.h"
#include "manifests/loader.h"
#include "security/tls.h"

namespace mkfleet::reconciler {
namespace {

// The longest change cause an apply may record (`mkapply apply --message`).
constexpr size_t kMaxChangeCause = 1024;

namespace v1 = mkfleet::v1;

grpc::Status ToGrpc(const absl::Status& s) {
  if (s.ok()) return grpc::Status::OK;
  // Never an error without a message: a client has nothing else to show.
  std::string message(s.message());
  if (message.empty()) message = absl::StrCat(absl::StatusCodeToString(s.code()), " (no details)");
  return grpc::Status(static_cast<grpc::StatusCode>(s.code()), message);
}

// A name in a request: empty (a list) only where `may_be_empty`, else a DNS label.
grpc::Status CheckName(const std::string& name, bool may_be_empty) {
  if ((name.empty() && may_be_empty) || manifests::IsDnsLabel(name)) return grpc::Status::OK;
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("name: \"", absl::CEscape(name.substr(0, 80)), name.size() > 80 ? "..." : "",
                                   "\" is not a DNS label (a-z, 0-9 and -, at most 63 characters)"));
}

// What the audit log keeps of an apply: the objects asked for, its source and commit.
v1::AuditRecord ApplyRecord(const v1::ApplyRequest& request) {
  v1::AuditRecord record;
  record.set_verb("apply");
  AddAuditObjects(request.objects(), &record);
  record.set_source(request.source().substr(0, 1024));
  record.set_commit(request.commit().substr(0, 64));
  return record;
}

grpc::Status UnknownKind(const std::string& kind) {
  return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                      absl::StrCat("kind: unknown kind \"", kind,
                                   "\" (Host, KernelInstance, InstanceSet, RolloutPolicy, RoleBinding or GitSource)"));
}

}  // namespace

absl::Status CheckPinned(const std::vector<v1::Object>& objects) {
  std::vector<std::string> unpinned;
  for (const v1::Object& o : objects) {
    if (o.has_kernel_instance() && o.kernel_instance().spec().kernel().sha256().empty()) {
      unpinned.push_back(absl::StrCat("KernelInstance/", o.kernel_instance().metadata().name(), ": spec.kernel.sha256"));
    }
    if (o.has_instance_set() && o.instance_set().spec().template_().spec().kernel().sha256().empty()) {
      unpinned.push_back(
          absl::StrCat("InstanceSet/", o.instance_set().metadata().name(), ": spec.template.spec.kernel.sha256"));
    }
  }
  if (unpinned.empty()) return absl::OkStatus();
  if (unpinned.size() > 20) unpinned.resize(20);
  return absl::InvalidArgumentError(absl::StrCat(
      absl::StrJoin(unpinned, "; "), ": required (this controller runs --require-digest: every kernel is pinned)"));
}

bool IsKnownKind(const std::string& kind) {
  return kind == "Host" || kind == "KernelInstance" || kind == "InstanceSet" || kind == "RoleBinding" ||
         kind == "RolloutPolicy" || kind == "GitSource";
}

absl::StatusOr<Access::Caller> ControllerService::Allow(const grpc::ServerContextBase& context, absl::string_view verb,
                                                       absl::string_view kind, absl::string_view name) {
  Access::Caller caller{security::PeerIdentity(context), v1::ROLE_ADMIN};
  if (access_ == nullptr) return caller;
  MK_ASSIGN_OR_RETURN(caller, access_->Resolve(caller.identity));
  MK_RETURN_IF_ERROR(access_->Check(caller, verb, kind, name));
  return caller;
}

void ControllerService::RecordAudit(const grpc::ServerContextBase& context, const security::Identity& who,
                                    v1::AuditRecord record, const absl::Status& result) {
  if (audit_ == nullptr) return;
  record.set_identity(who.ToString());
  for (const std::string& g : who.groups) record.add_groups(g);
  record.set_result(result.ok() ? "OK" : absl::StatusCodeToString(result.code()));
  if (!result.ok()) record.set_message(std::string(result.message()));
  record.set_peer(context.peer());
  absl::Status s = audit_->Record(std::move(record));
  if (!s.ok()) std::cerr << "mkcontroller: audit log: " << s.message() << std::endl;
}

grpc::Status ControllerService::DoApply(grpc::ServerContext& context, const v1::ApplyRequest& request, bool dry_run,
                                        v1::ApplyResponse* response) {
  std::vector<v1::Object> objects(request.objects().begin(), request.objects().end());
  if (request.message().size() > kMaxChangeCause) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("apply: --message is ", request.message().size(), " bytes; at most ",
                                     kMaxChangeCause));
  }
  if (IsGitSource(request.source())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        absl::StrCat("source: \"", request.source().substr(0, 64),
                                     "\": sources starting with git: are the GitSources' own"));
  }
  // Viewers may diff; what an apply writes is checked per object below.
  auto caller = Allow(context, "diff", "");
  if (!caller.ok()) {
    if (!dry_run) RecordAudit(context, security::PeerIdentity(context), ApplyRecord(request), caller.status());
    return ToGrpc(caller.status());
  }
  if (!dry_run && store_quota_ > 0) {
    auto size = store_.SizeBytes();
    if (size.ok() && *size > store_quota_) {
      absl::Status full = absl::ResourceExhaustedError(absl::StrCat(
          "NOSPACE: the store is over its quota (", *size, " > ", store_quota_,
          " bytes, --store-quota); applies are refused until it is back under: delete objects (deletes and "
          "compaction still work; compaction runs on every resync)"));
      RecordAudit(context, caller->identity, ApplyRecord(request), full);
      return ToGrpc(full);
    }
  }
  // The checks of `mkapply validate`, on whatever a client sends: a bad object is refused
  // with its field, nothing written, and only what a manifest may say is stored.
  auto checked = manifests::RevalidateObjects(objects, &revalidated_);
  if (checked.ok() && require_digest_) {
    if (absl::Status pinned = CheckPinned(*checked); !pinned.ok()) checked = pinned;
  }
  if (!checked.ok()) {
    if (!dry_run) RecordAudit(context, caller->identity, ApplyRecord(request), checked.status());
    return ToGrpc(checked.status());
  }
  ApplyOptions options;
  options.source = request.source();
  options.change_cause = request.message();
  options.dry_run = dry_run;
  options.prune = request.prune();
  options.force_conflicts = request.force_conflicts();
  if (!dry_run && access_ != nullptr) {
    options.authorize = [&](absl::string_view verb, absl::string_view kind, absl::string_view name) {
      return access_->Check(*caller, verb, kind, name);
    };
  }
  auto result = objects_.Apply(*checked, options);
  if (!dry_run) {
    v1::AuditRecord record = ApplyRecord(request);
    if (result.ok()) {
      std::map<std::string, int> counts;
      for (const v1::ObjectChange& c : result->changes()) ++counts[c.change()];
      std::vector<std::string> parts;
      for (const auto& [change, n] : counts) parts.push_back(absl::StrCat(n, " ", change));
      record.set_message(absl::StrJoin(parts, ", "));
      record.set_revision(result->revision());
    }
    RecordAudit(context, caller->identity, std::move(record), result.status());
  }
  if (!result.ok()) return ToGrpc(result.status());
  *response = *std::move(result);
  if (dry_run && preview_) {
    // What the change would do to running kernels ("would re-create web-1 ...").
    auto lines = preview_(*checked);
    for (v1::ObjectChange& c : *response->mutable_changes()) {
      auto it = lines.find(absl::StrCat(c.kind(), "/", c.name()));
      if (it == lines.end()) continue;
      for (const std::string& line : it->second) c.add_actions(line);
    }
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::Apply(grpc::ServerContext* context, const v1::ApplyRequest* request,
                                      v1::ApplyResponse* response) {
  return DoApply(*context, *request, request->dry_run(), response);
}

grpc::Status ControllerService::Diff(grpc::ServerContext* context, const v1::ApplyRequest* request,
                                     v1::ApplyResponse* response) {
  return DoApply(*context, *request, /*dry_run=*/true, response);
}

grpc::Status ControllerService::Get(grpc::ServerContext* context, const v1::GetRequest* request,
                                    v1::GetResponse* response) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  if (grpc::Status n = CheckName(request->name(), /*may_be_empty=*/true); !n.ok()) return n;
  if (auto caller = Allow(*context, "get", request->kind(), request->name()); !caller.ok()) {
    return ToGrpc(caller.status());
  }
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

grpc::Status ControllerService::Delete(grpc::ServerContext* context, const v1::DeleteRequest* request,
                                      v1::DeleteResponse* response) {
  if (!IsKnownKind(request->kind())) return UnknownKind(request->kind());
  if (grpc::Status n = CheckName(request->name(), /*may_be_empty=*/false); !n.ok()) return n;
  v1::AuditRecord record;
  record.set_verb(request->force() ? "delete --force" : "delete");
  record.add_objects(absl::StrCat(request->kind(), "/", request->name().substr(0, 253)));
  auto caller = Allow(*context, "delete", request->kind(), request->name());
  if (!caller.ok()) {
    RecordAudit(*context, security::PeerIdentity(*context), std::move(record), caller.status());
    return ToGrpc(caller.status());
  }
  auto result =
      objects_.Delete(request->kind(), request->name(), absl::ToUnixMillis(clock_.Now()), request->force(),
                      request->force_conflicts());
  if (result.ok()) record.set_message(*result);
  RecordAudit(*context, caller->identity, std::move(record), result.status());
  if (!result.ok()) return ToGrpc(result.status());
  response->set_result(*result);
  return grpc::Status::OK;
}

grpc::ServerWriteReactor<v1::ObjectWatchEvent>* ControllerService::Watch(grpc::CallbackServerContext* context,
                                                                      const v1::ObjectWatchRequest* request) {
  using Refused = RefusedStream<v1::ObjectWatchEvent>;
  if (auto caller = Allow(*context, "watch", "object"); !caller.ok()) return new Refused(ToGrpc(caller.status()));
  auto slot = streams_->Acquire(security::PeerKey(*context));
  if (!slot.ok()) return new Refused(ToGrpc(slot.status()));
  const std::string prefix = "/objects/";
  int64_t revision = request->revision();
  std::deque<v1::ObjectWatchEvent> snapshot;
  if (revision == 0) {
    // The snapshot: read the revision first so no change between it and the list is lost
    // (a change seen in both is sent twice, harmless for a level-triggered watcher).
    auto rev = store_.Revision();
    if (!rev.ok()) return new Refused(ToGrpc(rev.status()));
    revision = *rev;
    auto kvs = store_.List(prefix);
    if (!kvs.ok()) return new Refused(ToGrpc(kvs.status()));
    for (const KeyValue& kv : *kvs) {
      v1::ObjectWatchEvent event;
      event.set_revision(kv.mod_revision);
      if (!event.mutable_object()->ParseFromString(kv.value)) continue;
      snapshot.push_back(std::move(event));
    }
  }
  auto convert = [](const Event& e) -> std::optional<v1::ObjectWatchEvent> {
    v1::ObjectWatchEvent event;
    event.set_revision(e.revision);
    if (e.type == Event::Type::kDelete) {
      // /objects/<Kind>/<name>: a deleted object is sent with only its kind and name.
      std::vector<std::string> parts = absl::StrSplit(e.key, '/');
      if (parts.size() != 4) return std::nullopt;
      event.set_deleted(true);
      v1::Object& o = *event.mutable_object();
      if (parts[2] == "Host") o.mutable_host()->mutable_metadata()->set_name(parts[3]);
      if (parts[2] == "KernelInstance") o.mutable_kernel_instance()->mutable_metadata()->set_name(parts[3]);
      if (parts[2] == "InstanceSet") o.mutable_instance_set()->mutable_metadata()->set_name(parts[3]);
      if (parts[2] == "RoleBinding") o.mutable_role_binding()->mutable_metadata()->set_name(parts[3]);
      if (parts[2] == "RolloutPolicy") o.mutable_rollout_policy()->mutable_metadata()->set_name(parts[3]);
      if (parts[2] == "GitSource") o.mutable_git_source()->mutable_metadata()->set_name(parts[3]);
    } else if (!event.mutable_object()->ParseFromString(e.value)) {
      return std::nullopt;
    }
    return event;
  };
  return new FollowReactor<v1::ObjectWatchEvent>(*hub_, std::move(snapshot), revision, prefix, convert,
                                                 {/*follow=*/true, /*out_of_range_ends=*/true}, *std::move(slot));
}

grpc::ServerWriteReactor<v1::Event>* ControllerService::Events(grpc::CallbackServerContext* context,
                                                               const v1::EventsRequest* request) {
  using Refused = RefusedStream<v1::Event>;
  if (auto caller = Allow(*context, "events", "event"); !caller.ok()) return new Refused(ToGrpc(caller.status()));
  auto slot = streams_->Acquire(security::PeerKey(*context));
  if (!slot.ok()) return new Refused(ToGrpc(slot.status()));
  if (events_ == nullptr) {
    return new Refused(grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller keeps no events"));
  }
  auto rev = store_.Revision();  // before the list: nothing between is lost
  if (!rev.ok()) return new Refused(ToGrpc(rev.status()));
  EventFilter filter;
  filter.kind = request->kind();
  filter.name = request->name();
  filter.type = request->type();
  filter.since_unix_ms = request->since_unix_ms();
  auto past = events_->List(filter);
  if (!past.ok()) return new Refused(ToGrpc(past.status()));
  std::deque<v1::Event> history(std::make_move_iterator(past->begin()), std::make_move_iterator(past->end()));
  auto convert = [filter](const Event& c) -> std::optional<v1::Event> {
    v1::Event e;
    if (c.type != Event::Type::kPut || !e.ParseFromString(c.value) || !EventMatches(e, filter)) return std::nullopt;
    return e;
  };
  // A follower that falls behind what is kept goes on from now.
  return new FollowReactor<v1::Event>(*hub_, std::move(history), *rev, kEventPrefix, convert,
                                      {request->follow(), /*out_of_range_ends=*/false}, *std::move(slot));
}

std::unique_ptr<grpc::Server> StartControllerServer(ControllerService& service, const std::string& address,
                                                    int* port, std::shared_ptr<grpc::ServerCredentials> credentials) {
  if (credentials == nullptr) credentials = grpc::InsecureServerCredentials();
  return StartGrpcServer(service, "mkfleet.v1.Controller", address, port, std::move(credentials));
}

grpc::Status ControllerService::Audit(grpc::ServerContext* context, const v1::AuditRequest* request,
                                      v1::AuditResponse* response) {
  if (auto caller = Allow(*context, "audit", "audit"); !caller.ok()) return ToGrpc(caller.status());
  if (audit_ == nullptr) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller keeps no audit log");
  auto records = audit_->List(request->since_unix_ms(), static_cast<size_t>(std::max(0, request->limit())));
  if (!records.ok()) return ToGrpc(records.status());
  for (v1::AuditRecord& r : *records) *response->add_records() = std::move(r);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Stats(grpc::ServerContext* context, const v1::StatsRequest*,
                                      v1::StatsResponse* response) {
  if (auto caller = Allow(*context, "stats", "stats"); !caller.ok()) return ToGrpc(caller.status());
  if (stats_) *response = stats_();
  response->set_version(kVersion);
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

grpc::Status ControllerService::OnLeader() const {
  if (!leader_check_) return grpc::Status::OK;
  absl::Status s = leader_check_();
  return s.ok() ? grpc::Status::OK : grpc::Status(grpc::StatusCode::UNAVAILABLE, std::string(s.message()));
}

grpc::Status ControllerService::Controllers(grpc::ServerContext* context, const v1::ControllersRequest*,
                                            v1::ControllersResponse* response) {
  if (auto caller = Allow(*context, "stats", "stats"); !caller.ok()) return ToGrpc(caller.status());
  if (controllers_) {
    *response = controllers_();
  } else {
    response->set_mode("single");
  }
  return grpc::Status::OK;
}

grpc::Status ControllerService::Topology(grpc::ServerContext* context, const v1::TopologyRequest* request,
                                         v1::TopologyResponse* response) {
  if (auto caller = Allow(*context, "get", "Host", request->host()); !caller.ok()) return ToGrpc(caller.status());
  if (request->host().empty()) return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "topology: no host named");
  if (!topology_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller keeps no host connections");
  auto got = topology_(request->host());
  if (!got.ok()) return ToGrpc(got.status());
  response->set_host(request->host());
  *response->mutable_topology() = *std::move(got);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Cordon(grpc::ServerContext* context, const v1::CordonRequest* request,
                                       v1::CordonResponse* response) {
  if (grpc::Status n = CheckName(request->host(), /*may_be_empty=*/false); !n.ok()) return n;
  const std::string key = "Host/" + request->host();
  v1::AuditRecord record;
  const bool drain = request->cordoned() && request->drain();
  record.set_verb(drain ? "drain host" : request->cordoned() ? "cordon host" : "uncordon host");
  record.add_objects(key);
  auto caller = Allow(*context, "cordon", "Host", request->host());
  if (!caller.ok()) {
    RecordAudit(*context, security::PeerIdentity(*context), std::move(record), caller.status());
    return ToGrpc(caller.status());
  }
  bool was_cordoned = false, was_draining = false;
  absl::Status s = objects_.Update("Host", request->host(), [&](v1::Object& o) {
    v1::HostSpec* spec = o.mutable_host()->mutable_spec();
    was_cordoned = spec->cordoned() || spec->drain();
    was_draining = spec->drain();
    spec->set_cordoned(request->cordoned());
    // Cordon leaves a drain as it is; drain sets it; uncordon ends it.
    spec->set_drain(request->cordoned() && (was_draining || drain));
  });
  std::string message;
  if (s.ok()) {
    if (drain) {
      message = was_draining ? absl::StrCat(key, " was draining already")
                             : absl::StrCat(key, " draining: cordoned, and its replicas sets' members are replaced on other "
                                                 "hosts within each set's rollout budget (perHost members and "
                                                 "KernelInstances stay)");
    } else if (request->cordoned()) {
      message = was_cordoned ? absl::StrCat(key, " was cordoned already")
                             : absl::StrCat(key, " cordoned: nothing new is placed there; what runs there stays");
    } else {
      message = !was_cordoned ? absl::StrCat(key, " was not cordoned")
                : absl::StrCat(key, " uncordoned", was_draining ? " (drain ended)" : "",
                               ": new instances and set members may be placed there again");
    }
    record.set_message(message);
  }
  RecordAudit(*context, caller->identity, std::move(record), s);
  if (!s.ok()) return ToGrpc(s);
  response->set_message(message);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Morph(grpc::ServerContext* context, const v1::MorphRequest* request,
                                      v1::MorphResponse* response) {
  if (grpc::Status l = OnLeader(); !l.ok()) return l;
  const std::string& verb = request->verb();
  if (verb != "status" && verb != "prepare" && verb != "commit" && verb != "rollback") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "morph: want a verb status, prepare, commit or rollback, got \"" + verb + "\"");
  }
  if (!request->kind().empty() && request->kind() != "KernelInstance") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "morph: only KernelInstances are live-updated");
  }
  if (!manifests::IsDnsLabel(request->name())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "morph: instance name \"" + request->name().substr(0, 64) + "\" is not a DNS label");
  }
  // prepare, commit and rollback change a kernel: they are audited like applies.
  v1::AuditRecord record;
  record.set_time_unix_ms(absl::ToUnixMillis(clock_.Now()));
  record.set_verb("morph " + verb);
  record.add_objects("KernelInstance/" + request->name());
  auto caller = Allow(*context, verb == "status" ? "get" : "morph", "KernelInstance", request->name());
  if (!caller.ok()) {
    if (verb != "status") RecordAudit(*context, security::PeerIdentity(*context), std::move(record), caller.status());
    return ToGrpc(caller.status());
  }
  if (!morph_) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller runs no live updates");
  v1::MorphRequest req = *request;
  if (verb == "rollback" && req.reason().empty()) req.set_reason("rollback requested by " + caller->identity.ToString());
  auto r = morph_(req);
  if (verb != "status") {
    if (r.ok()) record.set_message(r->message());
    RecordAudit(*context, caller->identity, std::move(record), r.status());
  }
  if (!r.ok()) return ToGrpc(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

absl::StatusOr<v1::RolloutResponse> ControllerService::UndoPolicy(const std::string& name, uint32_t to,
                                                                 const std::string& who) {
  const std::string key = "RolloutPolicy/" + name;
  uint32_t number = 0;
  MK_ASSIGN_OR_RETURN(auto specs, rollouts_->UndoSpecs(name, to, &number));
  std::vector<v1::Object> next;
  for (const auto& [id, spec] : specs) {
    const std::string instance = id.substr(0, id.rfind('@'));
    MK_ASSIGN_OR_RETURN(auto current, objects_.Get("KernelInstance", instance));
    // Deleted since, or deleted and applied again (another instance of that name): nothing to undo.
    if (!current.has_value() ||
        absl::StrCat(instance, "@", current->kernel_instance().metadata().created_revision()) != id) {
      continue;
    }
    v1::Object o = *std::move(current);
    if (o.kernel_instance().spec().SerializeAsString() == spec.SerializeAsString()) continue;
    *o.mutable_kernel_instance()->mutable_spec() = spec;
    o.mutable_kernel_instance()->clear_status();
    next.push_back(std::move(o));
  }
  if (next.empty()) {
    return absl::FailedPreconditionError(
        absl::StrCat(key, ": the instances already have the specs of revision ", number, " (nothing to undo)"));
  }
  for (const v1::Object& o : next) {
    const v1::ObjectMeta& meta = o.kernel_instance().metadata();
    if (IsGitSource(meta.source())) {
      return absl::FailedPreconditionError(absl::StrCat(
          key, ": KernelInstance/", meta.name(), " is owned by ", meta.source(),
          ": undo in the repository (git revert), which the source applies as a new revision"));
    }
  }
  ApplyOptions options;
  options.source = next.front().kernel_instance().metadata().source();
  options.change_cause = absl::StrCat("undo to revision ", number, " of ", key, " by ", who);
  MK_RETURN_IF_ERROR(objects_.Apply(next, options).status());
  MK_ASSIGN_OR_RETURN(v1::RolloutResponse r, rollouts_->Status("RolloutPolicy", name));
  r.set_message(
      absl::StrCat(key, ": the specs of revision ", number, " applied again to ", next.size(), " instance(s) (a new revision)"));
  return r;
}

grpc::Status ControllerService::Rollout(grpc::ServerContext* context, const v1::RolloutRequest* request,
                                        v1::RolloutResponse* response) {
  if (grpc::Status l = OnLeader(); !l.ok()) return l;
  const std::string& verb = request->verb();
  if (verb != "status" && verb != "history" && verb != "pause" && verb != "resume" && verb != "undo") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "rollout: want a verb status, history, pause, resume or undo, got \"" + verb.substr(0, 32) + "\"");
  }
  const std::string kind = request->kind().empty() ? "InstanceSet" : request->kind();
  if (kind != "InstanceSet" && kind != "RolloutPolicy") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "rollout: only InstanceSets and RolloutPolicies have rollouts, got kind \"" +
                            request->kind().substr(0, 32) + "\"");
  }
  if (!manifests::IsDnsLabel(request->name())) {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "rollout: name \"" + request->name().substr(0, 64) + "\" is not a DNS label");
  }
  const std::string key = kind + "/" + request->name();
  const bool reads = verb == "status" || verb == "history";
  v1::AuditRecord record;
  record.set_time_unix_ms(absl::ToUnixMillis(clock_.Now()));
  record.set_verb("rollout " + verb);
  record.add_objects(key);
  auto caller = Allow(*context, reads ? "get" : "rollout", kind, request->name());
  if (!caller.ok()) {
    if (!reads) RecordAudit(*context, security::PeerIdentity(*context), std::move(record), caller.status());
    return ToGrpc(caller.status());
  }
  if (rollouts_ == nullptr) return grpc::Status(grpc::StatusCode::UNIMPLEMENTED, "this controller runs no rollouts");
  auto set = objects_.Get(kind, request->name());
  if (!set.ok()) return ToGrpc(set.status());
  if (!set->has_value()) return grpc::Status(grpc::StatusCode::NOT_FOUND, key + " does not exist");
  absl::StatusOr<v1::RolloutResponse> r;
  if (reads) {
    r = rollouts_->Status(kind, request->name());
  } else if (verb == "pause" || verb == "resume") {
    r = rollouts_->SetPaused(kind, request->name(), verb == "pause");
  } else if (kind == "RolloutPolicy") {
    // undo: the instances of the older revision that still exist, with their specs then:
    // one atomic apply, a new revision of the policy.
    r = UndoPolicy(request->name(), request->to_revision(), caller->identity.ToString());
  } else {
    // undo: the set again, with the older revision's template: a new revision.
    uint32_t number = 0;
    auto tmpl = rollouts_->UndoTemplate(request->name(), request->to_revision(), &number);
    if (tmpl.ok() && IsGitSource((*set)->instance_set().metadata().source())) {
      tmpl = absl::FailedPreconditionError(absl::StrCat(
          key, " is owned by ", (*set)->instance_set().metadata().source(),
          ": undo in the repository (git revert), which the source applies as a new revision"));
    }
    if (tmpl.ok()) {
      v1::Object next = **set;
      v1::InstanceSet& s = *next.mutable_instance_set();
      *s.mutable_spec()->mutable_template_() = *tmpl;
      s.clear_status();
      ApplyOptions options;
      options.source = s.metadata().source();
      options.change_cause = absl::StrCat("undo to revision ", number, " by ", caller->identity.ToString());
      auto applied = objects_.Apply({next}, options);
      if (!applied.ok()) {
        r = applied.status();
      } else {
        r = rollouts_->Status(kind, request->name());
        if (r.ok()) r->set_message(absl::StrCat(key, ": the template of revision ", number,
                                                " applied again (a new revision)"));
      }
    } else {
      r = tmpl.status();
    }
  }
  if (!reads) {
    if (r.ok()) record.set_message(r->message());
    RecordAudit(*context, caller->identity, std::move(record), r.status());
  }
  if (!r.ok()) return ToGrpc(r.status());
  *response = *std::move(r);
  return grpc::Status::OK;
}

grpc::Status ControllerService::Source(grpc::ServerContext* context, const v1::SourceRequest* request,
                                       v1::SourceResponse* response) {
  if (grpc::Status l = OnLeader(); !l.ok()) return l;
  const std::string& verb = request->verb();
  if (verb != "sync" && verb != "suspend" && verb != "resume") {
    return grpc::Status(grpc::StatusCode::INVALID_ARGUMENT,
                        "source: want a verb sync, suspend or resume, got \"" + verb.substr(0, 32) + "\"");
  }
  if (grpc::Status n = CheckName(request->name(), /*may_be_empty=*/false); !n.ok()) return n;
  const std::string key = "GitSource/" + request->name();
  v1::AuditRecord record;
  record.set_verb(verb + " source");
  record.add_objects(key);
  auto caller = Allow(*context, verb, "GitSource", request->name());
  if (!caller.ok()) {
    RecordAudit(*context, security::PeerIdentity(*context), std::move(record), caller.status());
    return ToGrpc(caller.status());
  }
  absl::StatusOr<std::string> r;
  if (verb == "sync") {
    r = sync_ ? sync_(request->name()) : absl::UnimplementedError("this controller runs no GitSources");
  } else {
    const bool suspend = verb == "suspend";
    absl::Status s = objects_.Update("GitSource", request->name(), [&](v1::Object& o) {
      o.mutable_git_source()->mutable_spec()->set_suspend(suspend);
    });
    if (s.ok()) {
      r = absl::StrCat(key, suspend ? " suspended: nothing is fetched until it is resumed; what it applied stays"
                                    : " resumed");
      if (!suspend && sync_) {
        auto synced = sync_(request->name());
        r = absl::StrCat(*r, "; ", synced.ok() ? *synced : std::string(synced.status().message()));
      }
    } else {
      r = s;
    }
  }
  if (r.ok()) record.set_message(*r);
  RecordAudit(*context, caller->identity, std::move(record), r.status());
  if (!r.ok()) return ToGrpc(r.status());
  response->set_message(*r);
  auto o = objects_.Get("GitSource", request->name());
  if (o.ok() && o->has_value()) *response->mutable_source() = (*o)->git_source();
  return grpc::Status::OK;
}

}  // namespace mkfleet::reconciler
