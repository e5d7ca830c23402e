#include "console/server.h"

#include <chrono>
#include <map>
#include <set>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "console/assets.h"
#include "console/picture.h"
#include "google/protobuf/util/json_util.h"
#include "httplib.h"
#include "manifests/json.h"
#include "manifests/loader.h"
#include "nlohmann/json.hpp"
#include "security/tls.h"

namespace mkfleet::console {
namespace {

namespace v1 = mkfleet::v1;
using Json = nlohmann::ordered_json;

// The API's collections and the kinds they hold.
const std::map<std::string, std::string>& Collections() {
  static const auto* kinds = new std::map<std::string, std::string>{
      {"hosts", "Host"},           {"instances", "KernelInstance"}, {"sets", "InstanceSet"},
      {"policies", "RolloutPolicy"}, {"sources", "GitSource"},
  };
  return *kinds;
}

int HttpCode(const absl::Status& s) {
  switch (s.code()) {
    case absl::StatusCode::kNotFound: return 404;
    case absl::StatusCode::kInvalidArgument: return 400;
    case absl::StatusCode::kUnavailable: return 503;
    case absl::StatusCode::kPermissionDenied: return 403;
    default: return 500;
  }
}

void SendJson(httplib::Response& res, const Json& body, int code = 200) {
  res.status = code;
  res.set_header("Cache-Control", "no-store");
  res.set_content(body.dump(), "application/json");
}

void SendError(httplib::Response& res, const absl::Status& s) {
  SendJson(res, Json{{"error", std::string(s.message())}, {"code", absl::StatusCodeToString(s.code())}}, HttpCode(s));
}

Json ObjectJson(const v1::Object& o) {
  manifests::PrintOptions with;
  with.include_output_only = true;
  return manifests::PrintJson(o, with);
}

Json EventJson(const v1::Event& e) {
  std::string text;
  google::protobuf::util::JsonPrintOptions options;
  options.preserve_proto_field_names = false;
  (void)google::protobuf::util::MessageToJsonString(e, &text, options);
  return Json::parse(text, nullptr, /*allow_exceptions=*/false);
}

// "/objects/KernelInstance/web-1" -> "KernelInstance/web-1"; events -> "Event".
std::string ChangedObject(const std::string& key) {
  std::vector<std::string> parts = absl::StrSplit(key, '/');
  if (parts.size() >= 4 && (parts[1] == "objects" || parts[1] == "status")) return absl::StrCat(parts[2], "/", parts[3]);
  if (parts.size() >= 2 && parts[1] == "events") return "Event";
  return "";
}

// ?label=k=v (repeatable): whether `labels` has all of them.
bool LabelsMatch(const httplib::Request& req, const google::protobuf::Map<std::string, std::string>& labels) {
  for (auto it = req.params.find("label"); it != req.params.end() && it->first == "label"; ++it) {
    std::pair<std::string, std::string> kv = absl::StrSplit(it->second, absl::MaxSplits('=', 1));
    auto l = labels.find(kv.first);
    if (l == labels.end() || l->second != kv.second) return false;
  }
  return true;
}

const char* ContentType(const std::string& name) {
  if (absl::EndsWith(name, ".html")) return "text/html; charset=utf-8";
  if (absl::EndsWith(name, ".js")) return "text/javascript; charset=utf-8";
  if (absl::EndsWith(name, ".css")) return "text/css; charset=utf-8";
  if (absl::EndsWith(name, ".svg")) return "image/svg+xml";
  return "application/octet-stream";
}

}  // namespace

Server::Server(Sources sources, Options options) : sources_(std::move(sources)), options_(options) {}

absl::Status Server::CheckAddress(const std::string& listen, const std::string& flag) {
  const size_t colon = listen.rfind(':');
  int port = -1;
  if (colon == std::string::npos || !absl::SimpleAtoi(listen.substr(colon + 1), &port) || port < 0 || port > 65535) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen, ": expected HOST:PORT (e.g. 127.0.0.1:8080)"));
  }
  if (!security::IsLoopbackAddress(listen)) {
    return absl::InvalidArgumentError(absl::StrCat(flag, " ", listen,
                                                   ": the console is served in plaintext, so on a loopback address "
                                                   "only (127.0.0.1 or [::1]); reach it from elsewhere through an "
                                                   "SSH tunnel (ssh -L 8080:127.0.0.1:8080 HOST)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::unique_ptr<Server>> Server::Serve(const std::string& listen, const std::string& flag,
                                                      Sources sources, Options options) {
  if (absl::Status s = CheckAddress(listen, flag); !s.ok()) return s;
  const size_t colon = listen.rfind(':');
  int port = 0;
  (void)absl::SimpleAtoi(listen.substr(colon + 1), &port);
  std::string host = listen.substr(0, colon);
  if (host.size() >= 2 && host.front() == '[' && host.back() == ']') host = host.substr(1, host.size() - 2);
  std::unique_ptr<Server> out(new Server(std::move(sources), options));
  out->http_ = std::make_unique<httplib::Server>();
  // Threads: the event streams hold one each; the rest answer requests.
  const int threads = options.max_streams + 8;
  out->http_->new_task_queue = [threads] { return new httplib::ThreadPool(threads); };
  out->Route();
  out->port_ = port == 0 ? out->http_->bind_to_any_port(host) : (out->http_->bind_to_port(host, port) ? port : -1);
  if (out->port_ <= 0) return absl::UnavailableError(absl::StrCat(flag, " ", listen, ": cannot listen there"));
  httplib::Server* http = out->http_.get();
  out->thread_ = std::thread([http] { http->listen_after_bind(); });
  // httplib's stop() does nothing until the listening loop runs: a server stopped at once
  // would otherwise never return from accept().
  for (int i = 0; i < 5000 && !http->is_running(); ++i) std::this_thread::sleep_for(std::chrono::milliseconds(1));
  return out;
}

Server::~Server() {
  stopping_ = true;
  if (http_ != nullptr) http_->stop();
  if (thread_.joinable()) thread_.join();
}

void Server::Route() {
  httplib::Server& s = *http_;
  // The pages: one document, its script and style; the script routes by the URL's hash.
  for (const Asset& a : Assets()) {
    const std::string path = a.name == "index.html" ? "/" : "/" + a.name;
    const Asset* asset = &a;
    s.Get(path, [asset](const httplib::Request&, httplib::Response& res) {
      res.set_header("Cache-Control", "no-cache");
      res.set_content(asset->bytes, ContentType(asset->name));
    });
  }
  s.Get("/healthz", [](const httplib::Request&, httplib::Response& res) { res.set_content("ok\n", "text/plain"); });

  s.Get(R"(/api/(hosts|instances|sets|policies|sources))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string& kind = Collections().at(req.matches[1]);
    auto list = sources_.list(kind);
    if (!list.ok()) return SendError(res, list.status());
    // Filtered before they are printed: ?label=k=v (repeatable); instances also ?host=NAME
    // (placed there) and ?owner=InstanceSet/NAME (its members).
    const std::string host = req.get_param_value("host");
    const std::string owner = req.get_param_value("owner");
    Json items = Json::array();
    for (const v1::Object& o : *list) {
      if (!host.empty() && o.kernel_instance().status().placement().host() != host) continue;
      if (!owner.empty() && o.kernel_instance().status().owner() != owner) continue;
      if (!LabelsMatch(req, manifests::MetadataOf(o).labels())) continue;
      items.push_back(ObjectJson(o));
    }
    SendJson(res, Json{{"kind", kind}, {"items", std::move(items)}});
  });
  // The fleet page's data in one small answer: per host its usage in numbers, its instance
  // count and its conditions that are not True; the sets' replicas; instances by phase.
  // (Listing every instance as an object to count them cost the controller seconds at
  // 10,000 instances.) ?label=k=v as for /api/hosts.
  s.Get("/api/fleet", [this](const httplib::Request& req, httplib::Response& res) {
    auto hosts = sources_.list("Host");
    if (!hosts.ok()) return SendError(res, hosts.status());
    std::map<std::string, int64_t> on_host;
    std::map<std::string, int64_t> phases;
    int64_t instance_total = 0;
    if (sources_.instance_counts) {
      std::tie(phases, on_host) = sources_.instance_counts();
      for (const auto& [phase, n] : phases) instance_total += n;
    } else {
      auto instances = sources_.list("KernelInstance");
      if (!instances.ok()) return SendError(res, instances.status());
      for (const v1::Object& o : *instances) {
        const v1::InstanceStatus& st = o.kernel_instance().status();
        if (!st.placement().host().empty()) ++on_host[st.placement().host()];
        ++phases[st.phase().empty() ? "Pending" : st.phase()];
      }
      instance_total = static_cast<int64_t>(instances->size());
    }
    auto sets = sources_.list("InstanceSet");
    if (!sets.ok()) return SendError(res, sets.status());
    auto bytes = [](const google::protobuf::RepeatedPtrField<v1::NodeBytes>& v) {
      uint64_t sum = 0;
      for (const auto& nb : v) sum += nb.bytes();
      return sum;
    };
    Json items = Json::array();
    int reachable = 0;
    for (const v1::Object& o : *hosts) {
      const v1::Host& h = o.host();
      if (!LabelsMatch(req, h.metadata().labels())) continue;
      const v1::PoolUsage& pool = h.status().pool();
      Json labels = Json::object();
      for (const auto& [k, v] : std::map<std::string, std::string>(h.metadata().labels().begin(),
                                                                   h.metadata().labels().end())) {
        labels[k] = v;
      }
      Json problems = Json::array();
      for (const v1::Condition& c : h.status().conditions()) {
        if (c.status() != v1::CONDITION_TRUE) {
          problems.push_back({{"type", c.type()}, {"reason", c.reason()}, {"message", c.message()}});
        }
      }
      reachable += h.status().reachable() ? 1 : 0;
      items.push_back({{"name", h.metadata().name()},
                       {"labels", std::move(labels)},
                       {"reachable", h.status().reachable()},
                       {"cordoned", h.spec().cordoned() || h.spec().drain()},
                       {"draining", h.spec().drain()},
                       {"cpus", pool.cpus_size()},
                       {"cpusFree", pool.cpus_free_size()},
                       {"memory", bytes(pool.memory())},
                       {"memoryFree", bytes(pool.memory_free())},
                       {"devices", pool.devices_size()},
                       {"devicesFree", pool.devices_free_size()},
                       {"instances", on_host[h.metadata().name()]},
                       {"problems", std::move(problems)}});
    }
    Json set_items = Json::array();
    for (const v1::Object& o : *sets) {
      const v1::InstanceSet& set = o.instance_set();
      set_items.push_back({{"name", set.metadata().name()},
                           {"replicas", set.status().replicas()},
                           {"ready", set.status().ready_replicas()},
                           {"updated", set.status().updated_replicas()},
                           {"rollout", set.status().rollout().phase()}});
    }
    SendJson(res, Json{{"hosts", std::move(items)},
                       {"reachable", reachable},
                       {"instances", instance_total},
                       {"phases", Json(phases)},
                       {"sets", std::move(set_items)}});
  });
  s.Get(R"(/api/(hosts|instances|sets|policies|sources)/([^/]+))", [this](const httplib::Request& req,
                                                                          httplib::Response& res) {
    const std::string& kind = Collections().at(req.matches[1]);
    auto one = sources_.get(kind, req.matches[2]);
    if (!one.ok()) return SendError(res, one.status());
    if (!one->has_value()) {
      return SendError(res, absl::NotFoundError(absl::StrCat(kind, "/", std::string(req.matches[2]), " does not exist")));
    }
    SendJson(res, ObjectJson(**one));
  });
  // The host's picture: SVG for the page (and for saving), text as mkapply prints it.
  s.Get(R"(/api/hosts/([^/]+)/topology\.(svg|txt))", [this](const httplib::Request& req, httplib::Response& res) {
    const std::string host = req.matches[1];
    auto object = sources_.get("Host", host);
    if (!object.ok()) return SendError(res, object.status());
    if (!object->has_value()) return SendError(res, absl::NotFoundError(absl::StrCat("Host/", host, " does not exist")));
    auto topology = sources_.topology(host);
    if (!topology.ok()) return SendError(res, topology.status());
    auto instances = sources_.list("KernelInstance");
    if (!instances.ok()) return SendError(res, instances.status());
    HostPicture picture = BuildPicture(host, *topology, (*object)->host().status(), *instances);
    res.set_header("Cache-Control", "no-store");
    if (req.matches[2] == "svg") {
      res.set_content(Svg(picture), "image/svg+xml");
    } else {
      res.set_content(TextMap(picture), "text/plain; charset=utf-8");
    }
  });
  s.Get("/api/events", [this](const httplib::Request& req, httplib::Response& res) {
    auto events = sources_.events(req.get_param_value("kind"), req.get_param_value("name"));
    if (!events.ok()) return SendError(res, events.status());
    size_t limit = 50;
    if (req.has_param("limit")) (void)absl::SimpleAtoi(req.get_param_value("limit"), &limit);
    Json items = Json::array();
    const size_t from = events->size() > limit ? events->size() - limit : 0;
    for (size_t i = from; i < events->size(); ++i) items.push_back(EventJson((*events)[i]));
    SendJson(res, Json{{"items", std::move(items)}});
  });
  // Server-Sent Events: `event: change` with the changed objects ("Kind/name", "Event"),
  // `event: resync` when changes were missed (the page reloads its data), a comment as a
  // ping when idle.
  s.Get("/api/watch", [this](const httplib::Request&, httplib::Response& res) {
    if (streams_.fetch_add(1) >= options_.max_streams) {
      streams_.fetch_sub(1);
      return SendError(res, absl::UnavailableError("too many open event streams"));
    }
    auto start = sources_.revision();
    if (!start.ok()) {
      streams_.fetch_sub(1);
      return SendError(res, start.status());
    }
    res.set_header("Cache-Control", "no-store");
    auto after = std::make_shared<int64_t>(*start);
    auto idle = std::make_shared<absl::Time>(absl::Now());
    res.set_chunked_content_provider(
        "text/event-stream",
        [this, after, idle](size_t offset, httplib::DataSink& sink) {
          if (offset == 0) {
            const std::string hello = absl::StrCat("retry: 1000\nevent: hello\ndata: {\"revision\":", *after, "}\n\n");
            if (!sink.write(hello.data(), hello.size())) return false;
          }
          while (!stopping_ && sink.is_writable()) {
            int64_t seen = *after;
            auto keys = sources_.changes(*after, absl::Milliseconds(500), &seen);
            std::string message;
            if (keys.status().code() == absl::StatusCode::kOutOfRange) {
              auto now = sources_.revision();
              if (!now.ok()) return false;
              *after = *now;
              message = absl::StrCat("event: resync\ndata: {\"revision\":", *now, "}\n\n");
            } else if (!keys.ok()) {
              return false;
            } else {
              *after = seen;
              std::set<std::string> objects;
              for (const std::string& k : *keys) {
                std::string o = ChangedObject(k);
                if (!o.empty()) objects.insert(o);
              }
              if (!objects.empty()) {
                message = absl::StrCat("event: change\ndata: ",
                                       Json{{"revision", seen}, {"objects", Json(objects)}}.dump(), "\n\n");
              } else if (absl::Now() - *idle >= options_.ping) {
                message = ": ping\n\n";
              }
            }
            if (!message.empty()) {
              *idle = absl::Now();
              return sink.write(message.data(), message.size());
            }
          }
          return false;
        },
        [this](bool) { streams_.fetch_sub(1); });
  });
  s.set_error_handler([](const httplib::Request& req, httplib::Response& res) {
    if (res.status == 404 && res.body.empty()) {
      SendJson(res, Json{{"error", absl::StrCat(req.path, ": no such page or API")}, {"code", "NOT_FOUND"}}, 404);
    }
  });
}

}  // namespace mkfleet::console
