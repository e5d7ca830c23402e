// GitMirror: a bare copy of one remote repository in a cache folder of the controller,
// kept up to date with libgit2 (no `git` binary), and read without a checkout: the files
// of a commit come straight from its tree.
//
// Transports: file:// (libgit2's local transport), ssh:// (libssh2: a private key file,
// and the host key must be in the given known_hosts file: an unknown or changed host key
// is refused), https:// (a token file sent as the password).
//
// Thread-safety: one GitMirror is used by one thread at a time; different mirrors may be
// used concurrently.
#ifndef MKFLEET_GITOPS_GIT_MIRROR_H_
#define MKFLEET_GITOPS_GIT_MIRROR_H_

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

struct git_repository;

namespace mkfleet::gitops {

struct GitAuth {
  std::string ssh_key_file;
  std::string known_hosts_file;
  std::string token_file;
  std::string username;  // https with a token (default "git")
};

// What to fetch: `url` at exactly one of branch, tag, commit (none: branch "main").
struct GitTarget {
  std::string url;
  std::string branch;
  std::string tag;
  std::string commit;
  GitAuth auth;
};

struct CommitMeta {
  std::string sha;
  std::string author;   // "Name <email>"
  std::string subject;  // the message's first line
  int64_t time_unix_ms = 0;
  // The commit's OpenPGP signature (armored) and the bytes it signs; empty if unsigned.
  std::string signature;
  std::string signed_data;
};

struct TreeFile {
  std::string path;     // relative to the repository root: "clusters/prod/web.yaml"
  std::string blob_id;  // hex: the same content has the same id
};

class GitMirror {
 public:
  // Opens the bare repository at `dir`, creating it (and its parents) if missing.
  static absl::StatusOr<std::unique_ptr<GitMirror>> Open(const std::string& dir);
  ~GitMirror();
  GitMirror(const GitMirror&) = delete;
  GitMirror& operator=(const GitMirror&) = delete;

  // Fetches `target` from its remote (history rewrites are taken: the ref is forced) and
  // returns the commit it names now. Unavailable for a remote out of reach, PermissionDenied
  // for a refused host key or credentials, NotFound for a ref the remote lacks.
  absl::StatusOr<CommitMeta> Fetch(const GitTarget& target);

  // The *.yaml and *.yml files under `folder` ("" for the whole tree) at `sha`, in path
  // order. NotFound when the folder is not in that commit.
  absl::StatusOr<std::vector<TreeFile>> Files(const std::string& sha, absl::string_view folder);
  // A blob's bytes; at most `max_bytes` (FailedPrecondition past it).
  absl::StatusOr<std::string> ReadBlob(const std::string& blob_id, size_t max_bytes);

 private:
  explicit GitMirror(git_repository* repo) : repo_(repo) {}
  absl::StatusOr<CommitMeta> Describe(const std::string& sha);
  git_repository* repo_;
};

// True when `known_hosts` (OpenSSH's format: plain or hashed host names, wildcards,
// @revoked) lists `raw_key` (the key's wire bytes) for `host` on `port`.
bool KnownHostsAccept(absl::string_view known_hosts, absl::string_view host, int port, absl::string_view raw_key);

}  // namespace mkfleet::gitops

#endif  // MKFLEET_GITOPS_GIT_MIRROR_H_
