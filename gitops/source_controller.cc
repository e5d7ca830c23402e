#include "gitops/source_controller.h"

#include <filesystem>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "common/fnv.h"

namespace mkfleet::gitops {
namespace {

namespace v1 = mkfleet::v1;
namespace fs = std::filesystem;

std::string Short(const std::string& sha) { return sha.substr(0, 7); }

// Sets condition `type` in `st`, keeping its transition time when its status is unchanged.
void SetCondition(v1::GitSourceStatus& st, const std::string& type, bool ok, const std::string& reason,
                  const std::string& message, int64_t now_ms, int64_t generation) {
  v1::Condition* c = nullptr;
  for (v1::Condition& existing : *st.mutable_conditions()) {
    if (existing.type() == type) c = &existing;
  }
  v1::ConditionStatus status = ok ? v1::CONDITION_TRUE : v1::CONDITION_FALSE;
  if (c == nullptr) {
    c = st.add_conditions();
    c->set_type(type);
  }
  if (c->status() != status || c->last_transition_unix_ms() == 0) c->set_last_transition_unix_ms(now_ms);
  c->set_status(status);
  c->set_reason(reason);
  c->set_message(message);
  c->set_observed_generation(generation);
}

void DropCondition(v1::GitSourceStatus& st, const std::string& type) {
  auto* cs = st.mutable_conditions();
  for (int i = 0; i < cs->size(); ++i) {
    if (cs->Get(i).type() == type) {
      cs->DeleteSubrange(i, 1);
      return;
    }
  }
}

v1::CommitInfo Info(const CommitMeta& m, const std::string& signed_by) {
  v1::CommitInfo info;
  info.set_sha(m.sha);
  info.set_author(m.author);
  info.set_subject(m.subject);
  info.set_time_unix_ms(m.time_unix_ms);
  info.set_signed_by(signed_by);
  return info;
}

GitTarget TargetOf(const v1::GitSourceSpec& spec) {
  GitTarget t;
  t.url = spec.url();
  t.branch = spec.ref().branch();
  t.tag = spec.ref().tag();
  t.commit = spec.ref().commit();
  t.auth.ssh_key_file = spec.credentials().ssh_key_file();
  t.auth.known_hosts_file = spec.credentials().known_hosts_file();
  t.auth.token_file = spec.credentials().token_file();
  t.auth.username = spec.credentials().username();
  return t;
}

// "3 created, 1 configured, 2 pruned" (unchanged ones left out); "no changes".
std::string Changes(const v1::ApplyResponse& r) {
  std::map<std::string, int> counts;
  for (const v1::ObjectChange& c : r.changes()) {
    if (c.change() != "unchanged") ++counts[c.change()];
  }
  std::vector<std::string> parts;
  for (const auto& [change, n] : counts) parts.push_back(absl::StrCat(n, " ", change));
  return parts.empty() ? "no changes" : absl::StrJoin(parts, ", ");
}

}  // namespace

std::string GitSourceName(absl::string_view name) { return absl::StrCat(reconciler::kGitSourcePrefix, name); }

SourceController::SourceController(reconciler::Store& store, reconciler::Objects& objects,
                                   reconciler::EventLog* events, reconciler::AuditLog* audit, Clock& clock,
                                   SourceControllerOptions options)
    : store_(store),
      objects_(objects),
      events_(events),
      audit_(audit),
      clock_(clock),
      options_(std::move(options)),
      verifier_(options_.cache_dir + "/gnupg") {}

SourceController::~SourceController() { Stop(); }

void SourceController::Start() {
  {
    absl::MutexLock lock(&stop_mu_);
    stop_ = false;
  }
  thread_ = std::thread([this] { Loop(); });
}

void SourceController::Stop() {
  {
    absl::MutexLock lock(&stop_mu_);
    stop_ = true;
  }
  if (thread_.joinable()) thread_.join();
}

void SourceController::Loop() {
  while (true) {
    RunOnce();
    absl::MutexLock lock(&stop_mu_);
    if (stop_mu_.AwaitWithTimeout(absl::Condition(&stop_), options_.poll)) return;
  }
}

absl::Duration SourceController::Interval(const v1::GitSourceSpec& spec, const std::string& name, uint64_t n) const {
  absl::Duration base = spec.interval() > 0 ? absl::Milliseconds(spec.interval()) : options_.default_interval;
  // Jitter of up to a tenth either way, the same for a name and fetch count on any run (so
  // a thousand sources applied together do not fetch together).
  uint64_t h = Fnv1a().Field(name).Field(absl::StrCat(n)).value();
  double f = 0.9 + 0.2 * static_cast<double>(h % 10001) / 10000.0;
  return base * f;
}

int SourceController::RunOnce() {
  auto list = objects_.List("GitSource");
  if (!list.ok()) return 0;
  absl::MutexLock lock(&work_mu_);
  std::set<std::string> present;
  int fetched = 0;
  for (const v1::Object& o : *list) {
    const v1::GitSource& source = o.git_source();
    const std::string& name = source.metadata().name();
    present.insert(name);
    SourceState& state = states_[name];
    bool due = state.generation != source.metadata().generation() || clock_.Now() >= state.next_fetch;
    if (!due) continue;
    (void)Reconcile(source, /*forced=*/false);
    ++fetched;
  }
  for (auto it = states_.begin(); it != states_.end();) {
    if (present.count(it->first)) {
      ++it;
      continue;
    }
    // A deleted source: its mirror goes too (what it applied stays, as with `flux delete
    // source`; prune is the repository's business).
    std::error_code ec;
    it->second.mirror.reset();
    if (!it->second.mirror_dir.empty()) fs::remove_all(it->second.mirror_dir, ec);
    it = states_.erase(it);
  }
  return fetched;
}

absl::StatusOr<std::string> SourceController::Sync(const std::string& name) {
  auto o = objects_.Get("GitSource", name);
  if (!o.ok()) return o.status();
  if (!o->has_value()) return absl::NotFoundError(absl::StrCat("GitSource/", name, " does not exist"));
  if ((*o)->git_source().spec().suspend()) {
    return absl::FailedPreconditionError(
        absl::StrCat("GitSource/", name, " is suspended; `mkapply resume source ", name, "` first"));
  }
  absl::MutexLock lock(&work_mu_);
  return Reconcile((*o)->git_source(), /*forced=*/true);
}

void SourceController::WriteStatus(const std::string& name, const v1::GitSourceStatus& status) {
  // Only while the source exists: a status written after its delete would outlive it.
  const std::string key = reconciler::ObjectKey("GitSource", name);
  auto current = store_.Get(key);
  if (!current.ok() || !current->has_value()) return;
  (void)store_.Txn({{key, (*current)->mod_revision}},
                   {{reconciler::Op::Type::kPut, reconciler::StatusKey("GitSource", name), status.SerializeAsString(), 0}});
}

void SourceController::Emit(const std::string& name, const std::string& type, const std::string& reason,
                            const std::string& message) {
  if (events_ == nullptr) return;
  v1::Event e;
  e.set_kind("GitSource");
  e.set_name(name);
  e.set_type(type);
  e.set_reason(reason);
  e.set_message(message);
  (void)events_->Record(std::move(e));
}

absl::Status SourceController::Load(SourceState& state, const v1::GitSourceSpec& spec, const std::string& sha,
                                    manifests::LoadResult* result) {
  auto files = state.mirror->Files(sha, spec.path());
  if (!files.ok()) return files.status();
  if (files->size() > options_.max_files) {
    return absl::ResourceExhaustedError(absl::StrCat("path ", spec.path().empty() ? "/" : spec.path(), " has ",
                                                     files->size(), " manifests; at most ", options_.max_files));
  }
  manifests::LoadOptions load;
  load.check_host_references = false;  // the store may hold the Host; Apply checks against both
  load.max_file_bytes = options_.max_file_bytes;
  std::map<std::string, CachedFile> next;
  for (const TreeFile& f : *files) {
    std::string key = absl::StrCat(f.path, std::string(1, '\0'), f.blob_id);
    auto cached = state.files.find(key);
    CachedFile file;
    if (cached != state.files.end()) {
      file = std::move(cached->second);
    } else {
      manifests::LoadResult one;
      auto text = state.mirror->ReadBlob(f.blob_id, options_.max_file_bytes);
      if (!text.ok()) {
        one.errors.push_back({f.path, manifests::Position{}, "", "", std::string(text.status().message())});
      } else {
        manifests::LoadText(f.path, *text, load, &one);
      }
      file.objects = std::move(one.objects);
      file.errors = std::move(one.errors);
    }
    result->objects.insert(result->objects.end(), file.objects.begin(), file.objects.end());
    result->errors.insert(result->errors.end(), file.errors.begin(), file.errors.end());
    next.emplace(std::move(key), std::move(file));
  }
  state.files = std::move(next);
  manifests::CheckObjects(load, result);
  return absl::OkStatus();
}

absl::StatusOr<std::string> SourceController::Reconcile(const v1::GitSource& source, bool forced) {
  const std::string& name = source.metadata().name();
  const v1::GitSourceSpec& spec = source.spec();
  const int64_t generation = source.metadata().generation();
  SourceState& state = states_[name];
  // Changed since it was last worked on; after a restart, since the stored status says.
  const bool spec_changed =
      state.generation >= 0 ? state.generation != generation : source.status().observed_generation() != generation;
  state.generation = generation;
  v1::GitSourceStatus st = source.status();
  st.set_observed_generation(generation);
  const int64_t now_ms = absl::ToUnixMillis(clock_.Now());
  auto fail = [&](const std::string& type, const std::string& reason, const std::string& message) {
    SetCondition(st, type, false, reason, message, now_ms, generation);
    SetCondition(st, "Ready", false, reason, message, now_ms, generation);
    WriteStatus(name, st);
    return message;
  };

  if (spec.suspend()) {
    state.next_fetch = clock_.Now() + Interval(spec, name, state.fetches);
    st.set_next_fetch_unix_ms(0);
    SetCondition(st, "Ready", false, "Suspended", "suspended: nothing is fetched; what is applied stays", now_ms,
                 generation);
    WriteStatus(name, st);
    return std::string("suspended");
  }

  // The mirror: one per URL (a changed URL starts a new one).
  std::string dir = absl::StrFormat("%s/%s-%016x", options_.cache_dir, name, Fnv1a().Field(spec.url()).value());
  if (state.mirror == nullptr || state.mirror_dir != dir) {
    std::error_code ec;
    state.mirror.reset();
    if (!state.mirror_dir.empty() && state.mirror_dir != dir) fs::remove_all(state.mirror_dir, ec);
    state.files.clear();
    auto mirror = GitMirror::Open(dir);
    if (!mirror.ok()) return absl::InternalError(fail("Fetched", "FetchFailed", std::string(mirror.status().message())));
    state.mirror = *std::move(mirror);
    state.mirror_dir = dir;
  }

  ++state.fetches;
  state.next_fetch = clock_.Now() + Interval(spec, name, state.fetches);
  st.set_last_fetch_unix_ms(now_ms);
  st.set_next_fetch_unix_ms(absl::ToUnixMillis(state.next_fetch));
  auto fetched = state.mirror->Fetch(TargetOf(spec));
  if (!fetched.ok()) {
    std::string message = std::string(fetched.status().message());
    bool repeat = false;
    for (const v1::Condition& c : st.conditions()) {
      repeat |= c.type() == "Fetched" && c.status() == v1::CONDITION_FALSE && c.message() == message;
    }
    fail("Fetched", "FetchFailed", message);
    if (!repeat) Emit(name, "Warning", "FetchFailed", message);
    return absl::Status(fetched.status().code(), message);
  }
  const CommitMeta& commit = *fetched;
  *st.mutable_last_fetched() = Info(commit, "");
  SetCondition(st, "Fetched", true, "Fetched", absl::StrCat("fetched ", Short(commit.sha), " (", commit.subject, ")"),
               now_ms, generation);

  const bool applied = st.last_applied().sha() == commit.sha;
  if (!forced && !spec_changed && (applied || state.refused_sha == commit.sha)) {
    WriteStatus(name, st);  // the fetch time; nothing new to apply
    return absl::StrCat("fetched ", Short(commit.sha), ": ", applied ? "already applied" : "refused before");
  }

  // Signed commits only, when asked.
  std::string signed_by;
  if (!spec.verify().keyring().empty()) {
    auto key = verifier_.Verify(spec.verify().keyring(), commit.signature, commit.signed_data);
    if (!key.ok()) {
      state.refused_sha = commit.sha;
      std::string message = absl::StrCat("commit ", Short(commit.sha), " (", commit.subject, ") is not applied: ",
                                         key.status().message());
      st.mutable_last_fetched()->set_signed_by("");
      fail("Verified", "VerificationFailed", message);
      Emit(name, "Warning", "VerificationFailed", message);
      return absl::PermissionDeniedError(message);
    }
    signed_by = *key;
    st.mutable_last_fetched()->set_signed_by(signed_by);
    SetCondition(st, "Verified", true, "Verified",
                 absl::StrCat("commit ", Short(commit.sha), " is signed by ", signed_by), now_ms, generation);
  } else {
    DropCondition(st, "Verified");
  }

  // Load and check the commit's manifests as a whole.
  manifests::LoadResult loaded;
  absl::Status load = Load(state, spec, commit.sha, &loaded);
  std::vector<std::string> errors;
  if (!load.ok()) {
    errors.push_back(std::string(load.message()));
  } else {
    for (const manifests::Diagnostic& d : loaded.errors) errors.push_back(d.ToString());
  }
  std::vector<v1::Object> objects;
  std::vector<std::string> paths;
  if (errors.empty()) {
    objects.reserve(loaded.objects.size());
    for (manifests::LoadedObject& o : loaded.objects) {
      objects.push_back(std::move(o.object));
      paths.push_back(std::move(o.file));
    }
    if (options_.check) {
      absl::Status s = options_.check(objects);
      if (!s.ok()) errors = absl::StrSplit(s.message(), "; ");
    }
  }
  v1::ApplyResponse response;
  if (errors.empty()) {
    reconciler::ApplyOptions apply;
    apply.source = GitSourceName(name);
    apply.prune = spec.prune();
    apply.change_cause = commit.subject;
    apply.commit = commit.sha;
    apply.paths = std::move(paths);
    auto result = objects_.Apply(objects, apply);
    if (!result.ok()) {
      errors = absl::StrSplit(result.status().message(), "; ");
    } else {
      response = *std::move(result);
    }
    if (audit_ != nullptr) {
      v1::AuditRecord record;
      record.set_identity(absl::StrCat("controller (", GitSourceName(name), ")"));
      record.set_verb(spec.prune() ? "apply --prune" : "apply");
      reconciler::AddAuditObjects(objects, &record);
      record.set_source(GitSourceName(name));
      record.set_commit(commit.sha);
      record.set_result(result.ok() ? "OK" : absl::StatusCodeToString(result.status().code()));
      record.set_message(result.ok() ? Changes(response) : std::string(result.status().message()));
      record.set_revision(result.ok() ? response.revision() : 0);
      (void)audit_->Record(std::move(record));
    }
  }
  if (!errors.empty()) {
    state.refused_sha = commit.sha;
    st.clear_errors();
    size_t n = errors.size();
    for (size_t i = 0; i < n && i < options_.max_errors; ++i) st.add_errors(errors[i]);
    if (n > options_.max_errors) st.add_errors(absl::StrCat("... ", n - options_.max_errors, " more"));
    std::string message = absl::StrCat("commit ", Short(commit.sha), " (", commit.subject, "): ", n,
                                       n == 1 ? " error" : " errors", "; nothing was applied",
                                       st.last_applied().sha().empty()
                                           ? ""
                                           : absl::StrCat(" (", Short(st.last_applied().sha()), " stays)"));
    fail("Applied", "ApplyFailed", message);
    Emit(name, "Warning", "ApplyFailed", absl::StrCat(message, ": ", errors.front()));
    return absl::InvalidArgumentError(absl::StrCat(message, "\n", absl::StrJoin(st.errors(), "\n")));
  }
  state.refused_sha.clear();
  st.clear_errors();
  *st.mutable_last_applied() = Info(commit, signed_by);
  uint32_t owned = 0;
  for (const v1::ObjectChange& c : response.changes()) owned += c.change() != "pruned";
  st.set_objects(owned);
  const std::string changes = Changes(response);
  const std::string message = absl::StrCat("applied commit ", Short(commit.sha), " (", commit.subject, "): ", changes);
  SetCondition(st, "Applied", true, "Applied", message, now_ms, generation);
  SetCondition(st, "Ready", true, "Applied", message, now_ms, generation);
  WriteStatus(name, st);
  if (changes != "no changes" || spec_changed) {
    Emit(name, "Normal", "SourceApplied",
         absl::StrCat("commit ", Short(commit.sha), " by ", commit.author, ": ", commit.subject, " (", changes, ")"));
  }
  return message;
}

}  // namespace mkfleet::gitops
