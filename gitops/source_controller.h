// SourceController: GitOps in mkcontroller. For each GitSource object it keeps a mirror of
// the repository (GitMirror, under the controller's cache folder), fetches it every
// interval (jittered), and applies each new commit's manifests as one atomic apply with
// source "git:<name>":
//   fetch -> (verify the signature) -> load every *.yaml under path with the manifest
//   loader -> check them as a whole -> Objects::Apply (prune as configured)
// A commit with any error changes nothing; its status lists every file:line:col error.
// Files are cached by blob id, so a commit that changes one file loads one file.
//
// Status (/status/GitSource/<name>): last fetched and last applied commit, conditions
// Fetched, Verified (with verify), Applied, Ready, the next fetch. Events: SourceApplied
// (author, subject, what changed), FetchFailed, VerificationFailed, ApplyFailed.
//
// Thread-safety: Start runs a thread; Sync may be called from any thread (work on the
// sources is serialized).
#ifndef MKFLEET_GITOPS_SOURCE_CONTROLLER_H_
#define MKFLEET_GITOPS_SOURCE_CONTROLLER_H_

#include <functional>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "gitops/git_mirror.h"
#include "gitops/signature.h"
#include "manifests/loader.h"
#include "mkfleet/v1/manifest.pb.h"
#include "reconciler/audit_log.h"
#include "reconciler/event_log.h"
#include "reconciler/objects.h"
#include "reconciler/store.h"

namespace mkfleet::gitops {

struct SourceControllerOptions {
  std::string cache_dir;  // mirrors and GnuPG homes live here
  absl::Duration default_interval = absl::Minutes(1);
  // How often the thread looks for new, changed and due sources.
  absl::Duration poll = absl::Seconds(1);
  // Checks beyond the manifests' own (the controller's --require-digest): an error refuses
  // the commit with its message.
  std::function<absl::Status(const std::vector<mkfleet::v1::Object>&)> check;
  size_t max_file_bytes = 16 << 20;
  size_t max_files = 100000;  // manifests per commit (a repository is input too)
  size_t max_errors = 200;  // listed in the status; the rest are counted
};

// "git:<name>": the apply source of a GitSource's objects.
std::string GitSourceName(absl::string_view name);

class SourceController {
 public:
  SourceController(reconciler::Store& store, reconciler::Objects& objects, reconciler::EventLog* events,
                   reconciler::AuditLog* audit, Clock& clock, SourceControllerOptions options);
  ~SourceController();

  void Start();
  void Stop();

  // Fetches and applies every source whose time has come: new, spec changed, interval
  // passed. Returns how many were fetched.
  int RunOnce();
  // Fetches `name` now and applies its commit (again, if it is the applied one); returns
  // what was done. FailedPrecondition for a suspended source, NotFound for none; a failed
  // fetch, verification or apply is the error (and is in the status).
  absl::StatusOr<std::string> Sync(const std::string& name);

 private:
  struct CachedFile {
    std::vector<manifests::LoadedObject> objects;
    std::vector<manifests::Diagnostic> errors;
  };
  struct SourceState {
    std::string mirror_dir;
    std::unique_ptr<GitMirror> mirror;
    int64_t generation = -1;  // the spec last worked on
    absl::Time next_fetch = absl::InfinitePast();
    uint64_t fetches = 0;
    std::string refused_sha;  // a commit that failed to verify or apply: not tried again unchanged
    std::map<std::string, CachedFile> files;  // by path + '\0' + blob id
  };

  // One fetch (and apply) of `source`; `forced` applies even an applied commit.
  absl::StatusOr<std::string> Reconcile(const mkfleet::v1::GitSource& source, bool forced)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(work_mu_);
  // Loads the commit's manifests (through the file cache) into `result`.
  absl::Status Load(SourceState& state, const mkfleet::v1::GitSourceSpec& spec, const std::string& sha,
                    manifests::LoadResult* result);
  absl::Duration Interval(const mkfleet::v1::GitSourceSpec& spec, const std::string& name, uint64_t n) const;
  void WriteStatus(const std::string& name, const mkfleet::v1::GitSourceStatus& status);
  void Emit(const std::string& name, const std::string& type, const std::string& reason, const std::string& message);
  void Loop();

  reconciler::Store& store_;
  reconciler::Objects& objects_;
  reconciler::EventLog* events_;
  reconciler::AuditLog* audit_;
  Clock& clock_;
  const SourceControllerOptions options_;
  SignatureVerifier verifier_;

  absl::Mutex work_mu_;
  std::map<std::string, SourceState> states_ ABSL_GUARDED_BY(work_mu_);

  absl::Mutex stop_mu_;
  bool stop_ ABSL_GUARDED_BY(stop_mu_) = false;
  std::thread thread_;
};

}  // namespace mkfleet::gitops

#endif  // MKFLEET_GITOPS_SOURCE_CONTROLLER_H_
