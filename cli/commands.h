// The subcommands of mkapply, each a function of its options and output streams, so
// tests can run them without a process. main.cc only parses flags and calls these.
//
// Exit codes (for scripts): 0 success, 2 invalid input or usage, 1 other failures.
// Thread-safety: each call is independent.
#ifndef MKFLEET_CLI_COMMANDS_H_
#define MKFLEET_CLI_COMMANDS_H_

#include <ostream>
#include <string>
#include <vector>

namespace mkfleet::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitInvalid = 2;
inline constexpr int kExitUnschedulable = 3;

struct ValidateOptions {
  std::vector<std::string> paths;  // files, directories, "-" for stdin
  std::string output = "summary";  // summary | yaml
};

// Loads and validates `paths`. Prints the summary (or canonical YAML) to `out` and returns
// 0; or prints every error, one a line, to `err` and returns 2.
int RunValidate(const ValidateOptions& options, std::ostream& out, std::ostream& err);

struct PlanOptions {
  std::vector<std::string> paths;
  std::vector<std::string> topologies;  // HOST=FILE.xml | HOST=synthetic:STR | HOST=live
  std::string output = "table";         // table | json | yaml
  // SR-IOV VFs to assume per Network function of XML/synthetic topologies (hwloc exports
  // carry no SR-IOV data; live topologies read it from sysfs).
  uint32_t vfs_per_nic = 0;
};

// Plans placements offline, without controller or agents. Prints the placement table
// (or JSON/YAML as in DESIGN.md) to `out`. Returns 0 when everything is placed, 3 when
// something is unschedulable (explained in the output), 2 on invalid input (on `err`).
int RunPlan(const PlanOptions& options, std::ostream& out, std::ostream& err);

// Commands that talk to a controller (mkcontroller). Exit 0 on success, 2 when the input
// or the request is invalid (nothing was changed), 1 when the controller cannot be reached
// or fails.
struct ApplyOptions {
  std::vector<std::string> paths;
  std::string controller = "127.0.0.1:7100";
  std::string source;  // default: the paths given, joined by ","
  bool prune = false;
  bool dry_run = false;
  int timeout_seconds = 30;
  // After applying: wait until every KernelInstance applied is Ready at its generation
  // (and every pruned one is gone), printing each phase change; exit 1 if `wait_seconds`
  // pass first.
  bool wait = false;
  int wait_seconds = 300;
};

// Loads `paths`, sends them to the controller in one atomic apply and prints one line per
// object: "KernelInstance/web-1 created" (configured, unchanged, pruned).
int RunApply(const ApplyOptions& options, std::ostream& out, std::ostream& err);
// As RunApply with dry_run: what an apply would change, writing nothing. Exit 0 when
// nothing would change, 1 when something would, 2 on invalid input.
int RunDiff(const ApplyOptions& options, std::ostream& out, std::ostream& err);

struct GetOptions {
  std::string controller = "127.0.0.1:7100";
  std::string kind;  // Host, KernelInstance, InstanceSet (or host, hosts, ki, instances, ...)
  std::string name;  // empty: every object of the kind
  std::string output = "table";  // table | wide | yaml | json
  int timeout_seconds = 30;
  std::vector<std::string> paths;  // delete -f: the objects these manifests name
  bool colour = false;             // colour the phase column (a terminal)
};

// Lists objects (set members included among instances) as a table (wide: placement,
// serving kernel, owner, pool details), yaml or json.
int RunGet(const GetOptions& options, std::ostream& out, std::ostream& err);
// One object in full: spec summary, status, placement, conditions, recent events; for a
// host also the instances on it, for a set its members' phases.
int RunDescribe(const GetOptions& options, std::ostream& out, std::ostream& err);
// Deletes kind/name (or every object the manifests at `paths` name, instances first);
// exit 1 with "Kind/name does not exist" when one is absent.
int RunDelete(const GetOptions& options, std::ostream& out, std::ostream& err);

struct EventsOptions {
  std::string controller = "127.0.0.1:7100";
  std::string kind;  // optional filter (hosts, instances, ...)
  std::string name;
  bool follow = false;
  int timeout_seconds = 30;
};

// Prints the controller's events, oldest first: TIME TYPE REASON OBJECT MESSAGE; with
// follow, keeps printing new ones until interrupted.
int RunEvents(const EventsOptions& options, std::ostream& out, std::ostream& err);

// "hosts" -> "Host", "ki" -> "KernelInstance", ...; empty when unknown.
std::string CanonicalKind(const std::string& kind);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_COMMANDS_H_
