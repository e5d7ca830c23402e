// WatchHub: one reader of the store's changes for every stream that follows them (object
// watches, followed events). A single thread waits for new revisions and reads the changes
// under the watched prefixes once; streams wait on the hub and take what they have not seen
// from its memory, so a thousand idle streams cost no store reads at all.
//
// The hub keeps the newest changes, bounded in count and bytes; a stream that fell further
// behind than that gets OutOfRange and starts again from a snapshot (as after compaction).
// Thread-safety: safe to call concurrently.
#ifndef MKFLEET_RECONCILER_WATCH_HUB_H_
#define MKFLEET_RECONCILER_WATCH_HUB_H_

#include <cstdint>
#include <deque>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {

struct WatchHubOptions {
  std::vector<std::string> prefixes = {"/objects/", "/events/"};
  size_t max_changes = 20000;
  size_t max_bytes = 32u << 20;
  // Keep only each change's key, revision and type, not its value (readers that need to
  // know what changed, not to what: the console's streams).
  bool keys_only = false;
};

class WatchHub {
 public:
  WatchHub(Store& store, WatchHubOptions options = {});
  ~WatchHub();  // stops the reader

  // The changes after revision `after` under `prefix` (one of the options' prefixes), in
  // revision order, once there are any, or empty after `timeout`. `*seen` is set to the
  // revision they bring the caller to (a caller passes it back as `after`). OutOfRange when
  // changes after `after` are no longer kept; Unavailable once stopped.
  absl::StatusOr<std::vector<Event>> Next(int64_t after, const std::string& prefix, absl::Duration timeout,
                                          int64_t* seen);
  void Stop();

  // Told (from the hub's thread, with no lock of the hub held) each time new changes have
  // been read, or the hub stops. Held weakly: a listener that is gone is forgotten.
  class Listener {
   public:
    virtual ~Listener() = default;
    virtual void OnChanges() = 0;
  };
  void Subscribe(std::weak_ptr<Listener> listener);

 private:
  void Run();
  void Notify() ABSL_LOCKS_EXCLUDED(mu_);

  Store& store_;
  const WatchHubOptions options_;
  absl::Mutex mu_;
  std::deque<Event> changes_ ABSL_GUARDED_BY(mu_);  // oldest first
  size_t bytes_ ABSL_GUARDED_BY(mu_) = 0;
  int64_t floor_ ABSL_GUARDED_BY(mu_) = 0;  // changes after this revision are all kept
  int64_t revision_ ABSL_GUARDED_BY(mu_) = 0;  // read up to here
  bool stop_ ABSL_GUARDED_BY(mu_) = false;
  std::vector<std::weak_ptr<Listener>> listeners_ ABSL_GUARDED_BY(mu_);
  std::thread thread_;
};

}  // namespace mkfleet::reconciler

#endif  // MKFLEET_RECONCILER_WATCH_HUB_H_
