// Errno <-> absl::Status for the kernel interface. The errno's name stays in the message
// ("EBUSY (CPU not free in the pool)") so users see what the kernel said; the code is
// chosen for retry decisions: EBUSY/EAGAIN are Unavailable (retried), ENOENT NotFound,
// EINVAL InvalidArgument, EPERM/EACCES PermissionDenied, EEXIST AlreadyExists.
#ifndef MKFLEET_KERNEL_ERRNO_STATUS_H_
#define MKFLEET_KERNEL_ERRNO_STATUS_H_

#include "absl/status/status.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kernel {

// "EBUSY"; "errno 123" for one without a name here.
std::string ErrnoName(int err);
// Status for `err`, message "<what>: EBUSY (<detail>)" (detail optional).
absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view detail = "");
// The errno a status was made from, or 0 when it names none.
int ErrnoOf(const absl::Status& status);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_ERRNO_STATUS_H_
