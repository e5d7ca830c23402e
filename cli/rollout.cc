// mkapply rollout status|pause|resume|undo|history set/NAME or policy/NAME.
#include <unistd.h>

#include <iostream>
#include <sstream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "google/protobuf/util/json_util.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

constexpr int kBarWidth = 24;

std::string Bar(uint32_t done, uint32_t total) {
  int filled = total == 0 ? kBarWidth : static_cast<int>(static_cast<uint64_t>(done) * kBarWidth / total);
  std::string bar = "[";
  for (int i = 0; i < kBarWidth; ++i) bar += i < filled ? "#" : ".";
  return bar + "]";
}

void PrintStatus(const std::string& key, const v1::RolloutStatus& st, std::ostream& out) {
  out << key << ": revision " << st.revision() << " (stable " << st.stable() << "), "
      << st.phase() << (st.paused() && st.phase() != "Paused" ? " (paused)" : "") << ": " << st.message() << "\n";
  for (const v1::WaveStatus& w : st.waves()) {
    std::string label = w.value() == "canary" ? "canary" : w.value().empty() ? "members" : w.value();
    bool current = st.phase() != "Complete" && w.value() != "canary" && w.value() == st.current_wave() &&
                   st.waves_size() > 1;
    out << "  " << label << std::string(label.size() < 12 ? 12 - label.size() : 1, ' ') << Bar(w.ready(), w.total())
        << " " << w.updated() << "/" << w.total() << " updated, " << w.ready() << " ready, " << w.failed() << " failed"
        << (current ? "  <- current wave" : "") << "\n";
  }
  if (st.failures() > 0) {
    out << "  Failures: " << st.failures() << "\n";
    for (const std::string& r : st.reasons()) out << "    " << r << "\n";
  }
}

void PrintJson(const google::protobuf::Message& m, std::ostream& out) {
  std::string text;
  (void)google::protobuf::util::MessageToJsonString(m, &text);
  out << text << "\n";
}

// The set's generation now (0 if it cannot be read).
int64_t Generation(ControllerClient& client, const std::string& set) {
  v1::GetRequest req;
  req.set_kind("InstanceSet");
  req.set_name(set);
  auto r = client.Get(req);
  if (!r.ok() || r->objects_size() == 0) return 0;
  return r->objects(0).instance_set().metadata().generation();
}

// The newest store revision of a policy and the KernelInstances it selects (0 if they cannot
// be read): a status observed at or after it has seen their last change.
int64_t PolicyFloor(ControllerClient& client, const std::string& policy) {
  v1::GetRequest req;
  req.set_kind("RolloutPolicy");
  req.set_name(policy);
  auto p = client.Get(req);
  if (!p.ok() || p->objects_size() == 0) return 0;
  const v1::RolloutPolicy& rp = p->objects(0).rollout_policy();
  int64_t floor = rp.metadata().revision();
  req.set_kind("KernelInstance");
  req.clear_name();
  auto instances = client.Get(req);
  if (!instances.ok()) return 0;
  for (const v1::Object& o : instances->objects()) {
    const v1::ObjectMeta& m = o.kernel_instance().metadata();
    bool match = true;
    for (const auto& [k, v] : rp.spec().selector().match_labels()) {
      auto l = m.labels().find(k);
      match &= l != m.labels().end() && l->second == v;
    }
    if (match) floor = std::max(floor, m.revision());
  }
  return floor;
}

}  // namespace

int RunRollout(const RolloutOptions& options, std::ostream& out, std::ostream& err) {
  // set/NAME, or KIND NAME.
  std::vector<std::string> parts = options.target;
  if (parts.size() == 1) parts = absl::StrSplit(parts[0], absl::MaxSplits('/', 1));
  if (parts.size() != 2) {
    err << "error: rollout " << options.verb << ": want set/NAME or policy/NAME, got \"" << absl::StrJoin(options.target, " ")
        << "\"\n";
    return kExitInvalid;
  }
  const std::string kind = CanonicalKind(parts[0]);
  const std::string& name = parts[1];
  if (kind != "InstanceSet" && kind != "RolloutPolicy") {
    err << "error: rollouts are per InstanceSet or RolloutPolicy: mkapply rollout " << options.verb
        << " set/NAME or policy/NAME\n";
    return kExitInvalid;
  }
  const std::string key = kind + "/" + name;
  const std::string short_key = (kind == "InstanceSet" ? "set/" : "policy/") + name;
  if (options.watch && options.verb != "status") {
    err << "error: --watch goes with rollout status\n";
    return kExitInvalid;
  }
  if (options.to_revision != 0 && options.verb != "undo") {
    err << "error: --to-revision goes with rollout undo\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::RolloutRequest request;
  request.set_kind(kind);
  request.set_name(name);
  request.set_verb(options.verb);
  request.set_to_revision(options.to_revision);
  auto response = (*client)->Rollout(request);
  if (!response.ok()) return Report(response.status(), options.controller, err);
  if (options.verb == "history") {
    if (options.output == "json") {
      PrintJson(*response, out);
      return kExitOk;
    }
    Table t({"REVISION", "HASH", "TIME", "KERNEL", "CHANGE-CAUSE"});
    for (const v1::RevisionInfo& r : response->revisions()) {
      std::string number = absl::StrCat(r.number());
      if (r.number() == response->status().revision()) number += " (newest)";
      if (r.number() == response->status().stable() && r.number() != response->status().revision()) {
        number += " (stable)";
      }
      t.Add({number, r.hash(), ClockTime(r.time_unix_ms()), r.kernel(),
                r.change_cause().empty() ? "-" : r.change_cause()});
    }
    t.Print(out);
    return kExitOk;
  }
  if (options.verb != "status") {
    out << response->message() << "\n";
    return kExitOk;
  }
  if (!options.watch) {
    if (options.output == "json") {
      PrintJson(response->status(), out);
    } else {
      PrintStatus(key, response->status(), out);
    }
    return kExitOk;
  }
  // --watch: until the status is about the set's current generation (a policy's: a pass saw
  // the last change of it and its instances) and has ended.
  const int64_t floor = kind == "RolloutPolicy" ? PolicyFloor(**client, name) : 0;
  const absl::Time deadline = absl::Now() + options.watch_timeout;
  const bool tty = isatty(STDOUT_FILENO) && &out == &std::cout;
  std::string last;
  while (true) {
    const v1::RolloutStatus& st = response->status();
    const bool current = kind == "InstanceSet" ? st.observed_generation() >= Generation(**client, name)
                                               : st.observed_revision() >= floor;
    std::string text;
    {
      std::ostringstream s;
      PrintStatus(key, st, s);
      text = s.str();
    }
    if (text != last) {
      if (tty && !last.empty()) out << "\n";
      out << text << std::flush;
      last = text;
    }
    if (current && st.phase() == "Complete") return kExitOk;
    if (current && (st.phase() == "Failed" || st.phase() == "RollingBack" || st.phase() == "RolledBack")) {
      err << "error: the rollout of " << key << " to revision " << st.revision() << " failed\n";
      return kExitFailure;
    }
    if (current && st.phase() == "Paused") {
      err << key << ": paused (`mkapply rollout resume " << short_key << "` goes on)\n";
      return kExitPaused;
    }
    if (absl::Now() >= deadline) {
      err << "error: the rollout of " << key << " did not end within "
          << absl::FormatDuration(options.watch_timeout) << "\n";
      return kExitFailure;
    }
    std::this_thread::sleep_for(absl::ToChronoMilliseconds(options.interval));
    request.set_verb("status");
    response = (*client)->Rollout(request);
    if (!response.ok()) return Report(response.status(), options.controller, err);
  }
}

}  // namespace mkfleet::cli
