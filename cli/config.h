// mkapply's configuration file: named contexts (a controller address, the folder of the
// user's credentials, a request timeout) and the current one, as kubeconfig has them.
//
// The file is $MKFLEET_CONFIG, else $XDG_CONFIG_HOME/mkfleet/config, else
// ~/.config/mkfleet/config (YAML, written 0600):
//   current-context: prod
//   contexts:
//     - name: prod
//       controller: ctl.example.org:7100
//       tls-dir: /home/dana/.config/mkfleet/prod
//       request-timeout: 30s
// Which context applies: --context, else $MKFLEET_CONTEXT, else current-context. A flag
// (--controller, --tls-dir, --insecure, --request-timeout) or its environment variable
// beats the context's value.
// Thread-safety: plain values and functions.
#ifndef MKFLEET_CLI_CONFIG_H_
#define MKFLEET_CLI_CONFIG_H_

#include <optional>
#include <ostream>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace mkfleet::cli {

struct Context {
  std::string name;
  std::string controller;
  std::string tls_dir;
  bool insecure = false;
  std::string request_timeout;
};

struct Config {
  std::string current;
  std::vector<Context> contexts;
  const Context* Find(const std::string& name) const;
};

// Where the file is (see above).
std::string ConfigPath();

// The file at `path`; an empty Config when there is none. InvalidArgument naming the file
// and the field for a file that is not one.
absl::StatusOr<Config> LoadConfig(const std::string& path);

// Writes `config` to `path` at once (a temporary file renamed over it), mode 0600, creating
// the folder.
absl::Status SaveConfig(const std::string& path, const Config& config);

// The context that applies: `name` (from --context or $MKFLEET_CONTEXT) when given, else the
// current one; nullopt when neither is set. NotFound naming the contexts there are for a name
// that is not one.
absl::StatusOr<std::optional<Context>> SelectContext(const Config& config, const std::string& name);

struct ConfigOptions {
  std::string verb;  // view | get-contexts | current-context | use-context | set-context | delete-context
  std::string name;
  // set-context: the values given (empty: unchanged).
  std::string controller, tls_dir, request_timeout;
  bool insecure = false;
  std::string path;  // the file (ConfigPath())
};

// `mkapply config VERB`: 0; 1 when the file cannot be read or written; 2 on bad usage (an
// unknown context, a missing name).
int RunConfig(const ConfigOptions& options, std::ostream& out, std::ostream& err);

}  // namespace mkfleet::cli

#endif  // MKFLEET_CLI_CONFIG_H_
