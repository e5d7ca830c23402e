// bad_guest: a hostile stand-in for mkguest in process tests. Takes mkguest's flags, listens
// where mkguest would, and answers every byte it receives with bytes that are no KMP frame.
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstring>
#include <string>
#include <thread>

int main(int argc, char** argv) {
  std::string path;
  for (int i = 1; i + 1 < argc; ++i) {
    if (std::string(argv[i]) == "--listen" && std::string(argv[i + 1]).rfind("unix:", 0) == 0) {
      path = std::string(argv[i + 1]).substr(5);
    }
  }
  if (path.empty()) return 2;
  // Long paths (test sandboxes): bind the name inside its folder.
  size_t slash = path.rfind('/');
  if (slash != std::string::npos) {
    if (chdir(path.substr(0, slash).c_str()) != 0) return 1;
    path = path.substr(slash + 1);
  }
  if (path.size() >= sizeof(sockaddr_un{}.sun_path)) return 2;
  int fd = socket(AF_UNIX, SOCK_STREAM, 0);
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  std::strncpy(addr.sun_path, path.c_str(), sizeof(addr.sun_path) - 1);
  unlink(path.c_str());
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0 || listen(fd, 16) != 0) return 1;
  while (true) {
    int c = accept(fd, nullptr, nullptr);
    if (c < 0) continue;
    std::thread([c] {
      char buf[4096];
      while (read(c, buf, sizeof buf) > 0) {
        const char junk[32] = "\x5a\x5a\x5a\x5a not a KMP frame";
        if (send(c, junk, sizeof junk, MSG_NOSIGNAL) < 0) break;
      }
      close(c);
    }).detach();
  }
}
