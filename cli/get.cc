// mkapply get.
#include <algorithm>
#include <functional>
#include <map>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/output.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "google/protobuf/util/json_util.h"
#include "manifests/loader.h"
#include "manifests/printer.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

int PrintUnmanagedOf(const v1::GetResponse& hosts, std::ostream& out, std::ostream& err);

// The kernels that run on hosts without an object owning them, from the hosts' statuses.
int PrintUnmanaged(const GetOptions& options, std::ostream& out, std::ostream& err) {
  return WithHosts(options.controller, options.request_timeout, options.tls, err,
                   [&](const v1::GetResponse& hosts) { return PrintUnmanagedOf(hosts, out, err); });
}

int PrintUnmanagedOf(const v1::GetResponse& hosts, std::ostream& out, std::ostream& err) {
  Table t({"HOST", "NAME", "STATE", "CPUS", "CPU-LIST", "MEMORY", "OWNER"});
  for (const v1::Object& o : hosts.objects()) {
    for (const v1::KernelRef& k : o.host().status().unmanaged()) {
      t.Add({o.host().metadata().name(), k.name(), v1::KernelState_Name(k.kernel_state()).substr(13),
             std::to_string(k.placement().cpus_size()),
             Ranges(std::vector<uint32_t>(k.placement().cpus().begin(), k.placement().cpus().end())),
             Bytes(SumBytes(k.placement().memory())), k.owner().empty() ? "-" : k.owner()});
    }
  }
  if (t.rows() == 0) {
    err << "no unmanaged kernels\n";
    return kExitOk;
  }
  t.Print(out);
  return kExitOk;
}

}  // namespace

// "45s", "3m", "2h", "4d": how long ago, in its largest unit.
std::string Age(int64_t ms) {
  int64_t s = std::max<int64_t>(0, ms / 1000);
  if (s < 120) return absl::StrCat(s, "s");
  if (s < 7200) return absl::StrCat(s / 60, "m");
  if (s < 172800) return absl::StrCat(s / 3600, "h");
  return absl::StrCat(s / 86400, "d");
}

// `get controllers`: the control plane's members, which leads, and who owns what.
int PrintControllers(const GetOptions& options, std::ostream& out, std::ostream& err) {
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  auto got = (*client)->Controllers();
  if (!got.ok()) return Report(got.status(), options.controller, err);
  if (options.output == "json" || options.output == "yaml") {
    google::protobuf::util::JsonPrintOptions json;
    json.add_whitespace = true;
    std::string text;
    (void)google::protobuf::util::MessageToJsonString(*got, &text, json);
    out << text;
    return kExitOk;
  }
  if (got->mode() == "single") {
    out << "one controller (no --ha): " << options.controller << " reconciles the whole fleet\n";
    return kExitOk;
  }
  Table t({"NAME", "ADDRESS", "ROLE", "HOSTS", "VERSION", "AGE"});
  const int64_t now = absl::ToUnixMillis(absl::Now());
  for (const v1::ControllerMember& m : got->members()) {
    std::string hosts = got->mode() == "sharded" ? std::to_string(m.hosts()) : (m.leader() ? "all" : "-");
    t.Add({m.name(), m.address(), m.leader() ? "leader" : (got->mode() == "sharded" ? "member" : "follower"), hosts,
           m.version(), Age(now - m.started_unix_ms())});
  }
  t.Print(out);
  if (got->mode() == "sharded") {
    out << got->shards() << " shards over " << got->members_size()
        << " members: each sends to the hosts it owns, the leader plans for all (-o json lists the hosts)\n";
  }
  if (got->leader().empty()) err << "no leader elected at the moment (one is when a member's lease allows)\n";
  return kExitOk;
}

namespace {

// The table of `objects`, all of `kind`.
void PrintTable(const std::string& kind, const std::vector<v1::Object>& objects, const GetOptions& options,
                std::ostream& out);

// One object's table row (its header: `header`).
std::string Row(const v1::Object& o, const GetOptions& options, std::string* header) {
  std::ostringstream table;
  GetOptions plain = options;
  plain.colour = false;
  PrintTable(std::string(manifests::KindOf(o)), {o}, plain, table);
  const std::string text = table.str();
  const size_t eol = text.find('\n');
  if (header != nullptr) *header = text.substr(0, eol);
  return text.substr(eol + 1);
}

// get -w: the rows of `objects`, then a row whenever one changes, appears (a new one of a
// listed type) or goes ("deleted"), polling the controller every watch_every. Ends with the
// controller unreachable (1) or never (Ctrl-C).
int Watch(ControllerClient& client, const std::vector<Target>& targets, const Selector& selector,
          const std::vector<v1::Object>& objects, const GetOptions& options, std::ostream& out, std::ostream& err) {
  std::map<std::string, std::string> last;  // Kind/name -> its row
  std::string header;
  for (const v1::Object& o : objects) {
    std::string row = Row(o, options, header.empty() ? &header : nullptr);
    if (last.empty()) out << header << "\n";
    out << row;
    last[NameOf(o)] = row;
  }
  out.flush();
  while (true) {
    absl::SleepFor(options.watch_every);
    std::map<std::string, std::string> now;
    for (const Target& t : targets) {
      v1::GetRequest request;
      request.set_kind(t.kind);
      request.set_name(t.name);
      auto got = client.Get(request);
      if (!got.ok() && got.status().code() == absl::StatusCode::kNotFound) continue;
      if (!got.ok()) return Report(got.status(), options.controller, err);
      for (const v1::Object& o : got->objects()) {
        if (!selector.Matches(manifests::MetadataOf(o).labels())) continue;
        std::string row = Row(o, options, header.empty() ? &header : nullptr);
        if (last.empty() && now.empty()) out << header << "\n";
        auto it = last.find(NameOf(o));
        if (it == last.end() || it->second != row) out << row;
        now[NameOf(o)] = row;
      }
    }
    for (const auto& [name, row] : last) {
      if (now.count(name) == 0) out << name << " deleted\n";
    }
    out.flush();
    last = std::move(now);
  }
}

}  // namespace

int RunGet(const GetOptions& options, std::ostream& out, std::ostream& err) {
  std::vector<std::string> args = options.args;
  if (args.empty() && !options.kind.empty()) {
    args.push_back(options.kind);
    if (!options.name.empty()) args.push_back(options.name);
  }
  if (!args.empty() && (args[0] == "controllers" || args[0] == "controller")) return PrintControllers(options, out, err);
  Selector selector;
  if (!ParseSelector(options.selector, &selector, err)) return kExitInvalid;
  std::vector<Target> targets;
  if (!ResolveTargets(args, "get", selector, &targets, err)) return kExitInvalid;
  if (options.unmanaged) {
    if (targets.size() != 1 || targets[0].kind != "KernelInstance" || !targets[0].name.empty()) {
      err << "error: --unmanaged lists instances (get instances --unmanaged)\n";
      return kExitInvalid;
    }
    return PrintUnmanaged(options, out, err);
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  // Each target in the order given; a name that does not exist is said, and the others
  // still printed (exit 1).
  std::vector<v1::Object> objects;
  int code = kExitOk;
  for (const Target& t : targets) {
    v1::GetRequest request;
    request.set_kind(t.kind);
    request.set_name(t.name);
    auto got = (*client)->Get(request);
    if (!got.ok()) {
      if (got.status().code() != absl::StatusCode::kNotFound) return Report(got.status(), options.controller, err);
      err << "error: " << t.kind << "/" << t.name << " does not exist\n";
      code = kExitFailure;
      continue;
    }
    for (const v1::Object& o : got->objects()) {
      if (selector.Matches(manifests::MetadataOf(o).labels())) objects.push_back(o);
    }
  }
  if (IsObjectFormat(options.output)) {
    // One object named: the object itself (kubectl's way); else a List.
    const bool single = targets.size() == 1 && !targets[0].name.empty();
    auto text = FormatObjects(objects, single, options.output);
    if (!text.ok()) {
      err << "error: " << text.status().message() << "\n";
      return kExitInvalid;
    }
    out << *text;
    if (objects.empty() && code == kExitOk && options.output != "json" && options.output != "yaml") {
      err << "no " << targets[0].kind << " objects" << (selector.empty() ? "" : " match -l " + options.selector)
          << "\n";
    }
    return code;
  }
  if (objects.empty()) {
    if (code == kExitOk) {
      err << "no " << targets[0].kind << " objects" << (selector.empty() ? "" : " match -l " + options.selector)
          << "\n";
    }
    return code;
  }
  if (options.watch) return Watch(**client, targets, selector, objects, options, out, err);
  // A table per kind, in the order the kinds came.
  std::vector<std::string> kinds;
  for (const v1::Object& o : objects) {
    std::string k(manifests::KindOf(o));
    if (std::find(kinds.begin(), kinds.end(), k) == kinds.end()) kinds.push_back(k);
  }
  for (size_t i = 0; i < kinds.size(); ++i) {
    std::vector<v1::Object> of;
    for (const v1::Object& o : objects) {
      if (manifests::KindOf(o) == kinds[i]) of.push_back(o);
    }
    if (i > 0) out << "\n";
    PrintTable(kinds[i], of, options, out);
  }
  return code;
}

namespace {

void PrintTable(const std::string& kind, const std::vector<v1::Object>& objects, const GetOptions& options,
                std::ostream& out) {
  const bool wide = options.output == "wide";
  std::function<std::string(const std::string&)> colour;
  if (options.colour) colour = PhaseColour;
  if (kind == "KernelInstance") {
    std::vector<std::string> header = {"NAME", "PHASE", "HOST", "CPUS", "MEMORY", "ROLE", "RESTARTS"};
    if (wide) {
      for (const char* h : {"KERNEL", "OWNER", "CPU-LIST", "DEVICES", "GENERATION", "SOURCE"}) header.push_back(h);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      const v1::KernelInstance& ki = o.kernel_instance();
      const v1::InstanceStatus& st = ki.status();
      std::string host = st.placement().host().empty() ? ki.spec().host() : st.placement().host();
      std::vector<std::string> row = {ki.metadata().name(), st.phase().empty() ? "-" : st.phase(),
                                      host.empty() ? "-" : host, std::to_string(st.placement().cpus_size()),
                                      Bytes(SumBytes(st.placement().memory())), st.role().empty() ? "-" : st.role(),
                                      std::to_string(st.restart_count())};
      if (wide) {
        std::vector<std::string> devices;
        for (const auto& d : st.placement().devices()) devices.push_back(d.pci());
        std::vector<uint32_t> cpus(st.placement().cpus().begin(), st.placement().cpus().end());
        for (std::string cell : {st.kernel().empty() ? "-" : st.kernel(), st.owner().empty() ? "-" : st.owner(),
                                 Ranges(cpus), devices.empty() ? "-" : absl::StrJoin(devices, ","),
                                 absl::StrCat(ki.metadata().generation()),
                                 SourceText(ki.metadata())}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out, 1, colour);
  } else if (kind == "Host") {
    std::vector<std::string> header = {"NAME", "REACHABLE", "DIALECT", "CPUS-FREE", "MEMORY-FREE", "DEVICES-FREE"};
    if (wide) {
      for (const char* h : {"AGENT", "VERSION", "LABELS", "GENERATION", "SOURCE"}) header.push_back(h);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      const v1::Host& h = o.host();
      const v1::HostStatus& st = h.status();
      bool known = FindCondition(st.conditions(), "Reachable") != nullptr;
      std::vector<std::string> row = {
          h.metadata().name(),
          absl::StrCat(known ? (st.reachable() ? "yes" : "no") : "-", h.spec().drain()      ? ",draining"
                                                                    : h.spec().cordoned() ? ",cordoned"
                                                                                          : ""),
          st.dialect().empty() ? "-" : st.dialect(),
          absl::StrCat(st.pool().cpus_free_size(), "/", st.pool().cpus_size()),
          absl::StrCat(Bytes(SumBytes(st.pool().memory_free())), "/", Bytes(SumBytes(st.pool().memory()))),
          absl::StrCat(st.pool().devices_free_size(), "/", st.pool().devices_size())};
      if (wide) {
        const std::string labels = LabelsText(h.metadata().labels());
        for (std::string cell : {h.spec().agent(), st.agent_version().empty() ? "-" : st.agent_version(),
                                 labels.empty() ? "-" : labels,
                                 absl::StrCat(h.metadata().generation()),
                                 SourceText(h.metadata())}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out, 1, colour);
  } else if (kind == "RolloutPolicy") {
    // As for sets: CURRENT the stable revision (->the newest while a rollout moves to it).
    Table t({"NAME", "SELECTOR", "INSTANCES", "CURRENT", "ROLLOUT", "MESSAGE"});
    for (const v1::Object& o : objects) {
      const v1::RolloutPolicy& p = o.rollout_policy();
      const v1::RolloutPolicyStatus& st = p.status();
      const std::string selector = LabelsText(p.spec().selector().match_labels());
      std::string current = st.current_revision() == 0 ? "-" : absl::StrCat(st.current_revision());
      if (st.update_revision() != 0 && st.update_revision() != st.current_revision()) {
        absl::StrAppend(&current, "->", st.update_revision());
      }
      t.Add({p.metadata().name(), selector.empty() ? "-" : selector, std::to_string(st.members()),
             current, st.rollout().phase().empty() ? "-" : st.rollout().phase(),
             st.rollout().message().empty() ? "-" : st.rollout().message()});
    }
    t.Print(out);
  } else if (kind == "GitSource") {
    // READY and the applied commit first: what Flux's `flux get sources git` shows.
    std::vector<std::string> header = {"NAME", "READY", "APPLIED", "FETCHED", "OBJECTS", "MESSAGE"};
    if (wide) {
      for (const char* h : {"URL", "REF", "PATH", "SUSPENDED", "NEXT-FETCH"}) header.push_back(h);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      const v1::GitSource& g = o.git_source();
      const v1::GitSourceStatus& st = g.status();
      const v1::Condition* ready = FindCondition(st.conditions(), "Ready");
      std::string message = ready == nullptr ? "-" : ready->message();
      std::vector<std::string> row = {
          g.metadata().name(),
          ready == nullptr ? "-" : (ready->status() == v1::CONDITION_TRUE ? "True" : "False"),
          st.last_applied().sha().empty() ? "-" : st.last_applied().sha().substr(0, 7),
          st.last_fetched().sha().empty() ? "-" : st.last_fetched().sha().substr(0, 7),
          std::to_string(st.objects()), message};
      if (wide) {
        for (std::string cell : {g.spec().url(), RefText(g.spec().ref(), /*short_commit=*/true), g.spec().path().empty() ? std::string("/") : g.spec().path(),
                                 std::string(g.spec().suspend() ? "yes" : "no"),
                                 st.next_fetch_unix_ms() == 0 ? "-" : ClockTime(st.next_fetch_unix_ms())}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out);
  } else if (kind == "RoleBinding") {
    Table t({"NAME", "ROLE", "SUBJECTS"});
    for (const v1::Object& o : objects) {
      const v1::RoleBinding& b = o.role_binding();
      std::vector<std::string> subjects;
      for (const v1::Subject& s : b.spec().subjects()) {
        subjects.push_back(absl::StrCat(s.kind() == v1::SUBJECT_GROUP ? "Group/" : "User/", s.name()));
      }
      t.Add({b.metadata().name(), RoleText(b.spec().role()), subjects.empty() ? "-" : absl::StrJoin(subjects, ",")});
    }
    t.Print(out);
  } else {
    // CURRENT: the revision most members run (the stable one) and the newest when a rollout
    // moves to it; ROLLOUT: its phase.
    std::vector<std::string> header = {"NAME", "REPLICAS", "CURRENT", "UPDATED", "READY", "ROLLOUT"};
    if (wide) {
      for (const char* h : {"COUNT", "SELECTOR", "GENERATION", "SOURCE"}) header.push_back(h);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      const v1::InstanceSet& s = o.instance_set();
      const v1::InstanceSetStatus& st = s.status();
      std::string current = st.current_revision() == 0 ? "-" : absl::StrCat(st.current_revision());
      if (st.update_revision() != 0 && st.update_revision() != st.current_revision()) {
        absl::StrAppend(&current, "->", st.update_revision());
      }
      std::string rollout = st.rollout().phase().empty() ? "-" : st.rollout().phase();
      if (rollout == "Progressing" && !st.rollout().current_wave().empty()) {
        absl::StrAppend(&rollout, " (", st.rollout().current_wave(), ")");
      }
      std::vector<std::string> row = {s.metadata().name(), std::to_string(st.replicas()), current,
                                      std::to_string(st.updated_replicas()), std::to_string(st.ready_replicas()),
                                      rollout};
      if (wide) {
        const std::string selector = LabelsText(s.spec().host_selector().match_labels());
        std::string count = s.spec().has_per_host() ? absl::StrCat("perHost ", s.spec().per_host())
                                                    : absl::StrCat("replicas ", s.spec().replicas());
        for (std::string cell : {count, selector.empty() ? "-" : selector,
                                 absl::StrCat(s.metadata().generation()),
                                 SourceText(s.metadata())}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out);
  }
}

}  // namespace

}  // namespace mkfleet::cli
