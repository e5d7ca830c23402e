#include "agents/agent_watch.h"

#include <utility>

namespace mkfleet::agents {

namespace v1 = mkfleet::v1;

WatchNotifier& WatchNotifier::Default() {
  static WatchNotifier* notifier = new WatchNotifier();  // never destroyed: its thread runs to exit
  return *notifier;
}

void WatchNotifier::Subscribe(const Agent* agent, std::shared_ptr<Listener> listener) {
  absl::MutexLock lock(&mu_);
  auto& list = listeners_[agent];
  // Drop the ended streams' entries as new ones come.
  list.erase(std::remove_if(list.begin(), list.end(), [](const std::weak_ptr<Listener>& w) { return w.expired(); }),
             list.end());
  list.push_back(listener);
  if (!started_) {
    started_ = true;
    std::thread([this] { Run(); }).detach();
  }
}

void WatchNotifier::Changed(const Agent* agent) {
  absl::MutexLock lock(&mu_);
  if (listeners_.count(agent)) dirty_.insert(agent);
}

void WatchNotifier::Run() {
  while (true) {
    std::vector<std::shared_ptr<Listener>> wake;
    {
      absl::MutexLock lock(&mu_);
      mu_.Await(absl::Condition(+[](std::set<const Agent*>* d) { return !d->empty(); }, &dirty_));
      for (const Agent* agent : dirty_) {
        auto it = listeners_.find(agent);
        if (it == listeners_.end()) continue;
        for (const auto& w : it->second) {
          if (auto l = w.lock()) wake.push_back(std::move(l));
        }
      }
      dirty_.clear();
    }
    for (const auto& l : wake) l->OnChange();
  }
}

AgentWatchReactor::AgentWatchReactor(Agent& agent, int64_t version, std::unique_ptr<StreamLimiter::Token> slot)
    : agent_(agent), slot_(std::move(slot)), shim_(std::make_shared<Shim>(this)) {
  // Accepted: the initial metadata at once (a client can tell it from a refused stream).
  this->StartSendInitialMetadata();
  v1::HostState snapshot = agent_.Snapshot();
  {
    absl::MutexLock lock(&mu_);
    version_ = snapshot.resource_version();
    // A client that is current resumes with changes; any other gets a fresh snapshot.
    if (version != snapshot.resource_version()) first_ = std::move(snapshot);
  }
  WatchNotifier::Default().Subscribe(&agent_, shim_);
  Pump();
}

void AgentWatchReactor::Shim::OnChange() {
  AgentWatchReactor* r;
  {
    absl::MutexLock lock(&mu);
    r = reactor;
    if (r == nullptr) return;
    r->refs_.fetch_add(1);
  }
  r->Pump();
  r->Unref();
}

void AgentWatchReactor::OnWriteDone(bool ok) {
  {
    absl::MutexLock lock(&mu_);
    writing_ = false;
    if (!ok) ending_ = true;  // the client went away
  }
  Pump();
}

void AgentWatchReactor::OnCancel() {
  {
    absl::MutexLock lock(&mu_);
    ending_ = true;
  }
  Pump();
}

void AgentWatchReactor::OnDone() {
  {
    absl::MutexLock lock(&shim_->mu);
    shim_->reactor = nullptr;
  }
  // The slot goes back now, while the service is sure to be there (the server's shutdown
  // waits for this), not with the last reference: that may be the notifier's, pumping a
  // change as the stream ended, and may go after the server and the service.
  slot_.reset();
  Unref();
}

void AgentWatchReactor::Pump() {
  enum { kNothing, kWrite, kFinish } act = kNothing;
  {
    absl::MutexLock lock(&mu_);
    if (writing_ || finished_) return;
    if (ending_) {
      finished_ = true;
      act = kFinish;
    } else if (first_) {
      current_ = *std::move(first_);
      first_.reset();
      writing_ = true;
      act = kWrite;
    } else {
      v1::HostState changes;
      if (agent_.WaitForChange(version_, absl::ZeroDuration(), &changes)) {
        version_ = changes.resource_version();
        current_ = std::move(changes);
        writing_ = true;
        act = kWrite;
      }
    }
  }
  if (act == kWrite) this->StartWrite(&current_);
  if (act == kFinish) this->Finish(grpc::Status::OK);
}

}  // namespace mkfleet::agents
