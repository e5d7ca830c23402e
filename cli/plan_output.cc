#include "cli/plan_output.h"

#include <algorithm>
#include <map>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "manifests/units.h"

namespace mkfleet::cli {
namespace {

using nlohmann::ordered_json;
namespace v1 = mkfleet::v1;

std::vector<const v1::Placement*> PlacementsOn(const std::string& host, const planner::PlacementResult& r) {
  std::vector<const v1::Placement*> out;
  for (const auto& [name, p] : r.placements) {
    if (p.host() == host) out.push_back(&p);
  }
  return out;
}

// Free whole cores and free memory per NUMA node after the placements.
struct Free {
  std::map<uint32_t, uint32_t> cores;   // os node -> free whole cores
  std::map<uint32_t, uint64_t> memory;  // os node -> free bytes
};

Free FreeAfter(const planner::HostInfo& h, const std::vector<const v1::Placement*>& placed) {
  const planner::Topology& t = *h.topology;
  std::set<uint32_t> used;
  for (const auto* p : placed) used.insert(p->cpus().begin(), p->cpus().end());
  std::set<uint32_t> pool(h.pool.cpus.begin(), h.pool.cpus.end());
  Free f;
  for (const planner::NumaNode& n : t.numa) {
    if (n.has_cpus) f.cores[n.os_index] = 0;
  }
  for (const planner::Core& c : t.cores) {
    bool free = std::all_of(c.pus.begin(), c.pus.end(), [&](uint32_t pu) { return pool.count(pu) && !used.count(pu); });
    if (free) ++f.cores[t.numa[c.numa].os_index];
  }
  for (const auto& [n, bytes] : h.pool.memory) f.memory[t.numa[n].os_index] = bytes;
  for (const auto* p : placed) {
    for (const auto& m : p->memory()) f.memory[m.node()] -= m.bytes();
  }
  return f;
}

std::string PerNode(const std::map<uint32_t, uint32_t>& m) {
  std::vector<std::string> parts;
  for (const auto& [n, v] : m) parts.push_back(absl::StrCat("node", n, "=", v));
  return absl::StrJoin(parts, " ");
}

std::string PerNodeBytes(const std::map<uint32_t, uint64_t>& m) {
  std::vector<std::string> parts;
  for (const auto& [n, v] : m) parts.push_back(absl::StrCat("node", n, "=", manifests::FormatBytes(v)));
  return absl::StrJoin(parts, " ");
}

bool NeedsQuotes(const std::string& s) {
  if (s.empty()) return true;
  if (s.find_first_of(":#{}[],&*?|<>=!%@`'\"") != std::string::npos) return true;
  char c = s.front();
  if (isdigit(static_cast<unsigned char>(c)) || c == '-' || c == '.' || c == ' ') return true;
  return s == "true" || s == "false" || s == "null" || s == "~";
}

void Yaml(const ordered_json& v, int indent, bool in_list_item, std::string* out) {
  std::string pad(indent, ' ');
  if (v.is_object()) {
    if (v.empty()) {
      *out += " {}\n";
      return;
    }
    bool first = true;
    if (!in_list_item) *out += "\n";
    for (auto it = v.begin(); it != v.end(); ++it) {
      *out += (in_list_item && first) ? "" : pad;
      first = false;
      *out += it.key() + ":";
      Yaml(it.value(), indent + 2, false, out);
    }
    return;
  }
  if (v.is_array()) {
    if (v.empty()) {
      *out += " []\n";
      return;
    }
    bool scalars = std::all_of(v.begin(), v.end(), [](const ordered_json& e) { return e.is_primitive(); });
    if (scalars) {
      *out += " [";
      for (size_t i = 0; i < v.size(); ++i) {
        if (i > 0) *out += ", ";
        std::string s;
        Yaml(v[i], 0, false, &s);
        s.erase(0, 1);
        s.pop_back();
        *out += s;
      }
      *out += "]\n";
      return;
    }
    *out += "\n";
    for (const auto& e : v) {
      *out += pad + "- ";
      Yaml(e, indent + 2, true, out);
    }
    return;
  }
  if (v.is_null()) {
    *out += " null\n";
  } else if (v.is_string()) {
    std::string s = v.get<std::string>();
    *out += " " + (NeedsQuotes(s) ? ordered_json(s).dump() : s) + "\n";
  } else {
    *out += " " + v.dump() + "\n";
  }
}

}  // namespace

ordered_json PlanJson(const std::vector<planner::HostInfo>& hosts, const planner::PlacementResult& result) {
  ordered_json doc;
  doc["hosts"] = ordered_json::array();
  for (const planner::HostInfo& h : hosts) {
    const planner::Topology& t = *h.topology;
    ordered_json host;
    host["name"] = h.name;
    ordered_json pool;
    pool["cpus"] = h.pool.cpus;
    pool["memory"] = ordered_json::array();
    for (const auto& [n, bytes] : h.pool.memory) {
      pool["memory"].push_back({{"node", t.numa[n].os_index}, {"bytes", bytes}});
    }
    pool["devices"] = ordered_json::array();
    for (int d : h.pool.devices) pool["devices"].push_back(t.pci[d].bdf);
    host["pool"] = pool;
    host["instances"] = ordered_json::array();
    for (const auto& [name, p] : result.placements) {
      if (p.host() != h.name) continue;
      ordered_json i;
      i["name"] = name;
      i["host"] = p.host();
      i["cpus"] = std::vector<uint32_t>(p.cpus().begin(), p.cpus().end());
      i["physicalCpus"] = std::vector<uint64_t>(p.physical_cpus().begin(), p.physical_cpus().end());
      i["bootCpu"] = p.boot_cpu();
      i["numaNodes"] = std::vector<uint32_t>(p.numa_nodes().begin(), p.numa_nodes().end());
      i["memory"] = ordered_json::array();
      for (const auto& m : p.memory()) i["memory"].push_back({{"node", m.node()}, {"bytes", m.bytes()}});
      i["devices"] = ordered_json::array();
      for (const auto& d : p.devices()) {
        ordered_json dj;
        dj["name"] = d.name();
        dj["pci"] = d.pci();
        dj["vf"] = d.has_vf() ? ordered_json(d.vf()) : ordered_json(nullptr);
        dj["namespace"] = d.has_namespace_() ? ordered_json(d.namespace_()) : ordered_json(nullptr);
        i["devices"].push_back(dj);
      }
      i["virtio"] = ordered_json::array();
      for (const auto& v : p.virtio()) {
        i["virtio"].push_back({{"type", v.type()}, {"uplink", v.uplink()}, {"queues", v.queues()}});
      }
      i["llcMask"] = p.has_llc_mask() ? ordered_json(p.llc_mask()) : ordered_json(nullptr);
      host["instances"].push_back(i);
    }
    doc["hosts"].push_back(host);
  }
  doc["unschedulable"] = ordered_json::array();
  for (const auto& u : result.unschedulable) doc["unschedulable"].push_back({{"name", u.name}, {"reason", u.reason}});
  return doc;
}

std::string JsonToYaml(const ordered_json& doc) {
  std::string out;
  Yaml(doc, 0, false, &out);
  return out.substr(1);  // the leading newline of the top-level mapping
}

std::string PlanTable(const std::vector<planner::HostInfo>& hosts, const planner::PlacementResult& result) {
  std::string out;
  for (const planner::HostInfo& h : hosts) {
    const planner::Topology& t = *h.topology;
    auto placed = PlacementsOn(h.name, result);
    Free f = FreeAfter(h, placed);
    absl::StrAppend(&out, "HOST ", h.name, h.cordoned ? " (cordoned)" : "", "  ", t.Summary(), "\n");
    absl::StrAppend(&out, "  pool: CPUs ", manifests::FormatCpuList(h.pool.cpus), "; free whole cores ",
                    PerNode(f.cores), "; free memory ", PerNodeBytes(f.memory), "\n");
    if (placed.empty()) {
      absl::StrAppend(&out, "  (no instances)\n\n");
      continue;
    }
    std::vector<std::vector<std::string>> rows = {{"INSTANCE", "CPUS", "BOOT", "NUMA", "MEMORY", "DEVICES", "LLC"}};
    for (const auto& [name, p] : result.placements) {
      if (p.host() != h.name) continue;
      std::vector<std::string> mem, devs;
      for (const auto& m : p.memory()) mem.push_back(absl::StrCat(m.node(), ":", manifests::FormatBytes(m.bytes())));
      for (const auto& d : p.devices()) {
        std::string s = absl::StrCat(d.name(), "=", d.pci());
        if (d.has_vf()) absl::StrAppend(&s, "(vf", d.vf(), ")");
        if (d.has_namespace_()) absl::StrAppend(&s, "(ns", d.namespace_(), ")");
        devs.push_back(s);
      }
      rows.push_back({name, manifests::FormatCpuList({p.cpus().begin(), p.cpus().end()}), absl::StrCat(p.boot_cpu()),
                      absl::StrJoin(p.numa_nodes(), ","), absl::StrJoin(mem, " "),
                      devs.empty() ? "-" : absl::StrJoin(devs, " "),
                      p.has_llc_mask() ? absl::StrFormat("0x%x", p.llc_mask()) : "-"});
    }
    std::vector<size_t> width(rows[0].size(), 0);
    for (const auto& row : rows) {
      for (size_t c = 0; c < row.size(); ++c) width[c] = std::max(width[c], row[c].size());
    }
    for (const auto& row : rows) {
      std::string line = "  ";
      for (size_t c = 0; c < row.size(); ++c) {
        line += row[c];
        if (c + 1 < row.size()) line += std::string(width[c] - row[c].size() + 2, ' ');
      }
      absl::StrAppend(&out, line, "\n");
    }
    absl::StrAppend(&out, "\n");
  }
  if (!result.unschedulable.empty()) {
    absl::StrAppend(&out, "UNSCHEDULABLE\n");
    for (const auto& u : result.unschedulable) absl::StrAppend(&out, "  ", u.name, ": ", u.reason, "\n");
  }
  absl::StrAppend(&out, result.placements.size(), " placed, ", result.unschedulable.size(), " unschedulable\n");
  return out;
}

}  // namespace mkfleet::cli
