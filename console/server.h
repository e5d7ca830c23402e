// The web console of mkcontroller (--http ADDR): read-only pages (fleet, host with its
// topology picture, instance, set) compiled into the binary, the JSON API under /api/ they
// read (the objects as `mkapply get -o json` shows them), and /api/watch, a Server-Sent
// Events stream that says which objects changed so open pages refresh without a reload.
//
// Plaintext HTTP on a loopback address only (like the metrics endpoint): an operator on
// another machine tunnels to it (ssh -L). Serves on its own threads; destroying it stops it
// (open event streams end within a second).
// Thread-safety: the sources are called from the server's threads, concurrently.
#ifndef MKFLEET_CONSOLE_SERVER_H_
#define MKFLEET_CONSOLE_SERVER_H_

#include <atomic>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "mkfleet/v1/manifest.pb.h"
#include "mkfleet/v1/state.pb.h"

namespace httplib {
class Server;
}

namespace mkfleet::console {

// Where the console reads (mkcontroller wires them to its objects, reconciler and store).
struct Sources {
  // Every object of `kind` (set members among the instances), with statuses.
  std::function<absl::StatusOr<std::vector<mkfleet::v1::Object>>(const std::string& kind)> list;
  // One object, nullopt when there is none.
  std::function<absl::StatusOr<std::optional<mkfleet::v1::Object>>(const std::string& kind, const std::string& name)>
      get;
  // The topology the host's agent reported.
  std::function<absl::StatusOr<mkfleet::v1::TopologyInfo>(const std::string& host)> topology;
  // The stored events about kind/name (both empty: all), oldest first.
  std::function<absl::StatusOr<std::vector<mkfleet::v1::Event>>(const std::string& kind, const std::string& name)>
      events;
  // Waits up to `timeout` for changes after store revision `after`: the changed keys
  // ("/objects/Host/node-a", "/status/KernelInstance/web-1", "/events/..."), `*seen` the
  // revision they bring the caller to. OutOfRange when `after` is older than what is kept.
  std::function<absl::StatusOr<std::vector<std::string>>(int64_t after, absl::Duration timeout, int64_t* seen)> changes;
  // Optional: KernelInstances by phase and by host, kept by the controller as statuses are
  // written (the fleet page then lists no instance at all).
  std::function<std::pair<std::map<std::string, int64_t>, std::map<std::string, int64_t>>()> instance_counts;
  // The store's current revision (where a new event stream starts).
  std::function<absl::StatusOr<int64_t>()> revision;
};

struct Options {
  int max_streams = 32;  // open /api/watch streams; past them 503
  absl::Duration ping = absl::Seconds(15);  // a comment on an idle stream (proxies keep it open)
};

class Server {
 public:
  // Listens on `listen` (HOST:PORT, a loopback address; port 0 picks one). InvalidArgument
  // naming `flag` for another address, Unavailable when the port cannot be bound.
  // OK when `listen` is one Serve takes (checked before a daemon's slow start).
  static absl::Status CheckAddress(const std::string& listen, const std::string& flag);
  static absl::StatusOr<std::unique_ptr<Server>> Serve(const std::string& listen, const std::string& flag,
                                                       Sources sources, Options options = {});
  ~Server();
  int port() const { return port_; }

 private:
  Server(Sources sources, Options options);
  void Route();

  Sources sources_;
  Options options_;
  std::unique_ptr<httplib::Server> http_;
  std::thread thread_;
  int port_ = 0;
  std::atomic<bool> stopping_{false};
  std::atomic<int> streams_{0};
};

}  // namespace mkfleet::console

#endif  // MKFLEET_CONSOLE_SERVER_H_
