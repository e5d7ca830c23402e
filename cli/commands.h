// The subcommands of mkapply, each a function of its options and output streams, so
// tests can run them without a process. main.cc only parses flags and calls these.
//
// Exit codes (for scripts): 0 success, 2 invalid input or usage, 1 other failures.
// Thread-safety: each call is independent.
#ifndef MKFLEET_CLI_COMMANDS_H_
#define MKFLEET_CLI_COMMANDS_H_

#include <map>
#include <ostream>
#include <string>
#include <vector>

#include "absl/time/time.h"
#include "security/tls.h"

namespace mkfleet::cli {

inline constexpr int kExitOk = 0;
inline constexpr int kExitFailure = 1;
inline constexpr int kExitInvalid = 2;
inline constexpr int kExitUnschedulable = 3;

inline constexpr char kDefaultController[] = "127.0.0.1:7100";

struct ValidateOptions {
  std::vector<std::string> paths;  // files, directories, "-" for stdin
  std::string output = "summary";  // summary | yaml
  // A folder with only part of the fleet: no check that spec.host names a Host
  // (skip_host_checks), or the controller's Hosts count as defined (hosts_from_controller,
  // which needs the controller: the global flags).
  bool skip_host_checks = false;
  bool hosts_from_controller = false;
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;
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
// or the request is invalid (nothing was changed), 1 when the controller cannot be reached,
// fails, or what was waited for failed or did not happen in time.
//
// Every command takes the controller's address (default 127.0.0.1:7100, or
// MKFLEET_CONTROLLER) and a per-call deadline (request_timeout).

struct ApplyOptions {
  std::vector<std::string> paths;
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;  // this user's credentials (--tls-dir, MKFLEET_TLS_DIR) or --insecure
  std::string source;  // default: the paths given, joined by ","
  std::string message;  // the change cause recorded by the set revisions it makes
  bool prune = false;
  bool dry_run = false;
  bool force_conflicts = false;  // take over objects a GitSource owns
  bool live = false;             // diff --live: the drift found now, from the hosts' statuses
  // After applying: wait until what this apply changed is there at the generation applied
  // (instances Ready, sets at their replica count, Hosts connected with a valid pool,
  // pruned objects gone), printing progress; fail at once (exit 1, with the cause) when
  // something has failed or cannot be done, and exit 1 when `wait_timeout` passes first.
  bool wait = false;
  absl::Duration wait_timeout = absl::Minutes(5);
};

// Loads `paths`, sends them to the controller in one atomic apply and prints one line per
// object: "KernelInstance/web-1 created" (configured, unchanged, pruned).
int RunApply(const ApplyOptions& options, std::ostream& out, std::ostream& err);
// As RunApply with dry_run: what an apply would change, writing nothing, and what that would
// do to running kernels ("would re-create web-1 on node-a: ..."). Exit 0 when nothing would
// change, 1 when something would, 2 on invalid input.
int RunDiff(const ApplyOptions& options, std::ostream& out, std::ostream& err);

struct GetOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;  // this user's credentials (--tls-dir, MKFLEET_TLS_DIR) or --insecure
  std::string kind;  // Host, KernelInstance, InstanceSet (or host, hosts, ki, instances, ...)
  std::string name;  // empty: every object of the kind
  std::string output = "table";  // table | wide | yaml | json
  std::vector<std::string> paths;  // delete -f: the objects these manifests name
  bool colour = false;             // colour the phase column (a terminal)
  bool unmanaged = false;          // get instances: the kernels no object owns, per host
  bool force = false;              // delete a Host at once, leaving its kernels running
  bool force_conflicts = false;    // delete an object a GitSource owns
  bool topology = false;           // describe host: also the map of its CPUs and devices
  // What the command line named: TYPE [NAME...] or TYPE/NAME... (kind and name are then the
  // first); and -l's label selector ("app=web,tier!=db,zone").
  std::vector<std::string> args;
  std::string selector;
  bool watch = false;  // get -w: after the list, a row for each change (until interrupted)
  absl::Duration watch_every = absl::Seconds(1);
};

// Lists objects (set members included among instances) as a table (wide: placement,
// serving kernel, owner, pool details), yaml or json; with `unmanaged`, the kernels that
// run on hosts without an object owning them.
int RunGet(const GetOptions& options, std::ostream& out, std::ostream& err);
// One object in full: spec summary, status, placement, conditions, recent events; for a
// host also the instances on it, for a set its members' phases.
int RunDescribe(const GetOptions& options, std::ostream& out, std::ostream& err);
// Deletes kind/name (or every object the manifests at `paths` name, instances first);
// exit 1 with "Kind/name does not exist" when one is absent. A Host drains first
// ("terminating") unless `force`.
int RunDelete(const GetOptions& options, std::ostream& out, std::ostream& err);

struct EventsOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;  // this user's credentials (--tls-dir, MKFLEET_TLS_DIR) or --insecure
  std::string kind;  // optional filter (hosts, instances, ...)
  std::string name;
  std::string type;  // Normal | Warning
  absl::Duration since = absl::ZeroDuration();  // only events this recent (0: all)
  std::string output = "table";                // table | json
  bool follow = false;
};

// Prints the controller's events, oldest first: TIME TYPE REASON OBJECT COUNT MESSAGE (or a
// JSON array); with follow, keeps printing new ones until interrupted.
int RunEvents(const EventsOptions& options, std::ostream& out, std::ostream& err);

struct AuditOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;
  absl::Duration since = absl::ZeroDuration();  // only records this recent (0: all)
  int limit = 0;                                // only the newest this many (0: all)
  std::string output = "table";                 // table | json
};

// Prints the controller's audit log (admins only), oldest first:
// TIME IDENTITY VERB OBJECTS RESULT MESSAGE (or a JSON array).
int RunAudit(const AuditOptions& options, std::ostream& out, std::ostream& err);

struct MorphOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;
  std::string verb;  // status | prepare | commit | rollback
  std::string kind;  // "instance" (KernelInstance)
  std::string name;
  std::string reason;  // rollback
  std::string output = "text";  // text | json
  // prepare, commit, rollback: follow the live update until it ends (exit 0 when it ended as
  // asked: committed for prepare and commit, rolled back for rollback; 1 otherwise).
  bool wait = false;
  absl::Duration wait_timeout = absl::Minutes(5);
};

// kmorphctl's verbs on one instance's live update (docs/morph.md): status prints the phase,
// the kernels, the revisions and the figures; prepare starts one now (also a revision that
// rolled back); commit (update.morph.commit Manual) and rollback (before the commit).
// Refusals (no morph in progress, already committed, nothing to update) exit 1.
int RunMorph(const MorphOptions& options, std::ostream& out, std::ostream& err);

struct RolloutOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;
  std::string verb;  // status | pause | resume | undo | history
  // "set/NAME", or "set" and "NAME".
  std::vector<std::string> target;
  uint32_t to_revision = 0;  // undo
  std::string output = "text";  // text | json
  // status: follow until the rollout completes (exit 0), fails (1) or pauses (3).
  bool watch = false;
  absl::Duration watch_timeout = absl::Hours(1);
  absl::Duration interval = absl::Milliseconds(500);
};

// `mkapply rollout VERB set/NAME`: a set's rollout (status with a bar per wave, pause,
// resume, undo [--to-revision N], history).
int RunRollout(const RolloutOptions& options, std::ostream& out, std::ostream& err);
// The exit code of `rollout status --watch` when the rollout is paused.
inline constexpr int kExitPaused = 3;

struct CertsOptions {
  std::string action;       // init | issue
  std::string kind;         // issue: controller | agent | user
  std::string name;         // issue agent: the Host; issue user: the user
  std::string dir;          // init: the folder to create; issue: the CA's folder
  std::string out;          // issue: where the credentials go (default under dir, see certs.h)
  std::vector<std::string> groups;  // issue user: O= entries
  std::vector<std::string> dns;     // controller: extra DNS names
  std::vector<std::string> ips;     // controller: IP addresses
  int days = 365;           // validity of what is issued (the CA: ten times this)
};

// `certs init DIR`: a new fleet CA with a controller certificate and an admin user
// (group fleet-admins). `certs issue KIND [NAME]`: one more identity from the CA in
// --ca-dir. Prints what was written. 0, 2 on bad input, 1 on failure.
int RunCerts(const CertsOptions& options, std::ostream& out, std::ostream& err);

struct SourceOptions {
  std::string controller = kDefaultController;
  absl::Duration request_timeout = absl::Seconds(30);
  security::TlsOptions tls;
  std::string verb;  // sync | suspend | resume
  std::string kind;  // "source" (GitSource)
  std::string name;
};

// `mkapply sync|suspend|resume source NAME`: fetch a GitSource now and apply its commit
// (like `flux reconcile source git`), or stop and start its fetches. Prints what was done;
// 0, 1 when the fetch, verification or apply failed (the reason printed), 2 on bad input.
int RunSource(const SourceOptions& options, std::ostream& out, std::ostream& err);

// `mkapply version`: mkapply's version, and (unless `client_only`) the controller's; text
// or json. 0; 1 when the controller cannot be asked (the client's is printed all the same).
int RunVersion(const GetOptions& options, bool client_only, std::ostream& out, std::ostream& err);

// `mkapply cordon|uncordon|drain HOST...`: set the Hosts' spec.cordoned (nothing new is
// placed on a cordoned host; what runs there stays); drain also sets spec.drain (the
// controller replaces its replicas sets' members elsewhere, within each set's rollout
// budget) and says what moves and what stays; with `wait`, until no set member is left to
// move (progress as counts change). Uncordon clears both. 0; 1 when one is absent, refused
// or unreachable, or the wait timed out; 2 on bad usage; 130 when interrupted while waiting.
enum class CordonMode { kCordon, kUncordon, kDrain };
struct DrainOptions {
  bool wait = false;
  absl::Duration timeout = absl::Minutes(10);
  absl::Duration every = absl::Seconds(1);
};
int RunCordon(const GetOptions& options, CordonMode mode, const DrainOptions& drain, std::ostream& out,
              std::ostream& err);

// `mkapply explain KIND[.field...]` (fields by their manifest names: instance.spec.resources):
// the type, rules and description the schema gives, and the fields below. 0; 2 for an unknown
// type or field (the fields there are, and the closest).
int RunExplain(const std::string& what, std::ostream& out, std::ostream& err);

// `mkapply api-resources`: the types, their short names, kinds and verbs.
int RunApiResources(std::ostream& out);

// `mkapply get devices HOST`: each PCI function of the host as its agent reported it: class,
// NUMA node, the names a manifest may use for it (BDF, netdev/block names), VFs and NVMe
// namespaces, whether it is in the pool, and the instance that holds it.
int RunDevices(const GetOptions& options, const std::string& host, std::ostream& out, std::ostream& err);

// A shell completion script for `shell` (bash or zsh): `commands` maps each subcommand
// (a nested one as "certs issue") to its flags.
std::string CompletionScript(const std::string& shell, const std::map<std::string, std::vector<std::string>>& commands);

// The candidate closest to `word` by edit distance, or "" when none is close (for "did you
// mean").
std::string Closest(const std::string& word, const std::vector<std::string>& candidates);

// `from` and `to` compared line by line as diff -u prints it (headers `--- from_name`,
// `+++ to_name`, hunks with `context` lines around each change); "" when they are equal.
std::string UnifiedDiff(const std::string& from_name, const std::string& to_name, const std::string& from,
                        const std::string& to, int context = 3);

// "hosts" -> "Host", "ki" -> "KernelInstance", ...; empty when unknown.
std::string CanonicalKind(const std::string& kind);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_COMMANDS_H_
