#include "manifests/checks.h"

#include <map>
#include <set>
#include "absl/strings/string_view.h"

#include "absl/container/flat_hash_map.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "manifests/schema.h"

namespace mkfleet::manifests {
namespace {

using namespace mkfleet::v1;  // NOLINT: the schema's many message types

// Reports errors of one object at the position of the field they are about.
class Reporter {
 public:
  Reporter(const LoadedObject& o, std::string label, std::vector<Diagnostic>* errors)
      : o_(o), label_(std::move(label)), errors_(errors) {}

  // At the field's value, or the nearest written ancestor's.
  void At(const std::string& path, std::string message) {
    Add(Find(path, /*key=*/false), path, std::move(message));
  }
  // At the key of the field (for problems with the field as a whole).
  void AtKey(const std::string& path, std::string message) {
    Add(Find(path, /*key=*/true), path, std::move(message));
  }

 private:
  Position Find(std::string path, bool key) const {
    while (!path.empty()) {
      auto it = o_.fields.find(path);
      if (it != o_.fields.end()) return key ? it->second.key : it->second.value;
      size_t cut = path.find_last_of(".[");
      if (cut == std::string::npos) break;
      path.resize(cut);
      key = true;
    }
    return o_.pos;
  }
  void Add(Position pos, const std::string& path, std::string message) {
    errors_->push_back({o_.file, pos, label_, path, std::move(message)});
  }

  const LoadedObject& o_;
  std::string label_;
  std::vector<Diagnostic>* errors_;
};

void CheckHeader(const std::string& api_version, Reporter& r) {
  if (api_version != kApiVersion) {
    r.At("apiVersion", absl::StrCat("unsupported \"", api_version, "\" (expected ", kApiVersion, ")"));
  }
}

void CheckPool(const Pool& pool, Reporter& r) {
  bool explicit_pool = pool.has_cpus() || pool.memory_size() > 0;
  if (pool.has_host_reserved() && explicit_pool) {
    r.AtKey("spec.pool.hostReserved", "cannot be combined with explicit cpus or memory");
  } else if (!pool.has_host_reserved()) {
    if (!pool.has_cpus()) {
      r.AtKey("spec.pool", "needs hostReserved, or explicit cpus and memory");
    } else if (pool.memory_size() == 0) {
      r.AtKey("spec.pool.cpus", "explicit cpus need explicit memory per NUMA node");
    } else if (pool.cpus().ids_size() == 0) {
      r.At("spec.pool.cpus", "must name at least one CPU");
    }
  }
  std::map<uint32_t, int> nodes;
  for (int i = 0; i < pool.memory_size(); ++i) {
    auto [it, inserted] = nodes.emplace(pool.memory(i).node(), i);
    if (!inserted) {
      r.At(absl::StrCat("spec.pool.memory[", i, "].node"),
           absl::StrCat("node ", pool.memory(i).node(), " is listed twice (also memory[",
                        it->second, "])"));
    }
  }
  std::set<std::string> devices;
  for (int i = 0; i < pool.devices_size(); ++i) {
    if (!devices.insert(pool.devices(i)).second) {
      r.At(absl::StrCat("spec.pool.devices[", i, "]"),
           absl::StrCat("device \"", pool.devices(i), "\" is listed twice"));
    }
  }
}

void CheckInstanceSpec(const KernelInstanceSpec& spec, const std::string& at, Reporter& r) {
  const Resources& res = spec.resources();
  std::set<uint32_t> nodes;
  for (int i = 0; i < res.numa_nodes_size(); ++i) {
    if (!nodes.insert(res.numa_nodes(i)).second) {
      r.At(absl::StrCat(at, ".resources.numaNodes[", i, "]"),
           absl::StrCat("node ", res.numa_nodes(i), " is listed twice"));
    }
  }
  if (res.cpu_request_case() == Resources::kCpuSet && res.cpu_set().ids_size() == 0) {
    r.At(at + ".resources.cpuSet", "must name at least one CPU");
  }
  if (res.placement() == PLACEMENT_NEAR_DEVICES && res.devices_size() == 0) {
    r.At(at + ".resources.placement", "NearDevices needs at least one entry in devices");
  }
  std::map<std::string, int> names;
  std::map<std::string, int> pcis;
  for (int i = 0; i < res.devices_size(); ++i) {
    const DeviceRequest& d = res.devices(i);
    const std::string dp = absl::StrCat(at, ".resources.devices[", i, "]");
    if (auto [it, ok] = names.emplace(d.name(), i); !ok) {
      r.At(dp + ".name", absl::StrCat("name \"", d.name(), "\" is also used by devices[",
                                      it->second, "]"));
    }
    if (d.source_case() == DeviceRequest::kPci) {
      if (auto [it, ok] = pcis.emplace(d.pci(), i); !ok && d.share_case() == DeviceRequest::SHARE_NOT_SET) {
        r.At(dp + ".pci", absl::StrCat("function ", d.pci(), " is also requested by devices[",
                                       it->second, "]"));
      }
    }
    if (d.source_case() == DeviceRequest::kSelect) {
      DeviceClass c = d.select().device_class();
      if (d.share_case() == DeviceRequest::kNamespaces && c != DEVICE_CLASS_STORAGE) {
        r.At(dp + ".namespaces", "only Storage devices have NVMe namespaces");
      }
      if (d.share_case() == DeviceRequest::kVfs && c == DEVICE_CLASS_GPU) {
        r.At(dp + ".vfs", "GPU functions are given whole (no SR-IOV VFs)");
      }
    }
  }
  for (int i = 0; i < res.virtio_size(); ++i) {
    const VirtioDevice& v = res.virtio(i);
    if (!v.uplink().empty() && v.type() != VIRTIO_NET) {
      r.At(absl::StrCat(at, ".resources.virtio[", i, "].uplink"), "only allowed for type net");
    }
  }
  const Failover& fo = spec.failover();
  if (fo.policy() == FAILOVER_STANDBY && !fo.has_standby()) {
    r.AtKey(at + ".failover.policy", "policy Standby needs failover.standby (cpus, memory)");
  }
  if (fo.policy() != FAILOVER_STANDBY && fo.has_standby()) {
    r.AtKey(at + ".failover.standby", "only allowed with policy Standby");
  }
  if (fo.policy() == FAILOVER_NONE && fo.has_heartbeat()) {
    r.AtKey(at + ".failover.heartbeat", "has no effect with policy None");
  }
  if (spec.update().strategy() != UPDATE_MORPH && spec.update().has_morph()) {
    r.AtKey(at + ".update.morph", "only allowed with strategy Morph");
  }
}

void CheckKernelInstance(const KernelInstance& ki, Reporter& r) {
  CheckHeader(ki.api_version(), r);
  if (ki.spec().target_case() == KernelInstanceSpec::TARGET_NOT_SET) {
    r.AtKey("spec", "exactly one of host, hostSelector is required");
  }
  CheckInstanceSpec(ki.spec(), "spec", r);
}

// A rollout's budgets: none may be 0 (no update could proceed); a canary count is at most
// the replicas (`replicas` 0: perHost, not known here).
void CheckRollout(const Rollout& ro, uint32_t replicas, const std::string& at, Reporter& r) {
  if (replicas > 0 && ro.canary().value_case() == IntOrPercent::kCount && ro.canary().count() > replicas) {
    r.At(at + ".canary", absl::StrCat("must be at most replicas (", replicas, "), got ", ro.canary().count()));
  }
  auto at_least_one = [&](bool has, const IntOrPercent& v, const char* field) {
    if (!has) return;
    if ((v.value_case() == IntOrPercent::kCount && v.count() == 0) ||
        (v.value_case() == IntOrPercent::kPercent && v.percent() == 0)) {
      r.At(at + "." + field, "must be at least 1 (or 1%), or no update could proceed");
    }
  };
  at_least_one(ro.has_max_unavailable(), ro.max_unavailable(), "maxUnavailable");
  at_least_one(ro.has_max_surge(), ro.max_surge(), "maxSurge");
  at_least_one(ro.has_max_failures(), ro.max_failures(), "maxFailures");
  if (ro.has_waves() && ro.waves().by().empty()) r.At(at + ".waves.by", "required: the host label key waves go by");
}

void CheckInstanceSet(const InstanceSet& set, Reporter& r) {
  CheckHeader(set.api_version(), r);
  const InstanceSetSpec& spec = set.spec();
  const KernelInstanceSpec& t = spec.template_().spec();
  if (t.target_case() == KernelInstanceSpec::kHost) {
    r.AtKey("spec.template.spec.host", "not allowed in a template (the set picks hosts with spec.hostSelector)");
  } else if (t.target_case() == KernelInstanceSpec::kHostSelector) {
    r.AtKey("spec.template.spec.hostSelector", "not allowed in a template (use spec.hostSelector)");
  }
  if (t.has_id()) {
    r.AtKey("spec.template.spec.id", "not allowed in a template (replicas would share the id)");
  }
  if (t.resources().cpu_request_case() == Resources::kCpuSet && spec.count_case() == InstanceSetSpec::kReplicas &&
      spec.replicas() > 1) {
    // Several replicas may land on one host; a fixed cpuSet only fits with perHost: 1.
    r.AtKey("spec.template.spec.resources.cpuSet", "a fixed cpuSet needs perHost: 1");
  }
  if (!spec.spread_by().empty() && spec.count_case() == InstanceSetSpec::kPerHost) {
    r.AtKey("spec.spreadBy", "only applies with replicas (perHost places on every host)");
  }
  CheckRollout(spec.rollout(), spec.count_case() == InstanceSetSpec::kReplicas ? spec.replicas() : 0, "spec.rollout", r);
  CheckInstanceSpec(t, "spec.template.spec", r);
}

void CheckRolloutPolicy(const RolloutPolicy& policy, Reporter& r) {
  CheckHeader(policy.api_version(), r);
  if (policy.spec().selector().match_labels().empty()) {
    r.AtKey("spec.selector.matchLabels", "required: at least one label (a policy paces the instances it selects)");
  }
  CheckRollout(policy.spec().rollout(), 0, "spec.rollout", r);
}

void CheckGitSource(const GitSource& source, Reporter& r) {
  CheckHeader(source.api_version(), r);
  const GitSourceSpec& spec = source.spec();
  int refs = !spec.ref().branch().empty() + !spec.ref().tag().empty() + !spec.ref().commit().empty();
  if (refs > 1) r.AtKey("spec.ref", "at most one of branch, tag, commit");
  const GitCredentials& c = spec.credentials();
  bool ssh = absl::StartsWith(spec.url(), "ssh://");
  bool https = absl::StartsWith(spec.url(), "https://");
  if (ssh && (c.ssh_key_file().empty() || c.known_hosts_file().empty())) {
    r.AtKey("spec.credentials", "an ssh:// url needs sshKeyFile and knownHostsFile (an unknown host key is refused)");
  }
  if (!ssh && (!c.ssh_key_file().empty() || !c.known_hosts_file().empty())) {
    r.AtKey("spec.credentials", "sshKeyFile and knownHostsFile only apply to an ssh:// url");
  }
  if (!https && (!c.token_file().empty() || !c.username().empty())) {
    r.AtKey("spec.credentials", "tokenFile and username only apply to an https:// url");
  }
}

void CheckHost(const Host& host, Reporter& r) {
  CheckHeader(host.api_version(), r);
  CheckPool(host.spec().pool(), r);
}

}  // namespace

void CheckObject(const LoadedObject& object, std::vector<Diagnostic>* errors) {
  Reporter r(object, object.label, errors);
  switch (object.object.kind_case()) {
    case Object::kHost:
      CheckHost(object.object.host(), r);
      break;
    case Object::kKernelInstance:
      CheckKernelInstance(object.object.kernel_instance(), r);
      break;
    case Object::kInstanceSet:
      CheckInstanceSet(object.object.instance_set(), r);
      break;
    case Object::kRoleBinding:
      CheckHeader(object.object.role_binding().api_version(), r);
      break;
    case Object::kRolloutPolicy:
      CheckRolloutPolicy(object.object.rollout_policy(), r);
      break;
    case Object::kGitSource:
      CheckGitSource(object.object.git_source(), r);
      break;
    default:
      break;
  }
}

void CheckAcrossObjects(const std::vector<LoadedObject>& objects, bool check_host_references,
                        const std::vector<std::string>& known_hosts, std::vector<Diagnostic>* errors) {
  const std::set<std::string> elsewhere(known_hosts.begin(), known_hosts.end());
  std::map<std::pair<absl::string_view, std::string>, const LoadedObject*> by_name;
  std::vector<std::string> host_names;
  for (const LoadedObject& o : objects) {
    absl::string_view kind = KindOf(o.object);
    const std::string& name = MetadataOf(o.object).name();
    if (name.empty()) continue;
    auto [it, inserted] = by_name.emplace(std::make_pair(kind, name), &o);
    if (!inserted) {
      const LoadedObject& first = *it->second;
      Reporter(o, o.label, errors)
          .At("metadata.name", absl::StrCat("duplicate name (also defined at ", first.file, ":",
                                            first.pos.line, ":", first.pos.column, ")"));
    } else if (kind == "Host") {
      host_names.push_back(name);
    }
  }
  // "-standby" and "-next" name the kernels that back an instance (its warm standby, its
  // live update's new kernel): no other instance may take those names.
  for (const LoadedObject& o : objects) {
    if (!o.object.has_kernel_instance()) continue;
    const std::string& name = o.object.kernel_instance().metadata().name();
    for (absl::string_view suffix : {absl::string_view("-standby"), absl::string_view("-next")}) {
      if (!absl::EndsWith(name, suffix)) continue;
      std::string base = name.substr(0, name.size() - suffix.size());
      if (by_name.count({"KernelInstance", base})) {
        Reporter(o, o.label, errors)
            .At("metadata.name", absl::StrCat("collides with the ", suffix == "-next" ? "live update's new" : "standby",
                                              " kernel of KernelInstance/", base, " (the \"", suffix,
                                              "\" suffix is reserved)"));
      }
    }
  }
  // Fixed ids per host.
  std::map<std::pair<std::string, uint32_t>, std::string> ids;
  for (const LoadedObject& o : objects) {
    if (!o.object.has_kernel_instance()) continue;
    const KernelInstance& ki = o.object.kernel_instance();
    const std::string& label = o.label;
    Reporter r(o, label, errors);
    if (ki.spec().target_case() != KernelInstanceSpec::kHost) continue;
    const std::string& host = ki.spec().host();
    if (check_host_references && by_name.count({"Host", host}) == 0 && elsewhere.count(host) == 0) {
      std::vector<std::string> candidates = host_names;
      candidates.insert(candidates.end(), known_hosts.begin(), known_hosts.end());
      std::string suggestion = Suggest(host, candidates);
      r.At("spec.host", absl::StrCat("no Host named \"", host, "\"",
                                     suggestion.empty() ? "" : " (did you mean \"", suggestion,
                                     suggestion.empty() ? "" : "\"?)"));
    }
    if (ki.spec().has_id()) {
      auto [it, inserted] = ids.emplace(std::make_pair(host, ki.spec().id()), label);
      if (!inserted) {
        r.At("spec.id", absl::StrCat("id ", ki.spec().id(), " is also used by ", it->second,
                                     " on host ", host));
      }
    }
  }
}

}  // namespace mkfleet::manifests
