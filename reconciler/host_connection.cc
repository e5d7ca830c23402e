#include "reconciler/host_connection.h"

#include <algorithm>

#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

}  // namespace

HostConnection::HostConnection(std::string host, std::string address, std::unique_ptr<AgentClient> client,
                               Clock& clock, HostConnectionOptions options)
    : host_(std::move(host)),
      address_(std::move(address)),
      client_(std::move(client)),
      clock_(clock),
      options_(std::move(options)) {
  last_event_seq_ = options_.events_after;
  retry_at_ = clock_.Monotonic();
  absl::MutexLock lock(&mu_);
  down_since_ = clock_.Monotonic();
  view_.error = "not connected yet";
  view_.reachable = true;  // until unreachable_after has passed without a connection
}

HostConnection::~HostConnection() { Stop(); }

void HostConnection::Start() {
  if (thread_.joinable()) return;
  thread_ = std::thread([this] { Run(); });
}

void HostConnection::Cancel() {
  absl::MutexLock lock(&mu_);
  stopping_ = true;
  if (stream_ != nullptr) stream_->Cancel();
}

void HostConnection::Stop() {
  Cancel();
  if (thread_.joinable()) thread_.join();
}

HostView HostConnection::View() const {
  absl::MutexLock lock(&mu_);
  HostView v = view_;
  v.reachable = v.connected || clock_.Monotonic() - down_since_ < options_.unreachable_after;
  v.settling = SettlingLocked();
  return v;
}

bool HostConnection::Connected() const {
  absl::MutexLock lock(&mu_);
  return view_.connected;
}

bool HostConnection::Settling() const {
  absl::MutexLock lock(&mu_);
  return SettlingLocked();
}

bool HostConnection::SettlingLocked() const {
  return view_.batch_mark < awaited_mark_ && clock_.Monotonic() - awaited_at_ < options_.settle_timeout;
}

std::shared_ptr<const planner::Topology> HostConnection::Topology() const {
  absl::MutexLock lock(&mu_);
  return view_.topology;
}

absl::StatusOr<v1::ExecuteResponse> HostConnection::Execute(const v1::ActionBatch& batch) {
  {
    absl::MutexLock lock(&mu_);
    if (!view_.connected) return absl::UnavailableError(absl::StrCat("host ", host_, ": ", view_.error));
  }
  auto r = client_->Execute(batch, options_.call_timeout);
  if (!r.ok()) {
    return absl::Status(r.status().code(), absl::StrCat("host ", host_, " (", address_, "): ", r.status().message()));
  }
  absl::MutexLock lock(&mu_);
  if (r->batch_mark() > awaited_mark_) {
    awaited_mark_ = r->batch_mark();
    awaited_at_ = clock_.Monotonic();
  }
  return r;
}

absl::Status HostConnection::SetPolicy(const v1::SetPolicyRequest& request) {
  absl::Status s = client_->SetPolicy(request, options_.call_timeout);
  if (!s.ok()) return absl::Status(s.code(), absl::StrCat("host ", host_, " (", address_, "): ", s.message()));
  return s;
}

void HostConnection::Notify() {
  if (options_.on_change) options_.on_change(host_);
}

void HostConnection::Down(const absl::Status& why) {
  bool was_up;
  {
    absl::MutexLock lock(&mu_);
    stream_.reset();
    was_up = view_.connected;
    if (was_up) down_since_ = clock_.Monotonic();
    view_.connected = false;
    view_.error = absl::StrCat("agent ", address_, ": ", why.message());
  }
  if (was_up) backoff_ = absl::Milliseconds(100);
  retry_at_ = clock_.Monotonic() + backoff_;
  backoff_ = std::min(backoff_ * 2, absl::Seconds(5));
  Notify();
}

bool HostConnection::Connect() {
  auto inventory = client_->Inventory(options_.call_timeout);
  if (!inventory.ok()) {
    Down(inventory.status());
    return false;
  }
  auto topology = planner::SharedTopologyFromProto(inventory->topology());
  if (!topology.ok()) {
    Down(absl::InvalidArgumentError(absl::StrCat("inventory: ", topology.status().message())));
    return false;
  }
  pending_topology_ = *std::move(topology);
  // Views are copied every pass, and a fleet's are many: the topology is kept parsed (and
  // shared), the pool comes with the stream (HostView::pool).
  inventory->clear_topology();
  inventory->clear_pool();
  pending_inventory_ = *std::move(inventory);
  first_message_ = true;
  std::shared_ptr<WatchStream> stream = client_->Watch(v1::WatchRequest());
  if (on_stream_) on_stream_(*stream);
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  stream_ = std::move(stream);
  return true;
}

void HostConnection::Fold(const v1::HostState& state) {
  bool settled = false;  // shows the last batch answered now, and did not before
  {
    absl::MutexLock lock(&mu_);
    const bool was_settling = view_.batch_mark < awaited_mark_;
    // (A snapshot may come from another run of the agent: its marks are its own.)
    if (state.snapshot() || state.batch_mark() > view_.batch_mark) view_.batch_mark = state.batch_mark();
    settled = was_settling && view_.batch_mark >= awaited_mark_;
    if (first_message_) {
      // (Swapped out, not copied: nothing of it stays behind in pending_inventory_.)
      v1::InventoryResponse taken;
      taken.Swap(&pending_inventory_);
      view_.inventory.Swap(&taken);
      view_.topology = pending_topology_;
      view_.connected = true;
      view_.error.clear();
      first_message_ = false;
    }
    if (state.snapshot()) view_.instances.clear();
    for (const v1::ObservedInstance& i : state.instances()) view_.instances[i.name()] = i;
    for (const std::string& name : state.removed()) view_.instances.erase(name);
    if (state.has_pool()) view_.pool = state.pool();
    view_.resource_version = state.resource_version();
    if (state.snapshot() || state.instances_size() > 0 || state.removed_size() > 0 || state.has_pool()) {
      view_.state_version = state.resource_version();
    }
  }
  std::vector<v1::Event> fresh;
  for (const v1::Event& e : state.events()) {
    if (e.seq() > last_event_seq_) fresh.push_back(e);
  }
  if (!fresh.empty()) {
    std::sort(fresh.begin(), fresh.end(), [](const v1::Event& a, const v1::Event& b) { return a.seq() < b.seq(); });
    last_event_seq_ = fresh.back().seq();
    if (options_.on_events) options_.on_events(host_, std::move(fresh));
  }
  // A message with only events (an action's result is also an event) changes nothing
  // to plan with: no pass for it, or a failing action would retry at once.
  if (settled || state.snapshot() || state.instances_size() > 0 || state.removed_size() > 0 || state.has_pool()) {
    Notify();
  }
}

void HostConnection::Poll() {
  std::shared_ptr<WatchStream> stream;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return;
    stream = stream_;
  }
  if (stream == nullptr) {
    if (clock_.Monotonic() < retry_at_ || !Connect()) return;
    absl::MutexLock lock(&mu_);
    stream = stream_;
  }
  v1::HostState state;
  absl::Status ended;
  while (stream != nullptr) {
    switch (stream->Next(&state, /*block=*/false, &ended)) {
      case WatchStream::Result::kMessage:
        Fold(state);
        break;
      case WatchStream::Result::kPending:
        return;
      case WatchStream::Result::kEnded:
        Down(ended);
        return;
    }
  }
}

void HostConnection::Run() {
  while (true) {
    std::shared_ptr<WatchStream> stream;
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
      stream = stream_;
      if (stream == nullptr) {
        // Wait for the retry (or Stop).
        absl::Duration wait = retry_at_ - clock_.Monotonic();
        if (wait > absl::ZeroDuration()) {
          auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
          mu_.AwaitWithTimeout(absl::Condition(&stopping), wait);
          continue;
        }
      }
    }
    if (stream == nullptr) {
      Connect();
      continue;
    }
    v1::HostState state;
    absl::Status ended;
    if (stream->Next(&state, /*block=*/true, &ended) == WatchStream::Result::kMessage) {
      Fold(state);
    } else {
      {
        absl::MutexLock lock(&mu_);
        if (stopping_) return;
      }
      Down(ended);
    }
  }
}

std::optional<absl::Duration> HostConnection::RetryAt() const {
  absl::MutexLock lock(&mu_);
  if (stream_ != nullptr || stopping_) return std::nullopt;
  return retry_at_;
}

ConnectionPool::ConnectionPool(Clock& clock, int threads) : clock_(clock), core_(std::make_shared<Core>()) {
  for (int i = 0; i < threads; ++i) threads_.emplace_back([this] { Run(); });
}

ConnectionPool::~ConnectionPool() {
  {
    absl::MutexLock lock(&core_->mu);
    core_->stopping = true;
  }
  for (auto& t : threads_) t.join();
}

void ConnectionPool::Add(const std::shared_ptr<HostConnection>& c) {
  // The streams wake the pool from gRPC's threads: by the connection's address, never with
  // a strong reference (the last one dropped there would destroy the connection, and its
  // channel, inside a callback of that channel), through the core (alive as long as a
  // stream may call).
  const HostConnection* key = c.get();
  std::shared_ptr<Core> core = core_;
  c->SetOnStream([core, key](WatchStream& stream) { stream.SetWake([core, key] { core->Wake(key, true); }); });
  {
    absl::MutexLock lock(&core_->mu);
    core_->entries[key].c = c;
  }
  core_->Wake(key, false);
}

void ConnectionPool::Core::Wake(const HostConnection* key, bool streamed_wake) {
  absl::MutexLock lock(&mu);
  auto it = entries.find(key);
  if (it == entries.end() || stopping) return;
  Entry& e = it->second;
  if (e.running) {
    e.again = true;
  } else if (!e.queued) {
    e.queued = true;
    (streamed_wake ? streamed : ready).push_back(key);
  }
}

void ConnectionPool::Run() {
  Core& core = *core_;
  while (true) {
    std::shared_ptr<HostConnection> c;
    const HostConnection* key = nullptr;
    {
      absl::MutexLock lock(&core.mu);
      while (true) {
        if (core.stopping) return;
        // Due retries join the ready queue.
        const absl::Duration now = clock_.Monotonic();
        while (!core.timers.empty() && core.timers.begin()->first <= now) {
          auto it = core.entries.find(core.timers.begin()->second);
          core.timers.erase(core.timers.begin());
          if (it != core.entries.end() && !it->second.queued && !it->second.running) {
            it->second.queued = true;
            core.ready.push_back(it->first);
          }
        }
        if (!core.streamed.empty() || !core.ready.empty()) break;
        absl::Duration wait = core.timers.empty()
                                  ? absl::Milliseconds(200)
                                  : std::min(absl::Milliseconds(200), core.timers.begin()->first - now);
        auto has_work = [&core]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(core.mu) {
          return !core.streamed.empty() || !core.ready.empty() || core.stopping;
        };
        core.mu.AwaitWithTimeout(absl::Condition(&has_work), std::max(wait, absl::Milliseconds(1)));
      }
      std::deque<const HostConnection*>& from = core.streamed.empty() ? core.ready : core.streamed;
      key = from.front();
      from.pop_front();
      auto it = core.entries.find(key);
      if (it == core.entries.end()) continue;
      c = it->second.c.lock();
      if (c == nullptr) {
        core.entries.erase(it);  // gone
        continue;
      }
      it->second.queued = false;
      it->second.running = true;
    }
    c->Poll();
    std::optional<absl::Duration> retry = c->RetryAt();
    {
      absl::MutexLock lock(&core.mu);
      auto it = core.entries.find(key);
      if (it != core.entries.end()) {
        Entry& e = it->second;
        e.running = false;
        if (e.again) {  // woken while it ran: by its stream
          e.again = false;
          e.queued = true;
          core.streamed.push_back(key);
        } else if (retry) {
          core.timers.emplace(*retry, key);
        }
      }
    }
    // Outside the lock: this may be the last reference (the connection then stops here,
    // and its stream's last wake-up needs the lock).
    c.reset();
  }
}

}  // namespace mkfleet::reconciler
