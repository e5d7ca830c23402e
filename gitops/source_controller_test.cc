#include "gitops/source_controller.h"

#include <filesystem>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/testing/simulated_clock.h"
#include "gitops/testing/git_fixture.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::gitops {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::AllOf;
using ::testing::Contains;
using ::testing::HasSubstr;
using testing::TempDir;
using testing::TestKey;
using testing::TestRepo;

constexpr char kHost[] = R"(apiVersion: mkfleet.io/v1
kind: Host
metadata: {name: node-a}
spec:
  agent: 127.0.0.1:7101
  pool: {cpus: "2-7", memory: [{node: 0, size: 8Gi}]}
)";

std::string Instance(const std::string& name, const std::string& memory) {
  return absl::StrCat(R"(apiVersion: mkfleet.io/v1
kind: KernelInstance
metadata: {name: )", name, R"(}
spec:
  host: node-a
  kernel: {image: /boot/vmlinuz}
  resources: {cpus: 1, memory: )", memory, R"(}
)");
}

class SourceControllerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto store = reconciler::OpenSqliteStore(tmp_.path() + "/store.db", clock_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    objects_ = std::make_unique<reconciler::Objects>(*store_);
    auto events = reconciler::EventLog::Open(*store_, clock_);
    ASSERT_TRUE(events.ok());
    events_ = *std::move(events);
    SourceControllerOptions options;
    options.cache_dir = tmp_.path() + "/cache";
    controller_ = std::make_unique<SourceController>(*store_, *objects_, events_.get(), nullptr, clock_, options);
    repo_ = std::make_unique<TestRepo>(tmp_.path() + "/repo");
  }

  // Applies GitSource "prod" on the test repository, as mkapply would.
  void ApplySource(const std::string& extra = "prune: true") {
    std::string yaml = absl::StrCat("apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: prod}\nspec:\n  url: ",
                                    repo_->url(), "\n  path: clusters/prod\n  interval: 30s\n  ", extra, "\n");
    manifests::LoadResult loaded;
    manifests::LoadText("source.yaml", yaml, {}, &loaded);
    ASSERT_TRUE(loaded.ok()) << loaded.errors[0].ToString();
    reconciler::ApplyOptions options;
    options.source = "source.yaml";
    auto r = objects_->Apply({loaded.objects[0].object}, options);
    ASSERT_TRUE(r.ok()) << r.status();
  }

  v1::GitSourceStatus Status() {
    auto o = objects_->Get("GitSource", "prod");
    EXPECT_TRUE(o.ok() && o->has_value());
    return o.ok() && o->has_value() ? (*o)->git_source().status() : v1::GitSourceStatus();
  }

  std::string Condition(const v1::GitSourceStatus& st, const std::string& type) {
    for (const v1::Condition& c : st.conditions()) {
      if (c.type() == type) {
        return absl::StrCat(c.status() == v1::CONDITION_TRUE ? "True" : "False", " ", c.reason(), ": ", c.message());
      }
    }
    return "absent";
  }

  std::optional<v1::Object> Get(const std::string& kind, const std::string& name) {
    auto o = objects_->Get(kind, name);
    EXPECT_TRUE(o.ok()) << o.status();
    return o.ok() ? *o : std::nullopt;
  }

  std::vector<std::string> EventLines() {
    std::vector<std::string> out;
    auto events = events_->List();
    if (!events.ok()) return out;
    for (const v1::Event& e : *events) out.push_back(absl::StrCat(e.type(), " ", e.reason(), " ", e.message()));
    return out;
  }

  // The first commit: a Host and two instances.
  std::string CommitFleet() {
    repo_->Write("clusters/prod/hosts.yaml", kHost);
    repo_->Write("clusters/prod/web.yaml", Instance("web-1", "1Gi"));
    repo_->Write("clusters/prod/db.yaml", Instance("db-1", "2Gi"));
    repo_->Write("README.md", "not a manifest\n");
    repo_->Write("other/ignored.yaml", Instance("elsewhere", "1Gi"));
    return repo_->Commit("Add the prod fleet");
  }

  TempDir tmp_;
  SimulatedClock clock_;
  std::unique_ptr<reconciler::Store> store_;
  std::unique_ptr<reconciler::Objects> objects_;
  std::unique_ptr<reconciler::EventLog> events_;
  std::unique_ptr<SourceController> controller_;
  std::unique_ptr<TestRepo> repo_;
};

TEST_F(SourceControllerTest, CommitIsAppliedAndItsObjectsCarryTheSourceCommitAndPath) {
  std::string sha = CommitFleet();
  ApplySource();
  EXPECT_EQ(controller_->RunOnce(), 1);

  v1::GitSourceStatus st = Status();
  EXPECT_EQ(st.last_applied().sha(), sha);
  EXPECT_EQ(st.last_applied().subject(), "Add the prod fleet");
  EXPECT_EQ(st.last_applied().author(), "Ada Lovelace <ada@example.com>");
  EXPECT_EQ(st.objects(), 3u);
  EXPECT_THAT(Condition(st, "Applied"), HasSubstr("True Applied: applied commit " + sha.substr(0, 7)));
  EXPECT_THAT(Condition(st, "Ready"), HasSubstr("True"));
  EXPECT_THAT(Condition(st, "Fetched"), HasSubstr("True"));
  EXPECT_EQ(Condition(st, "Verified"), "absent");

  auto web = Get("KernelInstance", "web-1");
  ASSERT_TRUE(web.has_value());
  EXPECT_EQ(web->kernel_instance().metadata().source(), "git:prod");
  EXPECT_EQ(web->kernel_instance().metadata().source_commit(), sha);
  EXPECT_EQ(web->kernel_instance().metadata().source_path(), "clusters/prod/web.yaml");
  EXPECT_EQ(web->kernel_instance().metadata().change_cause(), "Add the prod fleet");
  EXPECT_FALSE(Get("KernelInstance", "elsewhere").has_value()) << "outside spec.path";
  EXPECT_THAT(EventLines(), Contains(AllOf(HasSubstr("Normal SourceApplied commit " + sha.substr(0, 7)),
                                           HasSubstr("by Ada Lovelace <ada@example.com>: Add the prod fleet"),
                                           HasSubstr("3 created"))));

  // A commit changing one file changes that object only, and it records the new commit.
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "2Gi"));
  std::string sha2 = repo_->Commit("web-1: 2Gi");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  web = Get("KernelInstance", "web-1");
  EXPECT_EQ(web->kernel_instance().metadata().source_commit(), sha2);
  EXPECT_EQ(web->kernel_instance().metadata().generation(), 2);
  EXPECT_EQ(web->kernel_instance().metadata().change_cause(), "web-1: 2Gi");
  auto db = Get("KernelInstance", "db-1");
  EXPECT_EQ(db->kernel_instance().metadata().source_commit(), sha) << "db-1 did not change in " << sha2;
  EXPECT_THAT(Condition(Status(), "Applied"), HasSubstr("1 configured"));
}

TEST_F(SourceControllerTest, BadCommitChangesNothingAndListsEveryErrorWithTheCommit) {
  std::string good = CommitFleet();
  ApplySource();
  controller_->RunOnce();
  auto before = store_->Revision();

  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "100Mi"));
  repo_->Write("clusters/prod/db.yaml", absl::StrReplaceAll(Instance("db-1", "2Gi"), {{"host: node-a", "hots: node-a"}}));
  repo_->Write("clusters/prod/new.yaml", Instance("new-1", "1Gi"));
  std::string bad = repo_->Commit("Break two files");
  auto r = controller_->Sync("prod");
  EXPECT_FALSE(r.ok());

  v1::GitSourceStatus st = Status();
  EXPECT_EQ(st.last_applied().sha(), good) << "what was applied stays";
  EXPECT_EQ(st.last_fetched().sha(), bad);
  EXPECT_THAT(Condition(st, "Applied"),
              AllOf(HasSubstr("False ApplyFailed: commit " + bad.substr(0, 7) + " (Break two files)"),
                    HasSubstr("nothing was applied")));
  EXPECT_THAT(Condition(st, "Ready"), HasSubstr("False"));
  ASSERT_GE(st.errors_size(), 2);
  EXPECT_THAT(st.errors(), Contains(AllOf(HasSubstr("clusters/prod/web.yaml:7:"), HasSubstr("spec.resources.memory"))));
  EXPECT_THAT(st.errors(), Contains(AllOf(HasSubstr("clusters/prod/db.yaml:5:"), HasSubstr("hots"))));
  EXPECT_FALSE(Get("KernelInstance", "new-1").has_value()) << "a bad commit applies nothing, not even its good files";
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().metadata().generation(), 1);
  EXPECT_THAT(EventLines(), Contains(HasSubstr("Warning ApplyFailed commit " + bad.substr(0, 7))));

  // The next fetch of the same bad commit does not try it again.
  clock_.Advance(absl::Minutes(1));
  controller_->RunOnce();
  auto events = events_->List();
  int failures = 0;
  for (const v1::Event& e : *events) failures += e.reason() == "ApplyFailed" ? e.count() : 0;
  EXPECT_EQ(failures, 1);

  // The fix is applied.
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "128Mi"));
  repo_->Write("clusters/prod/db.yaml", Instance("db-1", "2Gi"));
  std::string fix = repo_->Commit("Fix them");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  st = Status();
  EXPECT_EQ(st.last_applied().sha(), fix);
  EXPECT_EQ(st.errors_size(), 0);
  EXPECT_TRUE(Get("KernelInstance", "new-1").has_value());
  EXPECT_GT(*store_->Revision(), *before);
}

TEST_F(SourceControllerTest, DeletedManifestIsPrunedAndKeptWithoutPrune) {
  CommitFleet();
  ApplySource("prune: true");
  controller_->RunOnce();
  ASSERT_TRUE(Get("KernelInstance", "db-1").has_value());
  repo_->Remove("clusters/prod/db.yaml");
  repo_->Commit("Remove db-1");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  EXPECT_FALSE(Get("KernelInstance", "db-1").has_value());
  EXPECT_THAT(Condition(Status(), "Applied"), HasSubstr("1 pruned"));
  EXPECT_EQ(Status().objects(), 2u);

  ApplySource("prune: false");
  repo_->Remove("clusters/prod/web.yaml");
  repo_->Commit("Remove web-1");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  EXPECT_TRUE(Get("KernelInstance", "web-1").has_value()) << "prune: false keeps what the commit no longer has";
}

TEST_F(SourceControllerTest, RewrittenHistoryAppliesTheNewHead) {
  CommitFleet();
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "4Gi"));
  repo_->Commit("web-1: 4Gi");
  ApplySource();
  controller_->RunOnce();
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().spec().resources().memory(), 4ull << 30);

  // A force-push: the branch now points at a commit that does not descend from the applied one.
  repo_->Git("reset -q --hard HEAD~1");
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "3Gi"));
  std::string rewritten = repo_->Commit("web-1: 3Gi instead");
  clock_.Advance(absl::Minutes(1));
  EXPECT_EQ(controller_->RunOnce(), 1);
  EXPECT_EQ(Status().last_applied().sha(), rewritten);
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().spec().resources().memory(), 3ull << 30);
}

TEST_F(SourceControllerTest, FetchesEveryIntervalOnlyAndASuspendedSourceFetchesNothing) {
  std::string first = CommitFleet();
  ApplySource();
  controller_->RunOnce();
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "2Gi"));
  std::string second = repo_->Commit("web-1: 2Gi");
  clock_.Advance(absl::Seconds(20));  // interval 30s, jitter 10%: not due yet
  EXPECT_EQ(controller_->RunOnce(), 0);
  EXPECT_EQ(Status().last_applied().sha(), first);
  EXPECT_GT(Status().next_fetch_unix_ms(), absl::ToUnixMillis(clock_.Now()));
  clock_.Advance(absl::Seconds(14));
  EXPECT_EQ(controller_->RunOnce(), 1);
  EXPECT_EQ(Status().last_applied().sha(), second);

  ASSERT_TRUE(objects_->Update("GitSource", "prod", [](v1::Object& o) {
    o.mutable_git_source()->mutable_spec()->set_suspend(true);
  }).ok());
  controller_->RunOnce();
  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "3Gi"));
  repo_->Commit("web-1: 3Gi");
  clock_.Advance(absl::Minutes(5));
  controller_->RunOnce();
  v1::GitSourceStatus st = Status();
  EXPECT_EQ(st.last_fetched().sha(), second) << "suspended: nothing fetched";
  EXPECT_EQ(st.last_applied().sha(), second);
  EXPECT_THAT(Condition(st, "Ready"), HasSubstr("False Suspended"));
  auto sync = controller_->Sync("prod");
  EXPECT_EQ(sync.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(sync.status().message()), HasSubstr("suspended"));
}

TEST_F(SourceControllerTest, UnreachableRepositoryKeepsWhatIsApplied) {
  std::string sha = CommitFleet();
  ApplySource();
  controller_->RunOnce();
  std::filesystem::rename(repo_->dir(), tmp_.path() + "/moved");
  auto r = controller_->Sync("prod");
  EXPECT_FALSE(r.ok());
  v1::GitSourceStatus st = Status();
  EXPECT_THAT(Condition(st, "Fetched"), HasSubstr("False FetchFailed"));
  EXPECT_THAT(Condition(st, "Ready"), HasSubstr("False"));
  EXPECT_EQ(st.last_applied().sha(), sha);
  EXPECT_TRUE(Get("KernelInstance", "web-1").has_value());
  EXPECT_THAT(EventLines(), Contains(HasSubstr("Warning FetchFailed")));
}

TEST_F(SourceControllerTest, VerifyAppliesSignedCommitsOnly) {
  TestKey trusted(tmp_.path() + "/gpg-trusted", "Trusted <trusted@example.com>");
  TestKey stranger(tmp_.path() + "/gpg-stranger", "Stranger <stranger@example.com>");
  ASSERT_FALSE(trusted.fingerprint().empty());
  trusted.Export(tmp_.path() + "/trusted.gpg");

  CommitFleet();  // unsigned
  ApplySource("prune: true\n  verify: {keyring: " + tmp_.path() + "/trusted.gpg}");
  controller_->RunOnce();
  v1::GitSourceStatus st = Status();
  EXPECT_THAT(Condition(st, "Verified"), AllOf(HasSubstr("False VerificationFailed"), HasSubstr("is not signed")));
  EXPECT_FALSE(Get("KernelInstance", "web-1").has_value());

  repo_->Write("clusters/prod/web.yaml", Instance("web-1", "2Gi"));
  std::string strange = repo_->Commit("signed by a stranger", &stranger);
  ASSERT_TRUE(absl::StrContains(repo_->Git("cat-file commit HEAD"), "gpgsig")) << "the test commit is not signed";
  EXPECT_FALSE(controller_->Sync("prod").ok());
  EXPECT_THAT(Condition(Status(), "Verified"),
              AllOf(HasSubstr(strange.substr(0, 7)), HasSubstr(stranger.fingerprint()), HasSubstr("not in")));
  EXPECT_FALSE(Get("KernelInstance", "web-1").has_value());

  std::string good = repo_->Commit("signed by the trusted key", &trusted);
  auto r = controller_->Sync("prod");
  ASSERT_TRUE(r.ok()) << r.status();
  st = Status();
  EXPECT_EQ(st.last_applied().sha(), good);
  EXPECT_EQ(st.last_applied().signed_by(), trusted.fingerprint());
  EXPECT_THAT(Condition(st, "Verified"), HasSubstr("True"));
  EXPECT_TRUE(Get("KernelInstance", "web-1").has_value());
}

TEST_F(SourceControllerTest, ObjectsOfASourceAreOnlyChangedWithForceConflicts) {
  std::string sha = CommitFleet();
  ApplySource();
  controller_->RunOnce();
  manifests::LoadResult loaded;
  manifests::LoadText("web.yaml", Instance("web-1", "8Gi"), {}, &loaded);
  ASSERT_TRUE(loaded.ok());
  reconciler::ApplyOptions by_hand;
  by_hand.source = "web.yaml";
  auto refused = objects_->Apply({loaded.objects[0].object}, by_hand);
  ASSERT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(std::string(refused.status().message()),
              AllOf(HasSubstr("KernelInstance/web-1 is owned by git:prod"), HasSubstr(sha.substr(0, 7)),
                    HasSubstr("clusters/prod/web.yaml"), HasSubstr("--force-conflicts")));
  auto deleted = objects_->Delete("KernelInstance", "db-1");
  EXPECT_EQ(deleted.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE(Get("KernelInstance", "db-1").has_value());

  by_hand.force_conflicts = true;
  ASSERT_TRUE(objects_->Apply({loaded.objects[0].object}, by_hand).ok());
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().metadata().source(), "web.yaml");
  // Taken over: the source's prune leaves it alone once the repository drops it.
  repo_->Remove("clusters/prod/web.yaml");
  repo_->Commit("Drop web-1");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  EXPECT_TRUE(Get("KernelInstance", "web-1").has_value());
  EXPECT_TRUE(objects_->Delete("KernelInstance", "db-1", 0, false, /*force_conflicts=*/true).ok());
}

TEST_F(SourceControllerTest, WhatMkapplyAppliedIsAdopted) {
  CommitFleet();
  manifests::LoadResult loaded;
  manifests::LoadText("hosts.yaml", kHost, {}, &loaded);
  reconciler::ApplyOptions by_hand;
  by_hand.source = "hosts.yaml";
  ASSERT_TRUE(objects_->Apply({loaded.objects[0].object}, by_hand).ok());
  ApplySource();
  controller_->RunOnce();
  EXPECT_THAT(Condition(Status(), "Applied"), HasSubstr("1 adopted, 2 created"));
  EXPECT_EQ(Get("Host", "node-a")->host().metadata().source(), "git:prod");
}

TEST_F(SourceControllerTest, ObjectsOfADeletedSourceAreNobodysAndStay) {
  CommitFleet();
  ApplySource();
  controller_->RunOnce();
  ASSERT_TRUE(objects_->Delete("GitSource", "prod", 0, false, /*force_conflicts=*/false).ok());
  controller_->RunOnce();
  ASSERT_TRUE(Get("KernelInstance", "web-1").has_value()) << "what a deleted source applied stays";
  manifests::LoadResult loaded;
  manifests::LoadText("web.yaml", Instance("web-1", "4Gi"), {}, &loaded);
  reconciler::ApplyOptions by_hand;
  by_hand.source = "web.yaml";
  auto r = objects_->Apply({loaded.objects[0].object}, by_hand);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().metadata().source(), "web.yaml");
  EXPECT_TRUE(objects_->Delete("KernelInstance", "db-1").ok());
}

TEST_F(SourceControllerTest, TwoSourcesCannotOwnOneObject) {
  CommitFleet();
  ApplySource();
  controller_->RunOnce();
  TestRepo other(tmp_.path() + "/other");
  other.Write("web.yaml", Instance("web-1", "2Gi"));
  other.Commit("claim web-1");
  manifests::LoadResult loaded;
  manifests::LoadText("s.yaml",
                      absl::StrCat("apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: rival}\nspec: {url: \"",
                                   other.url(), "\"}\n"),
                      {}, &loaded);
  ASSERT_TRUE(loaded.ok()) << loaded.errors[0].ToString();
  reconciler::ApplyOptions options;
  options.source = "s.yaml";
  ASSERT_TRUE(objects_->Apply({loaded.objects[0].object}, options).ok());
  EXPECT_FALSE(controller_->Sync("rival").ok());
  auto rival = objects_->Get("GitSource", "rival");
  EXPECT_THAT((*rival)->git_source().status().errors(), Contains(HasSubstr("KernelInstance/web-1 is owned by git:prod")));
  EXPECT_EQ(Get("KernelInstance", "web-1")->kernel_instance().metadata().source(), "git:prod");
}

TEST_F(SourceControllerTest, MissingPathOrBranchIsReported) {
  CommitFleet();
  ApplySource("ref: {branch: release}");
  EXPECT_FALSE(controller_->Sync("prod").ok());
  EXPECT_THAT(Condition(Status(), "Fetched"), HasSubstr("branch release is not in"));
  ApplySource("ref: {tag: v1}");
  repo_->Git("tag v1");
  ASSERT_TRUE(controller_->Sync("prod").ok());
  EXPECT_TRUE(Get("KernelInstance", "web-1").has_value());
  repo_->Git("mv clusters/prod clusters/production");
  repo_->Commit("rename the folder");
  repo_->Git("tag -f v1");
  EXPECT_FALSE(controller_->Sync("prod").ok());
  EXPECT_THAT(Status().errors(), Contains(HasSubstr("path clusters/prod: no such folder")));
}

TEST_F(SourceControllerTest, RestartDoesNotApplyTheSameCommitAgain) {
  CommitFleet();
  ApplySource();
  controller_->RunOnce();
  auto rev = store_->Revision();
  SourceControllerOptions options;
  options.cache_dir = tmp_.path() + "/cache";
  SourceController restarted(*store_, *objects_, events_.get(), nullptr, clock_, options);
  auto applied_events = [&] {
    int n = 0;
    for (const std::string& line : EventLines()) n += absl::StrContains(line, "SourceApplied");
    return n;
  };
  const int events_before = applied_events();
  EXPECT_EQ(restarted.RunOnce(), 1);  // fetched at once after a restart...
  auto objects = objects_->List("KernelInstance");
  for (const v1::Object& o : *objects) EXPECT_LE(o.kernel_instance().metadata().revision(), *rev) << "...not applied again";
  EXPECT_EQ(applied_events(), events_before) << "nothing applied, nothing said";
}

}  // namespace
}  // namespace mkfleet::gitops
