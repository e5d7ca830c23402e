#include "reconciler/objects.h"

#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/status_macros.h"
#include "google/protobuf/util/message_differencer.h"
#include "manifests/loader.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

v1::ObjectMeta* MutableMeta(v1::Object& o) {
  switch (o.kind_case()) {
    case v1::Object::kHost:
      return o.mutable_host()->mutable_metadata();
    case v1::Object::kKernelInstance:
      return o.mutable_kernel_instance()->mutable_metadata();
    case v1::Object::kInstanceSet:
      return o.mutable_instance_set()->mutable_metadata();
    case v1::Object::kRoleBinding:
      return o.mutable_role_binding()->mutable_metadata();
    case v1::Object::kRolloutPolicy:
      return o.mutable_rollout_policy()->mutable_metadata();
    case v1::Object::kGitSource:
      return o.mutable_git_source()->mutable_metadata();
    default:
      return nullptr;
  }
}

// What a change of generation looks at: the spec and the labels.
std::string SpecOf(const v1::Object& o) {
  v1::Object copy = o;
  v1::ObjectMeta* m = MutableMeta(copy);
  std::map<std::string, std::string> labels(m->labels().begin(), m->labels().end());
  std::string spec;
  switch (copy.kind_case()) {
    case v1::Object::kHost:
      spec = copy.host().spec().SerializeAsString();
      break;
    case v1::Object::kKernelInstance:
      spec = copy.kernel_instance().spec().SerializeAsString();
      break;
    case v1::Object::kInstanceSet:
      spec = copy.instance_set().spec().SerializeAsString();
      break;
    case v1::Object::kRoleBinding:
      spec = copy.role_binding().spec().SerializeAsString();
      break;
    case v1::Object::kRolloutPolicy:
      spec = copy.rollout_policy().spec().SerializeAsString();
      break;
    case v1::Object::kGitSource:
      spec = copy.git_source().spec().SerializeAsString();
      break;
    default:
      break;
  }
  for (const auto& [k, v] : labels) absl::StrAppend(&spec, "|", k, "=", v);
  return spec;
}

}  // namespace

std::string ObjectKey(absl::string_view kind, absl::string_view name) {
  return absl::StrCat("/objects/", kind, "/", name);
}

bool IsGitSource(absl::string_view source) { return absl::StartsWith(source, kGitSourcePrefix); }

std::string OwnershipConflict(absl::string_view kind, absl::string_view name, const v1::ObjectMeta& owner) {
  std::string where;
  if (!owner.source_commit().empty()) {
    where = absl::StrCat(" (commit ", owner.source_commit().substr(0, 7),
                         owner.source_path().empty() ? "" : absl::StrCat(", ", owner.source_path()), ")");
  }
  return absl::StrCat(kind, "/", name, " is owned by ", owner.source(), where,
                      ": change it in the repository, or pass --force-conflicts to take it over");
}

absl::StatusOr<v1::ApplyResponse> Objects::Apply(const std::vector<v1::Object>& objects, const ApplyOptions& options) {
  if (options.prune && options.source.empty()) return absl::InvalidArgumentError("prune needs a source");
  // Checks across the set and the store.
  std::set<std::string> keys;
  std::set<std::string> hosts;  // the Hosts named by the objects' KernelInstances that exist
  std::vector<std::string> problems;
  for (const v1::Object& o : objects) {
    std::string kind(manifests::KindOf(o));
    const std::string& name = manifests::MetadataOf(o).name();
    if (kind.empty() || name.empty()) {
      problems.push_back("an object without kind or name");
      continue;
    }
    if (!keys.insert(ObjectKey(kind, name)).second) problems.push_back(absl::StrCat(kind, "/", name, ": given twice"));
    if (o.has_host()) hosts.insert(name);
  }
  // The stored ones: each looked up (a fleet's Hosts are not all read for one instance),
  // or listed when many are named.
  std::set<std::string> named;
  for (const v1::Object& o : objects) {
    const std::string& host = o.has_kernel_instance() ? o.kernel_instance().spec().host() : "";
    if (!host.empty() && !hosts.count(host)) named.insert(host);
  }
  if (named.size() > 64) {
    auto stored_hosts = store_.List("/objects/Host/");
    if (!stored_hosts.ok()) return stored_hosts.status();
    for (const KeyValue& kv : *stored_hosts) hosts.insert(kv.key.substr(std::string("/objects/Host/").size()));
  } else {
    for (const std::string& host : named) {
      auto kv = store_.Get(ObjectKey("Host", host));
      if (!kv.ok()) return kv.status();
      if (kv->has_value()) hosts.insert(host);
    }
  }
  for (const v1::Object& o : objects) {
    if (o.has_kernel_instance() && !o.kernel_instance().spec().host().empty() &&
        !hosts.count(o.kernel_instance().spec().host())) {
      problems.push_back(absl::StrCat("KernelInstance/", o.kernel_instance().metadata().name(), ": spec.host: no Host named \"",
                                      o.kernel_instance().spec().host(), "\""));
    }
  }
  if (!problems.empty()) return absl::InvalidArgumentError(absl::StrJoin(problems, "; "));
  if (options.authorize) {
    for (const v1::Object& o : objects) {
      MK_RETURN_IF_ERROR(options.authorize("apply", manifests::KindOf(o), manifests::MetadataOf(o).name()));
    }
  }

  v1::ApplyResponse response;
  std::vector<Compare> compares;
  std::vector<Op> ops;
  std::vector<std::string> conflicts;
  const bool from_git = IsGitSource(options.source);
  // A large apply (a repository's commit) reads each kind it touches in one list rather
  // than an object at a time.
  std::map<std::string, KeyValue> prefetched;
  std::set<std::string> prefetched_kinds;
  if (objects.size() > 64) {
    for (const v1::Object& o : objects) {
      std::string kind(manifests::KindOf(o));
      if (!prefetched_kinds.insert(kind).second) continue;
      auto kvs = store_.List(absl::StrCat("/objects/", kind, "/"));
      if (!kvs.ok()) return kvs.status();
      for (KeyValue& kv : *kvs) prefetched.emplace(kv.key, std::move(kv));
    }
  }
  for (size_t i = 0; i < objects.size(); ++i) {
    const v1::Object& o = objects[i];
    std::string kind(manifests::KindOf(o));
    const std::string& name = manifests::MetadataOf(o).name();
    std::string key = ObjectKey(kind, name);
    absl::StatusOr<std::optional<KeyValue>> existing;
    if (prefetched_kinds.count(kind)) {
      auto it = prefetched.find(key);
      existing = it == prefetched.end() ? std::optional<KeyValue>() : std::optional<KeyValue>(it->second);
    } else {
      existing = store_.Get(key);
    }
    if (!existing.ok()) return existing.status();
    v1::Object next = o;
    v1::ObjectMeta* meta = MutableMeta(next);
    meta->set_source(options.source);
    meta->set_source_commit(from_git ? options.commit : "");
    meta->set_source_path(from_git && i < options.paths.size() ? options.paths[i] : "");
    v1::ObjectChange* change = response.add_changes();
    change->set_kind(kind);
    change->set_name(name);
    meta->set_change_cause(options.change_cause);
    if (!existing->has_value()) {
      meta->set_generation(1);
      change->set_generation(1);
      change->set_change("created");
      compares.push_back({key, 0});
    } else {
      v1::Object old;
      if (!old.ParseFromString((*existing)->value)) return absl::DataLossError(absl::StrCat("store: ", key, " is corrupt"));
      const v1::ObjectMeta& old_meta = manifests::MetadataOf(old);
      if (IsGitSource(old_meta.source()) && old_meta.source() != options.source && !options.force_conflicts &&
          SourceExists(old_meta.source())) {
        if (conflicts.size() < 20) conflicts.push_back(OwnershipConflict(kind, name, old_meta));
        continue;
      }
      bool spec_changed = SpecOf(old) != SpecOf(next);
      // An object a commit leaves as it was keeps the commit that last changed it (an apply
      // of a commit that changes one file writes one object, not all).
      if (!spec_changed && old_meta.source() == options.source && from_git) {
        meta->set_source_commit(old_meta.source_commit());
      }
      // Applying a Host that is being deleted keeps it (its deletion is called off).
      bool undelete = old_meta.deletion_unix_ms() != 0;
      meta->set_generation(old_meta.generation() + (spec_changed ? 1 : 0));
      change->set_generation(meta->generation());
      if (!spec_changed) meta->set_change_cause(old_meta.change_cause());
      if (!spec_changed && !undelete && old_meta.source() == options.source &&
          old_meta.source_path() == meta->source_path()) {
        change->set_change("unchanged");
        continue;
      }
      // Same spec from another source: it changes hands (a GitSource taking over what mkapply
      // applied, --force-conflicts).
      change->set_change(spec_changed || undelete          ? "configured"
                         : old_meta.source() != options.source ? "adopted"
                                                               : "unchanged");
      compares.push_back({key, (*existing)->mod_revision});
    }
    ops.push_back({Op::Type::kPut, key, next.SerializeAsString(), 0});
  }
  if (!conflicts.empty()) {
    return absl::FailedPreconditionError(absl::StrJoin(conflicts, "; "));
  }
  if (!options.source.empty()) {
    std::string inv_key = "/inventory/" + options.source;
    auto inv = store_.Get(inv_key);
    if (!inv.ok()) return inv.status();
    if (options.prune && inv->has_value()) {
      for (absl::string_view k : absl::StrSplit((*inv)->value, '\n', absl::SkipEmpty())) {
        std::string key(k);
        if (keys.count(key)) continue;
        auto gone = store_.Get(key);
        if (!gone.ok()) return gone.status();
        if (!gone->has_value()) continue;
        // Taken over by another source since (--force-conflicts, or another apply): not ours.
        v1::Object owned_object;
        if (owned_object.ParseFromString((*gone)->value) &&
            manifests::MetadataOf(owned_object).source() != options.source) {
          continue;
        }
        compares.push_back({key, (*gone)->mod_revision});
        ops.push_back({Op::Type::kDelete, key, "", 0});
        std::vector<std::string> parts = absl::StrSplit(key, '/');
        if (options.authorize && parts.size() > 3) MK_RETURN_IF_ERROR(options.authorize("prune", parts[2], parts[3]));
        v1::ObjectChange* change = response.add_changes();
        change->set_kind(parts.size() > 2 ? parts[2] : "");
        change->set_name(parts.size() > 3 ? parts[3] : "");
        change->set_change("pruned");
      }
    }
    // The inventory: what this source owns after this apply.
    std::set<std::string> owned = keys;
    if (!options.prune && inv->has_value()) {
      for (absl::string_view k : absl::StrSplit((*inv)->value, '\n', absl::SkipEmpty())) owned.insert(std::string(k));
    }
    std::string inventory = absl::StrJoin(owned, "\n");
    if (!inv->has_value() || (*inv)->value != inventory) {
      compares.push_back({inv_key, inv->has_value() ? (*inv)->mod_revision : 0});
      ops.push_back({Op::Type::kPut, inv_key, std::move(inventory), 0});
    }
  }
  if (options.dry_run || ops.empty()) {
    auto rev = store_.Revision();
    if (!rev.ok()) return rev.status();
    response.set_revision(*rev);
    return response;
  }
  auto rev = store_.Txn(compares, ops);
  if (!rev.ok()) return rev.status();
  response.set_revision(*rev);
  return response;
}

namespace {

// Parses a stored status into the object's `status`.
void SetStatus(v1::Object& o, const std::string& value) {
  switch (o.kind_case()) {
    case v1::Object::kHost:
      o.mutable_host()->mutable_status()->ParseFromString(value);
      break;
    case v1::Object::kKernelInstance:
      o.mutable_kernel_instance()->mutable_status()->ParseFromString(value);
      break;
    case v1::Object::kInstanceSet:
      o.mutable_instance_set()->mutable_status()->ParseFromString(value);
      break;
    case v1::Object::kRolloutPolicy:
      o.mutable_rollout_policy()->mutable_status()->ParseFromString(value);
      break;
    case v1::Object::kGitSource:
      o.mutable_git_source()->mutable_status()->ParseFromString(value);
      break;
    default:
      break;
  }
}

// A stored object with its revisions (what List and ListSpecs return of each).
absl::StatusOr<v1::Object> ParseStored(const std::string& key, const std::string& value, int64_t created,
                                       int64_t modified) {
  v1::Object o;
  if (!o.ParseFromString(value)) return absl::DataLossError(absl::StrCat("store: ", key, " is corrupt"));
  MutableMeta(o)->set_revision(modified);
  MutableMeta(o)->set_created_revision(created);
  return o;
}

// A set member has no stored object, only the status the controller writes; it is shown
// as a KernelInstance with the set template's spec, on its host.
v1::Object MemberObject(const std::string& name, const v1::InstanceStatus& status,
                        const std::map<std::string, v1::Object>& sets) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->mutable_metadata()->set_name(name);
  auto set = sets.find(status.owner().substr(status.owner().find('/') + 1));
  if (set != sets.end()) {
    const v1::InstanceSet& s = set->second.instance_set();
    *ki->mutable_metadata()->mutable_labels() = s.spec().template_().metadata().labels();
    (*ki->mutable_metadata()->mutable_labels())["mkfleet.io/set"] = s.metadata().name();
    ki->mutable_metadata()->set_generation(s.metadata().generation());
    *ki->mutable_spec() = s.spec().template_().spec();
  }
  ki->mutable_spec()->set_host(status.placement().host());
  *ki->mutable_status() = status;
  return o;
}

}  // namespace

std::string StatusKey(absl::string_view kind, absl::string_view name) {
  return absl::StrCat("/status/", kind, "/", name);
}

absl::Status Objects::WriteStatuses(const std::vector<std::pair<std::string, std::string>>& puts,
                                    const std::vector<std::string>& deletes) {
  if (puts.empty() && deletes.empty()) return absl::OkStatus();
  std::vector<Op> ops;
  for (const auto& [key, value] : puts) ops.push_back({Op::Type::kPut, key, value, 0});
  for (const std::string& key : deletes) ops.push_back({Op::Type::kDelete, key, "", 0});
  auto rev = store_.Txn({}, ops);
  return rev.status();
}

absl::StatusOr<std::vector<v1::Object>> Objects::List(absl::string_view kind, bool with_members) {
  auto kvs = store_.List(absl::StrCat("/objects/", kind, "/"));
  if (!kvs.ok()) return kvs.status();
  const std::string status_prefix = StatusKey(kind, "");
  auto statuses = store_.List(status_prefix);
  if (!statuses.ok()) return statuses.status();
  std::map<std::string, const std::string*> status_of;
  for (const KeyValue& kv : *statuses) status_of[kv.key.substr(status_prefix.size())] = &kv.value;
  std::vector<v1::Object> out;
  for (const KeyValue& kv : *kvs) {
    MK_ASSIGN_OR_RETURN(v1::Object o, ParseStored(kv.key, kv.value, kv.create_revision, kv.mod_revision));
    auto st = status_of.find(MutableMeta(o)->name());
    if (st != status_of.end()) {
      SetStatus(o, *st->second);
      status_of.erase(st);
    }
    out.push_back(std::move(o));
  }
  if (with_members && kind == "KernelInstance") {
    std::map<std::string, v1::Object> sets;
    auto set_objects = List("InstanceSet");
    if (!set_objects.ok()) return set_objects.status();
    for (v1::Object& s : *set_objects) sets[s.instance_set().metadata().name()] = std::move(s);
    for (const auto& [name, value] : status_of) {
      v1::InstanceStatus st;
      if (!st.ParseFromString(*value) || st.owner().empty()) continue;
      out.push_back(MemberObject(name, st, sets));
    }
    std::sort(out.begin(), out.end(), [](const v1::Object& a, const v1::Object& b) {
      return a.kernel_instance().metadata().name() < b.kernel_instance().metadata().name();
    });
  }
  return out;
}

absl::Status Objects::RefreshSpecs() {
  // Read before the history: whatever is written meanwhile is read again next time (each
  // event sets what its key holds, so applying one twice changes nothing).
  MK_ASSIGN_OR_RETURN(const int64_t now, store_.Revision());
  if (specs_revision_ == now) return absl::OkStatus();
  constexpr absl::string_view kPrefix = "/objects/";
  auto events = specs_revision_ < 0 ? absl::OutOfRangeError("first read")
                                    : store_.EventsSince(specs_revision_, std::string(kPrefix));
  if (!events.ok()) {  // the first read, or history compacted past the copy
    MK_ASSIGN_OR_RETURN(std::vector<KeyValue> all, store_.List(std::string(kPrefix)));
    specs_.clear();
    for (const KeyValue& kv : all) {
      MK_ASSIGN_OR_RETURN(v1::Object o, ParseStored(kv.key, kv.value, kv.create_revision, kv.mod_revision));
      specs_.emplace_hint(specs_.end(), kv.key, std::move(o));
    }
    specs_revision_ = now;
    return absl::OkStatus();
  }
  for (const Event& e : *events) {
    if (e.type == Event::Type::kDelete) {
      specs_.erase(e.key);
      continue;
    }
    auto it = specs_.find(e.key);
    const int64_t created = it != specs_.end() ? MutableMeta(it->second)->created_revision() : e.revision;
    MK_ASSIGN_OR_RETURN(v1::Object o, ParseStored(e.key, e.value, created, e.revision));
    specs_.insert_or_assign(e.key, std::move(o));
  }
  specs_revision_ = now;
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Object>> Objects::ListSpecs(absl::string_view kind) {
  absl::MutexLock lock(&specs_mu_);
  if (absl::Status s = RefreshSpecs(); !s.ok()) {
    specs_revision_ = -1;  // read whole next time
    return s;
  }
  const std::string prefix = absl::StrCat("/objects/", kind, "/");
  std::vector<v1::Object> out;
  for (auto it = specs_.lower_bound(prefix); it != specs_.end() && absl::StartsWith(it->first, prefix); ++it) {
    out.push_back(it->second);
  }
  return out;
}

absl::StatusOr<std::optional<v1::Object>> Objects::Get(absl::string_view kind, absl::string_view name,
                                                      bool with_members) {
  auto kv = store_.Get(ObjectKey(kind, name));
  if (!kv.ok()) return kv.status();
  auto status = store_.Get(StatusKey(kind, name));
  if (!status.ok()) return status.status();
  if (!kv->has_value()) {
    if (!with_members || kind != "KernelInstance" || !status->has_value()) return std::optional<v1::Object>();
    v1::InstanceStatus st;
    if (!st.ParseFromString((*status)->value) || st.owner().empty()) return std::optional<v1::Object>();
    std::map<std::string, v1::Object> sets;
    auto set = Get("InstanceSet", st.owner().substr(st.owner().find('/') + 1));
    if (!set.ok()) return set.status();
    if (set->has_value()) sets[(*set)->instance_set().metadata().name()] = **set;
    return std::optional<v1::Object>(MemberObject(std::string(name), st, sets));
  }
  v1::Object o;
  if (!o.ParseFromString((*kv)->value)) return absl::DataLossError("store: corrupt object");
  MutableMeta(o)->set_revision((*kv)->mod_revision);
  MutableMeta(o)->set_created_revision((*kv)->create_revision);
  if (status->has_value()) SetStatus(o, (*status)->value);
  return std::optional<v1::Object>(std::move(o));
}

absl::StatusOr<std::string> Objects::Delete(absl::string_view kind, absl::string_view name, int64_t now_unix_ms,
                                            bool force, bool force_conflicts) {
  auto current = store_.Get(ObjectKey(kind, name));
  if (!current.ok()) return current.status();
  if (current->has_value() && !force_conflicts) {
    v1::Object o;
    if (o.ParseFromString((*current)->value) && IsGitSource(manifests::MetadataOf(o).source()) &&
        SourceExists(manifests::MetadataOf(o).source())) {
      return absl::FailedPreconditionError(OwnershipConflict(kind, name, manifests::MetadataOf(o)));
    }
  }
  if (kind == "Host") MK_RETURN_IF_ERROR(HostUnused(name));
  if (!current->has_value()) {
    // A set member exists only through its set.
    auto member = Get(kind, name, /*with_members=*/true);
    if (member.ok() && member->has_value()) {
      return absl::FailedPreconditionError(absl::StrCat(kind, "/", name, " is a member of ",
                                                        (*member)->kernel_instance().status().owner(),
                                                        "; change the set's count or delete the set"));
    }
    return absl::NotFoundError(absl::StrCat(kind, "/", name, " does not exist"));
  }
  if (kind == "Host" && !force) {
    // Marked; the controller deletes its kernels first.
    v1::Object o;
    if (!o.ParseFromString((*current)->value)) return absl::DataLossError(absl::StrCat("store: ", (*current)->key, " is corrupt"));
    if (o.host().metadata().deletion_unix_ms() != 0) return std::string("terminating");
    o.mutable_host()->mutable_metadata()->set_deletion_unix_ms(std::max<int64_t>(now_unix_ms, 1));
    auto rev = store_.Txn({{ObjectKey(kind, name), (*current)->mod_revision}},
                          {{Op::Type::kPut, ObjectKey(kind, name), o.SerializeAsString(), 0}});
    if (!rev.ok()) return rev.status();
    return std::string("terminating");
  }
  MK_RETURN_IF_ERROR(Remove(kind, name, (*current)->mod_revision));
  return std::string("deleted");
}

absl::Status Objects::Update(absl::string_view kind, absl::string_view name,
                             const std::function<void(v1::Object&)>& change) {
  const std::string key = ObjectKey(kind, name);
  auto current = store_.Get(key);
  if (!current.ok()) return current.status();
  if (!current->has_value()) return absl::NotFoundError(absl::StrCat(kind, "/", name, " does not exist"));
  v1::Object o;
  if (!o.ParseFromString((*current)->value)) return absl::DataLossError(absl::StrCat("store: ", key, " is corrupt"));
  v1::Object next = o;
  change(next);
  if (SpecOf(next) != SpecOf(o)) MutableMeta(next)->set_generation(MutableMeta(next)->generation() + 1);
  std::string value = next.SerializeAsString();
  if (value == (*current)->value) return absl::OkStatus();
  return store_.Txn({{key, (*current)->mod_revision}}, {{Op::Type::kPut, key, std::move(value), 0}}).status();
}

bool Objects::SourceExists(absl::string_view source) {
  auto kv = store_.Get(ObjectKey("GitSource", source.substr(kGitSourcePrefix.size())));
  return !kv.ok() || kv->has_value();  // a store error protects the object
}

absl::Status Objects::HostUnused(absl::string_view name) {
  auto instances = List("KernelInstance");
  if (!instances.ok()) return instances.status();
  std::vector<std::string> users;
  for (const v1::Object& o : *instances) {
    if (o.kernel_instance().spec().host() == name) users.push_back(o.kernel_instance().metadata().name());
  }
  if (!users.empty()) {
    return absl::FailedPreconditionError(absl::StrCat("Host/", name, " is still named by KernelInstance ",
                                                      absl::StrJoin(users, ", "), "; delete those first"));
  }
  return absl::OkStatus();
}

absl::Status Objects::Remove(absl::string_view kind, absl::string_view name, int64_t revision) {
  // The object and its status go in one transaction.
  std::vector<Compare> compares = {{ObjectKey(kind, name), revision}};
  std::vector<Op> ops = {{Op::Type::kDelete, ObjectKey(kind, name), "", 0}};
  auto status = store_.Get(StatusKey(kind, name));
  if (!status.ok()) return status.status();
  if (status->has_value()) {
    compares.push_back({StatusKey(kind, name), (*status)->mod_revision});
    ops.push_back({Op::Type::kDelete, StatusKey(kind, name), "", 0});
  }
  auto rev = store_.Txn(compares, ops);
  if (!rev.ok()) {
    if (rev.status().code() == absl::StatusCode::kNotFound) {
      return absl::NotFoundError(absl::StrCat(kind, "/", name, " does not exist"));
    }
    return rev.status();
  }
  return absl::OkStatus();
}

absl::Status Objects::FinishHostDelete(const std::string& name) {
  auto current = store_.Get(ObjectKey("Host", name));
  if (!current.ok()) return current.status();
  if (!current->has_value()) return absl::OkStatus();
  v1::Object o;
  if (!o.ParseFromString((*current)->value)) return absl::DataLossError("store: corrupt Host");
  if (o.host().metadata().deletion_unix_ms() == 0) return absl::OkStatus();  // applied again meanwhile
  MK_RETURN_IF_ERROR(HostUnused(name));
  return Remove("Host", name, (*current)->mod_revision);
}

}  // namespace mkfleet::reconciler
