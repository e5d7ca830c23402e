// Textual formats of manifest strings: DNS labels, PCI addresses, label keys and values.
// Pure functions; thread-safe.
#ifndef MKFLEET_MANIFESTS_FORMATS_H_
#define MKFLEET_MANIFESTS_FORMATS_H_

#include <string>
#include "absl/strings/string_view.h"

#include "mkfleet/v1/options.pb.h"

namespace mkfleet::manifests {

// [a-z0-9]([-a-z0-9]*[a-z0-9])?, 1..63 characters.
bool IsDnsLabel(absl::string_view s);
// "DDDD:BB:SS.F" in hexadecimal (device 0..1f, function 0..7).
bool IsPciBdf(absl::string_view s);
// [prefix/]name: name of [A-Za-z0-9._-], alphanumeric at both ends, 1..63; prefix a DNS name.
bool IsLabelKey(absl::string_view s);
// A user or group (certificates, RoleBindings): 1..64 of [a-z0-9._@-], alphanumeric first.
bool IsPrincipalName(absl::string_view s);
// Empty, or like a label key's name part.
bool IsLabelValue(absl::string_view s);
// A relative folder inside a repository: no leading '/', no "." or ".." part.
bool IsRepoPath(absl::string_view s);
// file:///path, ssh://[user@]host[:port]/path or https://host[:port]/path.
bool IsGitUrl(absl::string_view s);

// "" when `text` fits `format`, else a message such as
// "must be a PCI address like 0000:04:00.1, got \"04:00.1\"".
std::string CheckFormat(mkfleet::v1::Format format, absl::string_view text);

}  // namespace mkfleet::manifests

#endif  // MKFLEET_MANIFESTS_FORMATS_H_
