// mkapply: the mkfleet command line. Parses flags and dispatches to cli/commands.h.
#include <iostream>

#include "CLI/CLI.hpp"
#include "cli/commands.h"
#include "common/version.h"

int main(int argc, char** argv) {
  CLI::App app{
      "mkapply: declarative control of multikernel Linux fleets.\n"
      "Validate and plan manifests (Host, KernelInstance, InstanceSet) and apply them."};
  app.set_version_flag("--version", std::string("mkapply ") + mkfleet::kVersion);
  app.require_subcommand(1);

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

  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    int code = app.exit(e);
    return code == 0 ? 0 : mkfleet::cli::kExitInvalid;
  }
  if (validate_cmd->parsed()) return mkfleet::cli::RunValidate(validate, std::cout, std::cerr);
  if (plan_cmd->parsed()) return mkfleet::cli::RunPlan(plan, std::cout, std::cerr);
  return mkfleet::cli::kExitInvalid;
}
