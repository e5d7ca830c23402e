#include "kernel/emulator/guests.h"

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <vector>

#include "absl/strings/match.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/file_util.h"

extern char** environ;

namespace mkfleet::kernel {
namespace {

bool DnsLabel(absl::string_view s) {
  if (s.empty() || s.size() > 63 || s.front() == '-' || s.back() == '-') return false;
  for (char c : s) {
    if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) return false;
  }
  return true;
}

// A /proc file's text ("" once the process is gone).
std::string ReadProcFile(const std::string& path) { return ReadFile(path).value_or(""); }

// The fields of /proc/<pid>/stat after "pid (comm) ": comm may hold spaces and parentheses,
// so they start after the last ')'. Empty once the process is gone.
std::vector<std::string> StatFields(pid_t pid) {
  std::string stat = ReadProcFile(absl::StrCat("/proc/", pid, "/stat"));
  size_t end = stat.rfind(')');
  if (end == std::string::npos || end + 2 > stat.size()) return {};
  return absl::StrSplit(stat.substr(end + 2), ' ');
}

// Every process of session `sid` (from /proc/<pid>/stat, field 6).
std::vector<pid_t> SessionMembers(pid_t sid) {
  std::vector<pid_t> out;
  DIR* d = opendir("/proc");
  if (d == nullptr) return out;
  while (dirent* e = readdir(d)) {
    pid_t pid;
    if (!absl::SimpleAtoi(e->d_name, &pid)) continue;
    // state ppid pgrp session ...
    std::vector<std::string> fields = StatFields(pid);
    pid_t session;
    if (fields.size() > 3 && absl::SimpleAtoi(fields[3], &session) && session == sid) out.push_back(pid);
  }
  closedir(d);
  return out;
}

}  // namespace

std::string VsockPath(const std::string& socket_dir, uint32_t cid, uint32_t port) {
  return absl::StrCat(socket_dir, "/", cid, ".", port);
}

absl::StatusOr<std::string> GuestProfile(absl::string_view cmdline) {
  for (absl::string_view token : absl::StrSplit(cmdline, ' ', absl::SkipEmpty())) {
    if (!absl::ConsumePrefix(&token, "mkfleet.guest=")) continue;
    if (!DnsLabel(token)) {
      return absl::InvalidArgumentError(absl::StrCat("mkfleet.guest=", token,
                                                     ": a guest profile is a DNS label (it names a hooks folder)"));
    }
    return std::string(token);
  }
  return std::string();
}

absl::StatusOr<GuestProcesses::Started> GuestProcesses::Start(uint32_t id, const std::string& profile) {
  mkdir(options_.socket_dir.c_str(), 0700);
  std::string socket = VsockPath(options_.socket_dir, id, kGuestPort);
  std::string log = absl::StrCat(options_.socket_dir, "/", id, ".log");
  std::vector<std::string> args = {options_.binary,
                                   "--listen",
                                   absl::StrCat("unix:", socket),
                                   "--instance-id",
                                   absl::StrCat(id),
                                   "--hooks-dir",
                                   absl::StrCat(options_.hooks_root, "/", profile),
                                   "--hook-timeout",
                                   absl::StrCat(std::max<int64_t>(1, absl::ToInt64Seconds(options_.hook_timeout)))};
  if (!options_.exit_with.empty()) args.insert(args.end(), {"--exit-with", options_.exit_with});
  std::vector<char*> argv;
  for (std::string& a : args) argv.push_back(a.data());
  argv.push_back(nullptr);
  // The socket of an earlier guest of this id would answer nobody: the new one replaces it.
  unlink(socket.c_str());
  posix_spawn_file_actions_t fa;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawn_file_actions_addopen(&fa, 1, log.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0600);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawnattr_t attr;
  posix_spawnattr_init(&attr);
  sigset_t none, all;
  sigemptyset(&none);
  sigfillset(&all);
  posix_spawnattr_setsigmask(&attr, &none);
  posix_spawnattr_setsigdefault(&attr, &all);
  posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSID | POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);
  pid_t pid = 0;
  int err = posix_spawn(&pid, options_.binary.c_str(), &fa, &attr, argv.data(), environ);
  posix_spawnattr_destroy(&attr);
  posix_spawn_file_actions_destroy(&fa);
  if (err != 0) {
    return absl::InternalError(absl::StrCat("start the guest of instance ", id, " (", options_.binary,
                                            "): ", strerror(err)));
  }
  return Started{pid, StartTime(pid)};
}

uint64_t GuestProcesses::StartTime(pid_t pid) {
  // state is field 3, starttime field 22: the 20th after the state.
  std::vector<std::string> fields = StatFields(pid);
  uint64_t start = 0;
  if (fields.size() > 19 && absl::SimpleAtoi(fields[19], &start)) return start;
  return 0;
}

void GuestProcesses::Kill(pid_t pid) {
  if (pid <= 0) return;
  // The session's members, then the leader last (a member started after the scan belongs
  // to a process that is already dead by then and cannot start more).
  for (int round = 0; round < 3; ++round) {
    for (pid_t p : SessionMembers(pid)) kill(p, SIGKILL);
  }
  kill(pid, SIGKILL);
  int status;
  if (waitpid(pid, &status, 0) == pid) return;
  // Not our child (adopted after a restart): wait until it is gone.
  for (int i = 0; i < 2000 && kill(pid, 0) == 0; ++i) {
    std::vector<std::string> fields = StatFields(pid);
    if (!fields.empty() && fields[0] == "Z") return;
    usleep(1000);
  }
}

void GuestProcesses::Freeze(pid_t pid, bool frozen) {
  if (pid <= 0) return;
  for (pid_t p : SessionMembers(pid)) kill(p, frozen ? SIGSTOP : SIGCONT);
}

bool GuestProcesses::IsGuest(pid_t pid, uint64_t start_time, uint32_t id) const {
  if (pid <= 0 || kill(pid, 0) != 0) return false;
  if (start_time != 0 && StartTime(pid) != start_time) return false;  // a reused pid
  std::string want = VsockPath(options_.socket_dir, id, kGuestPort) + std::string(1, '\0');
  // Right after posix_spawn the child's exec may not have set up its arguments yet: its
  // command line reads empty for that moment (as it does for a zombie or a kernel thread).
  for (int i = 0; i < 1000; ++i) {
    std::string cmdline = ReadProcFile(absl::StrCat("/proc/", pid, "/cmdline"));
    if (!cmdline.empty()) return absl::StrContains(cmdline, want);
    std::vector<std::string> fields = StatFields(pid);
    if (fields.empty() || fields[0] == "Z" || fields[0] == "X") return false;
    usleep(1000);
  }
  return false;
}

}  // namespace mkfleet::kernel
