// Status propagation helpers missing from Debian's Abseil (20220623).
//
//   MK_RETURN_IF_ERROR(DoThing());
//   MK_ASSIGN_OR_RETURN(auto value, ComputeValue());
//
// MK_ASSIGN_OR_RETURN expands to several statements: after an `if`, put it in braces.
// Thread-safety: macros only; nothing shared.
#ifndef MKFLEET_COMMON_STATUS_MACROS_H_
#define MKFLEET_COMMON_STATUS_MACROS_H_

#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

#define MK_STATUS_CONCAT_INNER_(a, b) a##b
#define MK_STATUS_CONCAT_(a, b) MK_STATUS_CONCAT_INNER_(a, b)

#define MK_RETURN_IF_ERROR(expr)                         \
  do {                                                   \
    ::absl::Status mk_status_ = (expr);                  \
    if (!mk_status_.ok()) return mk_status_;             \
  } while (0)

#define MK_ASSIGN_OR_RETURN(lhs, expr) \
  MK_ASSIGN_OR_RETURN_IMPL_(MK_STATUS_CONCAT_(mk_statusor_, __LINE__), lhs, expr)

#define MK_ASSIGN_OR_RETURN_IMPL_(statusor, lhs, expr) \
  auto statusor = (expr);                              \
  if (!statusor.ok()) return statusor.status();        \
  lhs = std::move(statusor).value()

namespace mkfleet {

// Returns `status` with `context: ` put in front of its message, same code.
inline absl::Status Annotate(const absl::Status& status, absl::string_view context) {
  if (status.ok()) return status;
  return absl::Status(status.code(), absl::StrCat(context, ": ", status.message()));
}

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_STATUS_MACROS_H_
