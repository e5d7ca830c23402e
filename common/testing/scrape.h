// For tests of the Prometheus endpoints (common/metrics.h): a scrape over plain HTTP on
// loopback, `promtool check metrics` on its text, and one series' value from it.
#ifndef MKFLEET_COMMON_TESTING_SCRAPE_H_
#define MKFLEET_COMMON_TESTING_SCRAPE_H_

#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iterator>
#include <optional>
#include <sstream>
#include <string>
#include <utility>

namespace mkfleet::testing {

// GET http://127.0.0.1:PORT/PATH: the body ("" when it fails).
inline std::string HttpGet(int port, const std::string& path = "/metrics") {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_port = htons(port);
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (connect(fd, reinterpret_cast<sockaddr*>(&a), sizeof(a)) != 0) {
    close(fd);
    return "";
  }
  const std::string req = "GET " + path + " HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n";
  if (write(fd, req.data(), req.size()) != static_cast<ssize_t>(req.size())) {
    close(fd);
    return "";
  }
  std::string all;
  char buf[65536];
  ssize_t n;
  while ((n = read(fd, buf, sizeof(buf))) > 0) all.append(buf, n);
  close(fd);
  const size_t body = all.find("\r\n\r\n");
  return body == std::string::npos ? "" : all.substr(body + 4);
}

// `promtool check metrics` on `text` (files under `dir`): its exit code and what it said.
inline std::pair<int, std::string> Promtool(const std::string& text, const std::string& dir) {
  const std::string in = dir + "/metrics.txt";
  const std::string out = dir + "/promtool.out";
  std::ofstream(in) << text;
  const int rc = system(("promtool check metrics < '" + in + "' > '" + out + "' 2>&1").c_str());
  std::ifstream said(out);
  return {WIFEXITED(rc) ? WEXITSTATUS(rc) : -1, std::string(std::istreambuf_iterator<char>(said), {})};
}

// The value of the series written exactly `series` (e.g. `name{label="v"}` or `name`) in
// a scrape's text; nullopt when absent.
inline std::optional<double> SeriesValue(const std::string& text, const std::string& series) {
  std::istringstream lines(text);
  std::string line;
  while (std::getline(lines, line)) {
    if (line.size() > series.size() && line.compare(0, series.size(), series) == 0 && line[series.size()] == ' ') {
      return std::stod(line.substr(series.size() + 1));
    }
  }
  return std::nullopt;
}

}  // namespace mkfleet::testing

#endif  // MKFLEET_COMMON_TESTING_SCRAPE_H_
