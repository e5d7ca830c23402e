// mkapply apply / diff, and apply --wait.
#include <signal.h>
#include <unistd.h>
#include <chrono>
#include <map>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "manifests/loader.h"
#include "manifests/printer.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

// What one applied object waits for.
struct Waited {
  std::string kind, name;
  int64_t generation = 0;
  bool pruned = false;  // wait until it is gone
};

// A condition is "bad" when it says something is wrong: Degraded True, any other False.
bool Bad(const v1::Condition& c) {
  return c.type() == "Degraded" ? c.status() == v1::CONDITION_TRUE : c.status() != v1::CONDITION_TRUE;
}

// One line of progress: the phase and the first condition that is not met, with its cause
// (Degraded first: it says why Ready is not).
std::string Progress(const std::string& phase, const google::protobuf::RepeatedPtrField<v1::Condition>& conditions) {
  std::string line = phase;
  const v1::Condition* shown = nullptr;
  for (const char* type : {"Degraded", "Scheduled", "Resized", "Reachable", "PoolValid", "Ready", "PoolSynced"}) {
    const v1::Condition* c = FindCondition(conditions, type);
    if (c != nullptr && Bad(*c)) {
      shown = c;
      break;
    }
  }
  if (shown != nullptr) {
    line += absl::StrCat(" (", shown->type(), ": ", shown->reason(), shown->message().empty() ? "" : ", ",
                         shown->message(), ")");
  }
  return line;
}

// Whether a condition, worked out for the applied generation or a later one, says the
// object failed or cannot get there: waiting on would not help.
std::string Failure(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions, int64_t generation) {
  for (const v1::Condition& c : conditions) {
    if (c.observed_generation() < generation || !Bad(c)) continue;
    bool hopeless = (c.type() == "Degraded" && c.reason() != "HostError") ||
                    (c.type() == "Scheduled" && c.reason() == "Unschedulable") ||
                    (c.type() == "Resized" && c.reason() == "Infeasible") ||
                    (c.type() == "PoolValid" && c.reason() == "Invalid");
    if (hopeless) return absl::StrCat(c.type(), "=", c.status() == v1::CONDITION_TRUE ? "True" : "False", " ", c.reason(),
                                      ": ", c.message());
  }
  return "";
}

bool ConditionTrue(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions, const std::string& type) {
  const v1::Condition* c = FindCondition(conditions, type);
  return c != nullptr && c->status() == v1::CONDITION_TRUE;
}

// Where one object stands: its progress line, whether it is done, or why it failed.
struct Standing {
  std::string progress;
  bool done = false;
  std::string failure;
};

Standing Stand(const Waited& w, const v1::Object& o) {
  Standing s;
  if (o.has_kernel_instance()) {
    const v1::InstanceStatus& st = o.kernel_instance().status();
    s.progress = Progress(st.phase().empty() ? "Pending" : st.phase(), st.conditions());
    s.failure = Failure(st.conditions(), w.generation);
    const v1::Condition* resized = FindCondition(st.conditions(), "Resized");
    s.done = st.observed_generation() >= w.generation && ConditionTrue(st.conditions(), "Ready") &&
             (resized == nullptr || resized->status() == v1::CONDITION_TRUE);
  } else if (o.has_instance_set()) {
    const v1::InstanceSetStatus& st = o.instance_set().status();
    s.progress = Progress(absl::StrCat(st.ready_replicas(), "/", st.replicas(), " ready"), st.conditions());
    s.failure = Failure(st.conditions(), w.generation);
    s.done = st.observed_generation() >= w.generation && ConditionTrue(st.conditions(), "Ready");
  } else if (o.has_host()) {
    const v1::HostStatus& st = o.host().status();
    bool reachable = ConditionTrue(st.conditions(), "Reachable");
    s.progress = Progress(reachable ? "Connected" : "Not connected", st.conditions());
    s.failure = Failure(st.conditions(), w.generation);
    s.done = st.observed_generation() >= w.generation && reachable && ConditionTrue(st.conditions(), "PoolValid");
  } else if (o.has_rollout_policy()) {
    // Done once its instances run their specs (or, after a failed change, the stable ones).
    const v1::RolloutPolicyStatus& st = o.rollout_policy().status();
    const bool ready = ConditionTrue(st.conditions(), "Ready");
    s.progress = Progress(ready ? "Ready" : st.rollout().phase().empty() ? "Pending" : st.rollout().phase(),
                          st.conditions());
    s.failure = Failure(st.conditions(), w.generation);
    s.done = st.observed_generation() >= w.generation && ready;
  } else if (o.has_role_binding()) {
    s.progress = "Stored";  // no status: it takes effect with the next request checked
    s.done = true;
  }
  return s;
}

int Wait(ControllerClient& client, const v1::ApplyResponse& applied, const ApplyOptions& options, std::ostream& out,
         std::ostream& err) {
  out.flush();
  ExitOnInterruptSaying(
      "\ninterrupted: the apply is committed; the controller goes on carrying it out. Keep watching with "
      "`mkapply events -f` or `mkapply get instances -w`, or wait again with the same `mkapply apply ... --wait` "
      "(it changes nothing more).\n");
  std::vector<Waited> pending;
  for (const v1::ObjectChange& c : applied.changes()) {
    // What this apply changed: an unchanged object's state is not this apply's doing.
    if (c.change() == "unchanged" || c.change() == "adopted") continue;
    pending.push_back({c.kind(), c.name(), c.generation(), c.change() == "pruned"});
  }
  std::map<std::string, std::string> last;  // "Kind/name" -> its last progress line
  auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(options.wait_timeout);
  while (true) {
    std::vector<std::string> failures;
    for (auto it = pending.begin(); it != pending.end();) {
      const std::string id = absl::StrCat(it->kind, "/", it->name);
      v1::GetRequest req;
      req.set_kind(it->kind);
      req.set_name(it->name);
      auto got = client.Get(req);
      Standing s;
      if (got.status().code() == absl::StatusCode::kNotFound) {
        s.progress = "deleted";
        s.done = it->pruned;
        if (!it->pruned) s.failure = "it was deleted meanwhile";
      } else if (!got.ok()) {
        return Report(got.status(), options.controller, err);
      } else if (got->objects_size() == 1) {
        s = Stand(*it, got->objects(0));
        if (it->pruned) s.done = false;
      }
      if (last[id] != s.progress) {
        out << id << ": " << s.progress << std::endl;
        last[id] = s.progress;
      }
      if (!s.failure.empty()) failures.push_back(absl::StrCat(id, ": ", s.failure));
      it = s.done ? pending.erase(it) : std::next(it);
    }
    if (!failures.empty()) {
      // Fail fast with the real cause: waiting on would not change it.
      for (const std::string& f : failures) err << "error: " << f << "\n";
      return kExitFailure;
    }
    if (pending.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      std::vector<std::string> left;
      for (const Waited& w : pending) {
        const std::string id = absl::StrCat(w.kind, "/", w.name);
        left.push_back(absl::StrCat(id, " (", last[id], ")"));
      }
      err << "error: timed out after " << absl::FormatDuration(options.wait_timeout) << "; not done: "
          << absl::StrJoin(left, ", ") << "\n";
      return kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  out << "all ready\n";
  return kExitOk;
}

}  // namespace

std::string UnifiedDiff(const std::string& from_name, const std::string& to_name, const std::string& from,
                        const std::string& to, int context) {
  std::vector<std::string> a = absl::StrSplit(from, '\n', absl::SkipEmpty());
  std::vector<std::string> b = absl::StrSplit(to, '\n', absl::SkipEmpty());
  // The longest common subsequence of lines (manifests are short: a table is fine).
  const size_t n = a.size(), m = b.size();
  std::vector<std::vector<uint32_t>> lcs(n + 1, std::vector<uint32_t>(m + 1, 0));
  for (size_t i = n; i-- > 0;) {
    for (size_t j = m; j-- > 0;) {
      lcs[i][j] = a[i] == b[j] ? lcs[i + 1][j + 1] + 1 : std::max(lcs[i + 1][j], lcs[i][j + 1]);
    }
  }
  // The edit script: ' ' kept, '-' only in a, '+' only in b, with each line's numbers.
  struct Line {
    char op;
    size_t ai, bi;
  };
  std::vector<Line> script;
  size_t i = 0, j = 0;
  while (i < n || j < m) {
    if (i < n && j < m && a[i] == b[j]) {
      script.push_back({' ', i++, j++});
    } else if (i < n && (j == m || lcs[i + 1][j] >= lcs[i][j + 1])) {
      script.push_back({'-', i++, j});  // removals first, as diff -u prints them
    } else {
      script.push_back({'+', i, j++});
    }
  }
  std::string out;
  // Hunks: the changed lines with `context` lines around them.
  size_t k = 0;
  while (k < script.size()) {
    if (script[k].op == ' ') {
      ++k;
      continue;
    }
    size_t start = k >= static_cast<size_t>(context) ? k - context : 0;
    size_t end = k;
    // Extend while another change is within 2 * context lines.
    while (true) {
      size_t next = end;
      while (next < script.size() && script[next].op != ' ') ++next;
      size_t gap = next;
      while (gap < script.size() && script[gap].op == ' ') ++gap;
      end = next;
      if (gap < script.size() && gap - next <= static_cast<size_t>(2 * context)) {
        end = gap;
        continue;
      }
      break;
    }
    const size_t stop = std::min(script.size(), end + context);
    size_t a_start = script[start].ai, b_start = script[start].bi, a_len = 0, b_len = 0;
    std::string body;
    for (size_t x = start; x < stop; ++x) {
      const Line& l = script[x];
      if (l.op != '+') ++a_len;
      if (l.op != '-') ++b_len;
      absl::StrAppend(&body, std::string(1, l.op), l.op == '+' ? b[l.bi] : a[l.ai], "\n");
    }
    if (out.empty()) absl::StrAppend(&out, "--- ", from_name, "\n+++ ", to_name, "\n");
    absl::StrAppend(&out, "@@ -", a_len == 0 ? a_start : a_start + 1, ",", a_len, " +", b_len == 0 ? b_start : b_start + 1,
                    ",", b_len, " @@\n", body);
    k = stop;
  }
  return out;
}

namespace {

int ApplyOrDiff(const ApplyOptions& options, bool diff, std::ostream& out, std::ostream& err) {
  manifests::LoadResult loaded;
  if (!LoadForController(options.paths, &loaded, err)) return kExitInvalid;
  v1::ApplyRequest request;
  for (const manifests::LoadedObject& o : loaded.objects) *request.add_objects() = o.object;
  request.set_source(options.source.empty() ? absl::StrJoin(options.paths, ",") : options.source);
  request.set_message(options.message);
  request.set_prune(options.prune);
  request.set_force_conflicts(options.force_conflicts);
  request.set_dry_run(diff || options.dry_run);
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  auto response = request.dry_run() ? (*client)->Diff(request) : (*client)->Apply(request);
  if (!response.ok()) return Report(response.status(), options.controller, err);
  bool changes = false;
  for (const v1::ObjectChange& c : response->changes()) {
    out << c.kind() << "/" << c.name() << " " << c.change() << (request.dry_run() ? " (dry run)" : "") << "\n";
    for (const std::string& action : c.actions()) out << "  " << action << "\n";
    if (c.change() != "unchanged" || c.actions_size() > 0) changes = true;
    if (!diff || c.change() == "unchanged") continue;
    // diff: the fields, as the stored object and the manifest print (unified, like kubectl diff).
    std::string live, wanted;
    v1::GetRequest get;
    get.set_kind(c.kind());
    get.set_name(c.name());
    auto stored = (*client)->Get(get);
    if (stored.ok() && stored->objects_size() == 1) live = manifests::PrintYaml(stored->objects(0));
    for (const manifests::LoadedObject& o : loaded.objects) {
      if (manifests::KindOf(o.object) == c.kind() && manifests::MetadataOf(o.object).name() == c.name()) {
        wanted = manifests::PrintYaml(o.object);
      }
    }
    if (c.change() == "pruned") wanted.clear();
    out << UnifiedDiff(live.empty() ? "/dev/null" : "live/" + c.kind() + "/" + c.name(),
                       wanted.empty() ? "/dev/null" : "new/" + c.kind() + "/" + c.name(), live, wanted, 3);
  }
  // diff: exit 1 when something would change, like diff(1).
  if (diff && changes) return kExitFailure;
  if (options.wait && !request.dry_run()) return Wait(**client, *response, options, out, err);
  return kExitOk;
}

}  // namespace

int RunApply(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return ApplyOrDiff(options, false, out, err);
}

namespace {

int PrintDrift(const v1::GetResponse& hosts, std::ostream& out);

// diff --live: the drift the controller records in each Host's status.
int DiffLive(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return WithHosts(options.controller, options.request_timeout, options.tls, err,
                   [&](const v1::GetResponse& hosts) { return PrintDrift(hosts, out); });
}

int PrintDrift(const v1::GetResponse& hosts, std::ostream& out) {
  Table t({"HOST", "OBJECT", "FIELD", "WANTED", "FOUND", "POLICY", "SINCE"});
  for (const v1::Object& o : hosts.objects()) {
    for (const v1::Drift& d : o.host().status().drift()) {
      t.Add({o.host().metadata().name(), d.object(), d.field(), d.wanted(), d.found(), d.policy(),
             ClockTime(d.since_unix_ms())});
    }
  }
  if (t.rows() == 0) {
    out << "no drift: every host runs what mkfleet made it run\n";
    return kExitOk;
  }
  t.Print(out);
  return kExitFailure;
}

}  // namespace

int RunDiff(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  if (options.live) {
    if (!options.paths.empty()) {
      err << "error: diff --live compares the hosts with the stored objects; it takes no -f\n";
      return kExitInvalid;
    }
    return DiffLive(options, out, err);
  }
  if (options.paths.empty()) {
    err << "error: diff needs -f PATH (or --live)\n";
    return kExitInvalid;
  }
  return ApplyOrDiff(options, true, out, err);
}

}  // namespace mkfleet::cli
