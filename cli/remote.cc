// The mkapply commands that talk to mkcontroller over gRPC.
#include <algorithm>
#include <chrono>
#include <cstdio>
#include <deque>
#include <functional>
#include <iomanip>
#include <map>
#include <memory>
#include <thread>

#include "absl/strings/ascii.h"
#include "absl/strings/str_cat.h"
#include "absl/time/time.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "google/protobuf/util/json_util.h"
#include "grpcpp/grpcpp.h"
#include "manifests/loader.h"
#include "manifests/printer.h"
#include "mkfleet/v1/controller.grpc.pb.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

std::unique_ptr<v1::Controller::Stub> Connect(const std::string& address) {
  grpc::ChannelArguments args;
  args.SetMaxReceiveMessageSize(1 << 30);  // a fleet's instances in one list
  return v1::Controller::NewStub(grpc::CreateCustomChannel(address, grpc::InsecureChannelCredentials(), args));
}

// "0-3,8,10-11" for a sorted or unsorted CPU list.
std::string Ranges(std::vector<uint32_t> v) {
  std::sort(v.begin(), v.end());
  std::string out;
  for (size_t i = 0; i < v.size();) {
    size_t j = i;
    while (j + 1 < v.size() && v[j + 1] == v[j] + 1) ++j;
    if (!out.empty()) out += ",";
    out += j == i ? std::to_string(v[i]) : absl::StrCat(v[i], "-", v[j]);
    i = j + 1;
  }
  return out.empty() ? "-" : out;
}

std::string Bytes(uint64_t b) {
  if (b == 0) return "0";
  if (b % (1ull << 30) == 0) return absl::StrCat(b >> 30, "Gi");
  char buf[32];
  if (b >= (1ull << 30)) {
    std::snprintf(buf, sizeof(buf), "%.1fGi", b / double(1ull << 30));
    return buf;
  }
  if (b % (1ull << 20) == 0) return absl::StrCat(b >> 20, "Mi");
  return absl::StrCat(b);
}

// A table with columns as wide as their widest cell, two spaces apart.
class Table {
 public:
  explicit Table(std::vector<std::string> header) { rows_.push_back(std::move(header)); }
  void Add(std::vector<std::string> row) { rows_.push_back(std::move(row)); }
  // `colour` maps a cell of column `col` to an ANSI colour code ("" for none).
  void Print(std::ostream& out, int col = -1, const std::function<std::string(const std::string&)>& colour = {}) {
    std::vector<size_t> width;
    for (const auto& r : rows_) {
      if (width.size() < r.size()) width.resize(r.size(), 0);
      for (size_t i = 0; i < r.size(); ++i) width[i] = std::max(width[i], r[i].size());
    }
    for (size_t n = 0; n < rows_.size(); ++n) {
      const auto& r = rows_[n];
      std::string line;
      for (size_t i = 0; i < r.size(); ++i) {
        std::string cell = r[i];
        std::string code = n > 0 && static_cast<int>(i) == col && colour ? colour(cell) : "";
        if (i + 1 < r.size()) cell += std::string(width[i] - r[i].size() + 2, ' ');
        line += code.empty() ? cell : absl::StrCat("\033[", code, "m", r[i], "\033[0m", cell.substr(r[i].size()));
      }
      out << line << "\n";
    }
  }

 private:
  std::vector<std::vector<std::string>> rows_;
};

std::string PhaseColour(const std::string& phase) {
  if (phase == "Running" || phase == "Ready" || phase == "Loaded" || phase == "yes") return "32";
  if (phase == "Failed" || phase == "no") return "31";
  return "33";
}

const v1::Condition* FindCondition(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions,
                                   const std::string& type) {
  for (const v1::Condition& c : conditions) {
    if (c.type() == type) return &c;
  }
  return nullptr;
}

uint64_t SumBytes(const google::protobuf::RepeatedPtrField<v1::NodeBytes>& v) {
  uint64_t total = 0;
  for (const auto& nb : v) total += nb.bytes();
  return total;
}

void PrintConditions(const google::protobuf::RepeatedPtrField<v1::Condition>& conditions, std::ostream& out) {
  if (conditions.empty()) {
    out << "Conditions:   (none yet)\n";
    return;
  }
  out << "Conditions:\n";
  Table t({"  TYPE", "STATUS", "REASON", "MESSAGE"});
  for (const v1::Condition& c : conditions) {
    t.Add({"  " + c.type(), c.status() == v1::CONDITION_TRUE ? "True" : "False", c.reason(),
           c.message().empty() ? "-" : c.message()});
  }
  t.Print(out);
}

void SetDeadline(grpc::ClientContext& ctx, int seconds) {
  ctx.set_deadline(std::chrono::system_clock::now() + std::chrono::seconds(seconds));
}

// Prints a failed call and maps it to an exit code.
// "hosts" -> "Host" ...; false (and the error on `err`) for an unknown kind.
bool ResolveKind(const std::string& given, std::string* kind, std::ostream& err) {
  *kind = CanonicalKind(given);
  if (kind->empty()) err << "error: unknown kind \"" << given << "\" (Host, KernelInstance or InstanceSet)\n";
  return !kind->empty();
}

// Loads manifests for the controller (which checks host references against its store
// too); false with every error on `err` when any is invalid.
bool LoadForController(const std::vector<std::string>& paths, manifests::LoadResult* loaded, std::ostream& err) {
  manifests::LoadOptions load_options;
  load_options.check_host_references = false;
  *loaded = manifests::LoadPaths(paths, load_options);
  if (loaded->ok()) return true;
  for (const manifests::Diagnostic& d : loaded->errors) err << d.ToString() << "\n";
  err << loaded->errors.size() << (loaded->errors.size() == 1 ? " error" : " errors") << "; nothing was changed\n";
  return false;
}

int Report(const grpc::Status& s, const std::string& controller, std::ostream& err) {
  switch (s.error_code()) {
    case grpc::StatusCode::UNAVAILABLE:
    case grpc::StatusCode::DEADLINE_EXCEEDED:
      err << "error: cannot reach the controller at " << controller << ": " << s.error_message() << "\n";
      return kExitFailure;
    case grpc::StatusCode::INVALID_ARGUMENT:
      err << "error: " << s.error_message() << "\nnothing was changed\n";
      return kExitInvalid;
    default:
      err << "error: " << s.error_message() << "\n";
      return kExitFailure;
  }
}

bool IsReady(const v1::KernelInstance& ki) {
  if (ki.status().observed_generation() != ki.metadata().generation()) return false;
  for (const v1::Condition& c : ki.status().conditions()) {
    if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
  }
  return false;
}

// One line on what an instance waits for: its phase and the first condition that is not met.
std::string Progress(const v1::KernelInstance& ki) {
  std::string line = ki.status().phase().empty() ? "Pending" : ki.status().phase();
  for (const v1::Condition& c : ki.status().conditions()) {
    bool bad = c.type() == "Degraded" ? c.status() == v1::CONDITION_TRUE : c.status() != v1::CONDITION_TRUE;
    if (bad && c.type() != "Progressing") {
      line += " (" + c.type() + ": " + c.reason() + (c.message().empty() ? "" : ", " + c.message()) + ")";
      break;
    }
  }
  return line;
}

// Whether an InstanceSet has caught up with its spec: every member Ready at this generation.
bool SetReady(const v1::InstanceSet& set) {
  if (set.status().observed_generation() != set.metadata().generation()) return false;
  for (const v1::Condition& c : set.status().conditions()) {
    if (c.type() == "Ready") return c.status() == v1::CONDITION_TRUE;
  }
  return false;
}

std::string SetProgress(const v1::InstanceSet& set) {
  std::string line = absl::StrCat(set.status().ready_replicas(), "/", set.status().replicas(), " ready");
  for (const v1::Condition& c : set.status().conditions()) {
    if (c.type() == "Scheduled" && c.status() != v1::CONDITION_TRUE) {
      line += " (Scheduled: " + c.reason() + (c.message().empty() ? "" : ", " + c.message()) + ")";
    }
  }
  return line;
}

// Waits until every applied KernelInstance and InstanceSet is Ready (pruned ones gone),
// printing each one's progress when it changes.
int WaitForInstances(v1::Controller::Stub& stub, const v1::ApplyResponse& applied, const ApplyOptions& options,
                     std::ostream& out, std::ostream& err) {
  std::map<std::pair<std::string, std::string>, bool> pending;  // (kind, name) -> pruned (wait until gone)
  for (const v1::ObjectChange& c : applied.changes()) {
    if (c.kind() == "KernelInstance" || c.kind() == "InstanceSet") pending[{c.kind(), c.name()}] = c.change() == "pruned";
  }
  std::map<std::pair<std::string, std::string>, std::string> last;
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(options.wait_seconds);
  while (!pending.empty()) {
    for (auto it = pending.begin(); it != pending.end();) {
      const auto& [kind, name] = it->first;
      grpc::ClientContext ctx;
      SetDeadline(ctx, options.timeout_seconds);
      v1::GetRequest req;
      req.set_kind(kind);
      req.set_name(name);
      v1::GetResponse resp;
      grpc::Status s = stub.Get(&ctx, req, &resp);
      std::string now;
      bool done = false;
      if (s.error_code() == grpc::StatusCode::NOT_FOUND) {
        now = "deleted";
        done = it->second;
      } else if (!s.ok()) {
        return Report(s, options.controller, err);
      } else if (resp.objects_size() == 1 && kind == "KernelInstance") {
        const v1::KernelInstance& ki = resp.objects(0).kernel_instance();
        now = Progress(ki);
        done = !it->second && IsReady(ki);
      } else if (resp.objects_size() == 1) {
        const v1::InstanceSet& set = resp.objects(0).instance_set();
        now = SetProgress(set);
        done = !it->second && SetReady(set);
      }
      if (last[it->first] != now) {
        out << kind << "/" << name << ": " << now << std::endl;
        last[it->first] = now;
      }
      it = done ? pending.erase(it) : std::next(it);
    }
    if (pending.empty()) break;
    if (std::chrono::steady_clock::now() >= deadline) {
      err << "error: timed out after " << options.wait_seconds << "s; not ready:";
      for (const auto& [key, pruned] : pending) err << " " << key.second << " (" << last[key] << ")";
      err << "\n";
      return kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
  }
  out << "all ready\n";
  return kExitOk;
}

int ApplyOrDiff(const ApplyOptions& options, bool dry_run, std::ostream& out, std::ostream& err) {
  manifests::LoadResult loaded;
  if (!LoadForController(options.paths, &loaded, err)) return kExitInvalid;
  v1::ApplyRequest request;
  for (const manifests::LoadedObject& o : loaded.objects) *request.add_objects() = o.object;
  request.set_source(options.source.empty() ? absl::StrJoin(options.paths, ",") : options.source);
  request.set_prune(options.prune);
  request.set_dry_run(dry_run || options.dry_run);
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::ApplyResponse response;
  grpc::Status s = request.dry_run() ? stub->Diff(&ctx, request, &response) : stub->Apply(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  bool changes = false;
  for (const v1::ObjectChange& c : response.changes()) {
    out << c.kind() << "/" << c.name() << " " << c.change() << (request.dry_run() ? " (dry run)" : "") << "\n";
    if (c.change() != "unchanged") changes = true;
  }
  // diff: exit 1 when something would change, like diff(1).
  if (dry_run && changes) return kExitFailure;
  if (options.wait && !request.dry_run()) return WaitForInstances(*stub, response, options, out, err);
  return kExitOk;
}

}  // namespace

std::string CanonicalKind(const std::string& kind) {
  std::string k = absl::AsciiStrToLower(kind);
  if (k == "host" || k == "hosts") return "Host";
  if (k == "kernelinstance" || k == "kernelinstances" || k == "ki" || k == "instance" || k == "instances") {
    return "KernelInstance";
  }
  if (k == "instanceset" || k == "instancesets" || k == "set" || k == "sets") return "InstanceSet";
  return "";
}

int RunApply(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return ApplyOrDiff(options, false, out, err);
}

int RunDiff(const ApplyOptions& options, std::ostream& out, std::ostream& err) {
  return ApplyOrDiff(options, true, out, err);
}

int RunGet(const GetOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::GetRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  v1::GetResponse response;
  grpc::Status s = stub->Get(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  std::vector<v1::Object> objects(response.objects().begin(), response.objects().end());
  if (options.output == "yaml") {
    out << manifests::PrintYaml(objects);
    return kExitOk;
  }
  if (options.output == "json") {
    google::protobuf::util::JsonPrintOptions json;
    json.add_whitespace = true;
    std::string text;
    auto st = google::protobuf::util::MessageToJsonString(response, &text, json);
    if (!st.ok()) {
      err << "error: " << st.ToString() << "\n";
      return kExitFailure;
    }
    out << text;
    return kExitOk;
  }
  if (objects.empty()) {
    err << "no " << kind << " objects\n";
    return kExitOk;
  }
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
                                 ki.metadata().source().empty() ? "-" : ki.metadata().source()}) {
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
          h.metadata().name(), known ? (st.reachable() ? "yes" : "no") : "-",
          st.dialect().empty() ? "-" : st.dialect(),
          absl::StrCat(st.pool().cpus_free_size(), "/", st.pool().cpus_size()),
          absl::StrCat(Bytes(SumBytes(st.pool().memory_free())), "/", Bytes(SumBytes(st.pool().memory()))),
          absl::StrCat(st.pool().devices_free_size(), "/", st.pool().devices_size())};
      if (wide) {
        std::vector<std::string> labels;
        std::map<std::string, std::string> sorted(h.metadata().labels().begin(), h.metadata().labels().end());
        for (const auto& [k, v] : sorted) labels.push_back(k + "=" + v);
        for (std::string cell : {h.spec().agent(), st.agent_version().empty() ? "-" : st.agent_version(),
                                 labels.empty() ? "-" : absl::StrJoin(labels, ","),
                                 absl::StrCat(h.metadata().generation()),
                                 h.metadata().source().empty() ? "-" : h.metadata().source()}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out, 1, colour);
  } else {
    std::vector<std::string> header = {"NAME", "REPLICAS", "READY", "UPDATED"};
    if (wide) {
      for (const char* h : {"COUNT", "SELECTOR", "GENERATION", "SOURCE"}) header.push_back(h);
    }
    Table t(header);
    for (const v1::Object& o : objects) {
      const v1::InstanceSet& s = o.instance_set();
      std::vector<std::string> row = {s.metadata().name(), std::to_string(s.status().replicas()),
                                      std::to_string(s.status().ready_replicas()),
                                      std::to_string(s.status().updated_replicas())};
      if (wide) {
        std::vector<std::string> selector;
        std::map<std::string, std::string> sorted(s.spec().host_selector().match_labels().begin(),
                                                  s.spec().host_selector().match_labels().end());
        for (const auto& [k, v] : sorted) selector.push_back(k + "=" + v);
        std::string count = s.spec().has_per_host() ? absl::StrCat("perHost ", s.spec().per_host())
                                                    : absl::StrCat("replicas ", s.spec().replicas());
        for (std::string cell : {count, selector.empty() ? "-" : absl::StrJoin(selector, ","),
                                 absl::StrCat(s.metadata().generation()),
                                 s.metadata().source().empty() ? "-" : s.metadata().source()}) {
          row.push_back(cell);
        }
      }
      t.Add(row);
    }
    t.Print(out);
  }
  return kExitOk;
}

int RunDescribe(const GetOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (options.name.empty()) {
    err << "error: describe needs KIND NAME\n";
    return kExitInvalid;
  }
  auto stub = Connect(options.controller);
  auto get = [&](const std::string& k, const std::string& name, v1::GetResponse* response) {
    grpc::ClientContext ctx;
    SetDeadline(ctx, options.timeout_seconds);
    v1::GetRequest request;
    request.set_kind(k);
    request.set_name(name);
    return stub->Get(&ctx, request, response);
  };
  v1::GetResponse response;
  grpc::Status s = get(kind, options.name, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  if (response.objects_size() != 1) {
    err << "error: " << kind << "/" << options.name << " does not exist\n";
    return kExitFailure;
  }
  const v1::Object& o = response.objects(0);
  const v1::ObjectMeta& m = manifests::MetadataOf(o);
  out << "Name:         " << m.name() << "\n";
  out << "Kind:         " << kind << "\n";
  if (!m.labels().empty()) {
    std::map<std::string, std::string> sorted(m.labels().begin(), m.labels().end());
    std::vector<std::string> labels;
    for (const auto& [k, v] : sorted) labels.push_back(k + "=" + v);
    out << "Labels:       " << absl::StrJoin(labels, ", ") << "\n";
  }
  out << "Source:       " << (m.source().empty() ? "-" : m.source()) << "   generation " << m.generation()
      << ", revision " << m.revision() << "\n";
  if (o.has_kernel_instance()) {
    const v1::KernelInstance& ki = o.kernel_instance();
    const v1::InstanceStatus& st = ki.status();
    if (!st.owner().empty()) out << "Owner:        " << st.owner() << "\n";
    out << "Kernel:       " << ki.spec().kernel().image()
        << (ki.spec().kernel().cmdline().empty() ? "" : "  cmdline \"" + ki.spec().kernel().cmdline() + "\"") << "\n";
    out << "Wants:        " << ki.spec().resources().cpus() << " CPUs, " << Bytes(ki.spec().resources().memory())
        << ", phase " << v1::Phase_Name(ki.spec().phase()) << ", failover "
        << v1::FailoverPolicy_Name(ki.spec().failover().policy()) << "\n";
    out << "Phase:        " << (st.phase().empty() ? "-" : st.phase()) << "  (kernel "
        << v1::KernelState_Name(st.kernel_state()) << (st.role().empty() ? "" : ", role " + st.role())
        << (st.kernel().empty() || st.kernel() == m.name() ? "" : ", served by kernel " + st.kernel())
        << ", observed generation " << st.observed_generation() << ", restarts " << st.restart_count() << ")\n";
    const v1::Placement& p = st.placement();
    if (p.cpus_size() > 0) {
      std::vector<uint32_t> cpus(p.cpus().begin(), p.cpus().end());
      std::vector<std::string> memory, devices;
      for (const auto& nb : p.memory()) memory.push_back(absl::StrCat(Bytes(nb.bytes()), " on node ", nb.node()));
      for (const auto& d : p.devices()) devices.push_back(d.pci());
      out << "Placement:    host " << p.host() << ", instance id " << p.instance_id() << "\n";
      out << "  CPUs:       " << Ranges(cpus) << " (boot CPU " << p.boot_cpu() << ")\n";
      out << "  Memory:     " << (memory.empty() ? "-" : absl::StrJoin(memory, ", ")) << "\n";
      if (!devices.empty()) out << "  Devices:    " << absl::StrJoin(devices, ", ") << "\n";
      if (p.llc_mask() != 0) out << "  LLC ways:   mask 0x" << std::hex << p.llc_mask() << std::dec << "\n";
    } else {
      out << "Placement:    none\n";
    }
    PrintConditions(st.conditions(), out);
  } else if (o.has_host()) {
    const v1::Host& h = o.host();
    const v1::HostStatus& st = h.status();
    out << "Agent:        " << h.spec().agent() << (st.agent_version().empty() ? "" : "  (mkagent " + st.agent_version() + ")")
        << "\n";
    out << "Reachable:    " << (st.reachable() ? "yes" : "no") << ", dialect " << (st.dialect().empty() ? "-" : st.dialect())
        << "\n";
    std::vector<uint32_t> cpus(st.pool().cpus().begin(), st.pool().cpus().end());
    std::vector<uint32_t> free(st.pool().cpus_free().begin(), st.pool().cpus_free().end());
    out << "Pool CPUs:    " << Ranges(cpus) << " (" << free.size() << " of " << cpus.size() << " free: " << Ranges(free)
        << ")\n";
    std::vector<std::string> memory;
    for (const auto& nb : st.pool().memory()) {
      uint64_t f = 0;
      for (const auto& fb : st.pool().memory_free()) f += fb.node() == nb.node() ? fb.bytes() : 0;
      memory.push_back(absl::StrCat("node ", nb.node(), " ", Bytes(f), " free of ", Bytes(nb.bytes())));
    }
    out << "Pool memory:  " << (memory.empty() ? "-" : absl::StrJoin(memory, ", ")) << "\n";
    out << "Pool devices: " << (st.pool().devices().empty() ? "-" : absl::StrJoin(st.pool().devices(), ", "));
    if (!st.pool().devices().empty()) out << " (" << st.pool().devices_free_size() << " free)";
    out << "\n";
    PrintConditions(st.conditions(), out);
    v1::GetResponse all;
    s = get("KernelInstance", "", &all);
    if (!s.ok()) return Report(s, options.controller, err);
    Table t({"  NAME", "PHASE", "CPUS", "MEMORY", "ROLE"});
    int n = 0;
    for (const v1::Object& i : all.objects()) {
      const v1::InstanceStatus& st2 = i.kernel_instance().status();
      if (st2.placement().host() != m.name()) continue;
      ++n;
      t.Add({"  " + i.kernel_instance().metadata().name(), st2.phase().empty() ? "-" : st2.phase(),
             Ranges(std::vector<uint32_t>(st2.placement().cpus().begin(), st2.placement().cpus().end())),
             Bytes(SumBytes(st2.placement().memory())), st2.role().empty() ? "-" : st2.role()});
    }
    out << "Instances:    " << n << (n ? "\n" : "\n");
    if (n) t.Print(out);
  } else {
    const v1::InstanceSet& set = o.instance_set();
    out << "Count:        "
        << (set.spec().has_per_host() ? absl::StrCat("perHost ", set.spec().per_host())
                                      : absl::StrCat("replicas ", set.spec().replicas()))
        << "\n";
    out << "Replicas:     " << set.status().replicas() << " (" << set.status().ready_replicas() << " ready, "
        << set.status().updated_replicas() << " updated)\n";
    PrintConditions(set.status().conditions(), out);
  }
  // Recent events about it.
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::EventsRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  auto reader = stub->Events(&ctx, request);
  std::deque<v1::Event> recent;
  v1::Event e;
  while (reader->Read(&e)) {
    recent.push_back(e);
    if (recent.size() > 10) recent.pop_front();
  }
  reader->Finish();
  if (recent.empty()) {
    out << "Events:       (none)\n";
  } else {
    out << "Events (last " << recent.size() << "):\n";
    Table t({"  TIME", "TYPE", "REASON", "MESSAGE"});
    for (const v1::Event& ev : recent) {
      t.Add({"  " + absl::FormatTime("%H:%M:%S", absl::FromUnixMillis(ev.time_unix_ms()), absl::LocalTimeZone()),
             ev.type(), ev.reason(), ev.message()});
    }
    t.Print(out);
  }
  return kExitOk;
}

int RunEvents(const EventsOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind;
  if (!options.kind.empty() && !ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  if (!options.follow) SetDeadline(ctx, options.timeout_seconds);
  v1::EventsRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  request.set_follow(options.follow);
  auto reader = stub->Events(&ctx, request);
  v1::Event e;
  bool header = false;
  while (reader->Read(&e)) {
    if (!header) {
      out << std::left << std::setw(10) << "TIME" << std::setw(9) << "TYPE" << std::setw(18) << "REASON"
          << std::setw(34) << "OBJECT" << "MESSAGE\n";
      header = true;
    }
    absl::Time t = absl::FromUnixMillis(e.time_unix_ms());
    out << std::left << std::setw(10) << absl::FormatTime("%H:%M:%S", t, absl::LocalTimeZone()) << std::setw(9)
        << e.type() << std::setw(18) << e.reason() << std::setw(34) << (e.kind() + "/" + e.name()) << e.message()
        << std::endl;
  }
  grpc::Status s = reader->Finish();
  if (!s.ok()) return Report(s, options.controller, err);
  if (!header) err << "no events\n";
  return kExitOk;
}

int RunDelete(const GetOptions& options, std::ostream& out, std::ostream& err) {
  if (!options.paths.empty()) {
    manifests::LoadResult loaded;
    if (!LoadForController(options.paths, &loaded, err)) return kExitInvalid;
    // Instances before the hosts they name, so a failure part-way leaves no dangling reference.
    std::vector<const manifests::LoadedObject*> order;
    for (const auto& o : loaded.objects) if (!o.object.has_host()) order.push_back(&o);
    for (const auto& o : loaded.objects) if (o.object.has_host()) order.push_back(&o);
    int code = kExitOk;
    for (const manifests::LoadedObject* o : order) {
      GetOptions one = options;
      one.paths.clear();
      one.kind = std::string(manifests::KindOf(o->object));
      one.name = manifests::MetadataOf(o->object).name();
      int c = RunDelete(one, out, err);
      if (c != kExitOk && code == kExitOk) code = c;
    }
    return code;
  }
  if (options.kind.empty()) {
    err << "error: delete needs KIND NAME or -f PATH\n";
    return kExitInvalid;
  }
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (options.name.empty()) {
    err << "error: delete needs KIND NAME or -f PATH\n";
    return kExitInvalid;
  }
  auto stub = Connect(options.controller);
  grpc::ClientContext ctx;
  SetDeadline(ctx, options.timeout_seconds);
  v1::DeleteRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  v1::DeleteResponse response;
  grpc::Status s = stub->Delete(&ctx, request, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  if (response.result() == "terminating") {
    out << kind << "/" << options.name << " terminating: its instances are deleted first\n";
  } else {
    out << kind << "/" << options.name << " deleted\n";
  }
  return kExitOk;
}

}  // namespace mkfleet::cli
