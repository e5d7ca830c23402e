// GuestProcesses: what runs inside an emulated instance. A real spawn kernel runs mkguest
// from its initrd; the emulated kernel runs the same binary as an ordinary process, one per
// active instance whose command line asks for it (`mkfleet.guest=PROFILE`: its hooks are
// <hooks_root>/PROFILE), listening on the AF_UNIX stand-in for vsock (CID = instance id,
// port 9000): <socket_dir>/<cid>.<port> (docs/morph.md).
//  - Each guest is a session of its own, so that everything it and its hooks start dies with
//    it: stopping an instance (halt, panic, force-halt) SIGKILLs the whole session.
//  - A hung instance's session is stopped (SIGSTOP): its guest no longer answers.
//  - Guests outlive the agent process, as kernels do; the emulator records their pids and
//    start times in its state file and adopts them after a restart (only a process that still
//    is that guest: same pid, same start time, the instance's socket on its command line).
//  - Each guest exits by itself once `exit_with` (the emulator's state file) is gone, so a
//    test that removes its folder leaves nothing behind.
// Thread-compatible: the emulated kernel calls it under its lock.
#ifndef MKFLEET_KERNEL_EMULATOR_GUESTS_H_
#define MKFLEET_KERNEL_EMULATOR_GUESTS_H_

#include <sys/types.h>

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "absl/time/time.h"

namespace mkfleet::kernel {

struct GuestOptions {
  std::string binary;      // mkguest; empty: no instance runs a guest
  std::string socket_dir;  // where the vsock stand-in sockets and the guests' logs go
  std::string hooks_root;  // PROFILE's hooks are <hooks_root>/PROFILE
  std::string exit_with;   // a guest ends once this path is gone (empty: never)
  absl::Duration hook_timeout = absl::Seconds(10);
};

inline constexpr uint32_t kGuestPort = 9000;

// The AF_UNIX path standing in for vsock (cid, port).
std::string VsockPath(const std::string& socket_dir, uint32_t cid, uint32_t port);

// The guest profile a kernel command line asks for (`mkfleet.guest=PROFILE`), "" for none.
// A profile is a DNS label (it names a folder): anything else is InvalidArgument.
absl::StatusOr<std::string> GuestProfile(absl::string_view cmdline);

class GuestProcesses {
 public:
  explicit GuestProcesses(GuestOptions options) : options_(std::move(options)) {}
  bool enabled() const { return !options_.binary.empty(); }

  // A started guest: its pid and its start time (clock ticks after boot, /proc/<pid>/stat
  // field 22), which tell it from a later process given the same pid.
  struct Started {
    pid_t pid = 0;
    uint64_t start_time = 0;
  };
  // Starts instance `id`'s guest with PROFILE's hooks.
  absl::StatusOr<Started> Start(uint32_t id, const std::string& profile);
  // SIGKILLs the guest's whole session and waits until it is gone.
  static void Kill(pid_t pid);
  // Stops (SIGSTOP) or continues (SIGCONT) the guest's whole session.
  static void Freeze(pid_t pid, bool frozen);
  // Whether `pid` still is instance `id`'s guest (after a restart: not a reused pid). A
  // `start_time` of 0 (a state file from before start times were kept) checks the command
  // line only. A guest whose exec has not yet set up its arguments (posix_spawn returns
  // before that) is waited for, up to a second.
  bool IsGuest(pid_t pid, uint64_t start_time, uint32_t id) const;
  // The start time of process `pid`, 0 if there is none.
  static uint64_t StartTime(pid_t pid);

 private:
  GuestOptions options_;
};

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_EMULATOR_GUESTS_H_
