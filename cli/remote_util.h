// What mkapply's remote commands share: the client for the options, mapping a failed call
// to a message and an exit code, kind names, and loading manifests for the controller.
// Private to cli/. Thread-safety: pure functions.
#ifndef MKFLEET_CLI_REMOTE_UTIL_H_
#define MKFLEET_CLI_REMOTE_UTIL_H_

#include <functional>
#include <memory>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "cli/controller_client.h"
#include "manifests/loader.h"

namespace mkfleet::cli {
struct GetOptions;
}

namespace mkfleet::cli {

// Prints a failed call ("error: cannot reach the controller at ...") and returns the exit
// code: 2 for invalid input (nothing was changed), 1 otherwise.
int Report(const absl::Status& s, const std::string& controller, std::ostream& err);
// Prints why no connection can be made (no or unusable credentials) and returns 2.
int ReportSetup(const absl::Status& s, std::ostream& err);

// From now on Ctrl-C prints `message` (a string literal: it is read in the signal handler)
// on stderr and exits 130, as a shell's interrupted command: a wait after a committed change
// says so, and how to go on watching, rather than die as if nothing had happened.
void ExitOnInterruptSaying(const char* message);

// "hosts" -> "Host" ...; false (and the error on `err`) for an unknown kind.
bool ResolveKind(const std::string& given, std::string* kind, std::ostream& err);

// One object, or (name empty) every object of a kind.
struct Target {
  std::string kind;  // canonical (Host, KernelInstance, ...)
  std::string name;
};
// A label selector as kubectl's -l: requirements joined by commas, each KEY=VALUE (or ==),
// KEY!=VALUE, KEY (has it) or !KEY (has it not).
struct Selector {
  struct Requirement {
    std::string key, value;
    enum Op { kEquals, kNotEquals, kExists, kNotExists } op = kEquals;
  };
  std::vector<Requirement> requirements;
  bool empty() const { return requirements.empty(); }
  bool Matches(const google::protobuf::Map<std::string, std::string>& labels) const;
};
// `text` as a Selector; false (and the error on `err`) when it is not one.
bool ParseSelector(const std::string& text, Selector* selector, std::ostream& err);
// The targets of TYPE [NAME...] or TYPE/NAME... (`verb` for messages); false (and the error
// on `err`) on a bad kind, a mix of the two forms, or names with a selector.
bool ResolveTargets(const std::vector<std::string>& args, const std::string& verb, const Selector& selector,
                    std::vector<Target>* targets, std::ostream& err);

// Loads manifests for the controller (which checks host references against its store
// too); false with every error on `err` when any is invalid.
// Labels (or a selector's matchLabels) as "k=v" sorted by key and joined by `sep` ("" for
// none).
std::string LabelsText(const google::protobuf::Map<std::string, std::string>& labels, const char* sep = ",");

// A role as manifests write it: viewer, operator, admin.
std::string RoleText(mkfleet::v1::Role role);
// Who applied an object: "git:prod@1a2b3c4" for a GitSource's (its commit), else the apply's
// source (the manifest paths), "-" for none.
std::string SourceText(const mkfleet::v1::ObjectMeta& meta);
// A GitSource's ref: "branch main" (the default), "tag v1.4", "commit 1a2b3c4" (`short_commit`)
// or the whole id.
std::string RefText(const mkfleet::v1::GitRef& ref, bool short_commit);

// Lists every Host (with its status) from the controller at `controller` and hands them to
// `print`; on a failure to connect or list, reports it and returns the exit code.
// The objects `options.args` and `options.selector` name, one by one: a whole type is
// listed from the controller and filtered by the selector (`verb` for messages; with
// `whole_type_needs_selector`, a type alone without -l is refused, as delete does). Returns
// kExitOk, or the exit code after saying why on `err`.
int ExpandTargets(const GetOptions& options, const std::string& verb, bool whole_type_needs_selector,
                  std::vector<Target>* targets, std::ostream& err);

int WithHosts(const std::string& controller, absl::Duration request_timeout, const security::TlsOptions& tls,
              std::ostream& err, const std::function<int(const mkfleet::v1::GetResponse&)>& print);

bool LoadForController(const std::vector<std::string>& paths, manifests::LoadResult* loaded, std::ostream& err);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_REMOTE_UTIL_H_
