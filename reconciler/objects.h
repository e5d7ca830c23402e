// Objects: the controller's typed layer over the Store. Manifest objects live at
// /objects/<Kind>/<name> (spec and metadata; metadata.generation counts spec changes),
// their status at /status/<Kind>/<name> (so status writes never conflict with applies),
// and what each apply source owns at /inventory/<source> (for --prune).
//
// Apply is atomic: everything is checked first (references between objects, against the
// set and the store), then one store transaction writes every change, or nothing is
// written. Thread-safety: safe to call concurrently (conflicts surface as Aborted).
#ifndef MKFLEET_RECONCILER_OBJECTS_H_
#define MKFLEET_RECONCILER_OBJECTS_H_

#include <functional>
#include <map>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "mkfleet/v1/controller.pb.h"
#include "mkfleet/v1/manifest.pb.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

std::string ObjectKey(absl::string_view kind, absl::string_view name);
// Where an object's status lives: /status/<Kind>/<name> (set members have only this).
std::string StatusKey(absl::string_view kind, absl::string_view name);

// "git:prod" for objects a GitSource applies.
inline constexpr absl::string_view kGitSourcePrefix = "git:";
bool IsGitSource(absl::string_view source);
// Why a change to `kind/name`, owned by git source `owner`, is refused without --force-conflicts.
std::string OwnershipConflict(absl::string_view kind, absl::string_view name, const mkfleet::v1::ObjectMeta& owner);

struct ApplyOptions {
  std::string source;  // who applies (a path, a git URL); required for prune
  bool dry_run = false;
  bool prune = false;  // delete what `source` applied before and no longer does
  // Why (`mkapply apply --message`): recorded as metadata.change_cause of each object whose
  // spec it changes (an object it leaves unchanged keeps its cause).
  std::string change_cause;
  // A git source's commit (full sha), and each object's file in the repository (parallel
  // to the objects; may be empty): recorded in metadata.source_commit and source_path of
  // each object the apply creates or changes.
  std::string commit;
  std::vector<std::string> paths;
  // An object another git source owns ("git:<name>", while that GitSource exists) is refused
  // (FailedPrecondition naming the owner) unless this is set: then this source takes it.
  bool force_conflicts = false;
  // Asked for every object written ("apply") or pruned ("prune") before anything is:
  // an error refuses the whole apply with it.
  std::function<absl::Status(absl::string_view verb, absl::string_view kind, absl::string_view name)> authorize;
};

class Objects {
 public:
  explicit Objects(Store& store) : store_(store) {}

  // Stores `objects` (created, configured or unchanged) and, with prune, deletes the
  // source's objects that are absent now. InvalidArgument (nothing written) for a
  // reference to a Host that neither the set nor the store has, or two objects of one
  // kind and name. Returns one change per object, in input order, then the pruned ones.
  absl::StatusOr<mkfleet::v1::ApplyResponse> Apply(const std::vector<mkfleet::v1::Object>& objects,
                                                   const ApplyOptions& options);

  // Objects of `kind` by name, each with its stored status. With `with_members`, a
  // KernelInstance list also has the InstanceSets' members (from their statuses: the
  // set template's spec on the member's host, label mkfleet.io/set).
  absl::StatusOr<std::vector<mkfleet::v1::Object>> List(absl::string_view kind, bool with_members = false);
  absl::StatusOr<std::optional<mkfleet::v1::Object>> Get(absl::string_view kind, absl::string_view name,
                                                         bool with_members = false);
  // The objects of `kind` as List returns them but without their status (what a reconcile
  // pass reads: it writes the statuses itself), from a parsed copy kept current from the
  // store's history: a pass reads every Host, but between two passes only the objects that
  // changed are read and parsed again (a full read took 10-57 ms at 1,000 hosts). As new as
  // the store was when called. A history compacted past the copy reads all again.
  absl::StatusOr<std::vector<mkfleet::v1::Object>> ListSpecs(absl::string_view kind);
  // Writes statuses (serialized at StatusKey) and deletes others, in one transaction.
  absl::Status WriteStatuses(const std::vector<std::pair<std::string, std::string>>& puts,
                             const std::vector<std::string>& deletes);

  // Deletes kind/name and its status; returns "deleted". A Host is only marked
  // (metadata.deletion_unix_ms = `now_unix_ms`) and returns "terminating": the controller
  // deletes its kernels, then removes it (FinishHostDelete); with `force` it goes at once,
  // its kernels left running. NotFound if absent; FailedPrecondition for a Host that a
  // KernelInstance still names, or for a set member.
  // An object a git source owns is refused (FailedPrecondition naming it) unless
  // `force_conflicts`.
  absl::StatusOr<std::string> Delete(absl::string_view kind, absl::string_view name, int64_t now_unix_ms = 0,
                                     bool force = false, bool force_conflicts = false);
  // Reads kind/name, lets `change` edit it and writes it back if it changed (compare-and-
  // swap; metadata.generation bumped when the spec did). NotFound if absent.
  absl::Status Update(absl::string_view kind, absl::string_view name, const std::function<void(mkfleet::v1::Object&)>& change);
  // Removes a Host marked for deletion, with its status, if it is still marked; refused
  // (FailedPrecondition) while a KernelInstance names it.
  absl::Status FinishHostDelete(const std::string& name);

 private:
  // Whether the GitSource of `source` ("git:<name>") exists: the objects of a deleted one
  // are nobody's (mkapply may change them).
  bool SourceExists(absl::string_view source);
  // FailedPrecondition when a KernelInstance names the Host.
  absl::Status HostUnused(absl::string_view name);
  // Deletes the object (at `revision`) and its status in one transaction.
  absl::Status Remove(absl::string_view kind, absl::string_view name, int64_t revision);

  // ListSpecs' copy: every object by key ("/objects/<kind>/<name>"), parsed, with its
  // revisions; one read of the history brings all kinds up to date.
  absl::Status RefreshSpecs() ABSL_EXCLUSIVE_LOCKS_REQUIRED(specs_mu_);

  Store& store_;
  absl::Mutex specs_mu_;
  int64_t specs_revision_ ABSL_GUARDED_BY(specs_mu_) = -1;  // everything up to it is in
  std::map<std::string, mkfleet::v1::Object> specs_ ABSL_GUARDED_BY(specs_mu_);
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_OBJECTS_H_
