#include "gitops/git_mirror.h"

#include "absl/strings/escaping.h"
#include "gitops/testing/git_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::gitops {
namespace {

using testing::TempDir;
using testing::TestRepo;

TEST(KnownHostsTest, AcceptsOnlyTheListedKeyForTheHostAndPort) {
  // Wire-format keys start with a length: NUL bytes the comparison must keep.
  std::string key = std::string(3, '\0') + "\x0bssh-ed25519 some key bytes";
  std::string other = std::string(3, '\0') + "\x0bssh-ed25519 other bytes!!";
  std::string b64 = absl::Base64Escape(key);
  std::string line = "[127.0.0.1]:2222 ssh-ed25519 " + b64 + " comment\n";
  EXPECT_TRUE(KnownHostsAccept(line, "127.0.0.1", 2222, key));
  EXPECT_FALSE(KnownHostsAccept(line, "127.0.0.1", 2223, key)) << "another port";
  EXPECT_FALSE(KnownHostsAccept(line, "127.0.0.1", 2222, other)) << "a changed key";
  EXPECT_FALSE(KnownHostsAccept("", "127.0.0.1", 2222, key));
  EXPECT_TRUE(KnownHostsAccept("# c\ngit.example.com,10.0.0.1 ssh-ed25519 " + b64, "git.example.com", 22, key));
  EXPECT_TRUE(KnownHostsAccept("*.example.com ssh-ed25519 " + b64, "git.example.com", 0, key));
  EXPECT_FALSE(KnownHostsAccept("*.example.com,!git.example.com ssh-ed25519 " + b64, "git.example.com", 0, key));
  EXPECT_FALSE(KnownHostsAccept(line + "@revoked [127.0.0.1]:2222 ssh-ed25519 " + b64, "127.0.0.1", 2222, key));
  // Hashed (ssh-keygen -H): |1|base64(salt)|base64(HMAC-SHA1(salt, host)), checked against ssh-keygen's own.
  TempDir tmp;
  testing::MustShell("printf '%s' " + testing::Quote(line) + " > " + tmp.path() + "/kh && ssh-keygen -q -H -f " +
                     tmp.path() + "/kh >/dev/null");
  std::string hashed = testing::MustShell("cat " + tmp.path() + "/kh");
  ASSERT_EQ(hashed.rfind("|1|", 0), 0u) << hashed;
  EXPECT_TRUE(KnownHostsAccept(hashed, "127.0.0.1", 2222, key));
  EXPECT_FALSE(KnownHostsAccept(hashed, "127.0.0.2", 2222, key));
}

TEST(GitMirrorTest, FetchesABranchAndListsItsManifestsWithoutACheckout) {
  TempDir tmp;
  TestRepo repo(tmp.path() + "/repo");
  repo.Write("a/one.yaml", "1");
  repo.Write("a/sub/two.yml", "2");
  repo.Write("a/three.txt", "3");
  repo.Write("b/four.yaml", "4");
  std::string sha = repo.Commit("first\n\nbody");
  auto mirror = GitMirror::Open(tmp.path() + "/mirror");
  ASSERT_TRUE(mirror.ok()) << mirror.status();
  GitTarget target;
  target.url = repo.url();
  auto meta = (*mirror)->Fetch(target);
  ASSERT_TRUE(meta.ok()) << meta.status();
  EXPECT_EQ(meta->sha, sha);
  EXPECT_EQ(meta->subject, "first");
  EXPECT_TRUE(meta->signature.empty());
  auto files = (*mirror)->Files(sha, "a");
  ASSERT_TRUE(files.ok()) << files.status();
  ASSERT_EQ(files->size(), 2u);
  EXPECT_EQ((*files)[0].path, "a/one.yaml");
  EXPECT_EQ((*files)[1].path, "a/sub/two.yml");
  EXPECT_EQ(*(*mirror)->ReadBlob((*files)[1].blob_id, 100), "2");
  EXPECT_EQ((*mirror)->ReadBlob((*files)[1].blob_id, 0).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*mirror)->Files(sha, "")->size(), 3u);
  EXPECT_EQ((*mirror)->Files(sha, "c").status().code(), absl::StatusCode::kNotFound);

  // A pinned commit, and a branch the remote lost.
  repo.Write("a/one.yaml", "1b");
  std::string second = repo.Commit("second");
  target.commit = sha;
  EXPECT_EQ((*mirror)->Fetch(target)->sha, sha);
  target.commit.clear();
  target.branch = "gone";
  EXPECT_EQ((*mirror)->Fetch(target).status().code(), absl::StatusCode::kNotFound);
  target.branch = "main";
  EXPECT_EQ((*mirror)->Fetch(target)->sha, second);
  target.url = "file://" + tmp.path() + "/nothing-here";
  EXPECT_EQ((*mirror)->Fetch(target).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mkfleet::gitops
