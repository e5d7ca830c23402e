#include "gitops/git_mirror.h"

#include <git2.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>

#include <stdlib.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <mutex>
#include <sstream>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"

namespace mkfleet::gitops {
namespace {

namespace fs = std::filesystem;

// Once per process: libgit2's global state, and no user or system git configuration (the
// controller's fetches must not depend on whoever runs it).
void InitLibgit2() {
  static std::once_flag once;
  std::call_once(once, [] {
    // libgit2 1.5 reads $HOME/.ssh/known_hosts before asking our certificate callback
    // (which alone decides, against the source's knownHostsFile), and fails every ssh
    // fetch when there is no HOME (a service started without one). Such a process gets a
    // home of its own, with an empty known_hosts, set before any thread of ours reads it.
    const char* user_home = getenv("HOME");
    if (user_home == nullptr || *user_home == '\0') {
      char tmpl[] = "/tmp/mkfleet-libgit2-XXXXXX";
      if (const char* home = mkdtemp(tmpl); home != nullptr) {
        std::error_code ec;
        fs::create_directories(std::string(home) + "/.ssh", ec);
        std::ofstream(std::string(home) + "/.ssh/known_hosts").flush();
        static std::string kept = home;
        std::atexit([] {
          std::error_code ignored;
          fs::remove_all(kept, ignored);
        });
        setenv("HOME", home, 1);
      }
    }
    git_libgit2_init();
    for (git_config_level_t level : {GIT_CONFIG_LEVEL_SYSTEM, GIT_CONFIG_LEVEL_XDG, GIT_CONFIG_LEVEL_GLOBAL}) {
      git_libgit2_opts(GIT_OPT_SET_SEARCH_PATH, level, "");
    }
  });
}

std::string LastError() {
  const git_error* e = git_error_last();
  return e != nullptr && e->message != nullptr ? std::string(e->message) : std::string("unknown libgit2 error");
}

// RAII for libgit2 objects.
template <typename T, void (*Free)(T*)>
struct Owned {
  T* p = nullptr;
  ~Owned() {
    if (p != nullptr) Free(p);
  }
};

std::string OidHex(const git_oid* oid) {
  char buf[GIT_OID_HEXSZ + 1];
  git_oid_tostr(buf, sizeof(buf), oid);
  return buf;
}

std::string ReadSmallFile(const std::string& path, std::string* error) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    *error = absl::StrCat("cannot read ", path);
    return "";
  }
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// The host and port of an ssh:// or https:// URL (port 0 when not given).
void HostPortOf(absl::string_view url, std::string* host, int* port) {
  absl::string_view rest = url;
  if (!absl::ConsumePrefix(&rest, "ssh://")) absl::ConsumePrefix(&rest, "https://");
  rest = rest.substr(0, rest.find('/'));
  size_t at = rest.rfind('@');
  if (at != absl::string_view::npos) rest.remove_prefix(at + 1);
  *port = 0;
  if (!rest.empty() && rest.front() == '[') {
    size_t close = rest.find(']');
    *host = std::string(rest.substr(1, close == absl::string_view::npos ? rest.npos : close - 1));
    if (close != absl::string_view::npos && close + 1 < rest.size() && rest[close + 1] == ':') {
      (void)absl::SimpleAtoi(rest.substr(close + 2), port);
    }
    return;
  }
  size_t colon = rest.rfind(':');
  if (colon != absl::string_view::npos) {
    (void)absl::SimpleAtoi(rest.substr(colon + 1), port);
    rest = rest.substr(0, colon);
  }
  *host = std::string(rest);
}

struct CallbackState {
  const GitTarget* target;
  std::string host;
  int port = 0;
  int credential_calls = 0;
  std::string refusal;  // why a host key or a credential was refused (ours, not libgit2's)
};

int CertificateCheck(git_cert* cert, int valid, const char* host, void* payload) {
  auto* state = static_cast<CallbackState*>(payload);
  if (cert->cert_type != GIT_CERT_HOSTKEY_LIBSSH2) return valid ? 0 : GIT_PASSTHROUGH;  // https: the system CAs
  auto* key = reinterpret_cast<git_cert_hostkey*>(cert);
  std::string fingerprint = "?";
  if (key->type & GIT_CERT_SSH_SHA256) {
    fingerprint = "SHA256:" + absl::Base64Escape(absl::string_view(reinterpret_cast<const char*>(key->hash_sha256), 32));
    while (!fingerprint.empty() && fingerprint.back() == '=') fingerprint.pop_back();
  }
  const std::string& file = state->target->auth.known_hosts_file;
  std::string error;
  std::string known = ReadSmallFile(file, &error);
  if (!error.empty()) {
    state->refusal = absl::StrCat("ssh: knownHostsFile: ", error);
    return -1;
  }
  if ((key->type & GIT_CERT_SSH_RAW) == 0 || key->hostkey == nullptr) {
    state->refusal = "ssh: the server's raw host key is not available to check against knownHostsFile";
    return -1;
  }
  if (!KnownHostsAccept(known, host != nullptr ? host : state->host, state->port,
                        absl::string_view(key->hostkey, key->hostkey_len))) {
    state->refusal = absl::StrCat("ssh: the host key of ", state->host, state->port ? absl::StrCat(":", state->port) : "",
                                  " (", fingerprint, ") is not in ", file, ": refused (add it with ssh-keyscan)");
    return -1;
  }
  return 0;
}

int Credentials(git_credential** out, const char* url, const char* username_from_url, unsigned int allowed_types,
                void* payload) {
  (void)url;
  auto* state = static_cast<CallbackState*>(payload);
  const GitAuth& auth = state->target->auth;
  if (++state->credential_calls > 1) {
    state->refusal = "the remote refused the credentials";
    return -1;
  }
  if ((allowed_types & GIT_CREDENTIAL_SSH_KEY) && !auth.ssh_key_file.empty()) {
    const char* user = username_from_url != nullptr && *username_from_url ? username_from_url : "git";
    return git_credential_ssh_key_new(out, user, nullptr, auth.ssh_key_file.c_str(), nullptr);
  }
  if ((allowed_types & GIT_CREDENTIAL_USERPASS_PLAINTEXT) && !auth.token_file.empty()) {
    std::string error;
    std::string token(absl::StripAsciiWhitespace(ReadSmallFile(auth.token_file, &error)));
    if (!error.empty()) {
      state->refusal = absl::StrCat("tokenFile: ", error);
      return -1;
    }
    return git_credential_userpass_plaintext_new(out, auth.username.empty() ? "git" : auth.username.c_str(),
                                                 token.c_str());
  }
  state->refusal = "the remote asks for credentials and the source has none for it";
  return -1;
}

// The local ref a target's remote ref is fetched into.
std::string LocalRef(const GitTarget& t) {
  if (!t.tag.empty()) return "refs/mkfleet/tags/" + t.tag;
  return "refs/mkfleet/heads/" + (t.branch.empty() ? std::string("main") : t.branch);
}

// OpenSSH's host patterns: '*' any run, '?' one character; everything else (the brackets
// of "[host]:port" too) is itself.
bool Wildcard(absl::string_view pattern, absl::string_view text) {
  size_t p = 0, t = 0, star = absl::string_view::npos, mark = 0;
  while (t < text.size()) {
    if (p < pattern.size() && (pattern[p] == '?' || pattern[p] == text[t])) {
      ++p;
      ++t;
    } else if (p < pattern.size() && pattern[p] == '*') {
      star = p++;
      mark = t;
    } else if (star != absl::string_view::npos) {
      p = star + 1;
      t = ++mark;
    } else {
      return false;
    }
  }
  while (p < pattern.size() && pattern[p] == '*') ++p;
  return p == pattern.size();
}

}  // namespace

bool KnownHostsAccept(absl::string_view known_hosts, absl::string_view host, int port, absl::string_view raw_key) {
  std::string name = port == 0 || port == 22 ? std::string(host) : absl::StrCat("[", host, "]:", port);
  std::string lower = absl::AsciiStrToLower(name);
  bool accepted = false;
  for (absl::string_view line : absl::StrSplit(known_hosts, '\n')) {
    line = absl::StripAsciiWhitespace(line);
    if (line.empty() || line.front() == '#') continue;
    std::vector<absl::string_view> fields = absl::StrSplit(line, absl::ByAnyChar(" \t"), absl::SkipEmpty());
    bool revoked = false;
    if (!fields.empty() && fields[0].front() == '@') {
      if (fields[0] == "@revoked") revoked = true;
      else continue;  // @cert-authority: certificates are not supported
      fields.erase(fields.begin());
    }
    if (fields.size() < 3) continue;
    std::string key;
    if (!absl::Base64Unescape(fields[2], &key) || key != raw_key) continue;
    bool match = false;
    if (absl::StartsWith(fields[0], "|1|")) {
      std::vector<absl::string_view> parts = absl::StrSplit(fields[0].substr(3), '|');
      std::string salt, hash;
      if (parts.size() == 2 && absl::Base64Unescape(parts[0], &salt) && absl::Base64Unescape(parts[1], &hash)) {
        unsigned char out[EVP_MAX_MD_SIZE];
        unsigned int len = 0;
        HMAC(EVP_sha1(), salt.data(), static_cast<int>(salt.size()), reinterpret_cast<const unsigned char*>(lower.data()),
             lower.size(), out, &len);
        match = hash == absl::string_view(reinterpret_cast<const char*>(out), len);
      }
    } else {
      bool negated = false;
      for (absl::string_view pattern : absl::StrSplit(fields[0], ',', absl::SkipEmpty())) {
        bool negate = absl::ConsumePrefix(&pattern, "!");
        if (Wildcard(absl::AsciiStrToLower(pattern), lower)) {
          if (negate) negated = true;
          else match = true;
        }
      }
      if (negated) match = false;
    }
    if (!match) continue;
    if (revoked) return false;
    accepted = true;
  }
  return accepted;
}

absl::StatusOr<std::unique_ptr<GitMirror>> GitMirror::Open(const std::string& dir) {
  InitLibgit2();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return absl::InternalError(absl::StrCat("git cache ", dir, ": ", ec.message()));
  git_repository* repo = nullptr;
  if (git_repository_open_bare(&repo, dir.c_str()) != 0 && git_repository_init(&repo, dir.c_str(), 1) != 0) {
    return absl::InternalError(absl::StrCat("git cache ", dir, ": ", LastError()));
  }
  return std::unique_ptr<GitMirror>(new GitMirror(repo));
}

GitMirror::~GitMirror() { git_repository_free(repo_); }

absl::StatusOr<CommitMeta> GitMirror::Fetch(const GitTarget& target) {
  Owned<git_remote, git_remote_free> remote;
  if (git_remote_create_anonymous(&remote.p, repo_, target.url.c_str()) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("url ", target.url, ": ", LastError()));
  }
  CallbackState state{&target};
  HostPortOf(target.url, &state.host, &state.port);
  git_fetch_options options = GIT_FETCH_OPTIONS_INIT;
  options.callbacks.certificate_check = CertificateCheck;
  options.callbacks.credentials = Credentials;
  options.callbacks.payload = &state;
  options.download_tags = GIT_REMOTE_DOWNLOAD_TAGS_NONE;
  options.update_fetchhead = 0;

  std::vector<std::string> specs;
  std::string local = LocalRef(target);
  if (!target.commit.empty()) {
    // Any commit of any branch or tag.
    specs = {"+refs/heads/*:refs/mkfleet/heads/*", "+refs/tags/*:refs/mkfleet/tags/*"};
  } else if (!target.tag.empty()) {
    specs = {absl::StrCat("+refs/tags/", target.tag, ":", local)};
  } else {
    specs = {absl::StrCat("+refs/heads/", target.branch.empty() ? "main" : target.branch, ":", local)};
  }
  std::vector<char*> raw;
  for (std::string& s : specs) raw.push_back(s.data());
  git_strarray refspecs{raw.data(), raw.size()};
  if (git_remote_fetch(remote.p, &refspecs, &options, "mkfleet fetch") != 0) {
    if (!state.refusal.empty()) return absl::PermissionDeniedError(state.refusal);
    const git_error* e = git_error_last();
    std::string message = LastError();
    if (e != nullptr && e->klass == GIT_ERROR_SSH && absl::StrContains(message, "uthentication")) {
      return absl::PermissionDeniedError(absl::StrCat("fetch ", target.url, ": ", message));
    }
    return absl::UnavailableError(absl::StrCat("fetch ", target.url, ": ", message));
  }
  // A ref the remote no longer has must not leave the last fetch's answer behind (the
  // local ref stays otherwise: kept, it tells the remote what we have, so a fetch brings
  // only the new objects).
  if (target.commit.empty()) {
    const std::string wanted = !target.tag.empty() ? "refs/tags/" + target.tag
                                                   : "refs/heads/" + (target.branch.empty() ? std::string("main")
                                                                                            : target.branch);
    const git_remote_head** heads = nullptr;
    size_t count = 0;
    bool listed = false;
    if (git_remote_ls(&heads, &count, remote.p) == 0) {
      for (size_t i = 0; i < count; ++i) listed |= wanted == heads[i]->name;
    }
    if (!listed) {
      Owned<git_reference, git_reference_free> old;
      if (git_reference_lookup(&old.p, repo_, local.c_str()) == 0) git_reference_delete(old.p);
    }
  }
  git_oid oid;
  if (!target.commit.empty()) {
    if (git_oid_fromstr(&oid, target.commit.c_str()) != 0) {
      return absl::InvalidArgumentError(absl::StrCat("ref.commit ", target.commit, ": not a commit id"));
    }
    Owned<git_commit, git_commit_free> c;
    if (git_commit_lookup(&c.p, repo_, &oid) != 0) {
      return absl::NotFoundError(absl::StrCat("commit ", target.commit, " is on no branch or tag of ", target.url));
    }
  } else {
    Owned<git_object, git_object_free> obj;
    std::string spec = local + "^{commit}";
    if (git_revparse_single(&obj.p, repo_, spec.c_str()) != 0) {
      return absl::NotFoundError(absl::StrCat(target.tag.empty() ? "branch " : "tag ",
                                              target.tag.empty() ? (target.branch.empty() ? "main" : target.branch)
                                                                 : target.tag,
                                              " is not in ", target.url));
    }
    git_oid_cpy(&oid, git_object_id(obj.p));
  }
  return Describe(OidHex(&oid));
}

absl::StatusOr<CommitMeta> GitMirror::Describe(const std::string& sha) {
  git_oid oid;
  if (git_oid_fromstr(&oid, sha.c_str()) != 0) return absl::InvalidArgumentError("not a commit id: " + sha);
  Owned<git_commit, git_commit_free> commit;
  if (git_commit_lookup(&commit.p, repo_, &oid) != 0) return absl::NotFoundError("no commit " + sha);
  CommitMeta meta;
  meta.sha = sha;
  const git_signature* author = git_commit_author(commit.p);
  if (author != nullptr) {
    meta.author = absl::StrCat(author->name ? author->name : "", " <", author->email ? author->email : "", ">");
    meta.time_unix_ms = static_cast<int64_t>(author->when.time) * 1000;
  }
  const char* message = git_commit_message(commit.p);
  if (message != nullptr) {
    absl::string_view m(message);
    meta.subject = std::string(absl::StripAsciiWhitespace(m.substr(0, m.find('\n'))));
  }
  git_buf signature = GIT_BUF_INIT, signed_data = GIT_BUF_INIT;
  if (git_commit_extract_signature(&signature, &signed_data, repo_, &oid, nullptr) == 0) {
    meta.signature.assign(signature.ptr, signature.size);
    meta.signed_data.assign(signed_data.ptr, signed_data.size);
  }
  git_buf_dispose(&signature);
  git_buf_dispose(&signed_data);
  git_error_clear();
  return meta;
}

namespace {

struct WalkState {
  std::vector<TreeFile>* files;
  std::string prefix;
};

int CollectYaml(const char* root, const git_tree_entry* entry, void* payload) {
  auto* state = static_cast<WalkState*>(payload);
  if (git_tree_entry_type(entry) != GIT_OBJECT_BLOB) return 0;
  if (git_tree_entry_filemode(entry) == GIT_FILEMODE_LINK) return 0;  // a symlink's target is not a manifest
  std::string name = git_tree_entry_name(entry);
  if (!absl::EndsWith(name, ".yaml") && !absl::EndsWith(name, ".yml")) return 0;
  state->files->push_back({absl::StrCat(state->prefix, root, name), OidHex(git_tree_entry_id(entry))});
  return 0;
}

}  // namespace

absl::StatusOr<std::vector<TreeFile>> GitMirror::Files(const std::string& sha, absl::string_view folder) {
  git_oid oid;
  if (git_oid_fromstr(&oid, sha.c_str()) != 0) return absl::InvalidArgumentError("not a commit id: " + sha);
  Owned<git_commit, git_commit_free> commit;
  if (git_commit_lookup(&commit.p, repo_, &oid) != 0) return absl::NotFoundError("no commit " + sha);
  Owned<git_tree, git_tree_free> root;
  if (git_commit_tree(&root.p, commit.p) != 0) return absl::DataLossError("commit " + sha + ": " + LastError());
  std::string dir(absl::StripSuffix(absl::StripPrefix(folder, "./"), "/"));
  while (absl::StrContains(dir, "//")) dir = absl::StrReplaceAll(dir, {{"//", "/"}});
  Owned<git_tree, git_tree_free> sub;
  git_tree* tree = root.p;
  if (!dir.empty()) {
    Owned<git_tree_entry, git_tree_entry_free> entry;
    if (git_tree_entry_bypath(&entry.p, root.p, dir.c_str()) != 0 || git_tree_entry_type(entry.p) != GIT_OBJECT_TREE) {
      git_error_clear();
      return absl::NotFoundError(absl::StrCat("path ", dir, ": no such folder in commit ", sha.substr(0, 7)));
    }
    if (git_tree_lookup(&sub.p, repo_, git_tree_entry_id(entry.p)) != 0) {
      return absl::DataLossError(absl::StrCat("path ", dir, ": ", LastError()));
    }
    tree = sub.p;
  }
  std::vector<TreeFile> files;
  WalkState state{&files, dir.empty() ? "" : dir + "/"};
  if (git_tree_walk(tree, GIT_TREEWALK_PRE, CollectYaml, &state) != 0) {
    return absl::DataLossError(absl::StrCat("commit ", sha, ": ", LastError()));
  }
  std::sort(files.begin(), files.end(), [](const TreeFile& a, const TreeFile& b) { return a.path < b.path; });
  return files;
}

absl::StatusOr<std::string> GitMirror::ReadBlob(const std::string& blob_id, size_t max_bytes) {
  git_oid oid;
  if (git_oid_fromstr(&oid, blob_id.c_str()) != 0) return absl::InvalidArgumentError("not a blob id: " + blob_id);
  Owned<git_blob, git_blob_free> blob;
  if (git_blob_lookup(&blob.p, repo_, &oid) != 0) return absl::NotFoundError("no blob " + blob_id);
  git_object_size_t size = git_blob_rawsize(blob.p);
  if (size > max_bytes) {
    return absl::FailedPreconditionError(
        absl::StrCat("file is too large (", size, " bytes; the limit is ", max_bytes, ")"));
  }
  return std::string(static_cast<const char*>(git_blob_rawcontent(blob.p)), size);
}

}  // namespace mkfleet::gitops
