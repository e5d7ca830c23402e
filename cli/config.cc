#include "cli/config.h"

#include <sys/stat.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "cli/table.h"
#include "yaml-cpp/yaml.h"

namespace mkfleet::cli {

const Context* Config::Find(const std::string& name) const {
  for (const Context& c : contexts) {
    if (c.name == name) return &c;
  }
  return nullptr;
}

std::string ConfigPath() {
  if (const char* p = std::getenv("MKFLEET_CONFIG"); p != nullptr && *p != '\0') return p;
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x != nullptr && *x != '\0') {
    return std::string(x) + "/mkfleet/config";
  }
  const char* home = std::getenv("HOME");
  return std::string(home != nullptr ? home : ".") + "/.config/mkfleet/config";
}

absl::StatusOr<Config> LoadConfig(const std::string& path) {
  Config config;
  std::ifstream in(path);
  if (!in) return config;  // none yet
  std::stringstream text;
  text << in.rdbuf();
  auto bad = [&](const std::string& what) { return absl::InvalidArgumentError(absl::StrCat(path, ": ", what)); };
  YAML::Node root;
  try {
    root = YAML::Load(text.str());
  } catch (const YAML::Exception& e) {
    return bad(absl::StrCat("not YAML: ", e.what()));
  }
  if (root.IsNull()) return config;
  if (!root.IsMap()) return bad("expected a map with current-context and contexts");
  try {
    for (const auto& kv : root) {
      const std::string key = kv.first.as<std::string>();
      if (key == "current-context") {
        config.current = kv.second.as<std::string>();
      } else if (key == "contexts") {
        if (!kv.second.IsSequence()) return bad("contexts: expected a list");
        for (size_t i = 0; i < kv.second.size(); ++i) {
          const YAML::Node& n = kv.second[i];
          if (!n.IsMap()) return bad(absl::StrCat("contexts[", i, "]: expected a map"));
          Context c;
          for (const auto& f : n) {
            const std::string field = f.first.as<std::string>();
            if (field == "name") {
              c.name = f.second.as<std::string>();
            } else if (field == "controller") {
              c.controller = f.second.as<std::string>();
            } else if (field == "tls-dir") {
              c.tls_dir = f.second.as<std::string>();
            } else if (field == "insecure") {
              c.insecure = f.second.as<bool>();
            } else if (field == "request-timeout") {
              c.request_timeout = f.second.as<std::string>();
              if (!ParseDuration(c.request_timeout).ok()) {
                return bad(absl::StrCat("contexts[", i, "].request-timeout: \"", c.request_timeout,
                                        "\" is not a duration (30s, 5m)"));
              }
            } else {
              return bad(absl::StrCat("contexts[", i, "].", field,
                                      ": unknown field (name, controller, tls-dir, insecure, request-timeout)"));
            }
          }
          if (c.name.empty()) return bad(absl::StrCat("contexts[", i, "].name: required"));
          if (config.Find(c.name) != nullptr) return bad(absl::StrCat("contexts[", i, "].name: \"", c.name, "\" twice"));
          config.contexts.push_back(std::move(c));
        }
      } else {
        return bad(absl::StrCat(key, ": unknown field (current-context, contexts)"));
      }
    }
  } catch (const YAML::Exception& e) {
    return bad(e.what());
  }
  return config;
}

absl::Status SaveConfig(const std::string& path, const Config& config) {
  YAML::Emitter out;
  out << YAML::BeginMap;
  if (!config.current.empty()) out << YAML::Key << "current-context" << YAML::Value << config.current;
  out << YAML::Key << "contexts" << YAML::Value << YAML::BeginSeq;
  for (const Context& c : config.contexts) {
    out << YAML::BeginMap << YAML::Key << "name" << YAML::Value << c.name;
    if (!c.controller.empty()) out << YAML::Key << "controller" << YAML::Value << c.controller;
    if (!c.tls_dir.empty()) out << YAML::Key << "tls-dir" << YAML::Value << c.tls_dir;
    if (c.insecure) out << YAML::Key << "insecure" << YAML::Value << true;
    if (!c.request_timeout.empty()) out << YAML::Key << "request-timeout" << YAML::Value << c.request_timeout;
    out << YAML::EndMap;
  }
  out << YAML::EndSeq << YAML::EndMap;
  std::error_code ec;
  const std::filesystem::path file(path);
  if (file.has_parent_path()) std::filesystem::create_directories(file.parent_path(), ec);
  const std::string tmp = path + ".tmp";
  {
    std::ofstream f(tmp, std::ios::trunc);
    f << out.c_str() << "\n";
    if (!f) return absl::UnavailableError(absl::StrCat("cannot write ", tmp));
  }
  chmod(tmp.c_str(), 0600);
  if (std::rename(tmp.c_str(), path.c_str()) != 0) return absl::UnavailableError(absl::StrCat("cannot write ", path));
  return absl::OkStatus();
}

absl::StatusOr<std::optional<Context>> SelectContext(const Config& config, const std::string& name) {
  const std::string wanted = name.empty() ? config.current : name;
  if (wanted.empty()) return std::nullopt;
  const Context* c = config.Find(wanted);
  if (c == nullptr) {
    std::vector<std::string> names;
    for (const Context& x : config.contexts) names.push_back(x.name);
    return absl::NotFoundError(absl::StrCat("no context \"", wanted, "\" in ", ConfigPath(), " (",
                                            names.empty() ? "it has none" : "it has " + absl::StrJoin(names, ", "),
                                            "; mkapply config set-context NAME --controller ADDR --tls-dir DIR)"));
  }
  return *c;
}

int RunConfig(const ConfigOptions& options, std::ostream& out, std::ostream& err) {
  auto loaded = LoadConfig(options.path);
  if (!loaded.ok()) {
    err << "error: " << loaded.status().message() << "\n";
    return kExitFailure;
  }
  Config config = *std::move(loaded);
  auto save = [&]() {
    absl::Status s = SaveConfig(options.path, config);
    if (!s.ok()) err << "error: " << s.message() << "\n";
    return s.ok() ? kExitOk : kExitFailure;
  };
  const std::string& verb = options.verb;
  if (verb == "view") {
    std::ifstream in(options.path);
    if (!in) {
      err << "no configuration yet (" << options.path << "); mkapply config set-context NAME --controller ADDR "
          << "--tls-dir DIR makes one\n";
      return kExitOk;
    }
    out << in.rdbuf();
    return kExitOk;
  }
  if (verb == "get-contexts") {
    if (config.contexts.empty()) {
      err << "no contexts in " << options.path << "\n";
      return kExitOk;
    }
    Table t({"CURRENT", "NAME", "CONTROLLER", "CREDENTIALS", "TIMEOUT"});
    for (const Context& c : config.contexts) {
      t.Add({c.name == config.current ? "*" : "", c.name, c.controller.empty() ? "-" : c.controller,
             c.insecure ? "(plaintext)" : (c.tls_dir.empty() ? "-" : c.tls_dir),
             c.request_timeout.empty() ? "-" : c.request_timeout});
    }
    t.Print(out);
    return kExitOk;
  }
  if (verb == "current-context") {
    if (config.current.empty()) {
      err << "error: no current context (mkapply config use-context NAME)\n";
      return kExitFailure;
    }
    out << config.current << "\n";
    return kExitOk;
  }
  if (options.name.empty()) {
    err << "error: config " << verb << " needs a context's NAME\n";
    return kExitInvalid;
  }
  if (verb == "use-context") {
    if (config.Find(options.name) == nullptr) {
      err << "error: " << SelectContext(config, options.name).status().message() << "\n";
      return kExitInvalid;
    }
    config.current = options.name;
    if (int c = save(); c != kExitOk) return c;
    out << "Switched to context \"" << options.name << "\".\n";
    return kExitOk;
  }
  if (verb == "delete-context") {
    auto it = std::find_if(config.contexts.begin(), config.contexts.end(),
                           [&](const Context& c) { return c.name == options.name; });
    if (it == config.contexts.end()) {
      err << "error: " << SelectContext(config, options.name).status().message() << "\n";
      return kExitInvalid;
    }
    config.contexts.erase(it);
    if (config.current == options.name) config.current.clear();
    if (int c = save(); c != kExitOk) return c;
    out << "Deleted context \"" << options.name << "\".\n";
    return kExitOk;
  }
  if (verb == "set-context") {
    if (!options.request_timeout.empty() && !ParseDuration(options.request_timeout).ok()) {
      err << "error: --request-timeout " << options.request_timeout << ": not a duration (30s, 5m)\n";
      return kExitInvalid;
    }
    Context* c = nullptr;
    for (Context& x : config.contexts) {
      if (x.name == options.name) c = &x;
    }
    const bool created = c == nullptr;
    if (created) {
      config.contexts.push_back({options.name, "", "", false, ""});
      c = &config.contexts.back();
    }
    if (!options.controller.empty()) c->controller = options.controller;
    if (!options.tls_dir.empty()) {
      c->tls_dir = std::filesystem::absolute(options.tls_dir).string();
      c->insecure = false;
    }
    if (options.insecure) {
      c->insecure = true;
      c->tls_dir.clear();
    }
    if (!options.request_timeout.empty()) c->request_timeout = options.request_timeout;
    if (config.current.empty()) config.current = options.name;  // the first one is used at once
    if (int code = save(); code != kExitOk) return code;
    out << "Context \"" << options.name << "\" " << (created ? "created" : "modified") << ".\n";
    return kExitOk;
  }
  err << "error: unknown config verb " << verb << "\n";
  return kExitInvalid;
}

}  // namespace mkfleet::cli
