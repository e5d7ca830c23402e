// GitOps through the real binaries: mkcontroller fetches a repository made by the test,
// mkapply shows the commit per object, refuses to change what the source owns, and syncs,
// suspends and resumes the source.
#include <sys/wait.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <regex>
#include <thread>

#include "gitops/testing/git_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "security/testing/test_pki.h"
#include "tests/process_util.h"

namespace mkfleet {
namespace {

namespace fs = std::filesystem;
using ::testing::AllOf;
using ::testing::HasSubstr;
using ::testing::Not;

class GitopsProcessTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(tmp_.path());
    pki_ = std::make_unique<security::TestPki>((dir_ / "pki").string());
    repo_ = std::make_unique<testing::TestRepo>((dir_ / "repo").string());
    for (const char* f : {"hosts.yaml", "web.yaml", "db.yaml"}) {
      fs::create_directories(dir_ / "repo/fleet");
      fs::copy_file(fs::path("examples") / f, dir_ / "repo/fleet" / f);
    }
    sha_ = repo_->Commit("Add the example fleet");
    controller_ = std::make_unique<testing::Process>(
        std::vector<std::string>{"reconciler/mkcontroller", "--store", "sqlite:" + (dir_ / "store.db").string(),
                                 "--listen", "127.0.0.1:0", "--tls-dir", pki_->controller(), "--resync", "1"},
        (dir_ / "controller.log").string());
    port_ = controller_->WaitFor("listening on port ([0-9]+)");
    ASSERT_FALSE(port_.empty()) << controller_->Log();
    std::ofstream(dir_ / "source.yaml") << "apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: prod}\n"
                                        << "spec:\n  url: " << repo_->url() << "\n  path: fleet\n  interval: 1s\n"
                                        << "  prune: true\n";
  }
  void TearDown() override {
    if (controller_ != nullptr) controller_->Kill(SIGTERM);
  }

  int Mkapply(std::vector<std::string> args, std::string* output) {
    std::vector<std::string> argv = {"cli/mkapply"};
    argv.insert(argv.end(), args.begin(), args.end());
    argv.insert(argv.end(), {"--controller", "127.0.0.1:" + port_, "--tls-dir", pki_->admin()});
    std::string log = (dir_ / ("mkapply-" + std::to_string(++runs_))).string();
    testing::Process p(argv, log);
    int status = p.Kill(0);
    *output = p.Log();
    return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  }

  // Runs `args` until the output matches `pattern` (20 s at most); returns the last output.
  std::string WaitFor(std::vector<std::string> args, const std::string& pattern) {
    std::string out;
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (std::chrono::steady_clock::now() < deadline) {
      Mkapply(args, &out);
      if (std::regex_search(out, std::regex(pattern))) return out;
      std::this_thread::sleep_for(std::chrono::milliseconds(200));
    }
    ADD_FAILURE() << "no match for " << pattern << " in:\n" << out << "\ncontroller:\n" << controller_->Log();
    return out;
  }

  testing::TempDir tmp_;
  fs::path dir_;
  std::unique_ptr<security::TestPki> pki_;
  std::unique_ptr<testing::TestRepo> repo_;
  std::unique_ptr<testing::Process> controller_;
  std::string port_;
  std::string sha_;
  int runs_ = 0;
};

TEST_F(GitopsProcessTest, SourceAppliesCommitsAndOwnsWhatItApplied) {
  std::string out;
  ASSERT_EQ(Mkapply({"apply", "-f", (dir_ / "source.yaml").string()}, &out), 0) << out;
  out = WaitFor({"get", "sources"}, "prod +True +" + sha_.substr(0, 7));
  EXPECT_THAT(out, HasSubstr("applied commit " + sha_.substr(0, 7)));
  ASSERT_EQ(Mkapply({"get", "ki", "-o", "wide"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("git:prod@" + sha_.substr(0, 7)));
  ASSERT_EQ(Mkapply({"describe", "ki", "web-1"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("git:prod@" + sha_.substr(0, 7) + "  (fleet/web.yaml)"),
                         HasSubstr("Change cause: Add the example fleet")));
  // The status says it too, once the controller's next pass wrote it.
  out = WaitFor({"get", "ki", "web-1", "-o", "json"},
                "\"appliedFrom\": \\{\\s*\"source\": \"git:prod\",\\s*\"commit\": \"" + sha_ + "\"");
  EXPECT_THAT(out, HasSubstr("\"path\": \"fleet/web.yaml\""));

  // mkapply cannot change or delete what the source owns, unless it forces.
  ASSERT_EQ(Mkapply({"apply", "-f", "examples/db.yaml"}, &out), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("KernelInstance/db-1 is owned by git:prod"), HasSubstr("--force-conflicts")));
  ASSERT_EQ(Mkapply({"delete", "ki", "db-1"}, &out), 1) << out;
  EXPECT_THAT(out, HasSubstr("owned by git:prod"));
  ASSERT_EQ(Mkapply({"apply", "-f", (dir_ / "source.yaml").string(), "--source", "git:prod"}, &out), 2) << out;
  EXPECT_THAT(out, HasSubstr("GitSources' own"));

  // A commit is picked up by the next fetch (interval 1s), its subject the change cause.
  {
    std::ifstream in(dir_ / "repo/fleet/web.yaml");
    std::string text((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    text = std::regex_replace(text, std::regex("memory: 2Gi"), "memory: 3Gi");
    repo_->Write("fleet/web.yaml", text);
  }
  std::string second = repo_->Commit("web-1: 3Gi for the cache");
  out = WaitFor({"get", "sources"}, "prod +True +" + second.substr(0, 7));
  ASSERT_EQ(Mkapply({"describe", "ki", "web-1"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("git:prod@" + second.substr(0, 7)), HasSubstr("Change cause: web-1: 3Gi for the cache")));
  ASSERT_EQ(Mkapply({"events", "source", "prod"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("SourceApplied"), HasSubstr("by Ada Lovelace <ada@example.com>: web-1: 3Gi")));

  // A bad commit: sync reports every error, nothing changes.
  repo_->Write("fleet/bad.yaml", "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: bad}\nspec: {}\n");
  std::string bad = repo_->Commit("a bad instance");
  ASSERT_EQ(Mkapply({"sync", "source", "prod"}, &out), 1) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("commit " + bad.substr(0, 7) + " (a bad instance)"), HasSubstr("fleet/bad.yaml:4:")));
  ASSERT_EQ(Mkapply({"describe", "source", "prod"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("Applied:      " + second.substr(0, 7)), HasSubstr("Fetched:      " + bad.substr(0, 7)),
                         HasSubstr("fleet/bad.yaml:4:")));
  ASSERT_EQ(Mkapply({"get", "ki", "bad"}, &out), 1) << out;

  // Suspended: commits wait; resumed: applied at once.
  ASSERT_EQ(Mkapply({"suspend", "source", "prod"}, &out), 0) << out;
  repo_->Remove("fleet/bad.yaml");
  repo_->Remove("fleet/db.yaml");
  std::string third = repo_->Commit("drop db-1");
  std::this_thread::sleep_for(std::chrono::milliseconds(2500));
  ASSERT_EQ(Mkapply({"get", "ki", "db-1"}, &out), 0) << "suspended: not pruned\n" << out;
  ASSERT_EQ(Mkapply({"get", "sources", "-o", "wide"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("yes"));
  ASSERT_EQ(Mkapply({"resume", "source", "prod"}, &out), 0) << out;
  EXPECT_THAT(out, HasSubstr("applied commit " + third.substr(0, 7)));
  ASSERT_EQ(Mkapply({"get", "ki", "db-1"}, &out), 1) << "pruned\n" << out;

  // Forced: mkapply takes web-1 over; the source leaves it alone after.
  ASSERT_EQ(Mkapply({"apply", "-f", "examples/web.yaml", "--force-conflicts"}, &out), 0) << out;
  ASSERT_EQ(Mkapply({"get", "ki", "web-1", "-o", "wide"}, &out), 0) << out;
  EXPECT_THAT(out, AllOf(HasSubstr("examples/web.yaml"), Not(HasSubstr("git:prod"))));
}

}  // namespace
}  // namespace mkfleet
