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
  return v;
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
  auto topology = planner::TopologyFromProto(inventory->topology());
  if (!topology.ok()) {
    Down(absl::InvalidArgumentError(absl::StrCat("inventory: ", topology.status().message())));
    return false;
  }
  pending_topology_ = std::make_shared<const planner::Topology>(*std::move(topology));
  inventory->clear_topology();  // kept parsed; views are copied every pass
  pending_inventory_ = *std::move(inventory);
  first_message_ = true;
  std::shared_ptr<WatchStream> stream = client_->Watch(v1::WatchRequest());
  absl::MutexLock lock(&mu_);
  if (stopping_) return false;
  stream_ = std::move(stream);
  return true;
}

void HostConnection::Fold(const v1::HostState& state) {
  {
    absl::MutexLock lock(&mu_);
    if (first_message_) {
      view_.inventory = pending_inventory_;
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
  if (state.snapshot() || state.instances_size() > 0 || state.removed_size() > 0 || state.has_pool()) Notify();
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

}  // namespace mkfleet::reconciler
