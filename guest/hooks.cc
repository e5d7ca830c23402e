#include "guest/hooks.h"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/strings/strip.h"

namespace mkfleet::guest {

bool Hooks::Has(const std::string& name) const {
  struct stat st {};
  std::string path = dir_ + "/" + name;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode) && access(path.c_str(), X_OK) == 0;
}

absl::StatusOr<std::string> Hooks::Run(const std::string& name, const std::string& input, size_t max_output) const {
  if (!Has(name)) return std::string();
  const std::string path = dir_ + "/" + name;
  int in[2], out[2], err[2];
  if (pipe2(in, O_CLOEXEC) != 0 || pipe2(out, O_CLOEXEC) != 0 || pipe2(err, O_CLOEXEC) != 0) {
    return absl::InternalError(absl::StrCat("hook ", name, ": pipe: ", strerror(errno)));
  }
  pid_t pid = fork();
  if (pid < 0) return absl::InternalError(absl::StrCat("hook ", name, ": fork: ", strerror(errno)));
  if (pid == 0) {
    dup2(in[0], 0);
    dup2(out[1], 1);
    dup2(err[1], 2);
    setpgid(0, 0);  // its own group: a timeout kills whatever it started too
    execl(path.c_str(), path.c_str(), static_cast<char*>(nullptr));
    _exit(127);
  }
  close(in[0]);
  close(out[1]);
  close(err[1]);
  fcntl(in[1], F_SETFL, O_NONBLOCK);
  fcntl(out[0], F_SETFL, O_NONBLOCK);
  fcntl(err[0], F_SETFL, O_NONBLOCK);
  // A hook that exits without reading all its input must not take this process with it
  // (SIGPIPE); set once, as mkguest's main does.
  static const bool kIgnoreSigpipe = (signal(SIGPIPE, SIG_IGN), true);
  (void)kIgnoreSigpipe;
  const auto deadline = std::chrono::steady_clock::now() + absl::ToChronoMilliseconds(timeout_);
  std::string output, errors;
  size_t written = 0;
  bool in_open = true, out_open = true, err_open = true, too_much = false, timed_out = false;
  if (input.empty()) {
    close(in[1]);
    in_open = false;
  }
  while (out_open || err_open) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      timed_out = true;
      break;
    }
    pollfd p[3];
    int n = 0;
    int out_i = -1, err_i = -1, in_i = -1;
    if (out_open) p[out_i = n++] = {out[0], POLLIN, 0};
    if (err_open) p[err_i = n++] = {err[0], POLLIN, 0};
    if (in_open) p[in_i = n++] = {in[1], POLLOUT, 0};
    if (poll(p, n, static_cast<int>(std::min<int64_t>(left.count(), 1000))) < 0 && errno != EINTR) break;
    char buf[1 << 16];
    if (out_i >= 0 && p[out_i].revents) {
      ssize_t r = read(out[0], buf, sizeof(buf));
      if (r > 0) {
        output.append(buf, static_cast<size_t>(r));
        if (output.size() > max_output) {
          too_much = true;
          break;
        }
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        out_open = false;
      }
    }
    if (err_i >= 0 && p[err_i].revents) {
      ssize_t r = read(err[0], buf, sizeof(buf));
      if (r > 0) {
        errors.append(buf, static_cast<size_t>(r));
        if (errors.size() > 65536) errors.erase(0, errors.size() - 65536);
      } else if (r == 0 || (errno != EAGAIN && errno != EINTR)) {
        err_open = false;
      }
    }
    if (in_i >= 0 && p[in_i].revents) {
      ssize_t w = write(in[1], input.data() + written, input.size() - written);
      if (w > 0) written += static_cast<size_t>(w);
      if ((w < 0 && errno != EAGAIN && errno != EINTR) || written == input.size()) {
        close(in[1]);
        in_open = false;
      }
    }
  }
  if (in_open) close(in[1]);
  close(out[0]);
  close(err[0]);
  if (timed_out || too_much) kill(-pid, SIGKILL);
  int status = 0;
  waitpid(pid, &status, 0);
  if (timed_out) {
    return absl::DeadlineExceededError(absl::StrCat("hook ", name, " ran past ", absl::FormatDuration(timeout_)));
  }
  if (too_much) return absl::ResourceExhaustedError(absl::StrCat("hook ", name, " wrote more than ", max_output, " bytes"));
  if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) {
    std::string last(absl::StripTrailingAsciiWhitespace(errors));
    size_t nl = last.rfind('\n');
    if (nl != std::string::npos) last = last.substr(nl + 1);
    return absl::FailedPreconditionError(absl::StrCat(
        "hook ", name, WIFEXITED(status) ? absl::StrCat(" exited ", WEXITSTATUS(status))
                                          : absl::StrCat(" died of signal ", WTERMSIG(status)),
        last.empty() ? "" : ": ", last.substr(0, 500)));
  }
  return output;
}

}  // namespace mkfleet::guest
