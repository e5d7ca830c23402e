// Test repositories and signing keys, made with the git and gpg command-line tools (tests
// only: mkfleet itself reads repositories with libgit2). Everything lives in a temporary
// folder removed at the end, and git runs with no user or system configuration.
#ifndef MKFLEET_GITOPS_TESTING_GIT_FIXTURE_H_
#define MKFLEET_GITOPS_TESTING_GIT_FIXTURE_H_

#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>

#include "gtest/gtest.h"

namespace mkfleet::testing {

// Runs `command` with /bin/sh; returns its standard output (and error); `status` gets the
// exit code.
inline std::string Shell(const std::string& command, int* status = nullptr) {
  std::string out;
  FILE* p = popen((command + " 2>&1").c_str(), "r");
  if (p == nullptr) {
    if (status != nullptr) *status = -1;
    return out;
  }
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof(buf), p)) > 0) out.append(buf, n);
  int rc = pclose(p);
  if (status != nullptr) *status = WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
  return out;
}

// Like Shell, but a failure fails the test.
inline std::string MustShell(const std::string& command) {
  int status = 0;
  std::string out = Shell(command, &status);
  EXPECT_EQ(status, 0) << command << "\n" << out;
  return out;
}

inline std::string Quote(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

// A temporary folder, removed with what is in it.
class TempDir {
 public:
  TempDir() {
    char tmpl[] = "/tmp/mkfleet-git-XXXXXX";
    path_ = mkdtemp(tmpl);
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

// A GnuPG home with one signing key (no passphrase).
class TestKey {
 public:
  TestKey(const std::string& home, const std::string& uid) : home_(home) {
    std::filesystem::create_directories(home_);
    MustShell("chmod 700 " + Quote(home_));
    MustShell(Env() + "gpg --batch --passphrase '' --quick-gen-key " + Quote(uid) + " ed25519 sign never");
    std::string out = MustShell(Env() + "gpg --batch --with-colons --list-secret-keys");
    size_t fpr = out.find("\nfpr:");
    if (fpr != std::string::npos) {
      size_t start = out.find_first_not_of(':', fpr + 5);
      fingerprint_ = out.substr(start, out.find(':', start) - start);
    }
  }
  ~TestKey() { Shell(Env() + "gpgconf --kill gpg-agent"); }
  // Writes the public key to `path` (binary, as `gpg --export` does).
  void Export(const std::string& path) const { MustShell(Env() + "gpg --batch --export -o " + Quote(path)); }
  std::string Env() const { return "GNUPGHOME=" + Quote(home_) + " "; }
  const std::string& home() const { return home_; }
  const std::string& fingerprint() const { return fingerprint_; }

 private:
  std::string home_;
  std::string fingerprint_;
};

// A work tree with branch main; its folder is the remote (file://<dir>).
class TestRepo {
 public:
  explicit TestRepo(const std::string& dir) : dir_(dir) {
    std::filesystem::create_directories(dir_);
    Git("init -q -b main");
  }
  std::string Git(const std::string& args, const TestKey* key = nullptr) {
    std::string env = "GIT_CONFIG_NOSYSTEM=1 HOME=" + Quote(dir_ + "/.home") + " ";
    if (key != nullptr) env += key->Env();
    return MustShell(env + "git -C " + Quote(dir_) +
                     " -c user.name='Ada Lovelace' -c user.email=ada@example.com -c commit.gpgsign=false " + args);
  }
  void Write(const std::string& path, const std::string& text) {
    std::filesystem::path p = std::filesystem::path(dir_) / path;
    std::filesystem::create_directories(p.parent_path());
    std::ofstream(p) << text;
  }
  void Remove(const std::string& path) { Git("rm -q " + Quote(path)); }
  // Commits everything; signed by `key` when given. Returns the commit id.
  std::string Commit(const std::string& message, const TestKey* key = nullptr) {
    Git("add -A");
    if (key != nullptr) {
      Git("-c gpg.program=gpg -c user.signingkey=" + key->fingerprint() + " commit -q -S --allow-empty -m " +
              Quote(message),
          key);
    } else {
      Git("commit -q --allow-empty -m " + Quote(message));
    }
    return Head();
  }
  std::string Head() {
    std::string sha = Git("rev-parse HEAD");
    while (!sha.empty() && (sha.back() == '\n' || sha.back() == ' ')) sha.pop_back();
    return sha;
  }
  std::string url() const { return "file://" + dir_; }
  const std::string& dir() const { return dir_; }

 private:
  std::string dir_;
};

}  // namespace mkfleet::testing

#endif  // MKFLEET_GITOPS_TESTING_GIT_FIXTURE_H_
