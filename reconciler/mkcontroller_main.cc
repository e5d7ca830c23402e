// mkcontroller: the fleet controller. Parses flags, opens the store and serves the
// Controller API for mkapply; SIGTERM/SIGINT stop it cleanly.
//
// It serves the object API (apply, diff, get, delete, watch) and runs the reconcile loop:
// connections to every Host's agent, and per host the plan that converges it.
//
// With --ha (on an etcd store) several mkcontrollers form one control plane: all serve
// the API, one (the elected leader) runs the reconcile loop and the GitSources. A leader
// that loses its lease stops acting at once and exits (status 3) for its supervisor to
// start it again as a follower, as Kubernetes' controllers do: no state of a former term
// lingers.
//
// With --shards K (implies --ha) the members also split the hosts: each sends to its own
// (consistent hashing of K shards over the live members); the leader plans for all
// (reconciler.h: ReconcilerOptions.shards).
#include <signal.h>
#include <unistd.h>

#include <atomic>
#include <cstdlib>
#include <iostream>
#include <memory>
#include <thread>

#include "gitops/source_controller.h"

#include "CLI/CLI.hpp"
#include "gperftools/malloc_extension.h"
#include "absl/strings/match.h"
#include "absl/synchronization/mutex.h"
#include "common/clock.h"
#include "common/grpc_server.h"
#include "common/metrics.h"
#include "console/server.h"
#include "common/state_dir.h"
#include "common/version.h"
#include "manifests/units.h"
#include "reconciler/access.h"
#include "reconciler/audit_log.h"
#include "reconciler/controller_metrics.h"
#include "reconciler/controller_service.h"
#include "reconciler/election.h"
#include "reconciler/etcd_store.h"
#include "reconciler/event_log.h"
#include "reconciler/objects.h"
#include "reconciler/reconciler.h"
#include "reconciler/shards.h"
#include "reconciler/store.h"
#include "reconciler/timed_store.h"
#include "security/tls.h"

int main(int argc, char** argv) {
  using namespace mkfleet;
  // Abseil's mutex deadlock detector keeps a lock graph on every acquisition (5 % of an
  // mkagent serving 1,000 hosts under a rollout, in perf). The tests and the simulation,
  // which link the libraries without these mains, keep it on.
  absl::SetMutexDeadlockDetectionMode(absl::OnDeadlockCycle::kIgnore);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGINT);
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  std::string listen = "127.0.0.1:7100";
  std::string metrics_listen;
  std::string http_listen;
  std::string store_spec;
  double resync_seconds = 30;
  double unreachable_seconds = 10;
  double backoff_max_seconds = 1000;
  int64_t history_window = 10000;
  CLI::App app{"mkcontroller: the mkfleet controller. Stores the fleet's manifests and serves mkapply."};
  app.set_version_flag("--version", std::string("mkcontroller ") + kVersion);
  app.add_option("--listen", listen, "gRPC address (default 127.0.0.1:7100; port 0 picks one and prints it)");
  app.add_option("--metrics-listen", metrics_listen,
                 "serve Prometheus metrics at http://ADDR/metrics (HOST:PORT on loopback; port 0 picks one and "
                 "prints it); off unless given");
  app.add_option("--http", http_listen,
                 "serve the web console (read-only pages, their JSON API under /api/, live updates) at http://ADDR/ "
                 "(HOST:PORT on loopback; port 0 picks one and prints it); off unless given");
  app.add_option("--store", store_spec,
                 "sqlite:PATH (the store file; created if missing) or etcd:http://HOST:PORT[,http://HOST:PORT...] "
                 "(an etcd v3 cluster's client URLs)")
      ->required();
  std::string etcd_prefix = "/mkfleet";
  app.add_option("--etcd-prefix", etcd_prefix,
                 "etcd: the key prefix of this control plane's data (default /mkfleet; one etcd can hold several)");
  int etcd_max_txn_ops = 128;
  app.add_option("--etcd-max-txn-ops", etcd_max_txn_ops,
                 "etcd: operations per transaction, as etcd's --max-txn-ops (default 128, etcd's default; an apply of "
                 "N objects needs about 2N+1: raise both for large applies)")
      ->check(CLI::Range(1, 10000000));
  bool ha = false;
  app.add_flag("--ha", ha,
               "run as one member of a highly available control plane on an etcd store: members elect a leader, "
               "which reconciles; the others serve the API and take over when its lease expires");
  int connection_threads = 8;
  app.add_option("--connection-threads", connection_threads,
                 "threads that keep the agents' connections and watch streams (default 8; 0: one per host)")
      ->check(CLI::Range(0, 4096));
  int shards = 0;
  app.add_option("--shards", shards,
                 "run as one member of a sharded control plane on an etcd store (implies --ha): hosts fall into "
                 "this many shards, spread over the live members by consistent hashing; each member sends to its "
                 "own hosts, the leader plans for all (e.g. 64; 0: not sharded)")
      ->check(CLI::Range(0, 65536));
  std::string lease_ttl = "5s";
  app.add_option("--lease-ttl", lease_ttl,
                 "--ha: the leader's lease; a dead leader is replaced within about this long (default 5s, at least 2s)");
  std::string member_name;
  app.add_option("--name", member_name, "--ha: this member's name, unique in the control plane (default HOSTNAME:PORT)");
  std::string advertise;
  app.add_option("--advertise", advertise,
                 "--ha: the address mkapply reaches this member at, shown by `mkapply get controllers` (default: "
                 "--listen's)");
  app.add_option("--resync", resync_seconds, "seconds between full reconcile passes (default 30)")
      ->check(CLI::PositiveNumber);
  app.add_option("--unreachable-after", unreachable_seconds,
                 "seconds an agent may be out of reach before its host is Unreachable (default 10)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--backoff-max", backoff_max_seconds,
                 "longest wait before retrying a failing host or instance, in seconds (default 1000; the wait "
                 "starts at 5 ms and doubles; a change of the objects retries at once)")
      ->check(CLI::PositiveNumber);
  app.add_option("--history-window", history_window,
                 "store revisions of history kept; older ones are compacted on every resync (default 10000)")
      ->check(CLI::Range(int64_t{100}, int64_t{1} << 40));
  security::TlsOptions tls;
  security::AddTlsFlags(app, &tls, "the controller (ROOT/controller); it also dials the agents with it");
  reconciler::AccessOptions access_options;
  app.add_option("--admin-group", access_options.admin_group,
                 "users whose certificate has this group (O=) are admins whatever the RoleBindings say "
                 "(default fleet-admins; empty: none)");
  reconciler::AuditOptions audit_options;
  std::string audit_retain = "720h";
  app.add_option("--audit-max", audit_options.max_records,
                 "audit records kept past the retention window (default 10000)")
      ->check(CLI::Range(size_t{1}, size_t{100000000}));
  bool require_digest = false;
  app.add_flag("--require-digest", require_digest,
               "refuse KernelInstances and InstanceSets whose kernel is not pinned by kernel.sha256");
  std::string store_quota = "2Gi";
  app.add_option("--store-quota", store_quota,
                 "past this size the store refuses applies (NOSPACE) while deletes and compaction go on (default "
                 "2Gi; 0: none)");
  int max_streams = 256, max_streams_per_client = 16;
  app.add_option("--max-streams", max_streams, "open watch and event streams in all (default 256)")
      ->check(CLI::Range(1, 100000));
  app.add_option("--max-streams-per-client", max_streams_per_client,
                 "open watch and event streams per client identity (default 16)")
      ->check(CLI::Range(1, 100000));
  std::string drift_policy = "Correct";
  app.add_option("--drift-policy", drift_policy,
                 "what a Host without spec.driftPolicy does about changes made outside mkfleet: Correct (put "
                 "them back, the default) or Report (record them only)")
      ->check(CLI::IsMember({"Correct", "Report"}));
  std::string git_cache;
  app.add_option("--git-cache", git_cache,
                 "folder of the GitSources' repository mirrors (default: beside the store, STORE.git)");
  std::string git_interval = "1m";
  app.add_option("--git-interval", git_interval, "how often a GitSource without spec.interval is fetched (default 1m)");
  app.add_option("--audit-retain", audit_retain,
                 "audit records younger than this are never evicted (default 720h, 30 days)");
  CLI11_PARSE(app, argc, argv);

  const bool on_etcd = absl::StartsWith(store_spec, "etcd:");
  std::vector<std::string> etcd_endpoints;
  if (on_etcd) {
    auto endpoints = reconciler::ParseEtcdEndpoints(store_spec);
    if (!endpoints.ok()) {
      std::cerr << "mkcontroller: --store: " << endpoints.status().message() << "\n";
      return 2;
    }
    etcd_endpoints = *endpoints;
  } else if (!absl::StartsWith(store_spec, "sqlite:") || store_spec.size() == 7) {
    std::cerr << "mkcontroller: --store: expected sqlite:PATH or etcd:http://HOST:PORT[,...], got \"" << store_spec
              << "\"\n";
    return 2;
  }
  if (shards > 0) ha = true;
  if (ha && !on_etcd) {
    std::cerr << "mkcontroller: " << (shards > 0 ? "--shards" : "--ha") << ": needs an etcd store (--store etcd:http://HOST:PORT[,...]); a SQLite file "
                 "has one controller\n";
    return 2;
  }
  auto ttl_ms = manifests::ParseDurationMs(lease_ttl);
  if (!ttl_ms.ok() || *ttl_ms < 2000) {
    std::cerr << "mkcontroller: --lease-ttl: want a duration of 2s or more such as 5s, got \"" << lease_ttl << "\"\n";
    return 2;
  }
  if (absl::Status t = security::CheckTransport(tls, listen, "--listen"); !t.ok()) {
    std::cerr << "mkcontroller: " << t.message() << "\n";
    return 2;
  }
  auto retain = manifests::ParseDurationMs(audit_retain);
  if (!retain.ok() || *retain <= 0) {
    std::cerr << "mkcontroller: --audit-retain: want a duration such as 720h, got \"" << audit_retain << "\"\n";
    return 2;
  }
  audit_options.retain = absl::Milliseconds(*retain);
  auto git_every = manifests::ParseDurationMs(git_interval);
  if (!git_every.ok() || *git_every < 1000) {
    std::cerr << "mkcontroller: --git-interval: want a duration of 1s or more such as 1m, got \"" << git_interval << "\"\n";
    return 2;
  }
  if (git_cache.empty()) {
    git_cache = on_etcd ? std::string(getenv("TMPDIR") != nullptr ? getenv("TMPDIR") : "/var/tmp") + "/mkcontroller-" +
                              std::to_string(getuid()) + ".git"
                        : store_spec.substr(7) + ".git";
  }
  auto quota = manifests::ParseBytes(store_quota);
  if (!quota.ok()) {
    std::cerr << "mkcontroller: --store-quota: " << quota.status().message() << "\n";
    return 2;
  }
  access_options.insecure = tls.insecure;
  // Before the gRPC server: its requests are counted from the first.
  std::unique_ptr<metrics::Endpoint> metrics_endpoint;
  if (!metrics_listen.empty()) {
    auto endpoint = metrics::Endpoint::Serve(metrics_listen, "--metrics-listen");
    if (!endpoint.ok()) {
      std::cerr << "mkcontroller: " << endpoint.status().message() << "\n";
      return 2;
    }
    metrics_endpoint = *std::move(endpoint);
  }
  if (!http_listen.empty()) {
    if (absl::Status s = console::Server::CheckAddress(http_listen, "--http"); !s.ok()) {
      std::cerr << "mkcontroller: " << s.message() << "\n";
      return 2;
    }
  }
  auto server_creds = security::ServerCredentials(tls, listen, security::Identity::Controller());
  if (!server_creds.ok()) {
    std::cerr << "mkcontroller: " << server_creds.status().message() << "\n";
    return 2;
  }
  auto agent_tls = security::ClientTls::Create(tls);
  if (!agent_tls.ok()) {
    std::cerr << "mkcontroller: " << agent_tls.status().message() << "\n";
    return 2;
  }

  RaiseFileLimit();  // one connection per host
  absl::StatusOr<std::unique_ptr<StateLock>> store_lock;
  absl::StatusOr<std::unique_ptr<reconciler::Store>> store;
  if (on_etcd) {
    reconciler::EtcdStoreOptions eo;
    eo.endpoints = etcd_endpoints;
    eo.prefix = etcd_prefix;
    eo.max_txn_ops = etcd_max_txn_ops;
    store = reconciler::OpenEtcdStore(eo);
  } else {
    store_lock = OpenStoreFile(store_spec.substr(7));
    if (!store_lock.ok()) {
      std::cerr << "mkcontroller: --store: " << store_lock.status().message() << "\n";
      return 2;
    }
    store = reconciler::OpenSqliteStore(store_spec.substr(7), Clock::Real());
  }
  if (!store.ok()) {
    std::cerr << "mkcontroller: --store: " << store.status().message() << "\n";
    return 1;
  }
  if (metrics_endpoint != nullptr) *store = reconciler::TimedStore(*std::move(store));
  reconciler::Objects objects(**store);
  auto events = reconciler::EventLog::Open(**store, Clock::Real());
  if (!events.ok()) {
    std::cerr << "mkcontroller: --store: " << events.status().message() << "\n";
    return 1;
  }
  auto audit = reconciler::AuditLog::Open(**store, Clock::Real(), audit_options);
  if (!audit.ok()) {
    std::cerr << "mkcontroller: --store: " << audit.status().message() << "\n";
    return 1;
  }
  reconciler::Access access(objects, access_options);
  reconciler::ControllerService service(**store, objects, events->get());
  service.SetAccess(&access);
  service.SetAuditLog(audit->get());
  service.SetStreamLimits(max_streams_per_client, max_streams);
  service.SetStoreQuota(static_cast<int64_t>(*quota));
  service.SetRequireDigest(require_digest);
  gitops::SourceControllerOptions source_options;
  source_options.cache_dir = git_cache;
  source_options.default_interval = absl::Milliseconds(*git_every);
  if (require_digest) source_options.check = reconciler::CheckPinned;
  gitops::SourceController sources(**store, objects, events->get(), audit->get(), Clock::Real(), source_options);
  service.SetSync([&sources](const std::string& name) { return sources.Sync(name); });

  int port = 0;
  auto server = reconciler::StartControllerServer(service, listen, &port, *server_creds);
  if (server == nullptr || port == 0) {
    std::cerr << "mkcontroller: --listen: cannot listen on " << listen << "\n";
    return 1;
  }
  reconciler::ReconcilerOptions ro;
  ro.connection_threads = connection_threads;  // no thread per host: the agents' streams wake the pool
  // tcmalloc (linked in) gives spans back to the system as soon as they are free: a fleet
  // connecting while passes run interleaves what stays (views, statuses, baselines) with what
  // a pass frees, and the free pages between them stayed mapped (fleet_bench, 1,000 hosts:
  // peak RSS 305-308 MiB -> ~291 MiB; it costs page faults in every pass: ~1 CPU s over the
  // converge at 1,000 hosts, ~60 at 10,000). It replaces the release of what was free beyond
  // 64 MiB every 10 s, which left nothing to release once spans went back at once.
  MallocExtension::instance()->SetNumericProperty("tcmalloc.aggressive_memory_decommit", 1);
  ro.resync = absl::Seconds(resync_seconds);
  ro.unreachable_after = absl::Seconds(unreachable_seconds);
  ro.host_backoff_max = absl::Seconds(backoff_max_seconds);
  ro.instance_backoff_max = absl::Seconds(backoff_max_seconds);
  ro.history_window = history_window;
  ro.agent_tls = *agent_tls;
  ro.drift_policy = drift_policy == "Report" ? v1::DRIFT_REPORT : v1::DRIFT_CORRECT;
  ro.count_instances = !http_listen.empty();  // the console's fleet page
  // --ha: the election decides when this member's loop and sources run.
  std::unique_ptr<reconciler::Election> election;
  std::unique_ptr<reconciler::ShardMap> shard_map;
  std::thread starter;  // starts the loop once elected
  if (ha) {
    char host[256] = {0};
    gethostname(host, sizeof(host) - 1);
    if (member_name.empty()) member_name = std::string(host) + ":" + std::to_string(port);
    if (advertise.empty()) advertise = listen.substr(0, listen.rfind(':') + 1) + std::to_string(port);
    ro.may_act = [&election] { return election != nullptr && election->IsLeader(); };
    if (shards > 0) {
      // A shard taken from a live member is used after a lease: by then that member has
      // seen the new list, or its own list is too old for it to act (MemberValid).
      shard_map = std::make_unique<reconciler::ShardMap>(
          member_name, shards, Clock::Real(), absl::Milliseconds(*ttl_ms),
          [&election] { return election != nullptr && election->MemberValid(); });
      ro.shards = shard_map.get();
    }
  }
  reconciler::Reconciler loop(**store, objects, Clock::Real(), ro, events->get());
  service.SetPreview([&loop](const std::vector<v1::Object>& objects) { return loop.Preview(objects); });
  service.SetMorph([&loop](const v1::MorphRequest& request) { return loop.Morph(request); });
  service.SetRollouts(&loop.rollouts());
  // A host's topology as its agent reported it (mkapply's Topology call, the console's pictures).
  auto host_topology = [&loop](const std::string& host) -> absl::StatusOr<v1::TopologyInfo> {
    auto topology = loop.HostTopology(host);
    if (!topology.ok()) return topology.status();
    return (*topology)->ToProto();
  };
  service.SetTopologySource(host_topology);
  std::shared_ptr<reconciler::metrics::ControllerCollector> collector;
  if (metrics_endpoint != nullptr) {
    collector = std::make_shared<reconciler::metrics::ControllerCollector>(reconciler::metrics::Sources{
        [&loop] { return loop.QueueDepth(); }, [&loop] { return loop.HostCounts(); },
        [&loop] { return loop.PhaseCounts(); }, [&loop] { return loop.MorphCounts(); },
        [&loop] { return loop.RolloutGauges(); }});
    metrics_endpoint->Add(collector);
  }
  // The console: its own reader of the store's changes (statuses too, keys only kept few),
  // so that live pages cost nothing when it is off.
  std::unique_ptr<reconciler::WatchHub> console_hub;
  std::unique_ptr<console::Server> console_server;
  if (!http_listen.empty()) {
    reconciler::WatchHubOptions hub_options;
    hub_options.prefixes = {"/objects/", "/status/", reconciler::kEventPrefix};
    hub_options.max_changes = 5000;
    hub_options.max_bytes = 4u << 20;
    hub_options.keys_only = true;
    console_hub = std::make_unique<reconciler::WatchHub>(**store, hub_options);
    reconciler::EventLog* event_log = events->get();
    reconciler::Store* store_ptr = store->get();
    reconciler::WatchHub* hub = console_hub.get();
    console::Sources cs;
    cs.list = [&objects](const std::string& kind) { return objects.List(kind, /*with_members=*/true); };
    cs.get = [&objects](const std::string& kind, const std::string& name) {
      return objects.Get(kind, name, /*with_members=*/true);
    };
    cs.topology = host_topology;
    cs.events = [event_log](const std::string& kind, const std::string& name)
        -> absl::StatusOr<std::vector<v1::Event>> {
      if (event_log == nullptr) return std::vector<v1::Event>{};
      reconciler::EventFilter filter;
      filter.kind = kind;
      filter.name = name;
      return event_log->List(filter);
    };
    cs.changes = [hub](int64_t after, absl::Duration timeout, int64_t* seen) -> absl::StatusOr<std::vector<std::string>> {
      auto changes = hub->Next(after, "/", timeout, seen);
      if (!changes.ok()) return changes.status();
      std::vector<std::string> keys;
      keys.reserve(changes->size());
      for (const reconciler::Event& e : *changes) keys.push_back(e.key);
      return keys;
    };
    cs.revision = [store_ptr] { return store_ptr->Revision(); };
    cs.instance_counts = [&loop] { return std::make_pair(loop.PhaseCounts(), loop.InstancesByHost()); };
    auto served = console::Server::Serve(http_listen, "--http", std::move(cs));
    if (!served.ok()) {
      std::cerr << "mkcontroller: " << served.status().message() << "\n";
      return 2;
    }
    console_server = *std::move(served);
  }
  service.SetStatsSource([&loop] {
    v1::StatsResponse r;
    r.set_actions_sent(loop.actions_sent());
    r.set_passes(loop.passes());
    r.set_status_writes(loop.status_writes());
    auto [hosts, connected] = loop.HostCounts();
    r.set_hosts(hosts);
    r.set_hosts_connected(connected);
    return r;
  });
  if (ha) {
    reconciler::ElectionOptions eo;
    eo.name = member_name;
    eo.address = advertise;
    eo.version = kVersion;
    eo.ttl = absl::Milliseconds(*ttl_ms);
    eo.on_elected = [&sources, &starter, &loop] {
      // Not on the election's thread (the lease is renewed there). The loop runs already:
      // as a follower it kept its connections and views; its passes start now (sharded:
      // it dials every host first, the planner needs them all).
      loop.ShardsChanged();
      starter = std::thread([&sources] { sources.Start(); });
    };
    if (shard_map != nullptr) {
      eo.on_members = [&shard_map, &loop](const std::vector<v1::ControllerMember>& members) {
        shard_map->SetMembersFrom(members);
        loop.ShardsChanged();  // a new epoch at every change of the members, even with the same hosts
      };
    }
    eo.on_lost = [] {
      // may_act is already false: nothing more is sent. Exit at once (threads may hang on
      // an unreachable etcd) for the supervisor to start a clean follower.
      std::cout << "mkcontroller: lost the leadership; exiting (status 3) to start again as a follower" << std::endl;
      std::cerr.flush();
      std::_Exit(3);
    };
    election = std::make_unique<reconciler::Election>(**store, Clock::Real(), eo);
    reconciler::Election* e = election.get();
    service.SetLeaderCheck([e]() -> absl::Status {
      if (e->IsLeader()) return absl::OkStatus();
      std::string leader = e->Leader(), address;
      for (const auto& m : e->Members()) {
        if (m.name() == leader) address = m.address();
      }
      if (leader.empty()) return absl::UnavailableError(e->name() + " is not the leader, and none is elected yet; retry");
      return absl::UnavailableError(e->name() + " is not the leader: ask " + leader + " at " + address);
    });
    service.SetControllers([e, shards, &objects] {
      v1::ControllersResponse r;
      r.set_mode(shards > 0 ? "sharded" : "ha");
      r.set_leader(e->Leader());
      r.set_answered_by(e->name());
      std::vector<std::string> names;
      for (auto& m : e->Members()) {
        m.set_leader(m.name() == r.leader());
        names.push_back(m.name());
        *r.add_members() = std::move(m);
      }
      if (shards > 0) {
        // Who owns which hosts, as every member computes it from the same list.
        r.set_shards(shards);
        const std::vector<std::string> owner = reconciler::AssignShards(names, shards);
        std::map<std::string, v1::ControllerMember*> by_name;
        for (auto& m : *r.mutable_members()) by_name[m.name()] = &m;
        auto hosts = objects.List("Host");
        for (const v1::Object& o : hosts.ok() ? *hosts : std::vector<v1::Object>{}) {
          const std::string& host = o.host().metadata().name();
          auto m = by_name.find(owner[reconciler::ShardOf(host, shards)]);
          if (m == by_name.end()) continue;
          m->second->set_hosts(m->second->hosts() + 1);
          if (m->second->host_names_size() < 20) m->second->add_host_names(host);
        }
      }
      return r;
    });
    loop.Start();  // connections only, until elected (may_act)
    election->Start();
  } else {
    loop.Start();
    sources.Start();
  }
  std::cout << "mkcontroller " << kVersion << ": store " << store_spec << ", "
            << (tls.insecure ? "PLAINTEXT (--insecure)" : "mutual TLS") << ", listening on port " << port;
  if (ha) std::cout << ", member " << member_name << " of a control plane (leader lease " << lease_ttl << ")";
  if (shards > 0) std::cout << ", " << shards << " shards";
  if (metrics_endpoint != nullptr) std::cout << ", metrics on port " << metrics_endpoint->port();
  if (console_server != nullptr) std::cout << ", console on port " << console_server->port();
  std::cout << std::endl;
  ServeUntilSignal(*server, set, "mkcontroller");
  if (election != nullptr) election->Stop();  // resigns if leading (the others take over at once)
  if (starter.joinable()) starter.join();
  sources.Stop();
  metrics_endpoint.reset();  // no scrape reads the loop once it stops
  console_server.reset();    // nor a page
  if (console_hub != nullptr) console_hub->Stop();
  loop.Stop();
  std::cout << "mkcontroller: stopped" << std::endl;
  return 0;
}
