// HostConnection: the controller's link to one host's agent, over an AgentClient. It takes
// the agent's Inventory (topology, pool, dialect), then keeps a Watch stream and folds its
// snapshot and changes into a local view of the host's instances. When the link breaks it
// reconnects with exponential backoff (100 ms doubling to 5 s) and starts again from a
// fresh snapshot. The host is reported Unreachable once the link has been down for longer
// than `unreachable_after` (a blip does not flap the status).
//
// Three ways to drive it: Start() runs it on its own thread; a ConnectionPool polls it on a
// few shared threads when its stream has something or its retry is due (mkcontroller: no
// thread per host); or Poll() does one step without blocking, on the caller's clock (the
// fleet simulation).
// Thread-safety: View, Execute and SetPolicy may be called from any thread; Start, Stop and
// Poll from one.
#ifndef MKFLEET_RECONCILER_HOST_CONNECTION_H_
#define MKFLEET_RECONCILER_HOST_CONNECTION_H_

#include <functional>
#include <deque>
#include <map>
#include <optional>
#include <vector>
#include <memory>
#include <string>
#include <thread>

#include "absl/base/thread_annotations.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "common/clock.h"
#include "mkfleet/v1/agent.pb.h"
#include "planner/topology.h"
#include "reconciler/agent_client.h"

namespace mkfleet::reconciler {

// A map that copies of it share until one of them changes it (copy-on-write). A HostView is
// copied into every pass (1,000 hosts x 10 instances at fleet_bench's size) and changes only
// when its agent reports: the copy costs a pointer, not every instance. Reading goes through
// const access only; a change (operator[], erase, clear) first takes a copy of its own when
// another HostView still shares the map.
template <typename K, typename V>
class CowMap {
 public:
  using Map = std::map<K, V>;
  using const_iterator = typename Map::const_iterator;
  using iterator = const_iterator;
  using value_type = typename Map::value_type;

  CowMap() : map_(std::make_shared<Map>()) {}
  const_iterator begin() const { return map_->begin(); }
  const_iterator end() const { return map_->end(); }
  const_iterator find(const K& key) const { return map_->find(key); }
  size_t count(const K& key) const { return map_->count(key); }
  const V& at(const K& key) const { return map_->at(key); }
  size_t size() const { return map_->size(); }
  bool empty() const { return map_->empty(); }
  V& operator[](const K& key) { return Own()[key]; }
  size_t erase(const K& key) { return Own().erase(key); }
  void clear() { map_ = std::make_shared<Map>(); }

 private:
  // Copies are made and changed under their owner's lock (HostConnection::mu_): a count of
  // one means no other HostView holds the map.
  Map& Own() {
    if (map_.use_count() > 1) map_ = std::make_shared<Map>(*map_);
    return *map_;
  }
  std::shared_ptr<Map> map_;
};

struct HostView {
  bool connected = false;  // the Watch stream is up
  bool reachable = false;  // connected, or down for less than unreachable_after
  std::string error;       // why the link is down ("" when connected)
  mkfleet::v1::InventoryResponse inventory;  // without its topology (parsed below) and pool (below)
  std::shared_ptr<const planner::Topology> topology;  // from the inventory
  CowMap<std::string, mkfleet::v1::ObservedInstance> instances;
  mkfleet::v1::PoolUsage pool;
  int64_t resource_version = 0;
  // The version of the last change of instances or pool (an event alone moves only
  // resource_version): the basis of the ids of actions for instances not there yet.
  int64_t state_version = 0;
  // The agent's batches this view follows (HostState.batch_mark).
  int64_t batch_mark = 0;
  // A batch the host answered is not in this view yet (its mark is above batch_mark): what
  // is planned from it may be done already, or half done. False again once the view shows
  // it, or settle_timeout after the answer (an agent that restarted at once, with marks
  // below the answered one, is not waited for forever).
  bool settling = false;
};

struct HostConnectionOptions {
  absl::Duration unreachable_after = absl::Seconds(10);
  absl::Duration call_timeout = absl::Seconds(10);
  // Called (from the connection's thread, without locks held) after every change of the
  // view, e.g. to enqueue the host for reconciling.
  std::function<void(const std::string& host)> on_change;
  // Called (same thread, no locks held) with the agent's events not seen before, oldest
  // first: those with `seq` above the highest seen, starting from `events_after`.
  std::function<void(const std::string& host, std::vector<mkfleet::v1::Event> events)> on_events;
  int64_t events_after = 0;
  absl::Duration settle_timeout = absl::Seconds(5);
};

class HostConnection {
 public:
  HostConnection(std::string host, std::string address, std::unique_ptr<AgentClient> client, Clock& clock,
                 HostConnectionOptions options = {});
  ~HostConnection();
  HostConnection(const HostConnection&) = delete;
  HostConnection& operator=(const HostConnection&) = delete;

  // Runs the connection on its own thread until Stop.
  void Start();
  // Asks the thread to stop (cancels the stream) without waiting for it.
  void Cancel();
  // Cancels and joins the thread.
  void Stop();
  // One step on the caller's thread, never blocking (but for connecting, a call of at most
  // call_timeout): connects when a retry is due, and folds every message the stream has.
  void Poll();
  // When the link is down: the Monotonic() time its next connect is due; nullopt while up.
  std::optional<absl::Duration> RetryAt() const;
  // Called with the stream when one is opened (a pool sets the stream's wake-up here).
  void SetOnStream(std::function<void(WatchStream&)> on_stream) { on_stream_ = std::move(on_stream); }

  HostView View() const;
  // Whether the Watch stream is up (View().connected, without copying the view).
  bool Connected() const;
  // View().settling, without copying the view.
  bool Settling() const;
  // The topology the agent reported (null before its first inventory), without the view.
  std::shared_ptr<const planner::Topology> Topology() const;
  const std::string& address() const { return address_; }
  // Sends a batch; Unavailable when the host is not connected. The view settles until it
  // shows the answered batch (on_change is called then).
  absl::StatusOr<mkfleet::v1::ExecuteResponse> Execute(const mkfleet::v1::ActionBatch& batch);
  // Sends the local policies (failover, restart) the agent's watchdog applies on its own.
  absl::Status SetPolicy(const mkfleet::v1::SetPolicyRequest& request);

 private:
  void Run();
  // Inventory, then a Watch stream; false (and the link marked down) when it fails.
  bool Connect();
  // Folds one message of the stream.
  void Fold(const mkfleet::v1::HostState& state);
  // The stream ended or the connection failed: down, retry after the backoff.
  void Down(const absl::Status& why);
  bool SettlingLocked() const ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void Notify();

  const std::string host_;
  const std::string address_;
  const std::unique_ptr<AgentClient> client_;
  Clock& clock_;
  const HostConnectionOptions options_;

  mutable absl::Mutex mu_;
  HostView view_ ABSL_GUARDED_BY(mu_);
  absl::Duration down_since_ ABSL_GUARDED_BY(mu_);  // Monotonic() when the link went down
  bool stopping_ ABSL_GUARDED_BY(mu_) = false;
  // The mark of the last batch answered, and Monotonic() then.
  int64_t awaited_mark_ ABSL_GUARDED_BY(mu_) = 0;
  absl::Duration awaited_at_ ABSL_GUARDED_BY(mu_);
  std::shared_ptr<WatchStream> stream_ ABSL_GUARDED_BY(mu_);  // the open stream, if any
  // Only the driving thread (Run or Poll) uses these.
  std::shared_ptr<const planner::Topology> pending_topology_;
  mkfleet::v1::InventoryResponse pending_inventory_;
  bool first_message_ = false;
  absl::Duration retry_at_;
  absl::Duration backoff_ = absl::Milliseconds(100);
  int64_t last_event_seq_ = 0;
  std::thread thread_;
  std::function<void(WatchStream&)> on_stream_;
};

// ConnectionPool: drives many HostConnections on a few threads. A connection is polled when
// its stream wakes it (a message, its end) and when its retry is due; never by two threads
// at once; what streams bring before connects. Connecting (Inventory) holds a thread for
// up to the call timeout.
// Thread-safety: Add from any thread.
class ConnectionPool {
 public:
  ConnectionPool(Clock& clock, int threads);
  // Stops the threads (the connections must be stopped first).
  ~ConnectionPool();
  ConnectionPool(const ConnectionPool&) = delete;
  ConnectionPool& operator=(const ConnectionPool&) = delete;

  // Polls `c` now and whenever it is woken or due (its streams wake the pool by themselves).
  void Add(const std::shared_ptr<HostConnection>& c);

 private:
  struct Entry {
    std::weak_ptr<HostConnection> c;
    bool queued = false;
    bool running = false;
    bool again = false;  // woken while running: poll once more
  };
  // What the streams' wake-ups reach: shared with them, so that one after the pool is gone
  // finds it stopped instead of freed. Connections are keyed by address (see Add).
  struct Core {
    // `streamed`: woken by its stream (a message, its end), not to connect.
    void Wake(const HostConnection* key, bool streamed);
    absl::Mutex mu;
    std::map<const HostConnection*, Entry> entries ABSL_GUARDED_BY(mu);
    // Connections woken by their streams go first, then those to connect: a connect holds
    // a thread for a round trip and a handshake, and thousands of them wait at a start;
    // a connected host's messages must not wait behind them.
    std::deque<const HostConnection*> streamed ABSL_GUARDED_BY(mu);
    std::deque<const HostConnection*> ready ABSL_GUARDED_BY(mu);
    std::multimap<absl::Duration, const HostConnection*> timers ABSL_GUARDED_BY(mu);
    bool stopping ABSL_GUARDED_BY(mu) = false;
  };
  void Run();
  Clock& clock_;
  const std::shared_ptr<Core> core_;
  std::vector<std::thread> threads_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_HOST_CONNECTION_H_
