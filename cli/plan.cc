#include <filesystem>
#include <iomanip>
#include <map>
#include <memory>
#include <set>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "cli/commands.h"
#include "cli/plan_output.h"
#include "manifests/loader.h"
#include "planner/fleet_placement.h"
#include "planner/placement.h"
#include "planner/pool.h"
#include "planner/topology_source.h"

namespace mkfleet::cli {
namespace {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;

}  // namespace

int RunPlan(const PlanOptions& options, std::ostream& out, std::ostream& err) {
  manifests::LoadResult loaded = manifests::LoadPaths(options.paths);
  if (!loaded.ok()) {
    for (const auto& d : loaded.errors) err << d.ToString() << "\n";
    err << loaded.errors.size() << (loaded.errors.size() == 1 ? " error" : " errors") << "\n";
    return kExitInvalid;
  }
  std::map<std::string, std::string> overrides;
  for (const std::string& t : options.topologies) {
    std::pair<std::string, std::string> kv = absl::StrSplit(t, absl::MaxSplits('=', 1));
    if (kv.first.empty() || kv.second.empty()) {
      err << "--topology " << t << ": expected HOST=FILE.xml, HOST=synthetic:STRING or HOST=live\n";
      return kExitInvalid;
    }
    overrides[kv.first] = kv.second;
  }

  planner::TopologyOptions topo_options;
  topo_options.vfs_per_network_function = options.vfs_per_nic;
  std::map<std::string, std::shared_ptr<const planner::Topology>> topo_cache;
  std::vector<planner::HostInfo> hosts;
  std::vector<v1::KernelInstance> instances;
  std::vector<v1::InstanceSet> sets;
  std::set<std::string> host_names;
  int errors = 0;
  for (const manifests::LoadedObject& o : loaded.objects) {
    if (o.object.has_kernel_instance()) instances.push_back(o.object.kernel_instance());
    if (o.object.has_instance_set()) sets.push_back(o.object.instance_set());
    if (!o.object.has_host()) continue;
    const v1::Host& host = o.object.host();
    const std::string& name = host.metadata().name();
    host_names.insert(name);
    std::unique_ptr<planner::TopologySource> source;
    if (auto it = overrides.find(name); it != overrides.end()) {
      source = planner::TopologySourceFromSpec(it->second, "", topo_options);
    } else if (!host.spec().topology().empty()) {
      source = planner::TopologySourceFromSpec(host.spec().topology(),
                                               fs::path(o.file).parent_path().string(), topo_options);
    } else {
      err << o.file << ":" << o.pos.line << ":" << o.pos.column << ": Host/" << name
          << ": no topology to plan with: pass --topology " << name
          << "=FILE.xml|synthetic:STRING|live, or set spec.topology\n";
      ++errors;
      continue;
    }
    std::string key = source->Describe();
    auto cached = topo_cache.find(key);
    if (cached == topo_cache.end()) {
      auto topo = source->Load();
      if (!topo.ok()) {
        err << "Host/" << name << ": " << topo.status().message() << "\n";
        ++errors;
        continue;
      }
      cached = topo_cache.emplace(key, std::make_shared<const planner::Topology>(*std::move(topo))).first;
    }
    auto pool = planner::DerivePool(name, *cached->second, host.spec().pool());
    if (!pool.ok()) {
      err << o.file << ": " << pool.status().message() << "\n";
      ++errors;
      continue;
    }
    planner::HostInfo info;
    info.name = name;
    info.topology = cached->second;
    info.pool = *std::move(pool);
    info.labels.insert(host.metadata().labels().begin(), host.metadata().labels().end());
    info.cordoned = host.spec().cordoned() || host.spec().drain();
    info.draining = host.spec().drain();
    hosts.push_back(std::move(info));
  }
  for (const auto& [name, spec] : overrides) {
    if (!host_names.count(name)) {
      err << "--topology " << name << "=" << spec << ": no Host named \"" << name << "\"\n";
      ++errors;
    }
  }
  if (errors > 0) {
    err << errors << (errors == 1 ? " error" : " errors") << "\n";
    return kExitInvalid;
  }

  // The same decision the controller makes live (planner/fleet_placement.h).
  planner::FleetInput input;
  input.hosts = hosts;
  input.instances = instances;
  input.sets = sets;
  planner::FleetPlacement placed = planner::PlaceFleet(input);
  planner::PlacementResult result;
  result.placements = std::move(placed.placements);
  result.unschedulable = std::move(placed.unschedulable);

  if (options.output == "json") {
    out << PlanJson(hosts, result).dump(2) << "\n";
  } else if (options.output == "yaml") {
    out << JsonToYaml(PlanJson(hosts, result));
  } else {
    out << PlanTable(hosts, result);
  }
  return result.unschedulable.empty() ? kExitOk : kExitUnschedulable;
}

}  // namespace mkfleet::cli
