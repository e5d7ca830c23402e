#include "kernel/errno_status.h"

#include <cerrno>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"

namespace mkfleet::kernel {
namespace {

struct Name {
  int err;
  const char* name;
  absl::StatusCode code;
};

constexpr Name kNames[] = {
    {EBUSY, "EBUSY", absl::StatusCode::kUnavailable},     {EAGAIN, "EAGAIN", absl::StatusCode::kUnavailable},
    {ENOENT, "ENOENT", absl::StatusCode::kNotFound},      {EINVAL, "EINVAL", absl::StatusCode::kInvalidArgument},
    {EPERM, "EPERM", absl::StatusCode::kPermissionDenied}, {EACCES, "EACCES", absl::StatusCode::kPermissionDenied},
    {EEXIST, "EEXIST", absl::StatusCode::kAlreadyExists}, {ENOSPC, "ENOSPC", absl::StatusCode::kResourceExhausted},
    {ENOMEM, "ENOMEM", absl::StatusCode::kResourceExhausted}, {ENOSYS, "ENOSYS", absl::StatusCode::kUnimplemented},
    {ENOEXEC, "ENOEXEC", absl::StatusCode::kInvalidArgument}, {EIO, "EIO", absl::StatusCode::kInternal},
    {ETIMEDOUT, "ETIMEDOUT", absl::StatusCode::kDeadlineExceeded}, {ENOTEMPTY, "ENOTEMPTY", absl::StatusCode::kFailedPrecondition},
};

}  // namespace

std::string ErrnoName(int err) {
  for (const Name& n : kNames) {
    if (n.err == err) return n.name;
  }
  return absl::StrCat("errno ", err);
}

absl::Status ErrnoStatus(int err, absl::string_view what, absl::string_view detail) {
  absl::StatusCode code = absl::StatusCode::kUnknown;
  for (const Name& n : kNames) {
    if (n.err == err) code = n.code;
  }
  std::string message = absl::StrCat(what, ": ", ErrnoName(err));
  if (!detail.empty()) absl::StrAppend(&message, " (", detail, ")");
  absl::Status s(code, message);
  s.SetPayload("mkfleet.errno", absl::Cord(absl::StrCat(err)));
  return s;
}

int ErrnoOf(const absl::Status& status) {
  auto p = status.GetPayload("mkfleet.errno");
  int err = 0;
  if (p.has_value() && absl::SimpleAtoi(std::string(*p), &err)) return err;
  return 0;
}

}  // namespace mkfleet::kernel
