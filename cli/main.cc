// mkapply: the mkfleet command line. Parses flags and dispatches to cli/commands.h.
//
// Global flags (--controller, --request-timeout, --tls-dir, --insecure) go before or after
// the subcommand, as in kubectl; MKFLEET_CONTROLLER and MKFLEET_TLS_DIR give the defaults.
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <iostream>
#include <map>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "cli/config.h"
#include "cli/output.h"
#include "cli/table.h"
#include "common/version.h"

namespace {

// A CLI11 validator for durations ("30s", "5m", a bare number of seconds).
struct DurationValidator : public CLI::Validator {
  DurationValidator() {
    name_ = "DURATION";
    func_ = [](const std::string& text) {
      auto d = mkfleet::cli::ParseDuration(text);
      return d.ok() ? std::string() : std::string(d.status().message());
    };
  }
};

absl::Duration Duration(const std::string& text) { return *mkfleet::cli::ParseDuration(text); }

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "mkapply: declarative control of multikernel Linux fleets.\n"
      "Validate and plan manifests (Host, KernelInstance, InstanceSet, RolloutPolicy, RoleBinding, GitSource) and apply them to mkcontroller.\n"
      "Remote commands authenticate with your certificate: --tls-dir DIR or MKFLEET_TLS_DIR (see `certs`)."};
  app.set_version_flag("--version", std::string("mkapply ") + mkfleet::kVersion);
  app.require_subcommand(1);
  // Global flags may come after the subcommand too.
  app.fallthrough();
  std::string controller = mkfleet::cli::kDefaultController;
  std::string request_timeout = "30s";
  app.add_option("--controller", controller, "mkcontroller address (default 127.0.0.1:7100)")
      ->envname("MKFLEET_CONTROLLER");
  app.add_option("--request-timeout", request_timeout, "deadline of each call to the controller (default 30s)")
      ->check(DurationValidator());
  mkfleet::security::TlsOptions tls;
  mkfleet::security::AddTlsFlags(app, &tls, "your user (ROOT/users/NAME)", "MKFLEET_TLS_DIR");
  std::string context_name;
  app.add_option("--context", context_name,
                 "the context of the configuration file to use (mkapply config get-contexts; default its current "
                 "one)")
      ->envname("MKFLEET_CONTEXT");

  mkfleet::cli::ValidateOptions validate;
  CLI::App* validate_cmd = app.add_subcommand(
      "validate",
      "Check manifests without applying them.\n"
      "Exit 0 and a summary when all are valid; every error with file:line:col and exit 2 "
      "otherwise.");
  validate_cmd
      ->add_option("-f,--filename", validate.paths,
                   "Manifest file or directory (recursive, *.yaml/*.yml); - for stdin")
      ->required();
  validate_cmd->add_option("-o,--output", validate.output, "summary (default) or yaml (canonical form)")
      ->check(CLI::IsMember({"summary", "yaml"}));
  validate_cmd->add_flag("--skip-host-checks", validate.skip_host_checks,
                         "a folder with part of the fleet: spec.host may name a Host it does not define");
  validate_cmd->add_flag("--hosts-from-controller", validate.hosts_from_controller,
                         "a folder with part of the fleet: the controller's Hosts count as defined (asks it)");

  mkfleet::cli::PlanOptions plan;
  CLI::App* plan_cmd = app.add_subcommand(
      "plan",
      "Compute placements offline (no controller or agents needed).\n"
      "Exit 0 when every instance is placed, 3 when something is unschedulable, 2 on invalid "
      "input.");
  plan_cmd
      ->add_option("-f,--filename", plan.paths,
                   "Manifest file or directory (recursive, *.yaml/*.yml); - for stdin")
      ->required();
  plan_cmd->add_option("--topology", plan.topologies,
                       "HOST=FILE.xml, HOST=synthetic:STRING or HOST=live; overrides the Host's "
                       "spec.topology (repeatable)");
  plan_cmd->add_option("-o,--output", plan.output, "table (default), json or yaml")
      ->check(CLI::IsMember({"table", "json", "yaml"}));
  plan_cmd->add_option("--vfs-per-nic", plan.vfs_per_nic,
                       "SR-IOV VFs to assume per Network function of XML/synthetic topologies "
                       "(hwloc exports carry no SR-IOV data)");

  mkfleet::cli::ApplyOptions apply;
  std::string wait_timeout = "5m";
  CLI::App* apply_cmd = app.add_subcommand(
      "apply",
      "Send manifests to the controller in one atomic apply.\n"
      "Prints Kind/name created|configured|unchanged|pruned. Exit 0 on success, 2 when the "
      "input is invalid (nothing is changed), 1 when the controller cannot be reached (or, with "
      "--wait, when something failed or the timeout passed).");
  CLI::App* diff_cmd = app.add_subcommand(
      "diff",
      "Show what `apply` would change, writing nothing, and what that would do to running kernels; with "
      "--live, where the hosts' kernels differ from the desired state by changes made outside mkfleet (drift).\n"
      "Exit 0 when nothing would change (no drift), 1 when something would (drift found), 2 on invalid input.");
  for (CLI::App* cmd : {apply_cmd, diff_cmd}) {
    CLI::Option* files = cmd->add_option("-f,--filename", apply.paths,
                                         "Manifest file or directory (recursive, *.yaml/*.yml); - for stdin");
    if (cmd == apply_cmd) files->required();
    cmd->add_option("--source", apply.source, "who owns these objects, for --prune (default: the -f paths)");
    cmd->add_flag("--prune", apply.prune, "also delete objects this source applied before and no longer has");
    cmd->add_option("-m,--message", apply.message,
                    "why: recorded as the change cause of the set revisions this apply makes (`rollout history`)");
  }
  apply_cmd->add_flag("--dry-run", apply.dry_run, "check and report, writing nothing (same as diff)");
  diff_cmd->add_flag("--live", apply.live,
                     "the drift the controller finds now: per host, the object, the field, what is wanted, what is "
                     "found and the drift policy (no -f)");
  apply_cmd->add_flag("--force-conflicts", apply.force_conflicts,
                      "take over objects a GitSource owns until its next commit (refused otherwise, naming the source and commit)");
  apply_cmd->add_flag("--wait", apply.wait,
                      "wait until what was applied is there at the generation applied: instances Ready, sets at "
                      "their count, Hosts connected with a valid pool, pruned objects gone; fails at once with the "
                      "cause when something failed or cannot be done");
  apply_cmd->add_option("--timeout", wait_timeout, "how long --wait waits (e.g. 30s, 5m; default 5m)")
      ->check(DurationValidator());

  mkfleet::cli::GetOptions get;
  CLI::App* get_cmd = app.add_subcommand(
      "get",
      "List objects of a type, or show some: TYPE [NAME...], TYPE/NAME... (types may differ), or TYPE -l "
      "SELECTOR.\nExit 0; 1 when one is absent (the others are printed) or unreachable; 2 on bad usage.");
  CLI::App* delete_cmd = app.add_subcommand(
      "delete",
      "Delete TYPE NAME..., TYPE/NAME..., TYPE -l SELECTOR, or the objects named in -f PATH. A Host is deleted once "
      "its instances are (it is terminating meanwhile); --force removes it at once, leaving them running.\n"
      "Exit 0, 1 when one is absent or unreachable, 2 on bad input.");
  CLI::App* describe_cmd = app.add_subcommand(
      "describe",
      "Show objects in full: status, placement, conditions and recent events; a host's instances (and with "
      "--topology its map). TYPE NAME..., TYPE/NAME... or TYPE -l SELECTOR.\n"
      "Exit 0, 1 when one is absent or unreachable, 2 on bad usage.");
  for (CLI::App* cmd : {get_cmd, delete_cmd, describe_cmd}) {
    cmd->add_option("args", get.args,
                    "TYPE [NAME...] or TYPE/NAME...: hosts, instances (ki), sets, policies, rolebindings, sources "
                    "(mkapply api-resources); get also takes controllers (the control plane's members)");
    cmd->add_option("-l,--selector", get.selector,
                    "only objects whose labels match: KEY=VALUE, KEY!=VALUE, KEY, !KEY, joined by commas");
  }
  get_cmd->get_option("args")->required();
  describe_cmd->get_option("args")->required();
  delete_cmd->add_option("-f,--filename", get.paths, "delete the objects these manifests name");
  delete_cmd->add_flag("--force", get.force, "a Host: remove it at once; its kernels are left running, unmanaged");
  delete_cmd->add_flag("--force-conflicts", get.force_conflicts,
                       "delete an object a GitSource owns (its next commit that still has it brings it back)");
  get_cmd
      ->add_option("-o,--output", get.output,
                   "table (default); wide (placement, serving kernel, owner, agent...); yaml or json (as stored, with "
                   "status; one object named: the object, else a List); name (TYPE/NAME); "
                   "jsonpath=TEMPLATE ({.items[*].metadata.name}, {range .items[*]}...{end}); "
                   "custom-columns=HEADER:PATH,... (NAME:.metadata.name,PHASE:.status.phase)")
      ->check(CLI::Validator(
          [](std::string& v) {
            return v == "table" || v == "wide" || mkfleet::cli::IsObjectFormat(v)
                       ? std::string()
                       : "table, wide, yaml, json, name, jsonpath=TEMPLATE or custom-columns=SPEC, not " + v;
          },
          "FORMAT"));
  get_cmd->add_flag("--unmanaged", get.unmanaged, "instances: the kernels on hosts that no object owns");
  get_cmd->add_flag("-w,--watch", get.watch,
                    "after the list, print a row whenever an object changes, appears or goes (polls every second; "
                    "Ctrl-C ends it)");
  describe_cmd->add_flag("--topology", get.topology,
                         "a host: also a map of it as its agent reported it (NUMA nodes as rows, cores as cells, one "
                         "letter per CPU for the instance that holds it) and its PCI functions with their owners");

  mkfleet::cli::EventsOptions events;
  std::string since;
  CLI::App* events_cmd = app.add_subcommand(
      "events",
      "Show the controller's events (actions, failures, scheduling), oldest first; repeats are folded into one "
      "with a count.\nExit 0, 1 when unreachable.");
  events_cmd->add_option("kind", events.kind, "only this kind (hosts, instances, sets)");
  events_cmd->add_option("name", events.name, "only this object");
  events_cmd->add_flag("-f,--follow", events.follow, "keep printing new events until interrupted");
  events_cmd->add_option("--since", since, "only events of the last DURATION (e.g. 5m)")->check(DurationValidator());
  events_cmd->add_option("--type", events.type, "Normal or Warning")->check(CLI::IsMember({"Normal", "Warning"}));
  events_cmd->add_option("-o,--output", events.output, "table (default) or json")
      ->check(CLI::IsMember({"table", "json"}));

  mkfleet::cli::AuditOptions audit;
  std::string audit_since;
  CLI::App* audit_cmd = app.add_subcommand(
      "audit",
      "Show the controller's audit log: every apply and delete with who asked, the objects, the result and the "
      "source, oldest first (admins only).\nExit 0, 1 when refused or unreachable.");
  audit_cmd->add_option("--since", audit_since, "only records of the last DURATION (e.g. 24h)")
      ->check(DurationValidator());
  audit_cmd->add_option("--limit", audit.limit, "only the newest N records")->check(CLI::Range(0, 1000000));
  audit_cmd->add_option("-o,--output", audit.output, "table (default) or json")->check(CLI::IsMember({"table", "json"}));

  mkfleet::cli::MorphOptions morph;
  std::string morph_wait_timeout = "5m";
  CLI::App* morph_cmd = app.add_subcommand(
      "morph",
      "Live updates (update.strategy Morph) of one instance, kmorphctl's verbs: `status`; `prepare` (start one now, "
      "also to a revision that rolled back); `commit` (update.morph.commit Manual: go on from Validating); "
      "`rollback` (before the commit; the old kernel never stopped).\nExit 0; 1 when refused (no live update in "
      "progress, already committed, nothing to update) or when --wait sees it end otherwise; 2 on bad usage.");
  morph_cmd->add_option("verb", morph.verb, "status, prepare, commit or rollback")
      ->required()
      ->check(CLI::IsMember({"status", "prepare", "commit", "rollback"}));
  morph_cmd->add_option("kind", morph.kind, "instance")->required();
  morph_cmd->add_option("name", morph.name, "the instance")->required();
  morph_cmd->add_option("--reason", morph.reason, "rollback: why (kept in the events)");
  morph_cmd->add_flag("--wait", morph.wait, "prepare, commit, rollback: follow it until it ends");
  morph_cmd->add_option("--timeout", morph_wait_timeout, "with --wait: how long (default 5m)")
      ->check(DurationValidator());
  morph_cmd->add_option("-o,--output", morph.output, "status: text (default) or json")
      ->check(CLI::IsMember({"text", "json"}));

  mkfleet::cli::RolloutOptions rollout;
  std::string rollout_timeout = "1h";
  CLI::App* rollout_cmd = app.add_subcommand(
      "rollout",
      "An InstanceSet's rollout to its newest template revision, or a RolloutPolicy's over the KernelInstances it "
      "selects (canary, waves, budgets, health gates): `status` (a progress bar per wave; --watch follows it), "
      "`pause`, `resume`, `undo [--to-revision N]` (apply an older revision's template, or the policy's instances' "
      "specs then, again, as a new revision), `history` (revisions with their change causes).\nExit 0; 1 "
      "when refused or unreachable, or when --watch sees the rollout fail; 3 when --watch sees it paused; 2 on bad "
      "usage.");
  rollout_cmd->add_option("verb", rollout.verb, "status, pause, resume, undo or history")
      ->required()
      ->check(CLI::IsMember({"status", "pause", "resume", "undo", "history"}));
  rollout_cmd->add_option("target", rollout.target, "set/NAME or policy/NAME (or: set NAME)")->required()->expected(1, 2);
  rollout_cmd->add_option("--to-revision", rollout.to_revision, "undo: the revision to go back to (default: the one "
                                                                 "before, or the stable one after a failure)");
  rollout_cmd->add_flag("-w,--watch", rollout.watch, "status: follow until it completes (0), fails (1) or pauses (3)");
  rollout_cmd->add_option("--timeout", rollout_timeout, "with --watch: how long (default 1h)")->check(DurationValidator());
  rollout_cmd->add_option("-o,--output", rollout.output, "status, history: text (default) or json")
      ->check(CLI::IsMember({"text", "json"}));

  mkfleet::cli::SourceOptions source;
  std::vector<CLI::App*> source_cmds;
  for (const char* verb : {"sync", "suspend", "resume"}) {
    std::string help =
        std::string(verb) == "sync"
            ? "Fetch a GitSource now and apply its commit (again, if applied), like `flux reconcile source git`; "
              "prints what was applied, or every error of a refused commit.\nExit 0; 1 when the fetch, the "
              "signature check or the apply failed; 2 on bad usage."
        : std::string(verb) == "suspend"
            ? "Stop fetching a GitSource (what it applied stays) until `resume`.\nExit 0, 1 when refused."
            : "Fetch a suspended GitSource again (at once, then every interval).\nExit 0, 1 when refused.";
    CLI::App* cmd = app.add_subcommand(verb, help);
    cmd->add_option("kind", source.kind, "source (a GitSource)")->required();
    cmd->add_option("name", source.name, "the GitSource")->required();
    source_cmds.push_back(cmd);
  }

  mkfleet::cli::CertsOptions certs;
  CLI::App* certs_cmd = app.add_subcommand(
      "certs",
      "Make the fleet's certificate authority and its certificates (ECDSA P-256, with OpenSSL's library).\n"
      "Exit 0, 2 on bad input (or a CA that exists), 1 on failure.");
  certs_cmd->require_subcommand(1);
  CLI::App* certs_init = certs_cmd->add_subcommand(
      "init", "Create a CA in DIR, a controller certificate (DIR/controller) and an admin user (DIR/users/admin, "
              "group fleet-admins). Refuses a DIR that has a CA already.");
  certs_init->add_option("dir", certs.dir, "the CA's folder")->required();
  CLI::App* certs_issue = certs_cmd->add_subcommand(
      "issue", "Issue one identity from the CA in --ca-dir: `controller`, `agent HOST` (the Host's name in its SAN) or "
               "`user NAME --group G` (CN the user, O each group). Re-issuing replaces the files in place: running "
               "daemons pick them up (rotation).");
  certs_issue->add_option("kind", certs.kind, "controller, agent or user")
      ->required()
      ->check(CLI::IsMember({"controller", "agent", "user"}));
  certs_issue->add_option("name", certs.name, "the Host (agent) or the user");
  certs_issue->add_option("--ca-dir", certs.dir, "the CA's folder (from certs init)")->required();
  certs_issue->add_option("--out", certs.out, "where to write (default CA-DIR/controller, /agents/HOST, /users/NAME)");
  certs_issue->add_option("--group", certs.groups, "user: a group (repeatable)");
  for (CLI::App* c : {certs_init, certs_issue}) {
    c->add_option("--dns", certs.dns, "controller: a DNS name it is reached by (repeatable; default localhost)");
    c->add_option("--ip", certs.ips, "controller: an IP address it is reached by (repeatable; default loopback)");
    c->add_option("--days", certs.days, "validity in days (default 365; the CA ten times as long)");
  }

  mkfleet::cli::ConfigOptions config;
  config.path = mkfleet::cli::ConfigPath();
  CLI::App* config_cmd = app.add_subcommand(
      "config",
      "Contexts: which controller and credentials mkapply uses, by name, in " + config.path +
          " ($MKFLEET_CONFIG; pick one with --context or $MKFLEET_CONTEXT).\nExit 0, 1 when the file cannot be read "
          "or written, 2 on bad usage.");
  config_cmd->require_subcommand(1);
  config_cmd->add_subcommand("view", "Print the configuration file.");
  config_cmd->add_subcommand("get-contexts", "List the contexts; * marks the current one.");
  config_cmd->add_subcommand("current-context", "Print the current context's name.");
  for (const char* verb : {"use-context", "delete-context", "set-context"}) {
    CLI::App* c = config_cmd->add_subcommand(
        verb, std::string(verb) == "use-context"      ? "Make NAME the current context."
              : std::string(verb) == "delete-context" ? "Remove the context NAME."
                                                      : "Create or change the context NAME (the first becomes current).");
    c->add_option("name", config.name, "the context")->required();
  }
  CLI::App* set_context = config_cmd->get_subcommand("set-context");
  set_context->add_option("--controller", config.controller, "the controller's address (HOST:PORT)");
  set_context->add_option("--tls-dir", config.tls_dir, "the folder of your credentials (ca.crt, tls.crt, tls.key)");
  set_context->add_flag("--insecure", config.insecure, "plaintext (a loopback controller only)");
  set_context->add_option("--request-timeout", config.request_timeout, "each call's deadline (e.g. 30s)");

  CLI::App* cordon_cmd = app.add_subcommand(
      "cordon", "Mark hosts cordoned (Host spec.cordoned): nothing new is placed on them, what runs there stays; "
                "`get hosts` shows it.\nExit 0; 1 when one is absent, refused or unreachable; 2 on bad usage.");
  CLI::App* uncordon_cmd = app.add_subcommand(
      "uncordon", "Let new instances and set members be placed on hosts again.\nExit 0; 1 when one is absent, refused "
                  "or unreachable; 2 on bad usage.");
  CLI::App* drain_cmd = app.add_subcommand(
      "drain", "Cordon hosts and move their replicas InstanceSets' members elsewhere (Host spec.drain): each is "
               "replaced on another host first, at most the set's rollout maxSurge at once, and removed while the "
               "set keeps replicas - maxUnavailable members up. perHost members and KernelInstances stay (it says "
               "which). `uncordon` ends it.\nExit 0 (with --wait: nothing left to move); 1 when a host is absent, "
               "refused or unreachable, or --wait timed out; 2 on bad usage; 130 when interrupted while waiting.");
  mkfleet::cli::DrainOptions drain;
  std::string drain_timeout = "10m";
  drain_cmd->add_flag("--wait", drain.wait, "wait until no set member is left to move, printing progress");
  drain_cmd->add_option("--timeout", drain_timeout, "how long --wait waits (e.g. 90s, 10m; default 10m)")
      ->check(DurationValidator());
  for (CLI::App* c : {cordon_cmd, uncordon_cmd, drain_cmd}) {
    c->add_option("hosts", get.args, "HOST... (or host/HOST)");
    c->add_option("-l,--selector", get.selector, "the hosts whose labels match (KEY=VALUE,...)");
  }

  std::string explain_what;
  CLI::App* explain_cmd = app.add_subcommand(
      "explain", "Describe a manifest field from the schema: its type, rules, description and the fields below "
                 "(mkapply explain instance.spec.resources).\nExit 0, 2 for an unknown type or field.");
  explain_cmd->add_option("field", explain_what, "TYPE[.field...]: host, instance.spec.failover, ...")->required();

  bool version_client_only = false;
  std::string version_output = "text";
  CLI::App* version_cmd = app.add_subcommand("version", "Print mkapply's version and the controller's.\nExit 0, 1 when "
                                                        "the controller cannot be asked (mkapply's is printed).");
  version_cmd->add_flag("--client", version_client_only, "only mkapply's (no controller needed)");
  version_cmd->add_option("-o,--output", version_output, "text (default) or json")
      ->check(CLI::IsMember({"text", "json"}));
  CLI::App* resources_cmd = app.add_subcommand(
      "api-resources", "List the types mkapply knows, their short names, kinds and verbs.\nExit 0.");
  std::string shell;
  CLI::App* completion_cmd = app.add_subcommand(
      "completion",
      "Print a shell completion script: `source <(mkapply completion bash)` (or zsh); install it as "
      "/etc/bash_completion.d/mkapply.\nExit 0, 2 for another shell.");
  completion_cmd->add_option("shell", shell, "bash or zsh")->required()->check(CLI::IsMember({"bash", "zsh"}));
  std::string help_verb;
  CLI::App* help_cmd = app.add_subcommand("help", "Show help: of mkapply, or of one command (mkapply help get).");
  help_cmd->add_option("command", help_verb, "a command");

  // The commands and their flags (completion, "did you mean").
  std::map<std::string, std::vector<std::string>> commands;
  std::vector<std::string> command_names;
  for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
    command_names.push_back(sub->get_name());
    auto flags_of = [](const CLI::App* c) {
      std::vector<std::string> flags;
      for (const CLI::Option* o : c->get_options()) {
        for (const std::string& n : o->get_lnames()) flags.push_back("--" + n);
        for (const std::string& n : o->get_snames()) flags.push_back("-" + n);
      }
      return flags;
    };
    commands[sub->get_name()] = flags_of(sub);
    for (const CLI::App* nested : sub->get_subcommands([](const CLI::App*) { return true; })) {
      commands[sub->get_name() + " " + nested->get_name()] = flags_of(nested);
    }
  }
  // A mistyped command: say which was meant (CLI11 would call it an unexpected argument).
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--controller" || a == "--request-timeout" || a == "--tls-dir" || a == "--context" || a == "--tls-reload") {
      ++i;  // its value
      continue;
    }
    if (a.empty() || a[0] == '-') continue;
    if (std::find(command_names.begin(), command_names.end(), a) != command_names.end()) break;
    const std::string closest = mkfleet::cli::Closest(a, command_names);
    std::cerr << "error: unknown command \"" << a << "\" for mkapply"
              << (closest.empty() ? "" : "\n\nDid you mean this?\n\t" + closest) << "\n\nRun 'mkapply --help' for usage.\n";
    return mkfleet::cli::kExitInvalid;
  }

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : mkfleet::cli::kExitInvalid;
  }
  if (help_cmd->parsed()) {
    if (help_verb.empty()) {
      std::cout << app.help();
      return 0;
    }
    for (const CLI::App* sub : app.get_subcommands([](const CLI::App*) { return true; })) {
      if (sub->get_name() == help_verb) {
        std::cout << sub->help();
        return 0;
      }
    }
    const std::string closest = mkfleet::cli::Closest(help_verb, command_names);
    std::cerr << "error: no command \"" << help_verb << "\"" << (closest.empty() ? "" : "; did you mean \"" + closest + "\"?")
              << "\n";
    return mkfleet::cli::kExitInvalid;
  }
  if (config_cmd->parsed()) {
    for (const CLI::App* verb : config_cmd->get_subcommands()) config.verb = verb->get_name();
    return mkfleet::cli::RunConfig(config, std::cout, std::cerr);
  }
  // The context: what the flags and their environment variables do not give.
  {
    auto loaded = mkfleet::cli::LoadConfig(config.path);
    if (!loaded.ok()) {
      std::cerr << "error: " << loaded.status().message() << "\n";
      return mkfleet::cli::kExitInvalid;
    }
    auto context = mkfleet::cli::SelectContext(*loaded, context_name);
    if (!context.ok()) {
      std::cerr << "error: " << context.status().message() << "\n";
      return mkfleet::cli::kExitInvalid;
    }
    if (context->has_value()) {
      const mkfleet::cli::Context& c = **context;
      if (app.get_option("--controller")->count() == 0 && !c.controller.empty()) controller = c.controller;
      if (app.get_option("--tls-dir")->count() == 0 && app.get_option("--insecure")->count() == 0) {
        if (c.insecure) tls.insecure = true;
        if (!c.insecure && !c.tls_dir.empty()) tls.dir = c.tls_dir;
      }
      if (app.get_option("--request-timeout")->count() == 0 && !c.request_timeout.empty()) {
        request_timeout = c.request_timeout;
      }
    }
  }
  if (completion_cmd->parsed()) {
    std::cout << mkfleet::cli::CompletionScript(shell, commands);
    return 0;
  }
  if (resources_cmd->parsed()) return mkfleet::cli::RunApiResources(std::cout);
  if (explain_cmd->parsed()) return mkfleet::cli::RunExplain(explain_what, std::cout, std::cerr);
  apply.controller = get.controller = events.controller = audit.controller = controller;
  apply.request_timeout = get.request_timeout = events.request_timeout = audit.request_timeout =
      Duration(request_timeout);
  apply.tls = get.tls = events.tls = audit.tls = tls;
  if (cordon_cmd->parsed() || uncordon_cmd->parsed() || drain_cmd->parsed()) {
    using mkfleet::cli::CordonMode;
    drain.timeout = Duration(drain_timeout);
    return mkfleet::cli::RunCordon(
        get, cordon_cmd->parsed() ? CordonMode::kCordon : uncordon_cmd->parsed() ? CordonMode::kUncordon : CordonMode::kDrain,
        drain, std::cout, std::cerr);
  }
  if (version_cmd->parsed()) {
    get.output = version_output;
    return mkfleet::cli::RunVersion(get, version_client_only, std::cout, std::cerr);
  }
  if (!audit_since.empty()) audit.since = Duration(audit_since);
  if (certs_cmd->parsed()) {
    certs.action = certs_init->parsed() ? "init" : "issue";
    return mkfleet::cli::RunCerts(certs, std::cout, std::cerr);
  }
  if (audit_cmd->parsed()) return mkfleet::cli::RunAudit(audit, std::cout, std::cerr);
  for (CLI::App* cmd : source_cmds) {
    if (!cmd->parsed()) continue;
    source.verb = cmd->get_name();
    source.controller = controller;
    source.request_timeout = Duration(request_timeout);
    source.tls = tls;
    return mkfleet::cli::RunSource(source, std::cout, std::cerr);
  }
  if (rollout_cmd->parsed()) {
    rollout.controller = controller;
    rollout.request_timeout = Duration(request_timeout);
    rollout.tls = tls;
    rollout.watch_timeout = Duration(rollout_timeout);
    return mkfleet::cli::RunRollout(rollout, std::cout, std::cerr);
  }
  if (morph_cmd->parsed()) {
    morph.controller = controller;
    morph.request_timeout = Duration(request_timeout);
    morph.tls = tls;
    morph.wait_timeout = Duration(morph_wait_timeout);
    return mkfleet::cli::RunMorph(morph, std::cout, std::cerr);
  }
  apply.wait_timeout = Duration(wait_timeout);
  if (!since.empty()) events.since = Duration(since);
  if (validate_cmd->parsed()) {
    validate.controller = controller;
    validate.request_timeout = Duration(request_timeout);
    validate.tls = tls;
    return mkfleet::cli::RunValidate(validate, std::cout, std::cerr);
  }
  if (plan_cmd->parsed()) return mkfleet::cli::RunPlan(plan, std::cout, std::cerr);
  if (apply_cmd->parsed()) return mkfleet::cli::RunApply(apply, std::cout, std::cerr);
  if (diff_cmd->parsed()) return mkfleet::cli::RunDiff(apply, std::cout, std::cerr);
  // Colour only on a terminal (and never with NO_COLOR or TERM=dumb).
  const char* term = getenv("TERM");
  get.colour = isatty(STDOUT_FILENO) && getenv("NO_COLOR") == nullptr && term != nullptr && std::string(term) != "dumb";
  if (get_cmd->parsed()) {
    if (!get.args.empty() && (get.args[0] == "devices" || get.args[0] == "device")) {
      if (get.args.size() != 2) {
        std::cerr << "error: get devices needs one host: mkapply get devices HOST\n";
        return mkfleet::cli::kExitInvalid;
      }
      return mkfleet::cli::RunDevices(get, get.args[1], std::cout, std::cerr);
    }
    return mkfleet::cli::RunGet(get, std::cout, std::cerr);
  }
  if (describe_cmd->parsed()) return mkfleet::cli::RunDescribe(get, std::cout, std::cerr);
  if (events_cmd->parsed()) return mkfleet::cli::RunEvents(events, std::cout, std::cerr);
  if (delete_cmd->parsed()) return mkfleet::cli::RunDelete(get, std::cout, std::cerr);
  return mkfleet::cli::kExitInvalid;
}
