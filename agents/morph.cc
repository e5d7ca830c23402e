#include "agents/morph.h"

#include <dirent.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "agents/executor.h"
#include "common/file_util.h"
#include "common/status_macros.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;
using kmp::MsgType;

bool ValidMorphId(const std::string& id) {
  if (id.empty() || id.size() > 128) return false;
  for (char c : id) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-' || c == '.')) return false;
  }
  return id.front() != '.';
}

std::string Us(uint64_t us) { return absl::FormatDuration(absl::Microseconds(us)); }

// The instance a morph serves, as people know it: of its two kernels (L and L-next), L.
std::string ServedName(const v1::MorphRecord& r) {
  return r.start().next().size() < r.instance().size() ? r.start().next() : r.instance();
}

// What is left of the morph's timeout (PREPARING..VALIDATING) at `now`; infinite without one.
absl::Duration Left(const v1::MorphRecord& r, absl::Time now) {
  if (r.start().timeout_ms() == 0) return absl::InfiniteDuration();
  return absl::FromUnixMillis(r.status().started_unix_ms()) + absl::Milliseconds(r.start().timeout_ms()) - now;
}

std::string TimeoutText(const v1::MorphRecord& r) {
  return absl::StrCat("the morph exceeded its timeout of ", absl::FormatDuration(absl::Milliseconds(r.start().timeout_ms())));
}

const kernel::InstanceInfo* FindInstance(const kernel::HostObservation& obs, const std::string& name) {
  for (const auto& in : obs.instances) {
    if (in.name == name) return &in;
  }
  return nullptr;
}

}  // namespace

struct Morpher::Run {
  v1::MorphRecord record;  // under Morpher::mu_
  std::thread thread;
  bool done = false;     // under Morpher::mu_
  bool resumed = false;  // found in the journal at start
  absl::Mutex save_mu;   // one journal write at a time (the run's thread, Commit, Rollback)
  // The run's own (its thread only):
  std::unique_ptr<kmp::Connection> old_conn, new_conn;
  uint32_t old_id = 0, new_id = 0;
  absl::Duration quiesced_at = absl::InfiniteDuration();
  absl::Duration started_mono;
};

Morpher::Morpher(MorphOptions options, kernel::HostKernel& kernel, std::shared_ptr<const planner::Topology> topology,
                 GuestDialer dial, Clock& clock, MorphHooks hooks)
    : options_(std::move(options)),
      kernel_(kernel),
      topology_(std::move(topology)),
      dial_(std::move(dial)),
      clock_(clock),
      hooks_(std::move(hooks)) {}

Morpher::~Morpher() { Stop(); }

void Morpher::Stop() {
  std::vector<std::shared_ptr<Run>> runs;
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    for (auto& [id, run] : runs_) runs.push_back(run);
  }
  for (auto& run : runs) {
    if (run->thread.joinable()) run->thread.join();
  }
}

void Morpher::Wait() {
  std::vector<std::shared_ptr<Run>> runs;
  {
    absl::MutexLock lock(&mu_);
    for (auto& [id, run] : runs_) runs.push_back(run);
  }
  for (auto& run : runs) {
    if (run->thread.joinable()) run->thread.join();
  }
}

std::shared_ptr<Morpher::Run> Morpher::Find(const std::string& name) {
  std::shared_ptr<Run> found;
  for (auto& [id, run] : runs_) {
    if (run->record.instance() != name && run->record.start().next() != name) continue;
    // The running one first, else the newest that ended.
    if (!MorphEnded(run->record.status().phase())) return run;
    if (found == nullptr || run->record.status().started_unix_ms() > found->record.status().started_unix_ms()) {
      found = run;
    }
  }
  return found;
}

absl::Status Morpher::Save(Run& run, bool sync) {
  absl::MutexLock saving(&run.save_mu);
  v1::MorphRecord copy;
  {
    absl::MutexLock lock(&mu_);
    copy = run.record;
  }
  mkdir(options_.dir.c_str(), 0700);
  return WriteFileAtomically(absl::StrCat(options_.dir, "/", copy.status().id(), ".morph"), copy.SerializeAsString(),
                             0600, sync);
}

absl::Status Morpher::Start(const std::string& instance, const v1::MorphStart& start) {
  {
    absl::MutexLock lock(&mu_);
    if (runs_.count(start.morph_id())) return absl::OkStatus();  // sent again: it is known
  }
  if (!ValidMorphId(start.morph_id())) {
    return absl::InvalidArgumentError(absl::StrCat("morph of ", instance, ": morph id \"", start.morph_id(),
                                                   "\" is not [a-z0-9.-], at most 128"));
  }
  if (!ValidInstanceName(start.next()) || start.next() == instance) {
    return absl::InvalidArgumentError(absl::StrCat("morph of ", instance, ": the new kernel's name \"", start.next(),
                                                   "\" is not a DNS label other than the instance's"));
  }
  if (start.load().kernel().image().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("morph of ", instance, ": no kernel image"));
  }
  if (start.surge().cpus().empty() || start.surge().memory().empty()) {
    return absl::InvalidArgumentError(absl::StrCat("morph of ", instance, ": the surge has no CPUs or no memory"));
  }
  MK_ASSIGN_OR_RETURN(v1::KernelState state, kernel_.StateOf(instance));
  std::shared_ptr<Run> run;
  {
    absl::MutexLock lock(&mu_);
    if (runs_.count(start.morph_id())) return absl::OkStatus();  // sent again: it is known
    for (const std::string& name : {instance, start.next()}) {
      auto other = Find(name);
      if (other != nullptr && !MorphEnded(other->record.status().phase())) {
        return absl::FailedPreconditionError(absl::StrCat("morph of ", instance, ": morph ",
                                                          other->record.status().id(), " of ", name, " is ",
                                                          MorphPhaseName(other->record.status().phase())));
      }
    }
    if (state != v1::KERNEL_STATE_ACTIVE) {
      return absl::FailedPreconditionError(absl::StrCat("morph of ", instance, ": it is ",
                                                        kernel::KernelStateName(state), ", not active"));
    }
    run = std::make_shared<Run>();
    run->record.set_instance(instance);
    *run->record.mutable_start() = start;
    v1::MorphStatus* st = run->record.mutable_status();
    st->set_id(start.morph_id());
    st->set_phase(v1::MORPH_PREPARING);
    st->set_old_kernel(instance);
    st->set_new_kernel(start.next());
    st->set_revision(start.revision());
    st->set_previous_revision(start.previous_revision());
    st->set_manual(start.manual_commit());
    st->set_started_unix_ms(absl::ToUnixMillis(clock_.Now()));
  }
  // Journaled before it is known (a restart finds it) and before anything runs: synced, the
  // one step that is. The others are written (they outlive the agent) but not synced: what
  // a restart needs beyond this record the kernel tells (the surge kernel holds devices only
  // once the commit moved them), so no fsync sits in the handover.
  MK_RETURN_IF_ERROR(Save(*run, /*sync=*/true));
  absl::MutexLock lock(&mu_);
  // Earlier morphs of these kernels are history now: only the newest is reported.
  for (auto it = runs_.begin(); it != runs_.end();) {
    const v1::MorphRecord& r = it->second->record;
    bool related = r.instance() == instance || r.start().next() == instance || r.instance() == start.next() ||
                   r.start().next() == start.next();
    if (related && it->second->done) {
      if (it->second->thread.joinable()) it->second->thread.detach();
      unlink(absl::StrCat(options_.dir, "/", it->first, ".morph").c_str());
      it = runs_.erase(it);
    } else {
      ++it;
    }
  }
  runs_[start.morph_id()] = run;
  mu_.Unlock();
  Launch(run);  // the hooks take the agent's lock: never under ours
  mu_.Lock();
  return absl::OkStatus();
}

void Morpher::Launch(std::shared_ptr<Run> run) {
  if (hooks_.hold) {
    hooks_.hold(run->record.instance());
    hooks_.hold(run->record.start().next());
  }
  if (options_.inline_runs) {
    Drive(run);
    return;
  }
  run->thread = std::thread([this, run] { Drive(run); });
}

absl::Status Morpher::Retry(Run& run, const std::string& reason, const std::function<absl::Status()>& step) {
  absl::Duration backoff = absl::Milliseconds(10);
  bool warned = false;
  for (int attempt = 1;; ++attempt) {
    absl::Status s = step();
    if (s.ok()) return s;
    if (!warned && hooks_.event) {
      warned = true;
      hooks_.event(ServedName(run.record), "Warning", reason, absl::StrCat(s.message(), "; retrying"));
    }
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::CancelledError("the agent is stopping");
    }
    if (options_.retries > 0 && attempt >= options_.retries) {
      // Left to the next start of the agent (the journal says where it stopped).
      return absl::CancelledError(absl::StrCat("gave up after ", attempt, " attempts: ", s.message()));
    }
    clock_.SleepFor(backoff);
    backoff = std::min(backoff * 2, absl::Seconds(1));
  }
}

absl::Status Morpher::Request(const std::string& instance, bool commit, const std::string& reason) {
  std::shared_ptr<Run> run;
  {
    absl::MutexLock lock(&mu_);
    run = Find(instance);
    if (run == nullptr) return absl::FailedPreconditionError(absl::StrCat("no morph of ", instance, " in progress"));
    const v1::MorphStatus& st = run->record.status();
    const std::string what = absl::StrCat("morph ", st.id(), " of ", instance);
    if (st.phase() == v1::MORPH_COMMITTED || st.phase() == v1::MORPH_COMMITTING) {
      return absl::FailedPreconditionError(absl::StrCat(what, " is already ", MorphPhaseName(st.phase()),
                                                        commit ? "" : ": too late to roll back"));
    }
    bool rolling = st.phase() == v1::MORPH_ROLLED_BACK || st.phase() == v1::MORPH_ROLLING_BACK ||
                   run->record.rollback_requested();
    if (rolling && commit) {
      return absl::FailedPreconditionError(absl::StrCat(what, " is rolling back: ", st.reason()));
    }
    if (rolling || (commit && st.commit_requested())) return absl::OkStatus();  // asked already
    if (commit) {
      run->record.mutable_status()->set_commit_requested(true);
    } else {
      run->record.set_rollback_requested(true);
      run->record.set_rollback_reason(reason.empty() ? "rollback requested" : reason);
    }
  }
  return Save(*run);
}

absl::Status Morpher::Commit(const std::string& instance) { return Request(instance, /*commit=*/true, ""); }

absl::Status Morpher::Rollback(const std::string& instance, const std::string& reason) {
  return Request(instance, /*commit=*/false, reason);
}

absl::Status Morpher::Resume() {
  DIR* d = opendir(options_.dir.c_str());
  if (d == nullptr) return absl::OkStatus();  // no morph ever ran here
  std::vector<std::string> files;
  while (dirent* e = readdir(d)) {
    if (absl::EndsWith(e->d_name, ".morph")) files.push_back(e->d_name);
  }
  closedir(d);
  absl::Status first;
  for (const std::string& f : files) {
    std::string path = absl::StrCat(options_.dir, "/", f);
    auto data = ReadFile(path, /*follow_symlinks=*/false);
    v1::MorphRecord record;
    if (!data.ok() || !record.ParseFromString(*data) || record.status().id().empty()) {
      if (first.ok()) first = absl::DataLossError(absl::StrCat(path, ": not a morph record"));
      continue;
    }
    auto run = std::make_shared<Run>();
    run->record = record;
    run->resumed = true;
    absl::MutexLock lock(&mu_);
    runs_[record.status().id()] = run;
    if (MorphEnded(record.status().phase())) {
      run->done = true;
      continue;
    }
    mu_.Unlock();
    Launch(run);
    mu_.Lock();
  }
  return first;
}

std::optional<v1::MorphStatus> Morpher::StatusOf(const std::string& name) {
  absl::MutexLock lock(&mu_);
  auto run = Find(name);
  if (run == nullptr) return std::nullopt;
  const v1::MorphStatus& st = run->record.status();
  // An ended morph is reported by the kernel that serves after it.
  if (st.phase() == v1::MORPH_COMMITTED && name != st.new_kernel()) return std::nullopt;
  if (st.phase() == v1::MORPH_ROLLED_BACK && name != st.old_kernel()) return std::nullopt;
  return st;
}

void Morpher::SetPhase(Run& run, v1::MorphPhase phase, const std::string& message) {
  std::string name;
  {
    absl::MutexLock lock(&mu_);
    v1::MorphStatus* st = run.record.mutable_status();
    if (phase == v1::MORPH_ROLLING_BACK && st->failed_in() == v1::MORPH_PHASE_UNSPECIFIED) st->set_failed_in(st->phase());
    st->set_phase(phase);
    if (MorphEnded(phase)) {
      st->set_finished_unix_ms(absl::ToUnixMillis(clock_.Now()));
      st->set_total_us(static_cast<uint64_t>(
          std::max<int64_t>(0, (st->finished_unix_ms() - st->started_unix_ms()) * 1000)));
      if (run.started_mono > absl::ZeroDuration()) {
        st->set_total_us(static_cast<uint64_t>(absl::ToInt64Microseconds(clock_.Monotonic() - run.started_mono)));
      }
    }
    name = ServedName(run.record);
  }
  absl::Status saved = Save(run);
  if (hooks_.event) {
    bool warn = phase == v1::MORPH_ROLLING_BACK || phase == v1::MORPH_ROLLED_BACK;
    hooks_.event(name, warn ? "Warning" : "Normal", absl::StrCat("Morph", MorphPhaseName(phase)), message);
    if (!saved.ok()) hooks_.event(name, "Warning", "MorphJournal", std::string(saved.message()));
  }
  if (hooks_.changed) hooks_.changed();
  if (options_.on_phase) options_.on_phase(phase);
}

absl::Status Morpher::Interrupted(Run& run) {
  absl::MutexLock lock(&mu_);
  if (stopping_) return absl::CancelledError("the agent is stopping");
  if (run.record.rollback_requested()) return absl::AbortedError(run.record.rollback_reason());
  return absl::OkStatus();
}

bool Morpher::NextHoldsDevices(Run& run) {
  auto obs = kernel_.Observe();
  const kernel::InstanceInfo* next = obs.ok() ? FindInstance(*obs, run.record.start().next()) : nullptr;
  return next != nullptr && !next->resources.devices.empty();
}

absl::StatusOr<std::unique_ptr<kmp::Connection>> Morpher::Connect(Run& run, const std::string& name, uint32_t id,
                                                                  absl::Duration wait) {
  absl::Duration until = clock_.Monotonic() + wait;
  absl::Status last = absl::UnavailableError("not dialled");
  while (true) {
    MK_RETURN_IF_ERROR(Interrupted(run));
    auto conn = dial_ ? dial_(id) : absl::UnavailableError("no guest channel on this host");
    if (conn.ok()) {
      v1::KmpHeartbeat hb;
      auto rsp = (*conn)->Call(MsgType::kHeartbeatReq, hb, std::min(wait, absl::Seconds(2)));
      if (rsp.ok() && hb.ParseFromString(rsp->payload) && hb.instance_id() == id) return std::move(*conn);
      if (absl::IsDataLoss(rsp.status()) || absl::IsResourceExhausted(rsp.status())) {
        // Not a guest that is still coming up: one that speaks garbage.
        return absl::DataLossError(absl::StrCat("the guest of ", name, ": corrupt KMP frame: ", rsp.status().message()));
      }
      last = rsp.ok() ? absl::DataLossError(absl::StrCat("its guest answered for instance ", hb.instance_id()))
                      : rsp.status();
    } else {
      last = conn.status();
    }
    auto state = kernel_.StateOf(name);
    if (state.ok() && *state != v1::KERNEL_STATE_ACTIVE) {
      return absl::UnavailableError(absl::StrCat(name, " is ", kernel::KernelStateName(*state),
                                                 " (its kernel crashed) and its guest does not answer"));
    }
    if (clock_.Monotonic() >= until) {
      return absl::UnavailableError(absl::StrCat("the guest (mkguest) of ", name, " did not answer within ",
                                                 absl::FormatDuration(wait), ": ", last.message()));
    }
    clock_.SleepFor(absl::Milliseconds(5));
  }
}

absl::StatusOr<kmp::Frame> Morpher::Call(Run& run, kmp::Connection& conn, const std::string& side, MsgType type,
                                         const google::protobuf::MessageLite& payload) {
  absl::Duration timeout = options_.call_timeout;
  v1::MorphPhase phase;
  {
    absl::MutexLock lock(&mu_);
    phase = run.record.status().phase();
    if (phase < v1::MORPH_COMMITTING) {
      absl::Duration left = Left(run.record, clock_.Now());
      if (left <= absl::ZeroDuration()) {
        return absl::DeadlineExceededError(absl::StrCat(TimeoutText(run.record), " while ", MorphPhaseName(phase)));
      }
      timeout = std::min(timeout, left);
    }
  }
  auto f = conn.Call(type, payload, timeout);
  if (f.ok()) return f;
  std::string what = absl::StrCat(side, " guest, ", kmp::MsgTypeName(static_cast<uint16_t>(type)));
  // A kernel that stopped is the cause, whatever the connection says.
  for (const auto& [which, kernel_name] : {std::pair<std::string, std::string>{"new", run.record.start().next()},
                                           std::pair<std::string, std::string>{"old", run.record.instance()}}) {
    auto state = kernel_.StateOf(kernel_name);
    if (state.ok() && *state != v1::KERNEL_STATE_ACTIVE) {
      return absl::UnavailableError(absl::StrCat("the ", which, " kernel ", kernel_name, " crashed (",
                                                 kernel::KernelStateName(*state), ") while ", MorphPhaseName(phase),
                                                 "; ", what, ": ", f.status().message()));
    }
  }
  if (absl::IsDeadlineExceeded(f.status())) {
    return absl::DeadlineExceededError(absl::StrCat(what, ": no answer within ", absl::FormatDuration(timeout),
                                                    " (a hook that hangs, or a hung kernel)"));
  }
  if (absl::IsDataLoss(f.status()) || absl::IsResourceExhausted(f.status())) {
    return absl::DataLossError(absl::StrCat(what, ": corrupt KMP frame: ", f.status().message()));
  }
  return absl::Status(f.status().code(), absl::StrCat(what, ": ", f.status().message()));
}

void Morpher::Drive(std::shared_ptr<Run> run_ptr) {
  Run& run = *run_ptr;
  run.started_mono = clock_.Monotonic();
  v1::MorphPhase phase;
  {
    absl::MutexLock lock(&mu_);
    phase = run.record.status().phase();
    if (phase == v1::MORPH_PHASE_UNSPECIFIED) phase = v1::MORPH_PREPARING;
  }
  if (run.resumed && phase < v1::MORPH_COMMITTING && NextHoldsDevices(run)) {
    // The commit moved the devices (the journal had not said so yet): it goes on.
    phase = v1::MORPH_COMMITTING;
  }
  if (run.resumed && phase < v1::MORPH_COMMITTING) {
    // The agent was restarted: the guests' connections and the handover's timing are gone.
    // Before the commit, going back is always safe: the old kernel never stopped.
    std::string why = absl::StrCat("the agent restarted while ", MorphPhaseName(phase));
    {
      absl::MutexLock lock(&mu_);
      run.record.mutable_status()->set_reason(why);
    }
    phase = v1::MORPH_ROLLING_BACK;
    SetPhase(run, phase, why);
  }
  if (!run.resumed && phase == v1::MORPH_PREPARING && hooks_.event) {
    hooks_.event(ServedName(run.record), "Normal", "MorphPreparing",
                 absl::StrCat("live update ", run.record.status().id(), ": booting ", run.record.start().next(),
                              " beside ", run.record.instance(), " (revision ", run.record.start().revision(), ")"));
  }
  if (options_.on_phase) options_.on_phase(phase);
  while (!MorphEnded(phase)) {
    absl::Status s;
    v1::MorphPhase next = phase;
    switch (phase) {
      case v1::MORPH_PREPARING:
        s = Prepare(run);
        next = v1::MORPH_NEGOTIATING;
        break;
      case v1::MORPH_NEGOTIATING:
        s = Negotiate(run);
        next = v1::MORPH_TRANSFERRING;
        break;
      case v1::MORPH_TRANSFERRING:
        s = Transfer(run);
        next = v1::MORPH_VALIDATING;
        break;
      case v1::MORPH_VALIDATING:
        s = Validate(run);
        next = v1::MORPH_COMMITTING;
        break;
      case v1::MORPH_COMMITTING:
        s = CommitDevices(run);
        if (s.ok()) s = Finish(run);
        next = v1::MORPH_COMMITTED;
        break;
      case v1::MORPH_ROLLING_BACK:
        s = RollBack(run);
        next = v1::MORPH_ROLLED_BACK;
        break;
      default:
        s = absl::InternalError(absl::StrCat("unknown phase ", phase));
    }
    if (absl::IsCancelled(s)) {
      // The agent is stopping: the journal holds the phase; the next start resumes it.
      break;
    }
    bool moved;
    {
      absl::MutexLock lock(&mu_);
      moved = run.record.devices_moved();
    }
    if (!s.ok() && !moved) {
      {
        absl::MutexLock lock(&mu_);
        run.record.mutable_status()->set_reason(std::string(s.message()));
      }
      phase = v1::MORPH_ROLLING_BACK;
      SetPhase(run, phase, std::string(s.message()));
      continue;
    }
    if (!s.ok()) {
      // After the devices moved there is no way back: it commits, and what hot-plug left
      // undone the controller's next pass sees (the placement differs) and fixes.
      absl::MutexLock lock(&mu_);
      run.record.mutable_status()->set_reason(absl::StrCat("committed, but: ", s.message()));
    }
    std::string message;
    {
      absl::MutexLock lock(&mu_);
      const v1::MorphStatus& st = run.record.status();
      if (next == v1::MORPH_COMMITTED) {
        message = absl::StrCat(st.new_kernel(), " serves (revision ", st.revision(), ", was ", st.previous_revision(),
                               "); handover gap ", Us(st.handover_gap_us()), st.reason().empty() ? "" : "; ",
                               st.reason());
      } else if (next == v1::MORPH_ROLLED_BACK) {
        message = absl::StrCat(st.old_kernel(), " serves on (never stopped): ", st.reason());
      } else {
        message = absl::StrCat(st.old_kernel(), " -> ", st.new_kernel());
      }
    }
    phase = next;
    SetPhase(run, phase, message);
  }
  run.old_conn.reset();
  run.new_conn.reset();
  if (MorphEnded(phase) && hooks_.release) {
    hooks_.release(run.record.instance());
    hooks_.release(run.record.start().next());
  }
  absl::MutexLock lock(&mu_);
  run.done = MorphEnded(phase);
}

// ---------------------------------------------------------------------------- the steps

absl::Status Morpher::Prepare(Run& run) {
  const v1::MorphStart& start = run.record.start();  // immutable once started
  const std::string& old_name = run.record.instance();
  const std::string& next = start.next();
  MK_ASSIGN_OR_RETURN(kernel::HostObservation obs, kernel_.Observe());
  const kernel::InstanceInfo* old_info = FindInstance(obs, old_name);
  if (old_info == nullptr || old_info->state != v1::KERNEL_STATE_ACTIVE) {
    return absl::FailedPreconditionError(absl::StrCat(old_name, " is not running"));
  }
  run.old_id = old_info->id;
  // The old side first: without its guest there is nothing to hand over.
  MK_ASSIGN_OR_RETURN(run.old_conn,
                      Connect(run, old_name, run.old_id, std::min(absl::Seconds(2), options_.heartbeat_wait)));
  MK_ASSIGN_OR_RETURN(v1::KernelState state, kernel_.StateOf(next));
  if (state == v1::KERNEL_STATE_ABSENT) {
    // It may be handed every CPU of the target's nodes (a kernel onlines only CPUs it
    // enumerated at boot).
    std::set<uint32_t> nodes;
    for (uint32_t cpu : start.target().cpus()) {
      if (topology_->core_of_pu.contains(cpu)) nodes.insert(topology_->cores[topology_->core_of_pu.at(cpu)].numa);
    }
    MK_ASSIGN_OR_RETURN(kernel::InstanceResources r, PlacementResources(*topology_, start.surge(), nodes));
    // Created on the target's NUMA nodes too (after its own): the CPUs and memory it takes
    // over at the commit are on them, and a kernel grows only onto nodes it was created on.
    for (uint32_t n : start.target().numa_nodes()) {
      if (std::find(r.numa_nodes.begin(), r.numa_nodes.end(), n) == r.numa_nodes.end()) r.numa_nodes.push_back(n);
    }
    std::vector<kernel::MemoryEntry> extra;
    for (const auto& m : start.surge().memory()) {
      if (r.numa_nodes.empty() || m.node() == r.numa_nodes[0] || m.bytes() == 0) continue;
      MK_ASSIGN_OR_RETURN(auto blocks, kernel_.FreePoolMemory(m.node(), m.bytes()));
      extra.insert(extra.end(), blocks.begin(), blocks.end());
    }
    std::optional<uint32_t> id;
    if (start.next_id() != 0) id = start.next_id();
    MK_RETURN_IF_ERROR(kernel_.Create(next, id, r, start.owner(), extra));
    state = v1::KERNEL_STATE_READY;
  }
  if (state == v1::KERNEL_STATE_READY) {
    MK_RETURN_IF_ERROR(kernel_.Load(next, KernelImageOf(start.load())));
    state = v1::KERNEL_STATE_LOADED;
  }
  if (state == v1::KERNEL_STATE_LOADED) {
    // Asked to boot, then watched: up (active), or crashed while booting (it was active and
    // is not, or never came up within the wait).
    MK_RETURN_IF_ERROR(kernel_.Start(next, /*wait=*/false));
    // Within the morph's own deadline too.
    const absl::Duration wait =
        std::max(absl::ZeroDuration(), std::min(options_.heartbeat_wait, Left(run.record, clock_.Now())));
    absl::Duration until = clock_.Monotonic() + wait;
    while (true) {
      MK_RETURN_IF_ERROR(Interrupted(run));
      MK_ASSIGN_OR_RETURN(state, kernel_.StateOf(next));
      if (state == v1::KERNEL_STATE_ACTIVE) break;
      if (state != v1::KERNEL_STATE_LOADED || clock_.Monotonic() >= until) {
        return absl::UnavailableError(absl::StrCat("the new kernel ", next, " did not boot: ",
                                                   kernel::KernelStateName(state), " after ",
                                                   absl::FormatDuration(wait),
                                                   " (it crashed during boot, or boots too slowly)"));
      }
      clock_.SleepFor(absl::Milliseconds(1));
    }
  }
  if (state != v1::KERNEL_STATE_ACTIVE) {
    return absl::FailedPreconditionError(absl::StrCat("the new kernel ", next, " is ", kernel::KernelStateName(state)));
  }
  MK_ASSIGN_OR_RETURN(obs, kernel_.Observe());
  if (const kernel::InstanceInfo* in = FindInstance(obs, next)) run.new_id = in->id;
  const absl::Duration hb_wait =
      std::max(absl::Milliseconds(1), std::min(options_.heartbeat_wait, Left(run.record, clock_.Now())));
  auto new_conn = Connect(run, next, run.new_id, hb_wait);
  if (!new_conn.ok() && Left(run.record, clock_.Now()) <= absl::ZeroDuration()) {
    return absl::DeadlineExceededError(
        absl::StrCat(TimeoutText(run.record), " while Preparing: ", new_conn.status().message()));
  }
  if (!new_conn.ok()) return new_conn.status();
  run.new_conn = *std::move(new_conn);
  v1::KmpMorphPrepare p;
  p.set_morph_id(run.record.status().id());
  p.set_old_id(run.old_id);
  p.set_new_id(run.new_id);
  p.set_timeout_ms(start.timeout_ms());
  p.set_role(v1::KmpMorphPrepare::ROLE_NEW);
  MK_RETURN_IF_ERROR(Call(run, *run.new_conn, "new", MsgType::kMorphPrepare, p).status());
  p.set_role(v1::KmpMorphPrepare::ROLE_OLD);
  MK_RETURN_IF_ERROR(Call(run, *run.old_conn, "old", MsgType::kMorphPrepare, p).status());
  return Interrupted(run);
}

absl::Status Morpher::Negotiate(Run& run) {
  MK_RETURN_IF_ERROR(Interrupted(run));
  if (!run.old_conn || !run.new_conn) return absl::FailedPreconditionError("the guests' connections were lost");
  v1::KmpMorphNegotiate n;
  n.set_protocol(1);
  MK_RETURN_IF_ERROR(Call(run, *run.new_conn, "new", MsgType::kMorphNegotiate, n).status());
  MK_ASSIGN_OR_RETURN(kmp::Frame f, Call(run, *run.old_conn, "old", MsgType::kMorphNegotiate, n));
  v1::KmpMorphNegotiate answer;
  if (!answer.ParseFromString(f.payload) || !answer.quiesced()) {
    return absl::FailedPreconditionError("old guest, MORPH_NEGOTIATE: it did not say it quiesced");
  }
  run.quiesced_at = clock_.Monotonic();
  return absl::OkStatus();
}

absl::Status Morpher::Transfer(Run& run) {
  MK_RETURN_IF_ERROR(Interrupted(run));
  if (!run.old_conn || !run.new_conn) return absl::FailedPreconditionError("the guests' connections were lost");
  v1::KmpStateChunk ask;
  ask.set_morph_id(run.record.status().id());
  MK_ASSIGN_OR_RETURN(kmp::Frame f, Call(run, *run.old_conn, "old", MsgType::kMorphTransferState, ask));
  uint64_t total = 0;
  while (true) {
    v1::KmpStateChunk chunk;
    if (f.type != static_cast<uint16_t>(MsgType::kMorphTransferState) || !chunk.ParseFromString(f.payload) ||
        chunk.offset() != total) {
      return absl::DataLossError(absl::StrCat("old guest, MORPH_TRANSFER_STATE: expected the chunk at offset ", total));
    }
    total += chunk.data().size();
    MK_ASSIGN_OR_RETURN(kmp::Frame ack, Call(run, *run.new_conn, "new", MsgType::kMorphTransferState, chunk));
    (void)ack;
    if (!chunk.more()) break;
    auto more = run.old_conn->Receive(options_.call_timeout);
    if (!more.ok()) {
      return absl::Status(more.status().code(),
                          absl::StrCat("old guest, MORPH_TRANSFER_STATE after ", total, " bytes: ", more.status().message()));
    }
    f = *std::move(more);
  }
  absl::MutexLock lock(&mu_);
  run.record.mutable_status()->set_state_bytes(total);
  return absl::OkStatus();
}

absl::Status Morpher::Validate(Run& run) {
  MK_RETURN_IF_ERROR(Interrupted(run));
  if (!run.new_conn) return absl::FailedPreconditionError("the new guest's connection was lost");
  MK_ASSIGN_OR_RETURN(kmp::Frame f, Call(run, *run.new_conn, "new", MsgType::kMorphValidate, v1::KmpMorphValidate()));
  v1::KmpMorphValidate v;
  if (!v.ParseFromString(f.payload)) return absl::DataLossError("new guest, MORPH_VALIDATE: unreadable answer");
  if (!v.ok()) return absl::FailedPreconditionError(absl::StrCat("validation failed: ", v.message()));
  bool manual;
  {
    absl::MutexLock lock(&mu_);
    manual = run.record.start().manual_commit() && !run.record.status().commit_requested();
  }
  if (!manual) return absl::OkStatus();
  if (hooks_.event) {
    hooks_.event(run.record.instance(), "Normal", "MorphAwaitingCommit",
                 "validated; waiting for `mkapply morph commit` (or rollback)");
  }
  if (hooks_.changed) hooks_.changed();
  // Waits for the operator; both kernels keep being watched meanwhile.
  absl::Duration next_beat = clock_.Monotonic();
  while (true) {
    MK_RETURN_IF_ERROR(Interrupted(run));
    {
      absl::MutexLock lock(&mu_);
      if (run.record.status().commit_requested()) return absl::OkStatus();
    }
    if (clock_.Monotonic() >= next_beat) {
      next_beat = clock_.Monotonic() + absl::Milliseconds(200);
      for (auto* side : {&run.old_conn, &run.new_conn}) {
        auto rsp = (*side)->Call(MsgType::kHeartbeatReq, v1::KmpHeartbeat(), absl::Seconds(1));
        if (!rsp.ok()) {
          return absl::UnavailableError(absl::StrCat(side == &run.old_conn ? "old" : "new",
                                                     " guest stopped answering while waiting for the commit: ",
                                                     rsp.status().message()));
        }
      }
    }
    clock_.SleepFor(absl::Milliseconds(5));
  }
}

absl::Status Morpher::CommitDevices(Run& run) {
  const std::string& old_name = run.record.instance();
  const std::string& next = run.record.start().next();
  MK_ASSIGN_OR_RETURN(kernel::HostObservation obs, kernel_.Observe());
  const kernel::InstanceInfo* old_info = FindInstance(obs, old_name);
  const kernel::InstanceInfo* new_info = FindInstance(obs, next);
  bool moved;
  std::vector<std::string> devices;
  {
    absl::MutexLock lock(&mu_);
    moved = run.record.devices_moved();
    devices.assign(run.record.old_devices().begin(), run.record.old_devices().end());
  }
  if (!moved) {
    if (new_info == nullptr || new_info->state != v1::KERNEL_STATE_ACTIVE) {
      return absl::UnavailableError(absl::StrCat("the new kernel ", next, " is not running at the commit"));
    }
    if (devices.empty() && old_info != nullptr) {
      for (const auto& d : old_info->resources.devices) devices.push_back(d.pci_id);
      absl::MutexLock lock(&mu_);
      for (const auto& d : devices) run.record.add_old_devices(d);
    }
    // Did an earlier run of this agent move them already (killed before it journaled so)?
    std::set<std::string> on_new;
    for (const auto& d : new_info->resources.devices) on_new.insert(d.pci_id);
    // A surge kernel holds devices only once the commit moved them there.
    bool all_on_new = devices.empty() ? !on_new.empty() && run.resumed
                                      : std::all_of(devices.begin(), devices.end(),
                                                    [&](const std::string& d) { return on_new.count(d) > 0; });
    if (!all_on_new && run.resumed) {
      // Killed inside COMMITTING before the devices moved: the guests' connections are gone,
      // so it goes back (the old kernel never stopped).
      return absl::AbortedError("the agent restarted while Committing, before the devices moved");
    }
    if (!all_on_new) {
      if (old_info == nullptr || old_info->state != v1::KERNEL_STATE_ACTIVE) {
        return absl::UnavailableError(absl::StrCat("the old kernel ", old_name, " is not running at the commit"));
      }
      MK_RETURN_IF_ERROR(Save(run));  // what moves, before it moves
      if (!devices.empty()) {
        std::vector<kernel::DeviceEntry> entries;
        for (const auto& d : devices) entries.push_back({d, "", "vfio-pci", 0});
        // The handover: one overlay transaction.
        MK_RETURN_IF_ERROR(kernel_.MoveDevices(old_name, next, entries));
      }
    }
    {
      absl::MutexLock lock(&mu_);
      run.record.set_devices_moved(true);
    }
    MK_RETURN_IF_ERROR(Save(run));
  }
  // The new guest takes over: its acknowledgement ends the handover gap. A restarted agent
  // has no connection and the guest may have committed already: best effort then.
  v1::KmpMorphCommit c;
  c.set_morph_id(run.record.status().id());
  if (run.new_conn) {
    auto ack = Call(run, *run.new_conn, "new", MsgType::kMorphCommit, c);
    if (ack.ok() && run.quiesced_at != absl::InfiniteDuration()) {
      absl::MutexLock lock(&mu_);
      run.record.mutable_status()->set_handover_gap_us(
          static_cast<uint64_t>(absl::ToInt64Microseconds(clock_.Monotonic() - run.quiesced_at)));
    }
  } else if (dial_ && new_info != nullptr) {
    auto conn = dial_(new_info->id);
    if (conn.ok()) (void)(*conn)->Call(MsgType::kMorphCommit, c, absl::Seconds(2));
  }
  if (run.old_conn) (void)run.old_conn->Call(MsgType::kMorphCommit, c, absl::Seconds(2));
  return absl::OkStatus();
}

absl::Status Morpher::Finish(Run& run) {
  const v1::MorphStart& start = run.record.start();
  const std::string& old_name = run.record.instance();
  const std::string& next = start.next();
  // The old kernel retires: halted (its guest ended after COMMIT), unloaded, removed. Not
  // committed before it is gone (retried; an agent stopping meanwhile goes on at its next
  // start, the journal saying the devices moved).
  MK_RETURN_IF_ERROR(Retry(run, "MorphCommitRetry", [&]() -> absl::Status {
    MK_ASSIGN_OR_RETURN(v1::KernelState state, kernel_.StateOf(old_name));
    if (state == v1::KERNEL_STATE_ACTIVE || state == v1::KERNEL_STATE_FAILED) {
      absl::Status h = state == v1::KERNEL_STATE_ACTIVE ? kernel_.Halt(old_name, /*force=*/false)
                                                        : absl::UnknownError("failed");
      if (!h.ok()) MK_RETURN_IF_ERROR(kernel_.Halt(old_name, /*force=*/true));
      state = v1::KERNEL_STATE_LOADED;
    }
    if (state == v1::KERNEL_STATE_LOADED) {
      MK_RETURN_IF_ERROR(kernel_.Unload(old_name));
      state = v1::KERNEL_STATE_READY;
    }
    if (state == v1::KERNEL_STATE_READY) MK_RETURN_IF_ERROR(kernel_.Remove(old_name));
    return absl::OkStatus();
  }));
  // CPUs: the target's, keeping the new kernel's boot core (the boot CPU cannot go); one
  // core of the target's fewer for it, so the count is the spec's.
  MK_ASSIGN_OR_RETURN(kernel::HostObservation obs, kernel_.Observe());
  const kernel::InstanceInfo* info = FindInstance(obs, next);
  if (info == nullptr) return absl::InternalError(absl::StrCat(next, " is gone after the commit"));
  std::vector<uint64_t> target;
  for (int i = 0; i < start.target().cpus_size(); ++i) {
    uint32_t cpu = start.target().cpus(i);
    auto it = topology_->physical_ids.find(cpu);
    target.push_back(it != topology_->physical_ids.end() ? it->second : cpu);
  }
  std::map<uint64_t, int> core_of;  // physical id -> core index
  for (size_t c = 0; c < topology_->cores.size(); ++c) {
    for (uint32_t pu : topology_->cores[c].pus) {
      auto it = topology_->physical_ids.find(pu);
      core_of[it != topology_->physical_ids.end() ? it->second : pu] = static_cast<int>(c);
    }
  }
  const std::vector<uint64_t>& cur = info->resources.cpus;
  std::vector<uint64_t> final_cpus;
  if (!cur.empty() && !target.empty()) {
    // Whole cores, as the planner placed the target: the new kernel's boot core (with its
    // siblings where they are free in the pool) instead of the target's last core(s).
    std::set<uint64_t> lent;  // held by other kernels
    for (const auto& in : obs.instances) {
      if (in.name != next) lent.insert(in.resources.cpus.begin(), in.resources.cpus.end());
    }
    std::set<uint64_t> pool(obs.pool.cpus.begin(), obs.pool.cpus.end());
    final_cpus.push_back(cur[0]);
    auto core = core_of.find(cur[0]);
    std::vector<uint64_t> siblings;
    if (core != core_of.end()) {
      for (uint32_t pu : topology_->cores[core->second].pus) {
        auto it = topology_->physical_ids.find(pu);
        uint64_t p = it != topology_->physical_ids.end() ? it->second : pu;
        bool usable = std::find(cur.begin(), cur.end(), p) != cur.end() || (pool.count(p) && !lent.count(p));
        if (p != cur[0] && usable) siblings.push_back(p);
      }
    }
    if (1 + siblings.size() <= target.size()) final_cpus.insert(final_cpus.end(), siblings.begin(), siblings.end());
    // The target's cores in order, each whole, while they fit.
    std::vector<std::vector<uint64_t>> groups;
    for (uint64_t c : target) {
      int k = core_of.count(c) ? core_of[c] : -1;
      if (groups.empty() || k < 0 || !core_of.count(groups.back().front()) || core_of[groups.back().front()] != k) {
        groups.push_back({});
      }
      groups.back().push_back(c);
    }
    for (const auto& g : groups) {
      std::vector<uint64_t> fresh;
      for (uint64_t c : g) {
        if (std::find(final_cpus.begin(), final_cpus.end(), c) == final_cpus.end()) fresh.push_back(c);
      }
      if (final_cpus.size() + fresh.size() > target.size()) continue;
      final_cpus.insert(final_cpus.end(), fresh.begin(), fresh.end());
    }
  }
  std::vector<kernel::CpuEntry> add, remove;
  for (uint64_t c : final_cpus) {
    if (std::find(cur.begin(), cur.end(), c) == cur.end()) add.push_back({c, 0, 0});
  }
  for (uint64_t c : cur) {
    if (std::find(final_cpus.begin(), final_cpus.end(), c) == final_cpus.end()) remove.push_back({c, 0, 0});
  }
  if (!add.empty()) MK_RETURN_IF_ERROR(kernel_.AddCpus(next, add));
  if (!remove.empty()) MK_RETURN_IF_ERROR(kernel_.RemoveCpus(next, remove));
  // Memory: per NUMA node, the target's bytes.
  MK_ASSIGN_OR_RETURN(auto have, kernel_.InstanceMemory(next));
  std::map<uint32_t, uint64_t> want;
  for (const auto& m : start.target().memory()) want[m.node()] += m.bytes();
  std::vector<kernel::MemoryEntry> more, less;
  for (const auto& [node, bytes] : want) {
    uint64_t h = have.count(node) ? have[node] : 0;
    if (h < bytes) {
      MK_ASSIGN_OR_RETURN(auto blocks, kernel_.FreePoolMemory(node, bytes - h));
      more.insert(more.end(), blocks.begin(), blocks.end());
    }
  }
  for (const auto& [node, bytes] : have) {
    uint64_t w = want.count(node) ? want[node] : 0;
    if (bytes > w) {
      MK_ASSIGN_OR_RETURN(auto regions, kernel_.MemoryToRelease(next, node, bytes - w));
      less.insert(less.end(), regions.begin(), regions.end());
    }
  }
  if (!more.empty()) MK_RETURN_IF_ERROR(kernel_.AddMemory(next, more));
  if (!less.empty()) MK_RETURN_IF_ERROR(kernel_.RemoveMemory(next, less));
  return absl::OkStatus();
}

absl::Status Morpher::RollBack(Run& run) {
  const std::string& old_name = run.record.instance();
  const std::string& next = run.record.start().next();
  v1::KmpMorphRollback rb;
  rb.set_morph_id(run.record.status().id());
  {
    absl::MutexLock lock(&mu_);
    rb.set_reason(run.record.status().reason());
  }
  // The new kernel goes, with whatever it was given (its guest first, best effort).
  if (run.new_conn) (void)run.new_conn->Call(MsgType::kMorphRollback, rb, absl::Seconds(1));
  run.new_conn.reset();
  // Until it is gone: a rollback that left the new kernel (and its surge) behind is no
  // rollback. Retried with backoff; an agent stopping meanwhile leaves the journal at
  // RollingBack, and the next start goes on with it.
  MK_RETURN_IF_ERROR(Retry(run, "MorphRollbackRetry", [&]() -> absl::Status {
    MK_ASSIGN_OR_RETURN(v1::KernelState state, kernel_.StateOf(next));
    // Loaded may be still booting (a kernel that did not come up in time): forced down too.
    if (state == v1::KERNEL_STATE_ACTIVE || state == v1::KERNEL_STATE_FAILED || state == v1::KERNEL_STATE_LOADED) {
      MK_RETURN_IF_ERROR(kernel_.Halt(next, /*force=*/true));
      state = v1::KERNEL_STATE_LOADED;
    }
    if (state == v1::KERNEL_STATE_LOADED) {
      MK_RETURN_IF_ERROR(kernel_.Unload(next));
      state = v1::KERNEL_STATE_READY;
    }
    if (state != v1::KERNEL_STATE_ABSENT) MK_RETURN_IF_ERROR(kernel_.Remove(next));
    return absl::OkStatus();
  }));
  // The old guest resumes its workload (it never stopped running; it may be quiesced).
  absl::Status resumed;
  if (!run.old_conn) {
    uint32_t id = run.old_id;
    if (id == 0) {
      auto obs = kernel_.Observe();
      const kernel::InstanceInfo* old_info = obs.ok() ? FindInstance(*obs, old_name) : nullptr;
      if (old_info != nullptr) id = old_info->id;
    }
    auto conn = dial_ ? dial_(id) : absl::UnavailableError("no guest channel");
    if (conn.ok()) run.old_conn = *std::move(conn);
    resumed = conn.status();
  }
  if (run.old_conn) {
    auto rsp = run.old_conn->Call(MsgType::kMorphRollback, rb, options_.call_timeout);
    // "no morph in progress": it never got as far as PREPARE, nothing to resume.
    resumed = rsp.ok() || absl::StrContains(rsp.status().message(), "no morph in progress") ? absl::OkStatus()
                                                                                          : rsp.status();
  }
  absl::MutexLock lock(&mu_);
  v1::MorphStatus* st = run.record.mutable_status();
  if (!resumed.ok()) st->set_reason(absl::StrCat(st->reason(), "; the old guest did not resume: ", resumed.message()));
  return absl::OkStatus();
}

}  // namespace mkfleet::agents
