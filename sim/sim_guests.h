// SimGuests: the guests (mkguest) of one simulated host, in process: guest::Guest objects
// served over socket pairs, one per booted instance (a new one after every restart of the
// instance, as a real guest starts with its kernel), alive while the emulated kernel says the
// instance is up and not hung. No hooks (the simulation moves no workload state). Each
// exchange is a strict request and answer, so the outcome does not depend on scheduling.
// Thread-safety: Dial from the simulation's thread; the serving threads are joined by Join.
#ifndef MKFLEET_SIM_SIM_GUESTS_H_
#define MKFLEET_SIM_SIM_GUESTS_H_

#include <sys/socket.h>

#include <map>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "guest/guest.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kmp/connection.h"

namespace mkfleet::sim {

class SimGuests {
 public:
  explicit SimGuests(kernel::EmulatedKernel& emu) : emu_(emu) {}
  ~SimGuests() { Join(); }

  absl::StatusOr<std::unique_ptr<kmp::Connection>> Dial(uint32_t id) {
    std::string name;
    auto names = emu_.List("instances");
    if (names.ok()) {
      for (const std::string& n : *names) {
        auto text = emu_.Read(absl::StrCat("instances/", n, "/id"));
        uint32_t v = 0;
        if (text.ok() && absl::SimpleAtoi(absl::StripTrailingAsciiWhitespace(*text), &v) && v == id) name = n;
      }
    }
    if (name.empty() || !emu_.Probe(name)) return absl::UnavailableError(absl::StrCat("instance ", id, " runs no guest"));
    auto stops = emu_.StopsOf(name);
    Entry& e = guests_[id];
    if (e.guest == nullptr || e.name != name || e.stops != (stops.ok() ? *stops : -1)) {
      e.name = name;
      e.stops = stops.ok() ? *stops : -1;
      e.exited = false;
      e.guest = std::make_shared<guest::Guest>(id, guest::Hooks("/nonexistent-sim-hooks", absl::Seconds(1)));
    }
    if (e.exited) return absl::UnavailableError(absl::StrCat("the guest of instance ", id, " exited"));
    int fds[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) return absl::UnavailableError("socketpair");
    std::shared_ptr<guest::Guest> g = e.guest;
    bool* exited = &e.exited;
    threads_.emplace_back([g, exited, fd = fds[1]] {
      kmp::Connection conn(fd);
      auto end = g->Serve(conn);
      if (end.ok() && *end == guest::Guest::End::kCommitted) *exited = true;  // the old side ends
    });
    return std::make_unique<kmp::Connection>(fds[0]);
  }

  // Waits for the serving threads (their connections are closed once a morph ended).
  void Join() {
    for (auto& t : threads_) t.join();
    threads_.clear();
  }

 private:
  struct Entry {
    std::string name;
    int stops = -1;
    bool exited = false;
    std::shared_ptr<guest::Guest> guest;
  };
  kernel::EmulatedKernel& emu_;
  std::map<uint32_t, Entry> guests_;
  std::vector<std::thread> threads_;
};

}  // namespace mkfleet::sim

#endif  // MKFLEET_SIM_SIM_GUESTS_H_
