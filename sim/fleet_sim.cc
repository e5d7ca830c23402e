#include "sim/fleet_sim.h"

#include <algorithm>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <random>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/strip.h"
#include "absl/strings/str_replace.h"
#include "agents/action_journal.h"
#include "agents/kerf_ops.h"
#include "agents/agent.h"
#include "agents/liveness.h"
#include "agents/request_checks.h"
#include "common/testing/simulated_clock.h"
#include "gitops/source_controller.h"
#include "gitops/testing/git_fixture.h"
#include "google/protobuf/util/message_differencer.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kernel/emulator/machine.h"
#include "kernel/host_kernel.h"
#include "sim/sim_guests.h"
#include "manifests/loader.h"
#include "manifests/printer.h"
#include "planner/topology_source.h"
#include "reconciler/agent_client.h"
#include "reconciler/event_log.h"
#include "reconciler/objects.h"
#include "reconciler/election.h"
#include "reconciler/reconciler.h"
#include "reconciler/shards.h"
#include "reconciler/testing/cut_store.h"
#include "reconciler/store.h"
#include "sim/crashing_kernel.h"

namespace mkfleet::sim {
namespace {

// Who a kernel's recorded owner licenses: "KernelInstance/x@<created revision>" gives
// "KernelInstance/x" (licences name objects, not incarnations); others as they are.
absl::string_view LicenseeOf(absl::string_view owner) { return owner.substr(0, owner.rfind('@')); }

namespace v1 = mkfleet::v1;
namespace fs = std::filesystem;

// 2 NUMA nodes x 4 cores x 2 threads: 7 cores to lend (the core of CPU 0 stays).
constexpr char kTopology[] = "pack:2 numa:1(memory=4GiB) core:4 pu:2";
constexpr absl::Duration kStep = absl::Milliseconds(50);
constexpr absl::Duration kLeaseTtl = absl::Seconds(2);  // 40 steps

int64_t Effects(const kernel::EmulatedKernel::Counters& c) {
  return c.creates + c.removes + c.loads + c.unloads + c.starts + c.halts + c.force_halts + c.cpu_adds +
         c.cpu_removes + c.memory_adds + c.memory_removes + c.device_adds + c.device_removes + c.pool_changes +
         c.rollbacks;
}

class Rng {
 public:
  explicit Rng(uint64_t seed) : g_(seed) {}
  bool P(double p) { return std::uniform_real_distribution<double>(0, 1)(g_) < p; }
  int I(int lo, int hi) { return std::uniform_int_distribution<int>(lo, hi)(g_); }  // inclusive
  template <typename T>
  const T& Pick(const std::vector<T>& v) {
    return v[static_cast<size_t>(I(0, static_cast<int>(v.size()) - 1))];
  }

 private:
  std::mt19937_64 g_;
};

struct NetFaults {
  double drop = 0, delay = 0, duplicate = 0, lose_response = 0, stream_break = 0, stall = 0;
};

class World;

// One host: its kernel (outlives agents) and, while up, its agent process.
struct SimHost {
  std::string name;
  std::string dir;
  std::shared_ptr<const planner::Topology> topology;
  std::unique_ptr<kernel::EmulatedKernel> emu;
  std::unique_ptr<kernel::HostKernel> truth;  // reads what runs, for the invariants
  std::unique_ptr<CrashingKernel> ck;
  std::unique_ptr<kernel::HostKernel> hk;
  std::unique_ptr<agents::ActionJournal> journal;
  std::unique_ptr<agents::LivenessProbe> probe;
  std::unique_ptr<agents::Agent> agent;
  int incarnation = 0;          // raised at every start of the agent: its streams are of one run
  int64_t down_until = -1;      // while down: the step it comes back
  bool crash_next_batch = false;
  int64_t effects_seen = 0;
  std::set<std::string> busy;   // physical CPU ids made busy
  int foreign = 0;
  std::set<std::string> foreign_alive;  // kernels started by hand: mkfleet never removes them
  std::unique_ptr<SimGuests> guests;  // the instances' guests (live updates), in process
};

struct Delayed {
  int64_t at_step;
  int host;
  bool policy;
  v1::ActionBatch batch;
  v1::SetPolicyRequest policies;
};

class World {
 public:
  explicit World(const SimOptions& o) : o_(o), rng_(o.seed), election_rng_(o.seed ^ 0x9e3779b97f4a7c15ull) {}

  SimResult Run();

  // The network, for the controller's clients.
  absl::StatusOr<v1::InventoryResponse> Inventory(int h);
  absl::StatusOr<v1::ExecuteResponse> Execute(int h, const v1::ActionBatch& batch, int member);
  absl::Status SetPolicy(int h, const v1::SetPolicyRequest& request, int member);
  agents::Agent* AgentOf(int h) { return hosts_[h]->agent.get(); }
  int IncarnationOf(int h) { return hosts_[h]->incarnation; }
  bool StreamBreaks() { return rng_.P(net_.stream_break); }
  bool StreamStalls() { return rng_.P(net_.stall); }
  // Invariant (p): a state the watch stream brings `member` from host h.
  void Streamed(int h, int member, const v1::HostState& state);
  void ForgetMarks(int member);
  int HostIndex(const std::string& name) {
    for (size_t i = 0; i < hosts_.size(); ++i) {
      if (hosts_[i]->name == name) return static_cast<int>(i);
    }
    return -1;
  }

 private:
  void Trace(const std::string& line);
  absl::Status Fail(const std::string& what) {
    return absl::InternalError(absl::StrCat("step ", step_, ": invariant ", what));
  }
  void Setup();
  void StartAgent(int h);
  void KillAgent(int h, const std::string& why);
  void StartController();
  void KillController(const std::string& why);
  absl::StatusOr<v1::ExecuteResponse> Deliver(int h, const v1::ActionBatch& batch);
  void OnAction(int h, const v1::Action& a, const v1::ActionResult& r);
  void OneStep();
  void UserOp();
  void PolicyOp();
  // GitOps (step 10): commits to the GitSource's repository; invariant (k) after each fetch.
  void GitOp();
  std::string Commit(const std::string& message);
  // Commit ids depend on the scratch folder (kernel paths in the files): traces say "c3".
  std::string Scrub(std::string text) const;
  absl::Status CheckSource(bool quiescent);
  // After the source ran: a newly applied commit licenses stopping what it changed or removed.
  void NoteApplied();
  // Attacks (step 7): each must be refused and change nothing (invariant h).
  void HostileApply();
  void HostileBatch(int h);
  void Fault();
  absl::Status CheckStep();
  absl::Status CheckQuiescent();
  absl::Status Settle();
  std::string Owner(int h, const std::string& kernel);
  void License(const std::string& who, const std::string& why);
  void LicenseSets(const std::string& why);

  // Objects.
  v1::Object Host(int h, bool cordoned, bool drain = false);
  v1::Object Instance(const std::string& name, int host, uint32_t cpus, uint64_t mib);
  v1::Object Set(const std::string& name);
  absl::Status Apply(const v1::Object& o);
  std::vector<v1::Object> List(const std::string& kind);

  const SimOptions o_;
  Rng rng_;
  // The control plane's faults draw from their own stream, so that they do not move the
  // other faults and operations of a seed.
  Rng election_rng_;
  SimulatedClock clock_;
  std::vector<std::unique_ptr<SimHost>> hosts_;
  std::unique_ptr<reconciler::Store> store_;
  std::unique_ptr<reconciler::Objects> objects_;
  std::unique_ptr<reconciler::EventLog> events_;
  std::unique_ptr<reconciler::Reconciler> reconciler_;
  std::unique_ptr<gitops::SourceController> sources_;  // mkcontroller's, up and down with it
  // Leader election (step 11): the controller is a member of a control plane and acts only
  // while it leads (its Reconciler's may_act). Faults: its view of the store cut off for a
  // while (it must step down before its lease can expire), and a rival member campaigning
  // (it leads whenever the controller's lease lapses). Invariant (l): never two leaders, and
  // nothing reaches an agent from a controller that is not the leader.
  std::unique_ptr<reconciler::CutStore> election_view_;
  std::unique_ptr<reconciler::Election> election_;
  std::unique_ptr<reconciler::Election> rival_;
  int64_t cut_until_ = -1, rival_until_ = -1;
  int incarnation_ = 0;
  bool led_ = false;  // the controller led after the last step
  void StepElection();
  void ElectionFault();
  void EndElectionFaults();
  // Sharding (o_.shards > 0): the controller's shard map, and the peer, a member that never
  // campaigns (so the controller is the one that plans) and sends its hosts what the
  // controller publishes. Faults: the peer killed (back later under a new name) or cut off
  // from the store. Invariant (m).
  struct Peer {
    std::unique_ptr<reconciler::CutStore> view;
    std::unique_ptr<reconciler::Objects> objects;
    std::unique_ptr<reconciler::EventLog> events;
    std::unique_ptr<reconciler::Election> election;
    std::unique_ptr<reconciler::ShardMap> shards;
    std::unique_ptr<reconciler::Reconciler> loop;
  };
  std::unique_ptr<reconciler::ShardMap> shard_map_;
  std::unique_ptr<Peer> peer_;
  int peer_incarnation_ = 0;
  int64_t peer_down_until_ = -1, peer_cut_until_ = -1;
  reconciler::ReconcilerOptions LoopOptions(int member);
  // `election` says whether the member's registration is current (its Election, read when asked).
  std::unique_ptr<reconciler::ShardMap> NewShardMap(const std::string& name,
                                                    std::function<const reconciler::Election*()> election);
  void StartPeer();
  void KillPeer(const std::string& why);
  void StepPeer();
  void PeerFault();
  // Whether `member` (0: the controller, 1: the peer) may send to host h now, else (l)/(m).
  void CheckSender(int h, int member, const char* what);
  // The repository of GitSource "repo" (its work tree is the remote): its files, and per
  // commit what it holds ("g0" -> the spec), or nothing for a commit with an invalid file.
  std::string repo_dir_;
  std::map<std::string, std::string> repo_files_;  // path -> text
  std::map<std::string, std::map<std::string, v1::KernelInstanceSpec>> commits_;
  std::set<std::string> bad_commits_;
  std::vector<std::string> history_;  // the branch's commits, oldest first
  std::map<std::string, int> commit_index_;  // sha -> its number, for the traces
  std::string applied_seen_;                  // the source's applied commit, as last noted
  std::string head_;
  int64_t controller_down_until_ = -1;
  int controller_sends_left_ = -1;  // >= 0: the controller dies after this many more calls
  NetFaults net_;
  std::deque<Delayed> delayed_;
  std::string good_image_, other_image_, bad_image_;

  int64_t step_ = 0;
  uint64_t hash_ = 1469598103934665603ull;
  std::deque<std::string> tail_;
  SimResult result_;

  // Invariant state.
  absl::Status violation_;
  std::map<std::string, int> took_effect_;  // action id -> times it changed a kernel
  // Stop licenses: object ("KernelInstance/x", "InstanceSet/s", "Host/h") or kernel
  // ("h/k") -> the step it was granted.
  std::map<std::string, int64_t> licenses_;
  std::set<std::string> rolled_back_;
  std::map<std::string, std::string> rollout_seen_;  // "Kind/name" -> "revision phase" last traced  // "set@revision" whose rollout failed (licensed once)
  std::map<std::string, int64_t> born_;  // "h/k" -> the step it was first seen (this run)
  std::set<std::string> established_;    // KernelInstances seen running since (re)created
  std::set<std::string> removed_resize_pending_;  // removed out of band while a resize waited: (b') starts over
  std::map<std::string, v1::KernelState> before_;  // "h/k" -> state before the batch running now
  // (p) per member (0, 1) and host: the mark of the last batch the host answered it and
  // when, and the newest mark its watch stream brought it (a snapshot's, as it is).
  struct Marks {
    int64_t answered = 0;
    absl::Time answered_at;
    int64_t streamed = 0;
  };
  std::map<std::pair<int, int>, Marks> marks_;
  std::set<std::string> failing_;        // "h/k" whose last action failed
  int64_t last_non_failing_send_ = 0;    // the step of the last call with an action that is not a retry
  int64_t last_effect_ = 0;               // the step of the last action that changed a kernel
  std::string last_sent_;                 // its action
};

// ------------------------------------------------------------------------ the network

class SimStream final : public reconciler::WatchStream {
 public:
  SimStream(World& w, int h, int member) : w_(w), h_(h), member_(member), incarnation_(w.IncarnationOf(h)) {}
  Result Next(v1::HostState* out, bool, absl::Status* ended) override {
    // A restarted agent ends the streams of the run before, as a closed connection does
    // (compared by run, not by address: a new Agent may be allocated where the old one was).
    agents::Agent* now = w_.AgentOf(h_);
    if (now == nullptr || w_.IncarnationOf(h_) != incarnation_ || w_.StreamBreaks()) {
      *ended = absl::UnavailableError("stream broken");
      return Result::kEnded;
    }
    if (w_.StreamStalls()) return Result::kPending;  // delayed, in order
    if (!started_) {
      started_ = true;
      *out = now->Snapshot();
      version_ = out->resource_version();
      w_.Streamed(h_, member_, *out);
      return Result::kMessage;
    }
    if (now->WaitForChange(version_, absl::ZeroDuration(), out)) {
      version_ = out->resource_version();
      w_.Streamed(h_, member_, *out);
      return Result::kMessage;
    }
    return Result::kPending;
  }
  void Cancel() override {}

 private:
  World& w_;
  int h_;
  int member_;
  int incarnation_;
  bool started_ = false;
  int64_t version_ = 0;
};

class SimAgentClient final : public reconciler::AgentClient {
 public:
  SimAgentClient(World& w, int h, int member) : w_(w), h_(h), member_(member) {}
  absl::StatusOr<v1::InventoryResponse> Inventory(absl::Duration) override { return w_.Inventory(h_); }
  std::unique_ptr<reconciler::WatchStream> Watch(const v1::WatchRequest&) override {
    return std::make_unique<SimStream>(w_, h_, member_);
  }
  absl::StatusOr<v1::ExecuteResponse> Execute(const v1::ActionBatch& batch, absl::Duration) override {
    return w_.Execute(h_, batch, member_);
  }
  absl::Status SetPolicy(const v1::SetPolicyRequest& request, absl::Duration) override {
    return w_.SetPolicy(h_, request, member_);
  }

 private:
  World& w_;
  int h_;
  int member_;  // 0: the controller, 1: the peer (sharded)
};

absl::StatusOr<v1::InventoryResponse> World::Inventory(int h) {
  if (controller_sends_left_ == 0) return absl::UnavailableError("the controller died");
  if (rng_.P(net_.drop)) return absl::UnavailableError("dropped");
  if (hosts_[h]->agent == nullptr) return absl::UnavailableError("connection refused");
  return hosts_[h]->agent->Inventory();
}

void World::CheckSender(int h, int member, const char* what) {
  if (!violation_.ok()) return;
  if (o_.shards == 0) {
    if (election_ == nullptr || !election_->IsLeader()) {
      violation_ = Fail(absl::StrCat("(l): ", what, " to ", hosts_[h]->name, " from a controller that is not the leader"));
    }
    return;
  }
  const reconciler::ShardMap* map = member == 0 ? shard_map_.get() : (peer_ != nullptr ? peer_->shards.get() : nullptr);
  if (map == nullptr || !map->Owns(hosts_[h]->name)) {
    violation_ = Fail(absl::StrCat("(m): ", what, " to ", hosts_[h]->name, " from ", member == 0 ? "the controller" : "the peer",
                                   ", which does not own it"));
  }
}

void World::Streamed(int h, int member, const v1::HostState& state) {
  Marks& m = marks_[{member, h}];
  if (state.snapshot() || state.batch_mark() > m.streamed) m.streamed = state.batch_mark();
}

absl::StatusOr<v1::ExecuteResponse> World::Execute(int h, const v1::ActionBatch& batch, int member) {
  CheckSender(h, member, "a batch");
  if (auto m = marks_.find({member, h}); m != marks_.end() && batch.actions_size() > 0 && violation_.ok() &&
                                          m->second.streamed < m->second.answered &&
                                          clock_.Now() - m->second.answered_at < absl::Seconds(5)) {
    violation_ = Fail(absl::StrCat("(p): ", member == 0 ? "the controller" : "the peer", " sent ", hosts_[h]->name,
                                   " batch ", batch.fence().sequence(), " (first action ", batch.actions(0).id(),
                                   ") before its watch stream brought the last batch answered (mark ",
                                   m->second.answered, ", streamed ", m->second.streamed, ")"));
  }
  if (member == 0 && controller_sends_left_ == 0) return absl::UnavailableError("the controller died");
  if (member == 0 && controller_sends_left_ > 0) --controller_sends_left_;
  for (const v1::Action& a : batch.actions()) {
    if (!failing_.count(absl::StrCat(hosts_[h]->name, "/", a.instance()))) {
      last_non_failing_send_ = step_;
      last_sent_ = a.id();
    }
  }
  if (rng_.P(net_.drop)) {
    Trace(absl::StrCat("net: batch ", batch.fence().sequence(), " to ", hosts_[h]->name, " dropped"));
    return absl::UnavailableError("dropped");
  }
  if (rng_.P(net_.delay)) {
    int64_t at = step_ + rng_.I(1, 30);
    delayed_.push_back({at, h, false, batch, {}});
    Trace(absl::StrCat("net: batch ", batch.fence().sequence(), " to ", hosts_[h]->name, " delayed to step ", at));
    return absl::DeadlineExceededError("delayed");
  }
  auto r = Deliver(h, batch);
  if (rng_.P(net_.duplicate)) {
    int64_t at = step_ + rng_.I(1, 30);
    delayed_.push_back({at, h, false, batch, {}});
    Trace(absl::StrCat("net: batch ", batch.fence().sequence(), " to ", hosts_[h]->name, " duplicated at step ", at));
  }
  if (rng_.P(net_.lose_response)) {
    Trace(absl::StrCat("net: response to batch ", batch.fence().sequence(), " lost"));
    return absl::DeadlineExceededError("response lost");
  }
  if (r.ok() && r->batch_mark() > 0) {
    Marks& m = marks_[{member, h}];
    if (r->batch_mark() > m.answered) {
      m.answered = r->batch_mark();
      m.answered_at = clock_.Now();
    }
  }
  return r;
}

absl::Status World::SetPolicy(int h, const v1::SetPolicyRequest& request, int member) {
  CheckSender(h, member, "policies");
  if (member == 0 && controller_sends_left_ == 0) return absl::UnavailableError("the controller died");
  if (rng_.P(net_.drop)) return absl::UnavailableError("dropped");
  if (rng_.P(net_.delay)) {
    delayed_.push_back({step_ + rng_.I(1, 30), h, true, {}, request});
    return absl::DeadlineExceededError("delayed");
  }
  if (hosts_[h]->agent == nullptr) return absl::UnavailableError("connection refused");
  return hosts_[h]->agent->SetPolicy(request);
}

absl::StatusOr<v1::ExecuteResponse> World::Deliver(int h, const v1::ActionBatch& batch) {
  SimHost& host = *hosts_[h];
  if (host.agent == nullptr) return absl::UnavailableError("connection refused");
  // As the agent's service does; the controller's own batches must always pass.
  if (absl::Status c = agents::CheckBatch(batch); !c.ok()) {
    if (violation_.ok()) violation_ = Fail(absl::StrCat("(h): the controller sent a batch the agent refuses: ", c.message()));
    return c;
  }
  if (host.crash_next_batch && batch.actions_size() > 0) {
    host.crash_next_batch = false;
    host.ck->ArmCrash(rng_.I(1, 3));
    Trace(absl::StrCat("fault: agent ", host.name, " will die inside batch ", batch.fence().sequence()));
  }
  // What runs before the batch: a halt of a running kernel must be licensed.
  before_.clear();
  for (const v1::Action& a : batch.actions()) {
    if (!a.has_halt()) continue;
    auto st = host.truth->StateOf(a.instance());
    if (st.ok()) before_[absl::StrCat(host.name, "/", a.instance())] = *st;
  }
  host.effects_seen = Effects(host.emu->counters());
  if (o_.verbose) {  // not part of the trace (its tail is for the invariants' context)
    std::vector<std::string> ids;
    for (const v1::Action& a : batch.actions()) ids.push_back(a.id());
    std::cerr << "    batch " << batch.fence().sequence() << " to " << host.name << ": " << absl::StrJoin(ids, " ") << "\n";
  }
  auto r = host.agent->Execute(batch);
  host.guests->Join();
  if (host.ck->dead()) {
    KillAgent(h, "died inside a batch");
    return absl::UnavailableError("connection reset");
  }
  if (r.ok()) {
    for (int i = 0; i < r->results_size() && i < batch.actions_size(); ++i) {
      const std::string key = absl::StrCat(host.name, "/", batch.actions(i).instance());
      if (r->results(i).code() != 0) {
        if (o_.verbose) std::cerr << "      " << batch.actions(i).id() << ": " << r->results(i).message() << "\n";
        failing_.insert(key);
      } else {
        failing_.erase(key);
      }
    }
  }
  return r;
}

// ------------------------------------------------------------------------ the world

void World::Trace(const std::string& line) {
  // The scratch directory differs between runs of one seed: not part of the trace.
  // Nor are commit ids (they depend on it, through the kernel paths in the files).
  std::string l = absl::StrCat("[", step_, "] ", Scrub(absl::StrReplaceAll(line, {{o_.dir, "$DIR"}})));
  for (unsigned char c : l) hash_ = (hash_ ^ c) * 1099511628211ull;
  hash_ = (hash_ ^ '\n') * 1099511628211ull;
  if (o_.verbose) std::cerr << l << "\n";
  tail_.push_back(std::move(l));
  if (tail_.size() > 60) tail_.pop_front();
}

void World::Setup() {
  fs::create_directories(o_.dir);
  good_image_ = o_.dir + "/vmlinux-a";
  other_image_ = o_.dir + "/vmlinux-b";
  bad_image_ = o_.dir + "/missing-vmlinux";
  for (const std::string& p : {good_image_, other_image_}) {
    std::ofstream(p, std::ios::binary) << std::string("\x7f" "ELF", 4) << std::string(4096, p.back());
  }
  auto topology = std::make_shared<const planner::Topology>(
      *planner::NewSyntheticTopologySource(kTopology, planner::TopologyOptions{})->Load());
  for (int i = 0; i < o_.hosts; ++i) {
    auto host = std::make_unique<SimHost>();
    host->name = absl::StrCat("h", i);
    host->dir = absl::StrCat(o_.dir, "/", host->name);
    fs::remove_all(host->dir);
    fs::create_directories(host->dir);
    host->topology = topology;
    kernel::EmulatorOptions eo = kernel::MachineFromTopology(*topology);
    eo.clock = &clock_;
    eo.boot_time = absl::Milliseconds(100);
    eo.halt_time = absl::Milliseconds(50);
    host->emu = std::make_unique<kernel::EmulatedKernel>(eo);
    kernel::HostKernelOptions ho;
    ho.host = host->name;
    ho.state_dir = host->dir + "/provenance";
    ho.clock = &clock_;
    ho.cache_records = false;  // the agent's HostKernel writes the records
    host->truth = std::make_unique<kernel::HostKernel>(*host->emu, *host->emu, ho);
    hosts_.push_back(std::move(host));
  }
  for (size_t i = 0; i < hosts_.size(); ++i) StartAgent(static_cast<int>(i));
  store_ = *reconciler::OpenSqliteStore(o_.dir + "/store.db", clock_);
  StartController();
  if (o_.shards > 0) StartPeer();
  for (size_t i = 0; i < hosts_.size(); ++i) Apply(Host(static_cast<int>(i), false)).IgnoreError();
  // GitOps: a repository (its work tree is the remote) with an empty first commit, and
  // GitSource "repo" on its folder fleet/, fetched every 2 s (40 steps), pruning.
  repo_dir_ = o_.dir + "/repo";
  fs::remove_all(repo_dir_);
  fs::remove_all(o_.dir + "/git-cache");
  fs::create_directories(repo_dir_);
  testing::MustShell("git init -q -b main " + testing::Quote(repo_dir_));
  Commit("an empty fleet");
  manifests::LoadResult source;
  manifests::LoadText("source.yaml",
                      absl::StrCat("apiVersion: mkfleet.io/v1\nkind: GitSource\nmetadata: {name: repo}\nspec:\n",
                                   "  url: file://", repo_dir_, "\n  path: fleet\n  interval: 2s\n  prune: true\n"),
                      {}, &source);
  if (source.ok()) Apply(source.objects[0].object).IgnoreError();
}

// Commits the work tree (repo_files_) with dates of the simulated clock, so that the same
// seed makes the same commits (and ids). Records what the commit holds.
std::string World::Commit(const std::string& message) {
  fs::remove_all(repo_dir_ + "/fleet");
  fs::create_directories(repo_dir_ + "/fleet");
  std::ofstream(repo_dir_ + "/fleet/README") << "the fleet\n";  // the folder exists in every commit
  std::map<std::string, v1::KernelInstanceSpec> holds;
  bool bad = false;
  for (const auto& [path, text] : repo_files_) {
    std::ofstream(repo_dir_ + "/" + path) << text;
    manifests::LoadResult one;
    manifests::LoadText(path, text, {}, &one);
    if (!one.ok() || one.objects.size() != 1) {
      bad = true;
      continue;
    }
    holds[one.objects[0].object.kernel_instance().metadata().name()] = one.objects[0].object.kernel_instance().spec();
  }
  const std::string date = absl::StrCat("@", absl::ToUnixSeconds(clock_.Now()), " +0000");
  const std::string git = absl::StrCat("GIT_CONFIG_NOSYSTEM=1 HOME=", testing::Quote(o_.dir), " GIT_AUTHOR_DATE='", date,
                                       "' GIT_COMMITTER_DATE='", date, "' git -C ", testing::Quote(repo_dir_),
                                       " -c user.name=Sim -c user.email=sim@example.com -c commit.gpgsign=false ");
  testing::MustShell(git + "add -A && " + git + "commit -q --allow-empty -m " + testing::Quote(message));
  std::string sha(absl::StripAsciiWhitespace(testing::MustShell("git -C " + testing::Quote(repo_dir_) + " rev-parse HEAD")));
  if (bad) {
    bad_commits_.insert(sha);
  } else {
    commits_[sha] = std::move(holds);
  }
  history_.push_back(sha);
  commit_index_.emplace(sha, static_cast<int>(commit_index_.size()));
  head_ = sha;
  return sha;
}

std::string World::Scrub(std::string text) const {
  for (const auto& [sha, index] : commit_index_) {
    text = absl::StrReplaceAll(text, {{sha, absl::StrCat("c", index)}, {sha.substr(0, 7), absl::StrCat("c", index)}});
  }
  return text;
}

void World::StartAgent(int h) {
  SimHost& host = *hosts_[h];
  host.ck = std::make_unique<CrashingKernel>(*host.emu);
  kernel::HostKernelOptions ho;
  ho.host = host.name;
  ho.state_dir = host.dir + "/provenance";
  ho.clock = &clock_;
  ho.images.dirs = {o_.dir};  // the workload's kernel images
  // As mkagent runs it on an emulator: observations at rest come from the last read.
  host.emu->TrackChanges(ho);
  host.hk = std::make_unique<kernel::HostKernel>(*host.ck, *host.ck, ho);
  agents::ActionJournal::Options jo;
  jo.sync = false;
  jo.max_entries = 2000;
  host.journal = *agents::ActionJournal::Open(host.dir + "/journal", jo);
  host.probe = agents::NewEmulatorProbe(*host.emu);
  agents::AgentOptions ao;
  ao.host = host.name;
  ao.state_dir = host.dir;
  host.agent = std::make_unique<agents::Agent>(ao, *host.hk, host.topology, *host.journal, *host.probe, clock_);
  // Live updates run in this thread (inline), against in-process guests; a kernel that keeps
  // failing (the agent dying inside a batch) leaves them to the next start.
  if (host.guests == nullptr) host.guests = std::make_unique<SimGuests>(*host.emu);
  agents::MorphOptions mo;
  mo.dir = host.dir + "/morph";
  mo.inline_runs = true;
  mo.retries = 3;
  mo.heartbeat_wait = absl::Seconds(2);  // simulated time: boots take up to a few hundred ms
  SimGuests* guests = host.guests.get();
  absl::Status morph = host.agent->EnableMorph([guests](uint32_t id) { return guests->Dial(id); }, mo);
  host.guests->Join();
  if (!morph.ok() && violation_.ok()) violation_ = Fail(absl::StrCat("the morph journal of ", host.name, ": ", morph.message()));
  ++host.incarnation;
  host.agent->executor().SetObserver(
      [this, h](const v1::Action& a, const v1::ActionResult& r) { OnAction(h, a, r); });
  // A host out of reach for longer than the controller's grace may have had its set members
  // replaced elsewhere: one too many then goes when it is back.
  if (host.down_until >= 0) LicenseSets(absl::StrCat("agent ", host.name, " back"));
  host.down_until = -1;
  Trace(absl::StrCat("agent ", host.name, " up"));
}

void World::KillAgent(int h, const std::string& why) {
  SimHost& host = *hosts_[h];
  host.agent.reset();
  host.journal.reset();
  host.hk.reset();
  host.probe.reset();
  host.down_until = step_ + rng_.I(5, 40);
  Trace(absl::StrCat("fault: agent ", host.name, " killed (", why, "), back at step ", host.down_until));
  ++result_.faults;
}

reconciler::ReconcilerOptions World::LoopOptions(int member) {
  reconciler::ReconcilerOptions ro;
  ro.keep_last_plan = member == 0;  // the invariants read the last pass's plan
  ro.resync = absl::Seconds(1);
  ro.unreachable_after = absl::Seconds(2);
  ro.parallel_sends = 1;
  ro.history_window = 300;
  ro.early_send = o_.early_send;
  ro.check_early_sends = true;  // (n)
  // Time runs compressed here (resync 1 s): so do the retries' longest waits.
  ro.host_backoff_max = absl::Seconds(2);
  ro.instance_backoff_max = absl::Seconds(2);
  ro.log = o_.verbose ? &std::cerr : nullptr;
  ro.client_factory = [this, member](const std::string& host,
                                     const std::string&) -> std::unique_ptr<reconciler::AgentClient> {
    return std::make_unique<SimAgentClient>(*this, HostIndex(host), member);
  };
  return ro;
}

// A member's shard map, fed by its election's member list (a member that joined is handed
// its shards after a lease: the one that had them has seen the list by then, or stopped).
std::unique_ptr<reconciler::ShardMap> World::NewShardMap(const std::string& name,
                                                        std::function<const reconciler::Election*()> election) {
  return std::make_unique<reconciler::ShardMap>(name, o_.shards, clock_, kLeaseTtl, [election] {
    const reconciler::Election* e = election();
    return e != nullptr && e->MemberValid();
  });
}

void World::ForgetMarks(int member) {
  for (auto m = marks_.begin(); m != marks_.end();) m = m->first.first == member ? marks_.erase(m) : std::next(m);
}

void World::StartController() {
  ForgetMarks(0);  // a new process: its connections know no batch yet
  objects_ = std::make_unique<reconciler::Objects>(*store_);
  events_ = *reconciler::EventLog::Open(*store_, clock_, 500);
  reconciler::ReconcilerOptions ro = LoopOptions(0);
  election_view_ = std::make_unique<reconciler::CutStore>(*store_);
  reconciler::ElectionOptions eo;
  eo.name = absl::StrCat("controller-", ++incarnation_);
  eo.ttl = kLeaseTtl;
  eo.log = nullptr;
  if (o_.shards > 0) {
    shard_map_ = NewShardMap(eo.name, [this] { return election_.get(); });
    eo.on_members = [this](const std::vector<v1::ControllerMember>& members) {
      shard_map_->SetMembersFrom(members);
      if (reconciler_ != nullptr) reconciler_->ShardsChanged();
    };
    // Elected, it dials every host (the planner needs them all).
    eo.on_elected = [this] {
      if (reconciler_ != nullptr) reconciler_->ShardsChanged();
    };
    ro.shards = shard_map_.get();
  }
  election_ = std::make_unique<reconciler::Election>(*election_view_, clock_, eo);
  ro.may_act = [this] { return election_ != nullptr && election_->IsLeader(); };
  reconciler_ = std::make_unique<reconciler::Reconciler>(*store_, *objects_, clock_, ro, events_.get());
  gitops::SourceControllerOptions so;
  so.cache_dir = o_.dir + "/git-cache";
  sources_ = std::make_unique<gitops::SourceController>(*store_, *objects_, events_.get(), nullptr, clock_, so);
  controller_down_until_ = -1;
  controller_sends_left_ = -1;
  Trace("controller up");
  for (const auto& host : hosts_) {
    if (host->agent == nullptr) LicenseSets("the controller started while an agent was down");
  }
}

void World::StartPeer() {
  ForgetMarks(1);
  peer_ = std::make_unique<Peer>();
  Peer& p = *peer_;
  const std::string name = absl::StrCat("peer-", ++peer_incarnation_);
  p.view = std::make_unique<reconciler::CutStore>(*store_);
  p.objects = std::make_unique<reconciler::Objects>(*store_);
  p.events = *reconciler::EventLog::Open(*store_, clock_, 500);
  p.shards = NewShardMap(name, [this] { return peer_ != nullptr ? peer_->election.get() : nullptr; });
  reconciler::ElectionOptions eo;
  eo.name = name;
  eo.ttl = kLeaseTtl;
  eo.log = nullptr;
  eo.campaign = false;
  eo.on_members = [this](const std::vector<v1::ControllerMember>& members) {
    peer_->shards->SetMembersFrom(members);
    if (peer_->loop != nullptr) peer_->loop->ShardsChanged();
  };
  p.election = std::make_unique<reconciler::Election>(*p.view, clock_, eo);
  reconciler::ReconcilerOptions ro = LoopOptions(1);
  ro.may_act = [] { return false; };  // it never plans
  ro.shards = p.shards.get();
  p.loop = std::make_unique<reconciler::Reconciler>(*store_, *p.objects, clock_, ro, p.events.get());
  peer_down_until_ = -1;
  Trace(absl::StrCat("peer up (", name, ")"));
}

void World::KillPeer(const std::string& why) {
  if (peer_ == nullptr) return;
  result_.actions += peer_->loop->actions_sent();
  peer_->loop.reset();
  peer_->election->Crash();  // its lease runs out in the store
  peer_.reset();
  peer_cut_until_ = -1;
  peer_down_until_ = step_ + rng_.I(20, 120);
  Trace(absl::StrCat("fault: peer killed (", why, "), back at step ", peer_down_until_));
}

void World::StepPeer() {
  if (o_.shards == 0) return;
  if (peer_ == nullptr && peer_down_until_ >= 0 && step_ >= peer_down_until_) StartPeer();
  if (peer_ == nullptr) return;
  if (peer_cut_until_ >= 0 && step_ >= peer_cut_until_) {
    peer_->view->cut = false;
    peer_cut_until_ = -1;
    Trace("the peer reaches the store again");
  }
  peer_->election->Step();
  peer_->loop->Step();
}

void World::PeerFault() {
  if (peer_ == nullptr) return;
  ++result_.faults;
  if (election_rng_.P(0.5)) {
    KillPeer("SIGKILL");
  } else if (peer_cut_until_ < 0) {
    peer_->view->cut = true;
    peer_cut_until_ = step_ + election_rng_.I(10, 120);
    Trace(absl::StrCat("fault: the peer cut off from the store until step ", peer_cut_until_));
  }
}

void World::KillController(const std::string& why) {
  if (reconciler_ != nullptr) {
    result_.actions += reconciler_->actions_sent();
    result_.early_sends += reconciler_->early_sends();
    result_.local_passes += reconciler_->local_passes();
  }
  sources_.reset();
  reconciler_.reset();
  events_.reset();
  objects_.reset();
  if (election_ != nullptr) election_->Crash();  // its lease runs out in the store
  election_.reset();
  election_view_.reset();
  shard_map_.reset();
  cut_until_ = -1;
  led_ = false;
  controller_down_until_ = step_ + rng_.I(3, 30);
  controller_sends_left_ = -1;
  Trace(absl::StrCat("fault: controller killed (", why, "), back at step ", controller_down_until_));
  ++result_.faults;
}

std::string World::Owner(int h, const std::string& kernel) {
  auto obs = hosts_[h]->truth->Observe();
  if (!obs.ok()) return "";
  for (const auto& in : obs->instances) {
    if (in.name == kernel) return std::string(LicenseeOf(in.owner));
  }
  return "";
}

void World::LicenseSets(const std::string& why) {
  for (const v1::Object& o : List("InstanceSet")) License("InstanceSet/" + o.instance_set().metadata().name(), why);
}

void World::License(const std::string& who, const std::string& why) {
  licenses_[who] = step_;
  Trace(absl::StrCat("license to stop ", who, ": ", why));
}

void World::OnAction(int h, const v1::Action& a, const v1::ActionResult& r) {
  SimHost& host = *hosts_[h];
  int64_t now = Effects(host.emu->counters());
  int64_t delta = now - host.effects_seen;
  host.effects_seen = now;
  if (delta > 0) last_effect_ = step_;
  // A create the kernel refused on a CPU made busy behind mkfleet's back (a fault the
  // planner cannot see): what it was to bring back (a re-create's old kernel is gone) is down
  // for the fault's sake, and may not fit again once others have grown into the space, so
  // (b') starts over for it (seed 1837). Not rolled back to the old placement: see README.
  if (r.code() != 0 && a.has_create() && !host.busy.empty() && absl::StrContains(r.message(), "is busy")) {
    established_.erase(a.instance());
  }
  if (r.code() != 0 || r.replayed() || delta <= 0) return;
  // (d) no action id takes effect twice.
  if (++took_effect_[a.id()] > 1 && violation_.ok()) {
    violation_ = Fail(absl::StrCat("(d): action ", a.id(), " took effect twice"));
  }
  // (b) a running kernel is stopped only when a change asked for it.
  const std::string key = absl::StrCat(host.name, "/", a.instance());
  auto before = before_.find(key);
  if (a.has_halt() && before != before_.end() && before->second == v1::KERNEL_STATE_ACTIVE) {
    std::string owner = Owner(h, a.instance());
    int64_t born = born_.count(key) ? born_[key] : 0;
    bool licensed = false;
    for (const std::string& who : {owner, key, absl::StrCat("Host/", host.name)}) {
      auto l = licenses_.find(who);
      licensed |= !who.empty() && l != licenses_.end() && l->second + 40 >= born;
    }
    // A set's rollback decided in this very pass asks for it too (its licence is only given
    // after the step; seed 11446: a member created at the new revision moments before).
    if (!licensed && reconciler_ != nullptr && absl::StartsWith(owner, "InstanceSet/")) {
      auto r = reconciler_->rollouts().Status("InstanceSet", owner.substr(owner.find('/') + 1));
      licensed = r.ok() && (r->status().phase() == "RollingBack" || r->status().phase() == "RolledBack");
    }
    // So does a RolloutPolicy's, for the KernelInstances it paces (seed 19 on 5 hosts: a
    // member live-updated by a new rollout, rolled back in the pass that replaced it).
    if (!licensed && reconciler_ != nullptr && absl::StartsWith(owner, "KernelInstance/") && objects_ != nullptr) {
      auto ki = objects_->Get("KernelInstance", owner.substr(owner.find('/') + 1));
      const std::string paced_by = ki.ok() && ki->has_value() ? (*ki)->kernel_instance().status().rollout_owner() : "";
      if (absl::StartsWith(paced_by, "RolloutPolicy/")) {
        auto r = reconciler_->rollouts().Status("RolloutPolicy", paced_by.substr(paced_by.find('/') + 1));
        licensed = r.ok() && (r->status().phase() == "RollingBack" || r->status().phase() == "RolledBack");
      }
    }
    if (!licensed && violation_.ok()) {
      violation_ = Fail(absl::StrCat("(b): ", a.id(), " stopped the running kernel ", key, " (owner ",
                                     owner.empty() ? "none" : owner, ") with no change asking for it"));
    }
  }
}

// ------------------------------------------------------------------------ objects

v1::Object World::Host(int h, bool cordoned, bool drain) {
  v1::Object o;
  v1::Host* host = o.mutable_host();
  host->set_api_version("mkfleet.io/v1");
  host->set_kind("Host");
  host->mutable_metadata()->set_name(hosts_[h]->name);
  (*host->mutable_metadata()->mutable_labels())["zone"] = h % 2 ? "z1" : "z0";
  host->mutable_spec()->set_agent(absl::StrCat("sim-h", h, ":7101"));
  host->mutable_spec()->set_cordoned(cordoned);
  host->mutable_spec()->set_drain(drain);
  host->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_cores(1);
  host->mutable_spec()->mutable_pool()->mutable_host_reserved()->set_memory(512ull << 20);
  return o;
}

v1::Object World::Instance(const std::string& name, int host, uint32_t cpus, uint64_t mib) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->set_api_version("mkfleet.io/v1");
  ki->set_kind("KernelInstance");
  ki->mutable_metadata()->set_name(name);
  v1::KernelInstanceSpec* s = ki->mutable_spec();
  s->set_host(hosts_[host]->name);
  s->mutable_kernel()->set_image(good_image_);
  s->mutable_kernel()->set_cmdline("console=mktty0");
  // Half are paced by the RolloutPolicy p0 when it exists (PolicyOp).
  if (rng_.P(0.5)) (*ki->mutable_metadata()->mutable_labels())["tier"] = "web";
  s->mutable_resources()->set_cpus(cpus);
  s->mutable_resources()->set_memory(mib << 20);
  if (rng_.P(0.15)) s->mutable_resources()->set_smt(v1::SMT_ANY);
  if (rng_.P(0.2)) {
    s->mutable_failover()->set_policy(v1::FAILOVER_STANDBY);
    s->mutable_failover()->mutable_standby()->set_cpus(2);
    s->mutable_failover()->mutable_standby()->set_memory(256ull << 20);
  } else if (rng_.P(0.2)) {
    s->mutable_failover()->set_policy(v1::FAILOVER_NONE);
  }
  return o;
}

v1::Object World::Set(const std::string& name) {
  v1::Object o;
  v1::InstanceSet* set = o.mutable_instance_set();
  set->set_api_version("mkfleet.io/v1");
  set->set_kind("InstanceSet");
  set->mutable_metadata()->set_name(name);
  if (rng_.P(0.3)) {
    set->mutable_spec()->set_per_host(1);
  } else {
    set->mutable_spec()->set_replicas(rng_.I(1, 6));
  }
  if (rng_.P(0.3)) (*set->mutable_spec()->mutable_host_selector()->mutable_match_labels())["zone"] = "z0";
  v1::KernelInstanceSpec* t = set->mutable_spec()->mutable_template_()->mutable_spec();
  t->mutable_kernel()->set_image(good_image_);
  t->mutable_resources()->set_cpus(2);
  t->mutable_resources()->set_memory(256ull << 20);
  if (rng_.P(0.6)) {
    // A rollout policy: kernel changes paced by the rollout engine (reconciler/rollout.h).
    v1::Rollout* r = set->mutable_spec()->mutable_rollout();
    r->mutable_max_unavailable()->set_count(static_cast<uint32_t>(rng_.I(1, 2)));
    if (rng_.P(0.3)) r->mutable_canary()->set_count(1);
    if (rng_.P(0.5)) r->mutable_waves()->set_by("zone");
    if (rng_.P(0.3)) r->set_min_ready(200);
    r->set_health_timeout(3000);
  }
  return o;
}

absl::Status World::Apply(const v1::Object& o) {
  if (objects_ == nullptr) return absl::UnavailableError("controller down");
  // The controller's Apply path: mkapply validate's checks first (ControllerService).
  auto checked = manifests::RevalidateObjects({o});
  if (!checked.ok()) return checked.status();
  auto r = objects_->Apply(*checked, reconciler::ApplyOptions{"sim", false, false});
  return r.status();
}

void World::HostileApply() {
  v1::Object o = Instance(rng_.Pick(std::vector<std::string>{"k0", "k1", "k9"}), rng_.I(0, o_.hosts - 1), 2, 256);
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  std::string how;
  switch (rng_.I(0, 4)) {
    case 0:
      ki->mutable_spec()->mutable_resources()->set_cpus(0);
      ki->mutable_spec()->mutable_resources()->set_memory(0);
      how = "cpus 0, memory 0";
      break;
    case 1:
      ki->mutable_metadata()->set_name(rng_.P(0.5) ? "../../Evil" : std::string(300, 'n'));
      how = "a name that is no DNS label";
      break;
    case 2:
      ki->mutable_spec()->set_id(9999);
      how = "id 9999";
      break;
    case 3:
      ki->mutable_spec()->set_phase(static_cast<v1::Phase>(77));
      how = "an unknown phase";
      break;
    default:
      ki->mutable_spec()->mutable_kernel()->set_image("relative/vmlinux");
      how = "a relative kernel path";
      break;
  }
  auto before = store_->Revision();
  absl::Status st = Apply(o);
  auto after = store_->Revision();
  Trace(absl::StrCat("user: hostile apply (", how, "): ", st.ok() ? "ok" : "refused"));
  if ((st.ok() || !before.ok() || !after.ok() || *before != *after) && violation_.ok()) {
    violation_ = Fail(absl::StrCat("(h): a hostile apply (", how, ") was not refused, or changed the store"));
  }
}

void World::HostileBatch(int h) {
  v1::ActionBatch b;
  v1::Action* a = b.add_actions();
  a->set_id("intruder-1");
  a->set_instance("k0");
  std::string how;
  switch (rng_.I(0, 3)) {
    case 0:
      a->set_instance("../../../../pwn");
      a->mutable_create()->mutable_placement()->add_cpus(2);
      how = "an instance named ../../../../pwn";
      break;
    case 1:
      a->set_id(std::string(4096, 'i'));
      a->mutable_remove();
      how = "a 4 KiB id";
      break;
    case 2:
      a->mutable_load()->mutable_kernel()->set_image("../../usr/bin/ls");
      how = "a relative image path";
      break;
    default:
      for (int i = 0; i < 1100; ++i) {
        v1::Action* x = b.add_actions();
        x->set_id(absl::StrCat("intruder-x", i));
        x->set_instance("k0");
        x->mutable_remove();
      }
      how = "a batch of 1101 actions";
      break;
  }
  // What the agent's service checks before anything runs (agents/request_checks).
  absl::Status st = agents::CheckBatch(b);
  Trace(absl::StrCat("fault: hostile batch to ", hosts_[h]->name, " (", how, "): ", st.ok() ? "accepted" : "refused"));
  if (st.ok() && violation_.ok()) violation_ = Fail(absl::StrCat("(h): the agent would run a hostile batch (", how, ")"));
}

std::vector<v1::Object> World::List(const std::string& kind) {
  if (objects_ == nullptr) return {};
  auto l = objects_->List(kind);
  return l.ok() ? *l : std::vector<v1::Object>{};
}

// ------------------------------------------------------------------------ the workload

void World::UserOp() {
  if (objects_ == nullptr) return;  // the API is down with the controller
  ++result_.user_ops;
  auto kis = List("KernelInstance");
  auto sets = List("InstanceSet");
  auto hosts = List("Host");
  const std::vector<std::string> ki_names = {"k0", "k1", "k2", "k3", "k4", "k5"};
  const std::vector<std::string> set_names = {"s0", "s1"};
  int op = rng_.I(0, 99);
  auto describe = [](const absl::Status& s) { return s.ok() ? std::string("ok") : std::string(s.message()); };
  if (op < 25) {
    // Apply (create, or re-create a deleted name) an instance.
    std::string name = rng_.Pick(ki_names);
    int h = rng_.I(0, o_.hosts - 1);
    uint32_t cpus = static_cast<uint32_t>(rng_.Pick(std::vector<int>{1, 2, 2, 4, 4, 6}));
    uint64_t mib = static_cast<uint64_t>(rng_.Pick(std::vector<int>{256, 512, 512, 1024, 2048}));
    v1::Object o = Instance(name, h, cpus, mib);
    bool exists = false;
    for (const auto& k : kis) exists |= k.kernel_instance().metadata().name() == name;
    if (exists) return;  // changes are the ops below
    if (rng_.P(0.1)) o.mutable_kernel_instance()->mutable_spec()->mutable_kernel()->set_image(bad_image_);
    Trace(absl::StrCat("user: create KernelInstance/", name, " on h", h, " ", cpus, " CPUs ", mib, "Mi: ",
                       describe(Apply(o))));
    return;
  }
  if (op < 55 && !kis.empty()) {
    v1::Object o = rng_.Pick(kis);
    v1::KernelInstance* ki = o.mutable_kernel_instance();
    const std::string name = ki->metadata().name();
    // Whether it runs now: a change that finds it down (a re-create whose create failed, a
    // crash) has nothing to keep running, so (b') starts over for it.
    bool running_now = false;
    if (int h = HostIndex(ki->spec().host()); h >= 0) {
      auto state = hosts_[h]->truth->StateOf(ki->status().kernel().empty() ? name : ki->status().kernel());
      running_now = state.ok() && *state == v1::KERNEL_STATE_ACTIVE;
    }
    ki->clear_status();
    v1::KernelInstanceSpec* s = ki->mutable_spec();
    int what = rng_.I(0, 5);
    std::string change;
    if (what == 0) {
      s->mutable_kernel()->set_image(s->kernel().image() == good_image_ ? other_image_ : good_image_);
      // Half of the kernel changes are live updates: the new kernel boots beside the old one
      // and takes over (or it rolls back and the old one runs on).
      if (rng_.P(0.5)) {
        s->mutable_update()->set_strategy(v1::UPDATE_MORPH);
        change = "new kernel (Morph)";
      } else {
        s->mutable_update()->set_strategy(v1::UPDATE_REPLACE);
        change = "new kernel (Replace)";
      }
    } else if (what == 1) {
      s->mutable_kernel()->set_image(bad_image_);
      change = "a kernel image that does not exist";
    } else if (what == 2) {
      s->set_phase(rng_.Pick(std::vector<v1::Phase>{v1::PHASE_RUNNING, v1::PHASE_LOADED, v1::PHASE_READY}));
      change = absl::StrCat("phase ", v1::Phase_Name(s->phase()));
    } else if (what == 3) {
      uint32_t cpus = static_cast<uint32_t>(rng_.Pick(std::vector<int>{1, 2, 4, 6, 8, 20}));
      s->mutable_resources()->set_cpus(cpus);
      change = absl::StrCat("resize to ", cpus, " CPUs");
    } else if (what == 4) {
      uint64_t mib = static_cast<uint64_t>(rng_.Pick(std::vector<int>{256, 1024, 2048, 3072, 16384}));
      s->mutable_resources()->set_memory(mib << 20);
      change = absl::StrCat("resize to ", mib, "Mi");
    } else {
      s->mutable_kernel()->set_cmdline(absl::StrCat("console=mktty0 v", rng_.I(0, 9)));
      change = "new cmdline (Replace)";
    }
    absl::Status st = Apply(o);
    // A spec change may stop it (Replace, a phase, a re-create for a resize); a kernel that
    // cannot load never may: it is checked before the old one goes.
    if (st.ok() && what != 1) License(absl::StrCat("KernelInstance/", name), change);
    if (st.ok() && !running_now) established_.erase(name);
    Trace(absl::StrCat("user: change KernelInstance/", name, ": ", change, ": ", describe(st)));
    return;
  }
  if (op < 68 && !kis.empty()) {
    const std::string name = rng_.Pick(kis).kernel_instance().metadata().name();
    License(absl::StrCat("KernelInstance/", name), "delete");
    established_.erase(name);  // a new object of that name starts over
    absl::Status st = objects_->Delete("KernelInstance", name, absl::ToUnixMillis(clock_.Now())).status();
    Trace(absl::StrCat("user: delete KernelInstance/", name, ": ", describe(st)));
    return;
  }
  if (op < 85) {
    const std::string name = rng_.Pick(set_names);
    v1::Object o = Set(name);
    bool exists = false;
    for (const auto& s : sets) {
      if (s.instance_set().metadata().name() == name) {
        exists = true;
        o = s;
      }
    }
    o.mutable_instance_set()->clear_status();
    v1::InstanceSetSpec* spec = o.mutable_instance_set()->mutable_spec();
    std::string change = "create";
    if (exists) {
      int what = rng_.I(0, 5);
      if (what == 4 && reconciler_ != nullptr) {
        // mkapply rollout pause / resume.
        bool pause = rng_.P(0.5);
        auto r = reconciler_->rollouts().SetPaused("InstanceSet", name, pause);
        Trace(absl::StrCat("user: rollout ", pause ? "pause" : "resume", " InstanceSet/", name, ": ",
                           r.ok() ? r->message() : std::string(r.status().message())));
        return;
      }
      if (what == 5 && reconciler_ != nullptr) {
        // mkapply rollout undo: the older revision's template, applied as a new revision.
        uint32_t number = 0;
        auto t = reconciler_->rollouts().UndoTemplate(name, 0, &number);
        if (!t.ok()) {
          Trace(absl::StrCat("user: rollout undo InstanceSet/", name, ": ", t.status().message()));
          return;
        }
        *spec->mutable_template_() = *t;
        change = absl::StrCat("rollout undo to revision ", number);
        License(absl::StrCat("InstanceSet/", name), change);
        Trace(absl::StrCat("user: ", change, " InstanceSet/", name, ": ", describe(Apply(o))));
        return;
      }
      if (what == 0 && spec->has_replicas()) {
        spec->set_replicas(static_cast<uint32_t>(rng_.I(0, 8)));
        change = absl::StrCat("scale to ", spec->replicas());
      } else if (what == 1) {
        auto* k = spec->mutable_template_()->mutable_spec()->mutable_kernel();
        k->set_image(k->image() == good_image_ ? other_image_ : good_image_);
        change = "new template kernel";
      } else if (what == 2) {
        change = "delete";
        License(absl::StrCat("InstanceSet/", name), change);
        absl::Status st = objects_->Delete("InstanceSet", name).status();
        Trace(absl::StrCat("user: delete InstanceSet/", name, ": ", describe(st)));
        return;
      } else {
        spec->set_replicas(static_cast<uint32_t>(rng_.I(1, 8)));
        change = absl::StrCat("count ", spec->replicas());
      }
      License(absl::StrCat("InstanceSet/", name), change);
    }
    Trace(absl::StrCat("user: ", change, " InstanceSet/", name, ": ", describe(Apply(o))));
    return;
  }
  if (op < 88) {
    PolicyOp();
    return;
  }
  if (op < 90) {
    HostileApply();
    return;
  }
  if (op < 93) {
    GitOp();
    return;
  }
  if (op < 95) {
    // Cordon, drain or uncordon a host (or bring back a deleted one).
    int h = rng_.I(0, o_.hosts - 1);
    bool cordon = rng_.P(0.5);
    bool drain = cordon && rng_.P(0.4);
    absl::Status applied = Apply(Host(h, cordon, drain));
    Trace(absl::StrCat("user: ", drain ? "drain" : cordon ? "cordon" : "uncordon/apply", " Host/", hosts_[h]->name,
                       ": ", describe(applied)));
    // A drain asks for the host's replicas set members to stop (once replaced elsewhere).
    if (drain && applied.ok()) License(absl::StrCat("Host/", hosts_[h]->name), "drained");
    return;
  }
  // Delete a host (refused while KernelInstances name it).
  int h = rng_.I(0, o_.hosts - 1);
  absl::Status st = objects_->Delete("Host", hosts_[h]->name, absl::ToUnixMillis(clock_.Now())).status();
  if (st.ok()) {
    License(absl::StrCat("Host/", hosts_[h]->name), "host deleted");
    // What runs there for a KernelInstance whose spec names another host (a move that has
    // not happened yet: no room there) goes with the host, and may not fit where its spec
    // says: (b') starts over for it (sim seed 613, sharded).
    if (auto obs = hosts_[h]->truth->Observe(); obs.ok()) {
      for (const auto& in : obs->instances) {
        absl::string_view who = LicenseeOf(in.owner);
        if (absl::ConsumePrefix(&who, "KernelInstance/")) established_.erase(std::string(who));
      }
    }
  }
  Trace(absl::StrCat("user: delete Host/", hosts_[h]->name, ": ", describe(st)));
}

// GitOps: the user commits to the repository (an instance added, changed or removed, an
// invalid file and its fix, a force-push), suspends or resumes the source, syncs it, or
// tries to change what the source owns by hand (refused, invariant h).
void World::GitOp() {
  auto describe = [](const absl::Status& s) { return s.ok() ? std::string("ok") : std::string(s.message()); };
  int what = rng_.I(0, 9);
  const std::string name = rng_.Pick(std::vector<std::string>{"g0", "g1", "g2"});
  const std::string path = "fleet/" + name + ".yaml";
  if (what <= 5) {
    std::string message;
    if (what <= 3 || !repo_files_.count(path)) {
      int h = rng_.I(0, o_.hosts - 1);
      uint32_t cpus = static_cast<uint32_t>(rng_.Pick(std::vector<int>{1, 2, 2, 4}));
      uint64_t mib = static_cast<uint64_t>(rng_.Pick(std::vector<int>{256, 512, 1024}));
      v1::Object o = Instance(name, h, cpus, mib);
      repo_files_[path] = manifests::PrintYaml(o);
      message = absl::StrCat(name, " on h", h, " ", cpus, " CPUs ", mib, "Mi");
    } else if (what == 4) {
      repo_files_.erase(path);
      message = "remove " + name;
    }
    if (what == 5) {
      repo_files_["fleet/bad.yaml"] =
          "apiVersion: mkfleet.io/v1\nkind: KernelInstance\nmetadata: {name: bad}\nspec: {host: h0}\n";
      message = "an invalid manifest";
    } else if (repo_files_.erase("fleet/bad.yaml")) {
      absl::StrAppend(&message, " (and the invalid manifest fixed)");
    }
    std::string sha = Commit(message);
    Trace(absl::StrCat("user: git commit ", sha.substr(0, 7), " ", message, bad_commits_.count(sha) ? " (invalid)" : ""));
    return;
  }
  if (what == 6) {
    // A force-push: the branch's last commit is replaced (history rewritten).
    if (history_.size() < 2) return;
    history_.pop_back();
    testing::MustShell("git -C " + testing::Quote(repo_dir_) + " reset -q --hard " + history_.back());
    std::string sha = Commit("rewritten: " + name + " replaced");
    Trace(absl::StrCat("user: git force-push ", sha.substr(0, 7)));
    return;
  }
  if (what == 7) {
    bool suspend = rng_.P(0.5);
    absl::Status st = objects_->Update("GitSource", "repo", [&](v1::Object& o) {
      o.mutable_git_source()->mutable_spec()->set_suspend(suspend);
    });
    Trace(absl::StrCat("user: ", suspend ? "suspend" : "resume", " GitSource/repo: ", describe(st)));
    return;
  }
  if (what == 8 && sources_ != nullptr) {
    auto r = sources_->Sync("repo");
    Trace(absl::StrCat("user: sync GitSource/repo: ", r.ok() ? *r : std::string(r.status().message())));
    NoteApplied();
    return;
  }
  // By hand, without --force-conflicts: refused, nothing changes.
  bool owned = false;
  for (const v1::Object& o : List("KernelInstance")) {
    owned |= o.kernel_instance().metadata().name() == name && o.kernel_instance().metadata().source() == "git:repo";
  }
  if (!owned) return;
  auto before = store_->Revision();
  absl::Status st = rng_.P(0.5) ? Apply(Instance(name, 0, 1, 256))
                                : objects_->Delete("KernelInstance", name, absl::ToUnixMillis(clock_.Now())).status();
  auto after = store_->Revision();
  Trace(absl::StrCat("user: change KernelInstance/", name, " of git:repo by hand: ", describe(st)));
  if ((st.ok() || !before.ok() || !after.ok() || *before != *after) && violation_.ok()) {
    violation_ = Fail(absl::StrCat("(h): a change by hand of KernelInstance/", name, ", owned by git:repo, was not refused"));
  }
}

// The RolloutPolicy p0 (KernelInstances labelled tier=web): create or change its rollout,
// pause or resume it, undo its last change, or delete it.
void World::PolicyOp() {
  auto describe = [](const absl::Status& s) { return s.ok() ? std::string("ok") : std::string(s.message()); };
  auto existing = List("RolloutPolicy");
  int what = rng_.I(0, 9);
  if (!existing.empty() && what >= 7 && reconciler_ != nullptr) {
    if (what == 9) {
      // mkapply rollout undo: the instances of the older revision get their specs then.
      uint32_t number = 0;
      auto specs = reconciler_->rollouts().UndoSpecs("p0", 0, &number);
      if (!specs.ok()) {
        Trace(absl::StrCat("user: rollout undo RolloutPolicy/p0: ", specs.status().message()));
        return;
      }
      for (const v1::Object& o : List("KernelInstance")) {
        const v1::ObjectMeta& meta = o.kernel_instance().metadata();
        auto spec = specs->find(absl::StrCat(meta.name(), "@", meta.created_revision()));
        if (spec == specs->end()) continue;
        v1::Object next = o;
        next.mutable_kernel_instance()->clear_status();
        *next.mutable_kernel_instance()->mutable_spec() = spec->second;
        const std::string name = o.kernel_instance().metadata().name();
        absl::Status st = Apply(next);
        if (st.ok()) License("KernelInstance/" + name, absl::StrCat("rollout undo of RolloutPolicy/p0 to revision ", number));
        Trace(absl::StrCat("user: rollout undo RolloutPolicy/p0 to revision ", number, ": KernelInstance/", name, ": ",
                           describe(st)));
      }
      return;
    }
    bool pause = what == 7;
    auto r = reconciler_->rollouts().SetPaused("RolloutPolicy", "p0", pause);
    Trace(absl::StrCat("user: rollout ", pause ? "pause" : "resume", " RolloutPolicy/p0: ",
                       r.ok() ? r->message() : std::string(r.status().message())));
    return;
  }
  if (!existing.empty() && what == 6) {
    absl::Status st = objects_->Delete("RolloutPolicy", "p0").status();
    Trace(absl::StrCat("user: delete RolloutPolicy/p0: ", describe(st)));
    return;
  }
  v1::Object o;
  v1::RolloutPolicy* p = o.mutable_rollout_policy();
  p->set_api_version("mkfleet.io/v1");
  p->set_kind("RolloutPolicy");
  p->mutable_metadata()->set_name("p0");
  (*p->mutable_spec()->mutable_selector()->mutable_match_labels())["tier"] = "web";
  v1::Rollout* r = p->mutable_spec()->mutable_rollout();
  r->mutable_max_unavailable()->set_count(static_cast<uint32_t>(rng_.I(1, 2)));
  if (rng_.P(0.5)) r->mutable_canary()->set_count(1);
  if (rng_.P(0.5)) r->mutable_waves()->set_by("zone");
  if (rng_.P(0.3)) r->set_min_ready(200);
  r->set_health_timeout(3000);
  Trace(absl::StrCat("user: ", existing.empty() ? "create" : "change", " RolloutPolicy/p0: ", describe(Apply(o))));
}

void World::Fault() {
  ++result_.faults;
  int h = rng_.I(0, o_.hosts - 1);
  SimHost& host = *hosts_[h];
  int what = rng_.I(0, 99);
  auto running = [&]() {
    std::vector<std::string> out;
    auto obs = host.truth->Observe();
    if (!obs.ok()) return out;
    for (const auto& in : obs->instances) {
      if (in.state == v1::KERNEL_STATE_ACTIVE) out.push_back(in.name);
    }
    return out;
  };
  if (what < 20) {
    auto names = running();
    if (names.empty()) return;
    std::string k = rng_.Pick(names);
    host.emu->InjectPanic(k).IgnoreError();
    License(absl::StrCat(host.name, "/", k), "panic");
    Trace(absl::StrCat("fault: panic of ", host.name, "/", k));
  } else if (what < 30) {
    auto names = running();
    if (names.empty()) return;
    std::string k = rng_.Pick(names);
    host.emu->InjectHang(k).IgnoreError();
    License(absl::StrCat(host.name, "/", k), "hang");
    Trace(absl::StrCat("fault: hang of ", host.name, "/", k));
  } else if (what < 45) {
    if (host.agent != nullptr) KillAgent(h, "SIGKILL");
  } else if (what < 55) {
    if (host.agent != nullptr) {
      host.crash_next_batch = true;
      Trace(absl::StrCat("fault: agent ", host.name, " to die inside its next batch"));
    }
  } else if (what < 65) {
    if (reconciler_ != nullptr) KillController("SIGKILL");
  } else if (what < 72) {
    if (reconciler_ != nullptr && controller_sends_left_ < 0) {
      controller_sends_left_ = rng_.I(0, 2);
      Trace(absl::StrCat("fault: controller to die after ", controller_sends_left_, " more calls"));
    }
  } else if (what < 82) {
    // The kernel answers EBUSY for a CPU for a while.
    uint64_t cpu = host.topology->physical_ids.at(static_cast<uint32_t>(rng_.I(2, 15)));
    std::string id = std::to_string(cpu);
    bool busy = !host.busy.count(id);
    host.emu->SetBusy(id, busy);
    if (busy) {
      host.busy.insert(id);
    } else {
      host.busy.erase(id);
    }
    Trace(absl::StrCat("fault: CPU (physical ", id, ") of ", host.name, busy ? " busy" : " free again"));
  } else if (what < 86) {
    HostileBatch(h);
  } else if (what < 88) {
    // Someone starts a kernel by hand (kerf): mkfleet must leave it alone and report it.
    auto pool = host.truth->PoolCpus();
    auto obs = host.truth->Observe();
    if (!pool.ok() || !obs.ok() || pool->empty()) return;
    std::set<uint64_t> lent;
    for (const auto& in : obs->instances) lent.insert(in.resources.cpus.begin(), in.resources.cpus.end());
    std::vector<uint64_t> free;
    for (uint64_t c : *pool) {
      if (!lent.count(c)) free.push_back(c);
    }
    if (free.empty()) return;
    kernel::InstanceResources r;
    r.cpus = {free.front()};
    r.memory_bytes = 128ull << 20;
    r.numa_nodes = {0};
    std::string name = absl::StrCat("foreign-", host.foreign++);
    absl::Status s = host.truth->Create(name, std::nullopt, r);
    if (s.ok()) host.foreign_alive.insert(name);
    Trace(absl::StrCat("fault: a kernel started by hand: ", host.name, "/", name, ": ", s.ok() ? "ok" : s.message()));
  } else if (what < 95) {
    // Drift: an operator changes a managed kernel by hand, as kerf would (halt, remove, a CPU
    // or a memory region hot-removed): the controller must put it back (driftPolicy Correct).
    std::vector<std::string> managed;
    auto obs = host.truth->Observe();
    if (!obs.ok()) return;
    for (const auto& in : obs->instances) {
      if (!in.owner.empty() && (in.state == v1::KERNEL_STATE_ACTIVE || in.state == v1::KERNEL_STATE_LOADED)) {
        managed.push_back(in.name);
      }
    }
    if (managed.empty()) return;
    static const char* kOps[] = {"kerf-halt", "kerf-remove", "kerf-cpu-remove", "kerf-memory-remove"};
    std::string op = kOps[rng_.I(0, 3)];
    std::string k = rng_.Pick(managed);
    absl::Status s = agents::KerfOperation(*host.truth, op, k, "");
    if (s.ok() && (op == "kerf-halt" || op == "kerf-remove")) License(absl::StrCat(host.name, "/", k), "drift");
    if (s.ok() && op == "kerf-remove") {
      // Removed while a resize of it was pending (kept on its placement: no room for the
      // spec): the controller re-creates it at its spec, which may not fit, so (b') starts
      // over for it once its status says it is not running, as for a create refused after a
      // fault (seed 41243).
      for (const v1::Object& o : List("KernelInstance")) {
        const v1::KernelInstance& ki = o.kernel_instance();
        const std::string& serving = ki.status().kernel().empty() ? ki.metadata().name() : ki.status().kernel();
        if (ki.status().placement().host() != host.name || serving != k) continue;
        for (const v1::Condition& c : ki.status().conditions()) {
          if (c.type() == "Resized" && c.status() == v1::CONDITION_FALSE) removed_resize_pending_.insert(ki.metadata().name());
        }
      }
    }
    ++result_.drift_changes;
    Trace(absl::StrCat("fault: out of band ", op, " of ", host.name, "/", k, ": ", s.ok() ? "ok" : s.message()));
  } else {
    // The network gets worse or better.
    double scale = rng_.P(0.5) ? 0.0 : rng_.I(1, 4);
    net_ = {0.02 * scale, 0.02 * scale, 0.015 * scale, 0.015 * scale, 0.01 * scale, 0.05 * scale};
    Trace(absl::StrCat("fault: network faults x", scale));
  }
}

// ------------------------------------------------------------------------ steps

void World::OneStep() {
  ++step_;
  clock_.Advance(kStep);
  // Delayed calls arrive (in the order they were delayed when due together).
  for (auto it = delayed_.begin(); it != delayed_.end();) {
    if (it->at_step > step_) {
      ++it;
      continue;
    }
    Delayed d = std::move(*it);
    it = delayed_.erase(it);
    if (d.policy) {
      absl::Status s = hosts_[d.host]->agent ? hosts_[d.host]->agent->SetPolicy(d.policies)
                                             : absl::UnavailableError("down");
      Trace(absl::StrCat("net: late policy update to ", hosts_[d.host]->name, ": ", s.ok() ? "taken" : s.message()));
    } else {
      auto r = Deliver(d.host, d.batch);
      Trace(absl::StrCat("net: late batch ", d.batch.fence().sequence(), " to ", hosts_[d.host]->name, ": ",
                         r.ok() ? "taken" : r.status().message()));
    }
  }
  for (size_t h = 0; h < hosts_.size(); ++h) {
    SimHost& host = *hosts_[h];
    if (host.agent == nullptr && host.down_until >= 0 && step_ >= host.down_until) StartAgent(static_cast<int>(h));
    if (host.agent != nullptr) {
      host.agent->Tick();
      if (host.ck->dead()) KillAgent(static_cast<int>(h), "died in its watchdog");
    }
  }
  if (reconciler_ == nullptr && controller_down_until_ >= 0 && step_ >= controller_down_until_) StartController();
  StepElection();
  if (reconciler_ != nullptr) {
    reconciler_->Step();
    if (controller_sends_left_ == 0) KillController("died in a pass");
  }
  StepPeer();
  // The source controller's thread, one round: fetches (and applies) what is due.
  if (sources_ != nullptr && sources_->RunOnce() > 0) NoteApplied();
}

void World::ElectionFault() {
  ++result_.faults;
  if (election_rng_.P(0.5)) {
    if (election_view_ != nullptr && cut_until_ < 0) {
      election_view_->cut = true;
      cut_until_ = step_ + election_rng_.I(10, 120);
      Trace(absl::StrCat("fault: the controller cut off from the store until step ", cut_until_));
    }
  } else if (rival_ == nullptr) {
    reconciler::ElectionOptions eo;
    eo.name = "rival";
    eo.ttl = kLeaseTtl;
    eo.log = nullptr;
    rival_ = std::make_unique<reconciler::Election>(*store_, clock_, eo);
    rival_until_ = step_ + election_rng_.I(20, 150);
    Trace(absl::StrCat("fault: a rival controller campaigns until step ", rival_until_));
  }
}

void World::StepElection() {
  if (cut_until_ >= 0 && step_ >= cut_until_) EndElectionFaults();
  if (rival_ != nullptr && step_ >= rival_until_) {
    rival_->Stop();  // resigns
    rival_.reset();
    rival_until_ = -1;
    Trace("the rival controller stops");
  }
  if (election_ != nullptr) election_->Step();
  if (rival_ != nullptr) rival_->Step();
  const bool leads = election_ != nullptr && election_->IsLeader();
  if (leads != led_) Trace(leads ? "the controller leads" : "the controller steps down");
  led_ = leads;
  if (leads && rival_ != nullptr && rival_->IsLeader() && violation_.ok()) {
    violation_ = Fail("(l): the controller and the rival both lead");
  }
}

void World::EndElectionFaults() {
  if (election_view_ != nullptr) election_view_->cut = false;
  if (cut_until_ >= 0) Trace("the controller reaches the store again");
  cut_until_ = -1;
  if (rival_ != nullptr) {
    rival_->Stop();
    rival_.reset();
    rival_until_ = -1;
    Trace("the rival controller stops");
  }
}

void World::NoteApplied() {
  auto o = objects_ == nullptr ? absl::StatusOr<std::optional<v1::Object>>(std::nullopt) : objects_->Get("GitSource", "repo");
  if (!o.ok() || !o->has_value()) return;
  const v1::GitSourceStatus& st = (*o)->git_source().status();
  const std::string& applied = st.last_applied().sha();
  if (applied == applied_seen_) return;
  Trace(absl::StrCat("source: applied ", applied.substr(0, 7), " (fetched ", st.last_fetched().sha().substr(0, 7), ")"));
  static const std::map<std::string, v1::KernelInstanceSpec> kNone;
  auto old_it = commits_.find(applied_seen_);
  auto new_it = commits_.find(applied);
  const auto& before = old_it == commits_.end() ? kNone : old_it->second;
  const auto& after = new_it == commits_.end() ? kNone : new_it->second;
  for (const auto& [name, spec] : before) {
    auto now = after.find(name);
    if (now == after.end() || !google::protobuf::util::MessageDifferencer::Equals(now->second, spec)) {
      License("KernelInstance/" + name, "a git commit changes or removes it");
    }
    // Removed: the object is deleted, and one a later commit brings back is a new object
    // that starts over, as after a user's delete (seed 5171: g1, removed by c3 where it had
    // run, came back with c4 on a full host; (b') held the new object to the old one's run).
    if (now == after.end()) established_.erase(name);
  }
  applied_seen_ = applied;
}

absl::Status World::CheckStep() {
  if (!violation_.ok()) return violation_;
  // (n) what went early is what the whole plan sends.
  if (reconciler_ != nullptr && reconciler_->early_send_mismatches() > 0) {
    return Fail("(n): an early send differed from the whole fleet's plan for its hosts");
  }
  // (m) one owner per host at every step.
  if (o_.shards > 0 && shard_map_ != nullptr && peer_ != nullptr) {
    for (const auto& host : hosts_) {
      if (shard_map_->Owns(host->name) && peer_->shards->Owns(host->name)) {
        return Fail(absl::StrCat("(m): ", host->name, " is owned by the controller and the peer at once"));
      }
    }
  }
  if (absl::Status s = CheckSource(/*quiescent=*/false); !s.ok()) return s;
  for (size_t h = 0; h < hosts_.size(); ++h) {
    SimHost& host = *hosts_[h];
    auto obs = host.truth->Observe();
    if (!obs.ok()) return Fail(absl::StrCat("observe ", host.name, ": ", obs.status().message()));
    // (c) no CPU held twice.
    std::map<uint64_t, std::string> cpu_owner;
    std::set<std::string> present;
    for (const auto& in : obs->instances) {
      const std::string key = absl::StrCat(host.name, "/", in.name);
      present.insert(key);
      if (!born_.count(key)) born_[key] = step_;
      for (uint64_t c : in.resources.cpus) {
        auto [it, fresh] = cpu_owner.emplace(c, in.name);
        if (!fresh) return Fail(absl::StrCat("(c): CPU ", c, " of ", host.name, " held by ", it->second, " and ", in.name));
      }
    }
    for (auto it = born_.begin(); it != born_.end();) {
      if (absl::StartsWith(it->first, host.name + "/") && !present.count(it->first)) {
        it = born_.erase(it);
      } else {
        ++it;
      }
    }
  }
  // A KernelInstance that the controller reported running (this incarnation of the name).
  // (Not while its status still names a deleted host it ran on: seed 613, see UserOp.)
  std::set<std::string> live_hosts;
  for (const v1::Object& o : List("Host")) {
    if (o.host().metadata().deletion_unix_ms() == 0) live_hosts.insert(o.host().metadata().name());
  }
  for (const v1::Object& o : List("KernelInstance")) {
    const v1::KernelInstance& ki = o.kernel_instance();
    if (removed_resize_pending_.count(ki.metadata().name())) {
      if (ki.status().phase() == "Running") continue;  // (not seen gone yet)
      established_.erase(ki.metadata().name());
      removed_resize_pending_.erase(ki.metadata().name());
    }
    if (ki.status().phase() == "Running" && live_hosts.count(ki.status().placement().host())) {
      established_.insert(ki.metadata().name());
    }
  }
  // (c) the planner never places two requests on one CPU.
  if (reconciler_ != nullptr) {
    reconciler::FleetPlan plan = reconciler_->LastPlanForTest();
    std::map<std::string, std::string> used;  // "host/cpu" -> request
    for (const auto& [name, p] : plan.placements) {
      for (uint32_t c : p.cpus()) {
        auto [it, fresh] = used.emplace(absl::StrCat(p.host(), "/", c), name);
        if (!fresh) return Fail(absl::StrCat("(c): the plan puts ", it->second, " and ", name, " on CPU ", it->first));
      }
    }
    // Rollouts: a rollback stops the members it moves back (the engine asks for it, as a user
    // change would); (g) a revision that failed and is held is planned for no member.
    for (const v1::Object& o : List("InstanceSet")) {
      const std::string& set = o.instance_set().metadata().name();
      auto r = reconciler_->rollouts().Status("InstanceSet", set);
      if (!r.ok()) continue;
      const v1::RolloutStatus& st = r->status();
      const std::string key = absl::StrCat(set, "@", st.revision());
      if ((st.phase() == "RollingBack" || st.phase() == "RolledBack") && !rolled_back_.count(key)) {
        rolled_back_.insert(key);
        License("InstanceSet/" + set, absl::StrCat("rollout of revision ", st.revision(), " failed"));
      }
      if (st.phase() != "RolledBack") continue;
      std::string failed, stable;
      for (const v1::RevisionInfo& rev : r->revisions()) {
        if (rev.number() == st.revision()) failed = rev.kernel();
        if (rev.number() == st.stable()) stable = rev.kernel();
      }
      if (failed.empty() || failed == stable) continue;
      // (The plan's spec pointers do not outlive its pass: its actions are looked at.)
      for (const auto& [host, hp] : plan.hosts) {
        for (const v1::Action& a : hp.actions) {
          if (a.has_load() && a.load().kernel().image() == failed && absl::StartsWith(a.instance(), set + "-")) {
            return Fail(absl::StrCat("(g): InstanceSet/", set, " holds revision ", st.revision(), " (", failed,
                                     ") after it failed, yet the plan loads it into ", host, "/", a.instance()));
          }
        }
      }
    }
  }
  // A resize that could not be met (Resized=False, Infeasible) is still asked for: it re-creates
  // the instance once room appears, maybe after its kernel was replaced meanwhile (seed 7071:
  // a live update in between, then the resize 130 steps later).
  for (const v1::Object& o : List("KernelInstance")) {
    for (const v1::Condition& c : o.kernel_instance().status().conditions()) {
      if (c.type() != "Resized" || c.status() != v1::CONDITION_FALSE) continue;
      const std::string who = "KernelInstance/" + o.kernel_instance().metadata().name();
      auto l = licenses_.find(who);
      if (l == licenses_.end() || l->second + 20 < step_) License(who, "resize pending: " + c.message());
    }
  }
  // A policy's rollback stops the instances it moves back (the engine asks for it).
  for (const v1::Object& o : List("RolloutPolicy")) {
    const std::string& policy = o.rollout_policy().metadata().name();
    auto r = reconciler_->rollouts().Status("RolloutPolicy", policy);
    if (!r.ok()) continue;
    const v1::RolloutStatus& st = r->status();
    std::string& seen = rollout_seen_["RolloutPolicy/" + policy];
    const std::string now = absl::StrCat("revision ", st.revision(), " (stable ", st.stable(), ") ", st.phase());
    if (seen != now) {
      seen = now;
      Trace(absl::StrCat("rollout RolloutPolicy/", policy, ": ", now, ": ", st.message()));
    }
    const std::string key = absl::StrCat("RolloutPolicy/", policy, "@", st.revision());
    if ((st.phase() == "RollingBack" || st.phase() == "RolledBack") && !rolled_back_.count(key)) {
      rolled_back_.insert(key);
      for (const v1::Object& k : List("KernelInstance")) {
        const auto& labels = k.kernel_instance().metadata().labels();
        if (labels.count("tier") && labels.at("tier") == "web") {
          License("KernelInstance/" + k.kernel_instance().metadata().name(),
                  absl::StrCat("rollout of RolloutPolicy/", policy, " revision ", st.revision(), " failed"));
        }
      }
    }
  }
  return absl::OkStatus();
}

absl::Status World::Settle() {
  // Faults stop: everything comes back, the network heals, busy resources free up.
  net_ = {};
  for (size_t h = 0; h < hosts_.size(); ++h) {
    SimHost& host = *hosts_[h];
    host.crash_next_batch = false;
    for (const std::string& id : host.busy) host.emu->SetBusy(id, false);
    host.busy.clear();
    if (host.agent == nullptr) StartAgent(static_cast<int>(h));
  }
  controller_sends_left_ = -1;
  if (reconciler_ == nullptr) StartController();
  // A suspended source is resumed and synced: the repository's newest commit is the desired state.
  (void)objects_->Update("GitSource", "repo", [](v1::Object& o) { o.mutable_git_source()->mutable_spec()->set_suspend(false); });
  if (sources_ != nullptr) {
    auto synced = sources_->Sync("repo");
    Trace(absl::StrCat("source: synced: ", synced.ok() ? *synced : std::string(synced.status().message())));
    NoteApplied();
  }
  // Paused rollouts go on (the user resumes them), so that the fleet can converge.
  for (const v1::Object& o : List("InstanceSet")) {
    (void)reconciler_->rollouts().SetPaused("InstanceSet", o.instance_set().metadata().name(), false);
  }
  for (const v1::Object& o : List("RolloutPolicy")) {
    (void)reconciler_->rollouts().SetPaused("RolloutPolicy", o.rollout_policy().metadata().name(), false);
  }
  // Still in flight when the faults stopped: delivered now.
  for (int i = 0; i < 40; ++i) {
    OneStep();
    if (absl::Status s = CheckStep(); !s.ok()) return s;
  }
  EndElectionFaults();
  if (o_.shards > 0 && peer_ == nullptr) StartPeer();
  if (peer_ != nullptr && peer_cut_until_ >= 0) {
    peer_->view->cut = false;
    peer_cut_until_ = -1;
    Trace("the peer reaches the store again");
  }
  Trace("faults stopped");
  const int64_t settle_start = step_;
  // Converged: for 4 resync periods, only retries of failing actions, none of them taking effect
  // (a retry that finally succeeds changes kernels: what follows from it must settle too), and
  // the controller connected to every host (a host whose connection is still backing off has
  // had nothing sent yet: seed 8116, a delete made while its agent was down).
  auto all_connected = [this] {
    // The controller leads again (a cut-off one stepped down; it sent nothing since).
    if (election_ == nullptr || !election_->IsLeader()) return false;
    auto [links, up] = reconciler_->HostCounts();
    if (links != up) return false;
    // Sharded: and every host has a member that may send to it (none still handed over).
    if (o_.shards > 0) {
      for (const auto& h : hosts_) {
        if (!shard_map_->Owns(h->name) && (peer_ == nullptr || !peer_->shards->Owns(h->name))) return false;
      }
    }
    return true;
  };
  // ... and no rollout under way (one waits for its members' healthTimeout and minReady).
  std::string rollout_running;  // the last rollout seen under way, and where it stands
  auto rollouts_ended = [&] {
    for (const std::string kind : {"InstanceSet", "RolloutPolicy"}) {
      for (const v1::Object& o : List(kind)) {
        const std::string& name = kind == "InstanceSet" ? o.instance_set().metadata().name()
                                                        : o.rollout_policy().metadata().name();
        auto r = reconciler_->rollouts().Status(kind, name);
        if (r.ok() && (r->status().phase() == "Progressing" || r->status().phase() == "RollingBack")) {
          std::string waves;
          for (const v1::WaveStatus& w : r->status().waves()) {
            absl::StrAppend(&waves, " [", w.value(), ": ", w.updated(), "/", w.total(), " updated, ", w.ready(),
                            " ready, ", w.failed(), " failed]");
          }
          rollout_running = absl::StrCat(kind, "/", name, "'s rollout of revision ", r->status().revision(), " is ",
                                         r->status().phase(), ": ", r->status().message(), waves);
          return false;
        }
      }
    }
    return true;
  };
  while (step_ - std::max(last_non_failing_send_, last_effect_) < 80 || !all_connected() || !rollouts_ended()) {
    if (step_ - settle_start > o_.settle_steps) {
      return Fail(absl::StrCat("(f): no convergence within ", o_.settle_steps,
                                " steps after the faults stopped; still sending ", last_sent_,
                                rollout_running.empty() ? "" : "; " + rollout_running));
    }
    OneStep();
    if (absl::Status s = CheckStep(); !s.ok()) return s;
  }
  Trace(absl::StrCat("converged after ", step_ - settle_start, " steps"));
  // A further pass over every host sends nothing but retries of what fails.
  int64_t before = last_non_failing_send_;
  std::vector<std::string> all;
  for (const auto& h : hosts_) all.push_back(h->name);
  reconciler_->ReconcileHosts(all);
  if (last_non_failing_send_ != before) return Fail("(f): a pass after convergence sent " + last_sent_);
  return absl::OkStatus();
}

// The conditions that are not True, for a violation's message: "; Ready=False Reason: message".
std::string ConditionsText(const v1::InstanceStatus& st) {
  std::string out;
  for (const v1::Condition& c : st.conditions()) {
    if (c.status() == v1::CONDITION_TRUE) continue;
    absl::StrAppend(&out, "; ", c.type(), "=False ", c.reason(), ": ", c.message());
  }
  return out;
}

// (k) GitOps: the objects a GitSource owns are exactly those of the commit it applied, with
// its specs (an apply is atomic: never part of a commit, never a refused commit); at
// quiescence it has fetched the branch's newest commit and applied it or says why not.
absl::Status World::CheckSource(bool quiescent) {
  if (objects_ == nullptr) return absl::OkStatus();
  auto source = objects_->Get("GitSource", "repo");
  if (!source.ok() || !source->has_value()) return absl::OkStatus();
  const v1::GitSourceStatus& st = (*source)->git_source().status();
  const std::string& applied = st.last_applied().sha();
  if (bad_commits_.count(applied)) return Fail(absl::StrCat("(k): the invalid commit ", applied.substr(0, 7), " was applied"));
  std::map<std::string, v1::KernelInstanceSpec> owned;
  for (const v1::Object& o : List("KernelInstance")) {
    if (o.kernel_instance().metadata().source() == "git:repo") {
      owned[o.kernel_instance().metadata().name()] = o.kernel_instance().spec();
    }
  }
  if (!applied.empty()) {
    auto want = commits_.find(applied);
    if (want == commits_.end()) return Fail(absl::StrCat("(k): applied an unknown commit ", applied));
    std::vector<std::string> wrong;
    for (const auto& [name, spec] : want->second) {
      auto it = owned.find(name);
      if (it == owned.end()) {
        wrong.push_back(name + " missing");
      } else if (!google::protobuf::util::MessageDifferencer::Equals(it->second, spec)) {
        wrong.push_back(name + " has another spec");
      }
    }
    for (const auto& [name, spec] : owned) {
      if (!want->second.count(name)) wrong.push_back(name + " is not in the commit");
    }
    if (!wrong.empty()) {
      return Fail(absl::StrCat("(k): the objects of git:repo are not those of commit ", applied.substr(0, 7), ": ",
                               absl::StrJoin(wrong, ", ")));
    }
  } else if (!owned.empty()) {
    return Fail("(k): git:repo owns objects and has applied no commit");
  }
  if (quiescent) {
    if (st.last_fetched().sha() != head_) {
      return Fail(absl::StrCat("(k): at quiescence the source fetched ", st.last_fetched().sha().substr(0, 7),
                               ", the branch is at ", head_.substr(0, 7)));
    }
    bool refused = false;
    for (const v1::Condition& c : st.conditions()) {
      refused |= c.type() == "Applied" && c.status() == v1::CONDITION_FALSE &&
                 absl::StrContains(c.message(), head_.substr(0, 7));
    }
    if (applied != head_ && !refused) {
      return Fail(absl::StrCat("(k): at quiescence the source applied ", applied.substr(0, 7), ", not the newest ",
                               head_.substr(0, 7), ", and does not say why"));
    }
    if (bad_commits_.count(head_) && !refused) return Fail("(k): the newest commit is invalid and not refused");
  }
  return absl::OkStatus();
}

absl::Status World::CheckQuiescent() {
  if (absl::Status s = CheckSource(/*quiescent=*/true); !s.ok()) return s;
  reconciler::FleetPlan plan = reconciler_->LastPlanForTest();
  std::set<std::string> desired;  // "host/kernel"
  for (const auto& [name, p] : plan.planned) desired.insert(absl::StrCat(p.host, "/", p.kernel));
  std::map<std::string, std::set<std::string>> reported;  // host -> unmanaged kernels in its status
  std::set<std::string> stored_hosts;
  for (const v1::Object& o : List("Host")) {
    stored_hosts.insert(o.host().metadata().name());
    for (const v1::KernelRef& k : o.host().status().unmanaged()) reported[o.host().metadata().name()].insert(k.name());
  }
  // (j) unmanaged kernels are left alone (no Host here says `unmanaged: Remove`), and once the
  // fleet converged, no drift is left but them.
  // (A KernelInstance whose spec asks for a kernel that cannot load cannot be put back once
  // its old kernel went out of band: its drift stays reported, seed 605 sharded.)
  std::set<std::string> cannot_load;
  for (const v1::Object& o : List("KernelInstance")) {
    if (o.kernel_instance().spec().kernel().image() == bad_image_) {
      cannot_load.insert("KernelInstance/" + o.kernel_instance().metadata().name());
    }
  }
  for (const v1::Object& o : List("Host")) {
    for (const v1::Drift& d : o.host().status().drift()) {
      if (d.field() != "unmanaged" && !cannot_load.count(d.object())) {
        return Fail(absl::StrCat("(j): ", o.host().metadata().name(), " still has drift at quiescence: ", d.object(), " ",
                                 d.field(), " wanted ", d.wanted(), ", found ", d.found()));
      }
    }
  }
  for (const auto& host : hosts_) {
    auto obs = host->truth->Observe();
    if (!obs.ok()) return Fail("observe");
    std::set<std::string> there;
    for (const auto& in : obs->instances) there.insert(in.name);
    for (const std::string& f : host->foreign_alive) {
      if (!there.count(f)) return Fail(absl::StrCat("(j): the unmanaged kernel ", host->name, "/", f, " was removed"));
    }
  }
  std::map<std::string, std::vector<std::string>> kernels_of;  // owner -> "host/kernel"
  std::map<std::string, v1::KernelState> state;                // "host/kernel" -> state
  std::map<std::string, kernel::InstanceInfo> info;
  for (const auto& host : hosts_) {
    if (!stored_hosts.count(host->name)) continue;  // no longer managed by mkfleet
    auto obs = host->truth->Observe();
    if (!obs.ok()) return Fail("observe");
    for (const auto& in : obs->instances) {
      const std::string key = absl::StrCat(host->name, "/", in.name);
      state[key] = in.state;
      info[key] = in;
      // (a) every kernel belongs to exactly one object, or is reported unmanaged.
      if (in.owner.empty()) {
        if (!reported[host->name].count(in.name)) {
          return Fail(absl::StrCat("(a): ", key, " belongs to no object and ", host->name, " does not report it"));
        }
        continue;
      }
      if (!desired.count(key)) {
        return Fail(absl::StrCat("(a): ", key, " (owner ", in.owner, ") runs but nothing wants it there"));
      }
      kernels_of[in.owner].push_back(key);
    }
  }
  for (const auto& [owner, list] : kernels_of) {
    if (absl::StartsWith(owner, "KernelInstance/") && list.size() > 2) {
      return Fail(absl::StrCat("(a): ", owner, " has ", list.size(), " kernels: ", absl::StrJoin(list, ", ")));
    }
  }
  std::set<std::string> draining;
  for (const v1::Object& o : List("Host")) {
    if (o.host().spec().drain()) draining.insert(o.host().metadata().name());
  }
  for (const v1::Object& o : List("InstanceSet")) {
    const v1::InstanceSet& s = o.instance_set();
    size_t members = kernels_of["InstanceSet/" + s.metadata().name()].size();
    // (o) a drain has ended: no member of a replicas set runs on a draining host, unless
    // the set says it cannot be placed elsewhere.
    const v1::Condition* scheduled = nullptr;
    for (const v1::Condition& c : s.status().conditions()) {
      if (c.type() == "Scheduled") scheduled = &c;
    }
    if (s.spec().has_replicas() && (scheduled == nullptr || scheduled->status() == v1::CONDITION_TRUE)) {
      for (const std::string& key : kernels_of["InstanceSet/" + s.metadata().name()]) {
        if (draining.count(key.substr(0, key.find('/')))) {
          return Fail(absl::StrCat("(o): ", key, " of InstanceSet/", s.metadata().name(),
                                   " still runs on a draining host at quiescence, and the set is Scheduled"));
        }
      }
    }
    if (s.spec().has_replicas() && members > s.spec().replicas()) {
      return Fail(absl::StrCat("(a): InstanceSet/", s.metadata().name(), " wants ", s.spec().replicas(), " and has ",
                               members));
    }
    if (s.status().ready_replicas() > members) {
      return Fail(absl::StrCat("(e): InstanceSet/", s.metadata().name(), " says ", s.status().ready_replicas(),
                               " ready with ", members, " kernels"));
    }
    // (i) a rollout has ended: complete, every member on the newest revision's kernel; or
    // rolled back, every member on the stable revision's.
    if (reconciler_ == nullptr) continue;
    auto r = reconciler_->rollouts().Status("InstanceSet", s.metadata().name());
    if (!r.ok()) continue;
    const v1::RolloutStatus& st = r->status();
    if (st.phase() != "Complete" && st.phase() != "RolledBack") {
      return Fail(absl::StrCat("(i): InstanceSet/", s.metadata().name(), "'s rollout of revision ", st.revision(),
                               " is ", st.phase(), " at quiescence: ", st.message()));
    }
    std::string want = s.spec().template_().spec().kernel().image();
    if (st.phase() == "RolledBack") {
      for (const v1::RevisionInfo& rev : r->revisions()) {
        if (rev.number() == st.stable()) want = rev.kernel();
      }
    }
    for (const std::string& key : kernels_of["InstanceSet/" + s.metadata().name()]) {
      const kernel::InstanceInfo& in = info[key];
      if (in.state == v1::KERNEL_STATE_ACTIVE && in.provenance.kernel_path() != want) {
        return Fail(absl::StrCat("(i): InstanceSet/", s.metadata().name(), "'s rollout is ", st.phase(), " (revision ",
                                 st.revision(), ", stable ", st.stable(), ") but ", key, " runs ",
                                 in.provenance.kernel_path(), ", not ", want));
      }
    }
  }
  // (i) a policy's rollout has ended (complete, or rolled back and held), and an instance is
  // held at another spec than its own only by a policy whose rollout failed.
  std::map<std::string, std::string> policy_phase;
  for (const v1::Object& o : List("RolloutPolicy")) {
    const std::string& policy = o.rollout_policy().metadata().name();
    auto r = reconciler_->rollouts().Status("RolloutPolicy", policy);
    if (!r.ok()) continue;
    const v1::RolloutStatus& st = r->status();
    policy_phase[policy] = st.phase();
    if (st.phase() != "Complete" && st.phase() != "RolledBack") {
      std::string waves;
      for (const v1::WaveStatus& w : st.waves()) {
        absl::StrAppend(&waves, " [", w.value(), ": ", w.updated(), "/", w.total(), " updated, ", w.ready(), " ready, ",
                        w.failed(), " failed]");
      }
      return Fail(absl::StrCat("(i): RolloutPolicy/", policy, "'s rollout of revision ", st.revision(), " is ",
                               st.phase(), " at quiescence: ", st.message(), waves));
    }
  }
  for (const v1::Object& o : List("KernelInstance")) {
    for (const v1::Condition& c : o.kernel_instance().status().conditions()) {
      if (c.type() != "Ready" || c.reason() != "RolloutWaiting") continue;
      absl::string_view who = c.message();
      who = who.substr(0, who.find(' '));
      const bool by_policy = absl::ConsumePrefix(&who, "RolloutPolicy/");
      const std::string policy(who);
      if (!by_policy || policy_phase[policy] != "RolledBack") {
        return Fail(absl::StrCat("(i): KernelInstance/", o.kernel_instance().metadata().name(),
                                 " is held at quiescence: ", c.message(), " (policy phase ",
                                 policy_phase.count(policy) ? policy_phase[policy] : "none", ")"));
      }
    }
  }
  for (const v1::Object& o : List("KernelInstance")) {
    const v1::KernelInstance& ki = o.kernel_instance();
    const std::string& name = ki.metadata().name();
    const v1::InstanceStatus& st = ki.status();
    // (b') a KernelInstance that ran, still exists and wants Running, runs.
    bool host_going = false;
    for (const v1::Object& h : List("Host")) {
      host_going |= h.host().metadata().name() == ki.spec().host() && h.host().metadata().deletion_unix_ms() != 0;
    }
    // (A kernel asked for that cannot load is not run: if the old one had stopped, it stays so.
    // A policy whose rollout failed holds the instance at its stable spec, which may not say
    // Running: checked by (i) above.)
    bool held = false;
    for (const v1::Condition& c : st.conditions()) {
      held |= c.type() == "Ready" && c.reason() == "RolloutWaiting" && absl::StartsWith(c.message(), "RolloutPolicy/");
    }
    if (established_.count(name) && ki.spec().phase() == v1::PHASE_RUNNING && !host_going && !held &&
        ki.spec().kernel().image() != bad_image_) {
      // Where it runs: a move to another host that cannot be met keeps it where it was
      // (Resized=False Infeasible; seed 296: a commit moved g2 to a full host).
      const std::string& where = st.placement().host().empty() ? ki.spec().host() : st.placement().host();
      const std::string serving = absl::StrCat(where, "/", st.kernel().empty() ? name : st.kernel());
      if (state[serving] != v1::KERNEL_STATE_ACTIVE) {
        return Fail(absl::StrCat("(b'): KernelInstance/", name, " ran and wants Running but ", serving, " is ",
                                 kernel::KernelStateName(state.count(serving) ? state[serving] : v1::KERNEL_STATE_ABSENT),
                                 " (status ", st.phase(), ConditionsText(st), ")"));
      }
    }
    // (e) a Ready status matches the kernel and the spec.
    bool ready = false, resized_false = false;
    for (const v1::Condition& c : st.conditions()) {
      ready |= c.type() == "Ready" && c.status() == v1::CONDITION_TRUE;
      resized_false |= c.type() == "Resized" && c.status() == v1::CONDITION_FALSE;
    }
    if (!ready || st.observed_generation() != ki.metadata().generation()) continue;
    const std::string key = absl::StrCat(st.placement().host(), "/", st.kernel());
    auto it = info.find(key);
    if (it == info.end()) return Fail(absl::StrCat("(e): KernelInstance/", name, " Ready but ", key, " is not there"));
    const kernel::InstanceInfo& in = it->second;
    v1::KernelState want = ki.spec().phase() == v1::PHASE_READY    ? v1::KERNEL_STATE_READY
                           : ki.spec().phase() == v1::PHASE_LOADED ? v1::KERNEL_STATE_LOADED
                                                                    : v1::KERNEL_STATE_ACTIVE;
    if (in.state != want) {
      return Fail(absl::StrCat("(e): KernelInstance/", name, " Ready but ", key, " is ", kernel::KernelStateName(in.state)));
    }
    if (want != v1::KERNEL_STATE_READY && (in.provenance.kernel_path() != ki.spec().kernel().image() ||
                                           in.provenance.cmdline() != ki.spec().kernel().cmdline())) {
      return Fail(absl::StrCat("(e): KernelInstance/", name, " Ready but ", key, " runs ", in.provenance.kernel_path(),
                               " \"", in.provenance.cmdline(), "\""));
    }
    uint64_t memory = 0;
    for (const auto& [node, bytes] : in.memory_by_node) memory += bytes;
    bool standby_serving = absl::EndsWith(st.kernel(), "-standby");
    if (!resized_false && !standby_serving &&
        (in.resources.cpus.size() != ki.spec().resources().cpus() || memory != ki.spec().resources().memory())) {
      return Fail(absl::StrCat("(e): KernelInstance/", name, " Ready but ", key, " has ", in.resources.cpus.size(),
                               " CPUs and ", memory, " bytes, the spec ", ki.spec().resources().cpus(), " and ",
                               ki.spec().resources().memory()));
    }
  }
  return absl::OkStatus();
}

SimResult World::Run() {
  Setup();
  absl::Status s;
  for (int i = 0; i < o_.steps && s.ok(); ++i) {
    OneStep();
    if (rng_.P(0.08)) UserOp();
    if (o_.faults && rng_.P(0.02)) Fault();
    if (o_.faults && election_rng_.P(0.003)) ElectionFault();
    if (o_.faults && o_.shards > 0 && election_rng_.P(0.004)) PeerFault();
    s = CheckStep();
  }
  if (s.ok()) s = Settle();
  if (s.ok()) s = CheckQuiescent();
  if (!s.ok()) Trace(absl::StrCat("VIOLATION: ", s.message()));
  result_.status = s;
  result_.trace_hash = hash_;
  result_.steps = step_;
  if (reconciler_ != nullptr) {
    result_.actions += reconciler_->actions_sent();
    result_.early_sends += reconciler_->early_sends();
    result_.local_passes += reconciler_->local_passes();
  }
  if (peer_ != nullptr) result_.actions += peer_->loop->actions_sent();
  result_.tail.assign(tail_.begin(), tail_.end());
  // The controllers go before the agents they hold clients to.
  peer_.reset();
  reconciler_.reset();
  events_.reset();
  objects_.reset();
  return result_;
}

}  // namespace

SimResult RunFleetSim(const SimOptions& options) {
  World w(options);
  return w.Run();
}

std::string ReplayCommand(const SimOptions& o) {
  return absl::StrCat("bazel run //sim:mkfleet_sim -- --seed ", o.seed, " --hosts ", o.hosts, " --steps ", o.steps,
                      o.shards > 0 ? absl::StrCat(" --shards ", o.shards) : "", o.faults ? "" : " --no-faults",
                      o.early_send ? "" : " --no-early-send", " --verbose");
}

}  // namespace mkfleet::sim
