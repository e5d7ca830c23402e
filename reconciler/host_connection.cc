#include "reconciler/host_connection.h"

#include <algorithm>
#include <chrono>

#include "absl/strings/str_cat.h"

namespace mkfleet::reconciler {
namespace {

namespace v1 = mkfleet::v1;

absl::Status FromGrpc(const grpc::Status& s) {
  if (s.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(s.error_code()), s.error_message());
}

std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

}  // namespace

HostConnection::HostConnection(std::string host, std::string address, Clock& clock, HostConnectionOptions options)
    : host_(std::move(host)), address_(std::move(address)), clock_(clock), options_(std::move(options)) {
  channel_ = grpc::CreateChannel(address_, grpc::InsecureChannelCredentials());
  stub_ = v1::Agent::NewStub(channel_);
  last_event_seq_ = options_.events_after;
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

void HostConnection::Stop() {
  {
    absl::MutexLock lock(&mu_);
    stopping_ = true;
    if (watch_ctx_ != nullptr) watch_ctx_->TryCancel();
  }
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
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.call_timeout));
  v1::ExecuteResponse response;
  grpc::Status s = stub_->Execute(&ctx, batch, &response);
  if (!s.ok()) {
    return absl::Status(FromGrpc(s).code(), absl::StrCat("host ", host_, " (", address_, "): ", s.error_message()));
  }
  return response;
}

absl::Status HostConnection::SetPolicy(const v1::SetPolicyRequest& request) {
  grpc::ClientContext ctx;
  ctx.set_deadline(Deadline(options_.call_timeout));
  v1::SetPolicyResponse response;
  grpc::Status s = stub_->SetPolicy(&ctx, request, &response);
  if (!s.ok()) {
    return absl::Status(FromGrpc(s).code(), absl::StrCat("host ", host_, " (", address_, "): ", s.error_message()));
  }
  return absl::OkStatus();
}

void HostConnection::Notify() {
  if (options_.on_change) options_.on_change(host_);
}

void HostConnection::MarkDown(const absl::Status& why) {
  {
    absl::MutexLock lock(&mu_);
    if (view_.connected) down_since_ = clock_.Monotonic();
    view_.connected = false;
    view_.error = absl::StrCat("agent ", address_, ": ", why.message());
  }
  Notify();
}

void HostConnection::Run() {
  absl::Duration backoff = absl::Milliseconds(100);
  while (true) {
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return;
    }
    absl::Status ended = Session();
    bool was_up;
    {
      absl::MutexLock lock(&mu_);
      was_up = view_.connected;
      if (stopping_) return;
    }
    MarkDown(ended);
    if (was_up) backoff = absl::Milliseconds(100);
    absl::MutexLock lock(&mu_);
    auto stopping = [this]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return stopping_; };
    mu_.AwaitWithTimeout(absl::Condition(&stopping), backoff);
    if (stopping_) return;
    backoff = std::min(backoff * 2, absl::Seconds(5));
  }
}

absl::Status HostConnection::Session() {
  v1::InventoryResponse inventory;
  {
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options_.call_timeout));
    {
      absl::MutexLock lock(&mu_);
      if (stopping_) return absl::CancelledError("stopping");
      watch_ctx_ = &ctx;  // so that Stop cancels this call too
    }
    grpc::Status s = stub_->Inventory(&ctx, v1::InventoryRequest(), &inventory);
    {
      absl::MutexLock lock(&mu_);
      watch_ctx_ = nullptr;
    }
    if (!s.ok()) return FromGrpc(s);
  }
  auto topology = planner::TopologyFromProto(inventory.topology());
  if (!topology.ok()) return absl::InvalidArgumentError(absl::StrCat("inventory: ", topology.status().message()));
  auto shared = std::make_shared<const planner::Topology>(*std::move(topology));
  inventory.clear_topology();  // kept parsed in `topology`; views are copied every pass

  grpc::ClientContext ctx;
  {
    absl::MutexLock lock(&mu_);
    if (stopping_) return absl::CancelledError("stopping");
    watch_ctx_ = &ctx;
  }
  auto reader = stub_->Watch(&ctx, v1::WatchRequest());
  v1::HostState state;
  bool first = true;
  while (reader->Read(&state)) {
    {
      absl::MutexLock lock(&mu_);
      if (first) {
        view_.inventory = inventory;
        view_.topology = shared;
        view_.connected = true;
        view_.error.clear();
        first = false;
      }
      if (state.snapshot()) view_.instances.clear();
      for (const v1::ObservedInstance& i : state.instances()) view_.instances[i.name()] = i;
      for (const std::string& name : state.removed()) view_.instances.erase(name);
      if (state.has_pool()) view_.pool = state.pool();
      view_.resource_version = state.resource_version();
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
  grpc::Status s = reader->Finish();
  absl::MutexLock lock(&mu_);
  watch_ctx_ = nullptr;
  if (s.ok()) return absl::UnavailableError("watch stream ended");
  return FromGrpc(s);
}

}  // namespace mkfleet::reconciler
