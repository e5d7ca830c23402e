// Drift: changes made to a host's kernel outside mkfleet (an operator's kerf, a kernel
// halted or resized by hand, the pool changed), told apart from the changes mkfleet makes.
//
// An instance is *settled* once a pass finds it as its spec wants with nothing left to do
// for it (no action in its host's plan): what the host shows then is its baseline (state,
// CPUs, memory, devices, kernel, command line). A later pass at the same generation that
// finds it otherwise (missing, halted, other CPUs...) while mkfleet sent it nothing has
// found drift, field by field: event DriftDetected (the field, wanted, found). Then, per the
// host's driftPolicy (default the controller's, Correct):
//   Correct  the pass's plan puts it back (re-create, start, hot-plug back); once a pass has
//            nothing left to do for it, DriftCorrected, and what it runs is the baseline;
//   Report   its actions are withheld (FleetPlan::drift_held says why, its status says
//            Drifted); DriftResolved once it is as wanted again by other hands.
// A change of the spec (a new generation), a move, a live update or a standby takeover is
// mkfleet's own: the baseline goes and is taken again once settled.
//
// The pool: a host whose agent lent the Host's pool and now lends another has drifted
// (field pool); Report withholds the pool change. Unmanaged kernels (no object owns them)
// are drift too (field unmanaged, once each); the Host's `unmanaged: Remove` deletes them.
//
// After a controller restart the baselines are the stored statuses of converged instances.
// Pure, no I/O; one instance per Reconciler, called under its pass lock.
#ifndef MKFLEET_RECONCILER_DRIFT_H_
#define MKFLEET_RECONCILER_DRIFT_H_

#include <array>
#include <iterator>
#include <map>
#include <set>
#include <string>
#include <vector>

#include "absl/strings/string_view.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"
#include "reconciler/fleet_plan.h"
#include "reconciler/host_connection.h"

namespace mkfleet::reconciler {

struct DriftPass {
  std::map<std::string, std::vector<mkfleet::v1::Drift>> by_host;  // the batch hosts' current drift
  std::vector<mkfleet::v1::Event> events;
};

// The fields drift is judged on, from what an agent reports of an instance, as people read
// them: state, cpus, memory, devices, kernel, cmdline (kDriftFieldNames, in that order; a
// baseline is kept for every settled instance: six strings, not a map of them).
inline constexpr const char* kDriftFieldNames[] = {"state", "cpus", "memory", "devices", "kernel", "cmdline"};
using DriftValues = std::array<std::string, std::size(kDriftFieldNames)>;
DriftValues DriftFields(const mkfleet::v1::InstanceStatus& observed);
// The value of `field` (one of kDriftFieldNames; "" for any other name).
const std::string& DriftField(const DriftValues& values, absl::string_view field);

class DriftTracker {
 public:
  explicit DriftTracker(mkfleet::v1::DriftPolicy default_policy = mkfleet::v1::DRIFT_CORRECT)
      : default_(default_policy == mkfleet::v1::DRIFT_POLICY_UNSPECIFIED ? mkfleet::v1::DRIFT_CORRECT
                                                                         : default_policy) {}

  // After PlanFleet, before the plans go: finds the drift on the `batch` hosts, withholds
  // what Report leaves as found (removes its actions from `fleet`, notes it in
  // fleet->drift_held), and adds the deletes of unmanaged kernels on hosts that ask for it.
  // `statuses`: the stored statuses (key -> serialized), baselines after a restart.
  DriftPass Step(const std::set<std::string>& batch, const std::vector<mkfleet::v1::Host>& hosts,
                 const std::map<std::string, HostView>& views, const std::map<std::string, std::string>& statuses,
                 int64_t now_unix_ms, FleetPlan* fleet);

 private:
  struct Baseline {
    int64_t generation = 0;
    std::string host, kernel, owner;
    DriftValues fields;  // in kDriftFieldNames' order
  };
  mkfleet::v1::DriftPolicy PolicyOf(const mkfleet::v1::Host& host) const;

  const mkfleet::v1::DriftPolicy default_;
  std::map<std::string, Baseline> settled_;                            // by instance
  std::map<std::string, std::vector<mkfleet::v1::Drift>> drifted_;     // by instance
  std::map<std::string, int64_t> pool_settled_;                        // host -> its generation then
  std::map<std::string, mkfleet::v1::Drift> pool_drift_;               // by host
  std::map<std::string, std::map<std::string, int64_t>> unmanaged_;    // host -> kernel -> since
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_DRIFT_H_
