// Names and tests of a live update's phase (mkfleet.v1.MorphPhase), shared by the agent's
// state machine, the controller's conditions and mkapply: "Preparing" ... "RolledBack".
#ifndef MKFLEET_PROTO_MORPH_PHASE_H_
#define MKFLEET_PROTO_MORPH_PHASE_H_

#include "mkfleet/v1/state.pb.h"

namespace mkfleet {

inline const char* MorphPhaseName(mkfleet::v1::MorphPhase phase) {
  switch (phase) {
    case mkfleet::v1::MORPH_PREPARING: return "Preparing";
    case mkfleet::v1::MORPH_NEGOTIATING: return "Negotiating";
    case mkfleet::v1::MORPH_TRANSFERRING: return "Transferring";
    case mkfleet::v1::MORPH_VALIDATING: return "Validating";
    case mkfleet::v1::MORPH_COMMITTING: return "Committing";
    case mkfleet::v1::MORPH_COMMITTED: return "Committed";
    case mkfleet::v1::MORPH_ROLLING_BACK: return "RollingBack";
    case mkfleet::v1::MORPH_ROLLED_BACK: return "RolledBack";
    default: return "None";
  }
}

// COMMITTED or ROLLED_BACK: nothing more happens to it.
inline bool MorphEnded(mkfleet::v1::MorphPhase p) {
  return p == mkfleet::v1::MORPH_COMMITTED || p == mkfleet::v1::MORPH_ROLLED_BACK;
}

// A live update is under way in this instance's status.
inline bool MorphRunning(const mkfleet::v1::InstanceStatus& st) {
  return st.has_morph() && st.morph().phase() != mkfleet::v1::MORPH_PHASE_UNSPECIFIED && !MorphEnded(st.morph().phase());
}

}  // namespace mkfleet

#endif  // MKFLEET_PROTO_MORPH_PHASE_H_
