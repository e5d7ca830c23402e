// GitSources over ssh://, against an sshd this test starts on a loopback port with its own
// host key (skipped, saying so, where sshd is not installed).
#include <filesystem>
#include <fstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/testing/simulated_clock.h"
#include "gitops/source_controller.h"
#include "gitops/testing/git_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "tests/process_util.h"

namespace mkfleet::gitops {
namespace {

using ::testing::AllOf;
using ::testing::HasSubstr;
using testing::MustShell;
using testing::Quote;
using testing::TempDir;
using testing::TestRepo;

constexpr char kSshd[] = "/usr/sbin/sshd";


std::string Read(const std::string& path) {
  std::ifstream in(path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

class SshSourceTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (access(kSshd, X_OK) != 0) GTEST_SKIP() << kSshd << " is not installed (Debian: openssh-server); ssh:// untested";
    const std::string d = tmp_.path();
    MustShell("ssh-keygen -q -t ed25519 -N '' -f " + d + "/host_key");
    MustShell("ssh-keygen -q -t ed25519 -N '' -f " + d + "/client_key");
    MustShell("ssh-keygen -q -t ed25519 -N '' -f " + d + "/other_key");
    MustShell("cp " + d + "/client_key.pub " + d + "/authorized_keys && chmod 600 " + d + "/authorized_keys");
    std::error_code ec;
    std::filesystem::create_directories("/run/sshd", ec);  // sshd's privilege separation folder
    port_ = mkfleet::testing::FreePort();
    std::ofstream(d + "/sshd_config") << "Port " << port_ << "\nListenAddress 127.0.0.1\nHostKey " << d
                                      << "/host_key\nAuthorizedKeysFile " << d << "/authorized_keys\nPidFile " << d
                                      << "/sshd.pid\nStrictModes no\nUsePAM no\nPasswordAuthentication no\n"
                                      << "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\n"
                                      << "LogLevel VERBOSE\n";
    sshd_ = std::make_unique<mkfleet::testing::Process>(
        std::vector<std::string>{kSshd, "-D", "-e", "-f", d + "/sshd_config"}, d + "/sshd.log");
    ASSERT_FALSE(sshd_->WaitFor("Server listening on 127.0.0.1 port").empty()) << Read(d + "/sshd.log");
    std::vector<std::string> pub = absl::StrSplit(Read(d + "/host_key.pub"), ' ');
    std::ofstream(d + "/known_hosts") << "[127.0.0.1]:" << port_ << " " << pub[0] << " " << pub[1] << "\n";
    std::vector<std::string> other = absl::StrSplit(Read(d + "/other_key.pub"), ' ');
    std::ofstream(d + "/wrong_known_hosts") << "[127.0.0.1]:" << port_ << " " << other[0] << " " << other[1] << "\n";
    repo_ = std::make_unique<TestRepo>(d + "/repo");
    user_ = MustShell("id -un");
    user_.pop_back();
  }
  void TearDown() override {
    if (sshd_ != nullptr) sshd_->Kill(SIGTERM);
  }

  GitTarget Target(const std::string& key, const std::string& known_hosts) {
    GitTarget t;
    t.url = absl::StrCat("ssh://", user_, "@127.0.0.1:", port_, repo_->dir());
    t.auth.ssh_key_file = tmp_.path() + "/" + key;
    t.auth.known_hosts_file = tmp_.path() + "/" + known_hosts;
    return t;
  }

  TempDir tmp_;
  int port_ = 0;
  std::unique_ptr<mkfleet::testing::Process> sshd_;
  std::unique_ptr<TestRepo> repo_;
  std::string user_;
};

TEST_F(SshSourceTest, SourceOverSshIsAppliedWithTheKnownHostKey) {
  repo_->Write("fleet/web.yaml", R"(apiVersion: mkfleet.io/v1
kind: Host
metadata: {name: node-a}
spec: {agent: "127.0.0.1:7101", pool: {cpus: "2-3", memory: [{node: 0, size: 1Gi}]}}
)");
  std::string sha = repo_->Commit("over ssh");
  SimulatedClock clock;
  auto store = reconciler::OpenSqliteStore(tmp_.path() + "/store.db", clock);
  ASSERT_TRUE(store.ok());
  reconciler::Objects objects(**store);
  GitTarget t = Target("client_key", "known_hosts");
  manifests::LoadResult loaded;
  manifests::LoadText("s.yaml",
                      absl::StrCat("apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: ops}\nspec:\n  url: ",
                                   t.url, "\n  path: fleet\n  credentials: {sshKeyFile: ", t.auth.ssh_key_file,
                                   ", knownHostsFile: ", t.auth.known_hosts_file, "}\n"),
                      {}, &loaded);
  ASSERT_TRUE(loaded.ok()) << loaded.errors[0].ToString();
  reconciler::ApplyOptions options;
  options.source = "s.yaml";
  ASSERT_TRUE(objects.Apply({loaded.objects[0].object}, options).ok());
  SourceControllerOptions so;
  so.cache_dir = tmp_.path() + "/cache";
  SourceController controller(**store, objects, nullptr, nullptr, clock, so);
  auto r = controller.Sync("ops");
  ASSERT_TRUE(r.ok()) << r.status() << "\n" << Read(tmp_.path() + "/sshd.log");
  auto host = objects.Get("Host", "node-a");
  ASSERT_TRUE(host.ok() && host->has_value());
  EXPECT_EQ((*host)->host().metadata().source_commit(), sha);
}

TEST_F(SshSourceTest, UnknownHostKeyIsRefused) {
  repo_->Commit("x");
  auto mirror = GitMirror::Open(tmp_.path() + "/mirror");
  ASSERT_TRUE(mirror.ok());
  auto r = (*mirror)->Fetch(Target("client_key", "wrong_known_hosts"));
  EXPECT_EQ(r.status().code(), absl::StatusCode::kPermissionDenied) << r.status();
  EXPECT_THAT(std::string(r.status().message()),
              AllOf(HasSubstr("host key of 127.0.0.1:" + std::to_string(port_)), HasSubstr("SHA256:"),
                    HasSubstr("is not in"), HasSubstr("refused")));
  // No known_hosts entry at all is refused the same way.
  std::ofstream(tmp_.path() + "/empty_known_hosts") << "";
  EXPECT_EQ((*mirror)->Fetch(Target("client_key", "empty_known_hosts")).status().code(),
            absl::StatusCode::kPermissionDenied);
}

TEST_F(SshSourceTest, KeyTheServerDoesNotKnowIsRefused) {
  repo_->Commit("x");
  auto mirror = GitMirror::Open(tmp_.path() + "/mirror");
  ASSERT_TRUE(mirror.ok());
  auto r = (*mirror)->Fetch(Target("other_key", "known_hosts"));
  EXPECT_FALSE(r.ok());
  EXPECT_NE(r.status().code(), absl::StatusCode::kOk);
  auto good = (*mirror)->Fetch(Target("client_key", "known_hosts"));
  EXPECT_TRUE(good.ok()) << good.status();
}

}  // namespace
}  // namespace mkfleet::gitops
