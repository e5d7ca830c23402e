// Output of `mkapply plan`: the JSON document of DESIGN.md, a YAML rendering of it, and
// the human table. Pure functions of the hosts and the placement result.
#ifndef MKFLEET_CLI_PLAN_OUTPUT_H_
#define MKFLEET_CLI_PLAN_OUTPUT_H_

#include <string>
#include <vector>

#include "nlohmann/json.hpp"
#include "planner/placement.h"

namespace mkfleet::cli {

// {"hosts": [{name, pool, instances: [...]}], "unschedulable": [{name, reason}]}
nlohmann::ordered_json PlanJson(const std::vector<planner::HostInfo>& hosts,
                                const planner::PlacementResult& result);

// Block-style YAML of a JSON document (nulls as null, strings quoted when needed).
std::string JsonToYaml(const nlohmann::ordered_json& doc);

// Per host: a pool line (free whole cores and memory per node), then one row per instance.
std::string PlanTable(const std::vector<planner::HostInfo>& hosts, const planner::PlacementResult& result);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_PLAN_OUTPUT_H_
