// mkguest: the guest side of live update (docs/morph.md), for the inside of a spawn kernel
// (built fully static, to go into an initrd) or, under the emulated kernel, one process per
// instance. Serves KMP on vsock port 9000 (or an AF_UNIX socket), answers heartbeats and
// the morph messages, and runs the hooks in --hooks-dir. Exits 0 after the old side's
// COMMIT, 2 on bad usage, 1 when it cannot listen.
#include <signal.h>
#include <unistd.h>

#include <cerrno>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "google/protobuf/stubs/logging.h"
#include "guest/guest.h"
#include "kmp/connection.h"

namespace {

int Usage(const std::string& why) {
  std::cerr << "mkguest: " << why
            << "\nusage: mkguest [--listen vsock:PORT|unix:PATH] [--hooks-dir DIR] [--instance-id N] "
               "[--hook-timeout SECONDS] [--exit-with PATH]\n"
               "  --listen        where the agent reaches this guest (default vsock:9000)\n"
               "  --hooks-dir     the morph hooks: start, quiesce, checkpoint, restore, validate, commit,\n"
               "                  resume, health\n"
               "                  (default /etc/mkfleet/morph.d; each optional)\n"
               "  --instance-id   this instance's id, reported in heartbeats (default 0)\n"
               "  --hook-timeout  seconds a hook may run (default 10)\n"
               "  --exit-with     end once PATH is gone (the emulated kernel passes its state file)\n"
               "hooks run with MKGUEST_INSTANCE_ID set to this instance's id\n";
  return 2;
}

}  // namespace

int main(int argc, char** argv) {
  std::string listen = "vsock:9000", hooks_dir = "/etc/mkfleet/morph.d", exit_with;
  uint32_t instance_id = 0;
  int hook_timeout = 10;
  for (int i = 1; i < argc; ++i) {
    std::string a = argv[i];
    if (a == "--help" || a == "-h") {
      Usage("the guest side of mkfleet's live update (KMP)");
      return 0;
    }
    if (i + 1 >= argc) return Usage(a + " needs a value");
    std::string v = argv[++i];
    if (a == "--listen") {
      listen = v;
    } else if (a == "--hooks-dir") {
      hooks_dir = v;
    } else if (a == "--instance-id") {
      if (!absl::SimpleAtoi(v, &instance_id)) return Usage("--instance-id: want a number");
    } else if (a == "--exit-with") {
      exit_with = v;
    } else if (a == "--hook-timeout") {
      if (!absl::SimpleAtoi(v, &hook_timeout) || hook_timeout <= 0) return Usage("--hook-timeout: want seconds");
    } else {
      return Usage("unknown flag " + a);
    }
  }
  signal(SIGPIPE, SIG_IGN);
  // A peer's malformed payloads are refused with ERROR; protobuf's own log lines about them
  // would let that peer fill this guest's console.
  google::protobuf::SetLogHandler([](google::protobuf::LogLevel level, const char*, int, const std::string& message) {
    if (level >= google::protobuf::LOGLEVEL_FATAL) std::cerr << "mkguest: protobuf: " << message << "\n";
  });
  absl::StatusOr<int> lfd = absl::InvalidArgumentError("--listen: want vsock:PORT or unix:PATH");
  uint32_t port = 0;
  if (absl::StartsWith(listen, "vsock:") && absl::SimpleAtoi(listen.substr(6), &port)) {
    lfd = mkfleet::kmp::ListenVsock(port);
  } else if (absl::StartsWith(listen, "unix:") && listen.size() > 5) {
    lfd = mkfleet::kmp::ListenUnix(listen.substr(5));
  }
  if (!lfd.ok()) {
    std::cerr << "mkguest: " << lfd.status().message() << "\n";
    return absl::IsInvalidArgument(lfd.status()) ? 2 : 1;
  }
  setenv("MKGUEST_INSTANCE_ID", std::to_string(instance_id).c_str(), 1);
  if (!exit_with.empty()) {
    std::thread([exit_with] {
      while (access(exit_with.c_str(), F_OK) == 0 || errno != ENOENT) sleep(1);
      std::cerr << "mkguest: " << exit_with << " is gone, exiting" << std::endl;
      _exit(0);
    }).detach();
  }
  mkfleet::guest::Guest guest(instance_id, mkfleet::guest::Hooks(hooks_dir, absl::Seconds(hook_timeout)));
  std::cerr << "mkguest: instance " << instance_id << ", listening on " << listen << std::endl;
  // The optional `start` hook: once, when the guest comes up (e.g. launches the workload).
  if (auto started = mkfleet::guest::Hooks(hooks_dir, absl::Seconds(hook_timeout)).Run("start"); !started.ok()) {
    std::cerr << "mkguest: start hook: " << started.status().message() << std::endl;
  }
  while (true) {
    auto conn = mkfleet::kmp::Accept(*lfd, absl::Hours(1));
    if (!conn.ok()) {
      if (absl::IsDeadlineExceeded(conn.status())) continue;
      std::cerr << "mkguest: " << conn.status().message() << "\n";
      continue;
    }
    std::thread([&guest, c = *std::move(conn)]() mutable {
      auto end = guest.Serve(*c);
      if (end.ok() && *end == mkfleet::guest::Guest::End::kCommitted) {
        std::cerr << "mkguest: committed, handing over" << std::endl;
        _exit(0);
      }
    }).detach();
  }
}
