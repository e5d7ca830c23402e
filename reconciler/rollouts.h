// Rollouts: the controller's side of the rollout engine (rollout.h), for InstanceSets and for
// RolloutPolicies. Each pass it keeps the revisions of every rollout (a set: a new one per
// change of its template; a policy: a new one per change of the specs of the KernelInstances
// it selects, each instance with its own spec), with the change cause; the last
// `revisionHistoryLimit` (10) kept, and always the stable one. It steps each rollout from what
// the hosts show and says which revision each member runs: PlanFleet plans a set member held
// back with its revision's template, and a KernelInstance held back with its revision's spec.
// A KernelInstance selected by several policies is paced by the first by name (the others
// list it as a conflict).
// The records (revisions and progress) are in the store at /rollouts/<Kind>/<name>, written
// when they change, so a restarted controller goes on where the last one was.
// The verbs of `mkapply rollout` (pause, resume, undo's template or specs, history, status)
// act on the same records. Thread-safety: every method is safe to call concurrently.
#ifndef MKFLEET_RECONCILER_ROLLOUTS_H_
#define MKFLEET_RECONCILER_ROLLOUTS_H_

#include <map>
#include <memory>
#include <set>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "mkfleet/v1/controller.pb.h"
#include "mkfleet/v1/manifest.pb.h"
#include "reconciler/host_connection.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

inline constexpr char kRolloutPrefix[] = "/rollouts/";  // + "<Kind>/<name>"
inline constexpr uint32_t kDefaultRevisionHistory = 10;

// The hex hash of a template (deterministic serialization): a revision's identity.
std::string TemplateHash(const mkfleet::v1::InstanceTemplate& t);

struct RolloutPass {
  // Members held at another revision than their set's newest: the spec they run (pointing
  // into `specs`).
  std::map<std::string, const mkfleet::v1::KernelInstanceSpec*> member_specs;
  // Per set, what its other members (and those about to be created) run when it is not its
  // template: the stable revision's spec while a failed revision is held back.
  std::map<std::string, const mkfleet::v1::KernelInstanceSpec*> set_specs;
  std::map<std::pair<std::string, uint32_t>, mkfleet::v1::KernelInstanceSpec> specs;  // (set, revision)
  std::map<std::string, mkfleet::v1::RolloutStatus> statuses;  // by set name
  // KernelInstances a RolloutPolicy holds at another spec than their own: that spec, and why.
  std::map<std::string, mkfleet::v1::KernelInstanceSpec> instance_specs;
  std::map<std::string, std::string> held;
  std::map<std::string, mkfleet::v1::RolloutPolicyStatus> policy_statuses;  // by policy name
  // Members seen (set members and paced instances): the rollout ("InstanceSet/web") and the
  // revision of it whose kernel each runs (0: none kept).
  std::map<std::string, std::pair<std::string, uint32_t>> member_revisions;
  std::vector<mkfleet::v1::Event> events;
  bool active = false;  // a rollout is under way: pass again soon (minReady, healthTimeout)
  // A rollout is paused: it moves nobody, but its members' minReady still ends it
  // (Complete), so the fleet is not settled (a local pass would not see it end).
  bool paused = false;
};

class Rollouts {
 public:
  Rollouts(Store& store, Clock& clock) : store_(store), clock_(clock) {}

  // One step of every set's and every policy's rollout. `serving`: member -> (host, kernel)
  // from the last pass (which kernel serves a member during and after a live update).
  RolloutPass Step(const std::vector<mkfleet::v1::Host>& hosts, const std::vector<mkfleet::v1::InstanceSet>& sets,
                   const std::vector<mkfleet::v1::KernelInstance>& instances,
                   const std::vector<mkfleet::v1::RolloutPolicy>& policies,
                   const std::map<std::string, HostView>& views,
                   const std::map<std::string, std::pair<std::string, std::string>>& serving,
                   int64_t objects_revision = 0);

  // The verbs, on "InstanceSet" or "RolloutPolicy" `kind`. status and history read; pause and
  // resume change the progress; undo returns the set's template of revision `to` (0: the one
  // before the newest; after a held failure, the stable one), or the policy's specs of its
  // instances then, for the caller to apply. NotFound for one without a record yet.
  absl::StatusOr<mkfleet::v1::RolloutResponse> Status(const std::string& kind, const std::string& name);
  absl::StatusOr<mkfleet::v1::RolloutResponse> SetPaused(const std::string& kind, const std::string& name, bool paused);
  absl::StatusOr<mkfleet::v1::InstanceTemplate> UndoTemplate(const std::string& set, uint32_t to, uint32_t* number);
  // UndoSpecs: by instance "<name>@<created revision>" (an incarnation of the name).
  absl::StatusOr<std::map<std::string, mkfleet::v1::KernelInstanceSpec>> UndoSpecs(const std::string& policy, uint32_t to,
                                                                                  uint32_t* number);

 private:
  struct Entry {
    mkfleet::v1::RolloutRecord record;
    mkfleet::v1::RolloutStatus status;  // as of the last step
  };
  absl::Status LoadLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status SaveLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  mkfleet::v1::RolloutResponse ResponseLocked(const Entry& e) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::StatusOr<Entry*> FindLocked(const std::string& kind, const std::string& name) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // The target (newest) and the stable revision numbers with the stable one kept: the
  // revision the undo goes to.
  absl::StatusOr<uint32_t> UndoTargetLocked(const std::string& key, const Entry& e, uint32_t to)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StepSets(const std::vector<mkfleet::v1::Host>& hosts, const std::vector<mkfleet::v1::InstanceSet>& sets,
                const std::map<std::string, HostView>& views,
                const std::map<std::string, std::pair<std::string, std::string>>& serving, absl::Time now,
                std::set<std::string>* live, RolloutPass* out) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void StepPolicies(const std::vector<mkfleet::v1::Host>& hosts, const std::vector<mkfleet::v1::KernelInstance>& instances,
                    const std::vector<mkfleet::v1::RolloutPolicy>& policies, const std::map<std::string, HostView>& views,
                    const std::map<std::string, std::pair<std::string, std::string>>& serving, absl::Time now,
                    int64_t objects_revision, std::set<std::string>* live, RolloutPass* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  Store& store_;
  Clock& clock_;
  absl::Mutex mu_;
  bool loaded_ ABSL_GUARDED_BY(mu_) = false;
  std::map<std::string, Entry> entries_ ABSL_GUARDED_BY(mu_);  // by "<Kind>/<name>"
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_ROLLOUTS_H_
