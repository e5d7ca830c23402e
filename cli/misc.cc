// mkapply version, api-resources, get devices, completion, and "did you mean".
#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "common/version.h"
#include "console/picture.h"
#include "manifests/loader.h"
#include "nlohmann/json.hpp"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

int RunVersion(const GetOptions& options, bool client_only, std::ostream& out, std::ostream& err) {
  nlohmann::ordered_json j = {{"client", {{"name", "mkapply"}, {"version", kVersion}}}};
  int code = kExitOk;
  std::string server_text;
  if (!client_only) {
    auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
    absl::StatusOr<v1::StatsResponse> stats = client.ok() ? (*client)->Stats() : client.status();
    if (stats.ok()) {
      j["server"] = {{"name", "mkcontroller"}, {"version", stats->version()}, {"address", options.controller}};
      server_text = absl::StrCat("Server: mkcontroller ", stats->version().empty() ? "(older than 0.1.0)" : stats->version(),
                                 " at ", options.controller, "\n");
    } else {
      code = client.ok() ? Report(stats.status(), options.controller, err) : ReportSetup(stats.status(), err);
    }
  }
  if (options.output == "json") {
    out << j.dump(2) << "\n";
  } else {
    out << "Client: mkapply " << kVersion << "\n" << server_text;
  }
  return code;
}

namespace {

struct Resource {
  const char* name;
  const char* shortnames;
  const char* kind;
  const char* verbs;
};

constexpr Resource kResources[] = {
    {"hosts", "host", "Host", "apply,get,describe,delete,cordon,uncordon"},
    {"instances", "ki,instance,kernelinstances", "KernelInstance", "apply,get,describe,delete,morph"},
    {"sets", "set,instancesets", "InstanceSet", "apply,get,describe,delete,rollout"},
    {"policies", "policy,rp,rolloutpolicies", "RolloutPolicy", "apply,get,describe,delete,rollout"},
    {"rolebindings", "rb", "RoleBinding", "apply,get,describe,delete"},
    {"sources", "source,gs,gitsources", "GitSource", "apply,get,describe,delete,sync,suspend,resume"},
    {"controllers", "controller", "-", "get"},
    {"devices", "device", "-", "get (of one host: get devices HOST)"},
};

}  // namespace

int RunApiResources(std::ostream& out) {
  Table t({"NAME", "SHORTNAMES", "APIVERSION", "KIND", "VERBS"});
  for (const Resource& r : kResources) {
    t.Add({r.name, r.shortnames, std::string(r.kind) == "-" ? "-" : "mkfleet.io/v1", r.kind, r.verbs});
  }
  t.Print(out);
  return kExitOk;
}

int RunDevices(const GetOptions& options, const std::string& host, std::ostream& out, std::ostream& err) {
  if (host.empty()) {
    err << "error: get devices needs a host: mkapply get devices HOST\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::GetRequest request;
  request.set_kind("Host");
  request.set_name(host);
  auto got = (*client)->Get(request);
  if (!got.ok()) return Report(got.status(), options.controller, err);
  if (got->objects_size() != 1) {
    err << "error: Host/" << host << " does not exist\n";
    return kExitFailure;
  }
  const v1::HostStatus& status = got->objects(0).host().status();
  auto topology = (*client)->Topology(host);
  if (!topology.ok()) return Report(topology.status(), options.controller, err);
  request.set_kind("KernelInstance");
  request.set_name("");
  auto instances = (*client)->Get(request);
  if (!instances.ok()) return Report(instances.status(), options.controller, err);
  const console::HostPicture picture = console::BuildPicture(
      host, topology->topology(), status,
      std::vector<v1::Object>(instances->objects().begin(), instances->objects().end()));
  std::set<std::string> pool(status.pool().devices().begin(), status.pool().devices().end());
  std::set<std::string> free(status.pool().devices_free().begin(), status.pool().devices_free().end());
  if (topology->topology().pci_size() == 0) {
    err << "Host/" << host << " has no PCI functions (as its agent reports it)\n";
    return kExitOk;
  }
  Table t({"BDF", "CLASS", "NUMA", "NAMES", "VFS", "NAMESPACES", "POOL", "OWNER"});
  for (const v1::PciFunctionInfo& f : topology->topology().pci()) {
    // The pool lists a function by BDF or by one of its names.
    bool in_pool = pool.count(f.bdf()) != 0;
    for (const std::string& n : f.names()) in_pool = in_pool || pool.count(n) != 0;
    std::vector<std::string> owners;
    auto it = picture.pci_owner.find(f.bdf());
    if (it != picture.pci_owner.end()) owners.push_back(picture.owners[it->second].name);
    for (const std::string& vf : f.vf_bdfs()) {
      auto v = picture.pci_owner.find(vf);
      if (v != picture.pci_owner.end()) owners.push_back(picture.owners[v->second].name + " (VF " + vf + ")");
    }
    t.Add({f.bdf(), console::PciClassName(f.class_id()), f.numa_node() < 0 ? "-" : std::to_string(f.numa_node()),
           f.names().empty() ? "-" : absl::StrJoin(f.names(), ","),
           f.vf_bdfs_size() == 0 ? "-" : std::to_string(f.vf_bdfs_size()),
           f.nvme_namespaces() == 0 ? "-" : std::to_string(f.nvme_namespaces()),
           in_pool ? (owners.empty() && free.count(f.bdf()) != 0 ? "free" : "yes") : "no",
           owners.empty() ? "-" : absl::StrJoin(owners, ",")});
  }
  t.Print(out);
  out << "A manifest names a function by its BDF (pci: \"0000:81:00.0\"), by a NAME in a Host's pool.devices, or "
         "selects one (select: {class: Network, numaLocal: true}).\n";
  return kExitOk;
}

namespace {

// What stops a drain, per host of `hosts`: the members of replicas sets there (they move),
// and what stays (perHost members, KernelInstances), by name. One read of the sets and the
// instances for all of them.
struct OnHost {
  std::vector<std::string> moving, staying;
};

absl::StatusOr<std::map<std::string, OnHost>> WhatRunsOn(ControllerClient& client,
                                                         const std::vector<std::string>& hosts) {
  v1::GetRequest sets_request;
  sets_request.set_kind("InstanceSet");
  absl::StatusOr<v1::GetResponse> sets = client.Get(sets_request);
  if (!sets.ok()) return sets.status();
  std::set<std::string> per_host;
  for (const v1::Object& o : sets->objects()) {
    if (o.instance_set().spec().count_case() == v1::InstanceSetSpec::kPerHost) {
      per_host.insert("InstanceSet/" + o.instance_set().metadata().name());
    }
  }
  v1::GetRequest request;
  request.set_kind("KernelInstance");
  absl::StatusOr<v1::GetResponse> instances = client.Get(request);
  if (!instances.ok()) return instances.status();
  std::map<std::string, OnHost> on;
  for (const std::string& host : hosts) on[host];
  for (const v1::Object& o : instances->objects()) {
    const v1::KernelInstance& ki = o.kernel_instance();
    auto at = on.find(ki.status().placement().host());
    if (at == on.end()) continue;
    const std::string& owner = ki.status().owner();
    (absl::StartsWith(owner, "InstanceSet/") && !per_host.count(owner) ? at->second.moving : at->second.staying)
        .push_back(ki.metadata().name());
  }
  return on;
}

std::string Listed(const std::vector<std::string>& names) {
  const size_t shown = std::min<size_t>(names.size(), 5);
  return absl::StrCat(absl::StrJoin(names.begin(), names.begin() + shown, ", "),
                      names.size() > shown ? absl::StrCat(" and ", names.size() - shown, " more") : "");
}

}  // namespace

int RunCordon(const GetOptions& options, CordonMode mode, const DrainOptions& drain, std::ostream& out,
              std::ostream& err) {
  const char* verb = mode == CordonMode::kCordon ? "cordon" : mode == CordonMode::kUncordon ? "uncordon" : "drain";
  const bool cordon = mode != CordonMode::kUncordon;
  std::vector<std::string> hosts;
  for (const std::string& a : options.args) {
    // HOST, or host/HOST as get prints it.
    const size_t slash = a.find('/');
    if (slash != std::string::npos && CanonicalKind(a.substr(0, slash)) != "Host") {
      err << "error: " << verb << " takes hosts, not " << a << "\n";
      return kExitInvalid;
    }
    hosts.push_back(slash == std::string::npos ? a : a.substr(slash + 1));
  }
  if (!options.selector.empty()) {
    std::vector<Target> targets;
    GetOptions list = options;
    list.args = {"hosts"};
    if (int c = ExpandTargets(list, verb, false, &targets, err); c != kExitOk) return c;
    for (const Target& t : targets) hosts.push_back(t.name);
  }
  if (hosts.empty()) {
    err << "error: " << verb << " needs HOST... or -l SELECTOR\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  int code = kExitOk;
  std::vector<std::string> draining;
  for (const std::string& host : hosts) {
    v1::CordonRequest request;
    request.set_host(host);
    request.set_cordoned(cordon);
    request.set_drain(mode == CordonMode::kDrain);
    auto r = (*client)->Cordon(request);
    if (!r.ok()) {
      const int c = Report(r.status(), options.controller, err);
      if (r.status().code() == absl::StatusCode::kUnavailable) return c;
      code = kExitFailure;
      continue;
    }
    out << r->message() << "\n";
    if (mode == CordonMode::kDrain) draining.push_back(host);
  }
  if (mode != CordonMode::kDrain || draining.empty()) return code;
  // What moves and what stays, then (with --wait) each host's count until none is left.
  if (drain.wait) {
    out.flush();
    ExitOnInterruptSaying(
        "\ninterrupted: the drain is committed; the controller goes on moving the members. Keep watching with "
        "`mkapply get instances -w`, or wait again with the same `mkapply drain ... --wait`; `mkapply uncordon` "
        "ends it.\n");
  }
  const auto deadline = absl::Now() + drain.timeout;
  std::map<std::string, size_t> last;
  bool first = true;
  while (true) {
    std::vector<std::string> left;
    absl::StatusOr<std::map<std::string, OnHost>> all = WhatRunsOn(**client, draining);
    if (!all.ok()) return Report(all.status(), options.controller, err);
    for (const std::string& host : draining) {
      const OnHost* on = &all->at(host);
      if (first && !on->staying.empty()) {
        out << "Host/" << host << ": " << on->staying.size() << " stay (perHost members and KernelInstances "
            << "belong to the host): " << Listed(on->staying) << "\n";
      }
      auto seen = last.find(host);
      if (seen == last.end() || seen->second != on->moving.size()) {
        out << "Host/" << host << ": "
            << (on->moving.empty() ? std::string("no set member left to move")
                                   : absl::StrCat(on->moving.size(), " set member", on->moving.size() == 1 ? "" : "s",
                                                  " to move: ", Listed(on->moving)))
            << "\n";
        out.flush();
        last[host] = on->moving.size();
      }
      if (!on->moving.empty()) left.push_back(host);
    }
    first = false;
    if (left.empty()) {
      if (drain.wait) out << "drained: " << absl::StrJoin(draining, ", ") << "\n";
      return code;
    }
    if (!drain.wait) {
      out << "the controller moves them within each set's rollout budget; `mkapply drain ... --wait` waits\n";
      return code;
    }
    if (absl::Now() >= deadline) {
      err << "error: timed out after " << absl::FormatDuration(drain.timeout) << ": " << absl::StrJoin(left, ", ")
          << " still run set members (`mkapply describe set NAME` says why one cannot move; the drain goes on)\n";
      return kExitFailure;
    }
    absl::SleepFor(drain.every);
  }
}

std::string Closest(const std::string& word, const std::vector<std::string>& candidates) {
  std::string best;
  size_t best_distance = std::string::npos;
  for (const std::string& c : candidates) {
    // Edit distance with adjacent transpositions ("gte" is one edit from "get").
    std::vector<std::vector<size_t>> d(word.size() + 1, std::vector<size_t>(c.size() + 1));
    for (size_t i = 0; i <= word.size(); ++i) d[i][0] = i;
    for (size_t j = 0; j <= c.size(); ++j) d[0][j] = j;
    for (size_t i = 1; i <= word.size(); ++i) {
      for (size_t j = 1; j <= c.size(); ++j) {
        d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (word[i - 1] == c[j - 1] ? 0 : 1)});
        if (i > 1 && j > 1 && word[i - 1] == c[j - 2] && word[i - 2] == c[j - 1]) {
          d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
        }
      }
    }
    if (d[word.size()][c.size()] < best_distance) {
      best_distance = d[word.size()][c.size()];
      best = c;
    }
  }
  // Close: at most a third of the word wrong (and at most 3 edits).
  return best_distance <= std::min<size_t>(3, std::max<size_t>(1, word.size() / 3)) ? best : "";
}

std::string CompletionScript(const std::string& shell, const std::map<std::string, std::vector<std::string>>& commands) {
  std::vector<std::string> top;
  for (const auto& [name, flags] : commands) {
    if (name.find(' ') == std::string::npos) top.push_back(name);
  }
  std::vector<std::string> types;
  for (const Resource& r : kResources) types.push_back(r.name);
  std::string cases;
  for (const auto& [name, flags] : commands) {
    if (name.find(' ') != std::string::npos) continue;
    std::vector<std::string> subs;
    for (const auto& [other, f] : commands) {
      if (other.rfind(name + " ", 0) == 0) subs.push_back(other.substr(name.size() + 1));
    }
    std::string words = absl::StrJoin(flags, " ");
    if (!subs.empty()) words = absl::StrCat(absl::StrJoin(subs, " "), " ", words);
    if (name == "get" || name == "describe" || name == "delete" || name == "explain") {
      words = absl::StrCat(absl::StrJoin(types, " "), " ", words);
    }
    if (name == "help") words = absl::StrJoin(top, " ");
    absl::StrAppend(&cases, "    ", name, ") words=\"", words, "\" ;;\n");
  }
  if (shell == "zsh") {
    // zsh runs the bash function through bashcompinit.
    return absl::StrCat("#compdef mkapply\n# mkapply completion for zsh: source <(mkapply completion zsh)\n",
                        "autoload -U +X bashcompinit && bashcompinit\n",
                        CompletionScript("bash", commands));
  }
  return absl::StrCat(
      "# mkapply completion for bash: source <(mkapply completion bash), or save it as\n"
      "# /etc/bash_completion.d/mkapply\n"
      "_mkapply() {\n"
      "  local cur=\"${COMP_WORDS[COMP_CWORD]}\" cmd=\"\" i words\n"
      "  for ((i = 1; i < COMP_CWORD; i++)); do\n"
      "    case \"${COMP_WORDS[i]}\" in\n"
      "      -*) ;;\n"
      "      *) cmd=\"${COMP_WORDS[i]}\"; break ;;\n"
      "    esac\n"
      "  done\n"
      "  case \"$cmd\" in\n"
      "    \"\") words=\"", absl::StrJoin(top, " "), " --controller --request-timeout --tls-dir --insecure --help --version\" ;;\n",
      cases,
      "    *) words=\"\" ;;\n"
      "  esac\n"
      "  COMPREPLY=($(compgen -W \"$words\" -- \"$cur\"))\n"
      "  if [[ ${#COMPREPLY[@]} -eq 0 && \"$cur\" != -* ]]; then COMPREPLY=($(compgen -f -- \"$cur\")); fi\n"
      "}\n"
      "complete -F _mkapply mkapply\n");
}

}  // namespace mkfleet::cli
