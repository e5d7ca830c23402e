#include "console/server.h"

#include <chrono>
#include <deque>
#include <thread>

#include "absl/synchronization/mutex.h"
#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "httplib.h"
#include "nlohmann/json.hpp"

namespace mkfleet::console {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

v1::Object Host(const std::string& name, const std::string& zone) {
  v1::Object o;
  v1::Host* h = o.mutable_host();
  h->set_api_version("mkfleet.io/v1");
  h->set_kind("Host");
  h->mutable_metadata()->set_name(name);
  (*h->mutable_metadata()->mutable_labels())["zone"] = zone;
  h->mutable_spec()->set_agent("127.0.0.1:7101");
  h->mutable_status()->set_reachable(true);
  for (uint32_t c = 2; c < 8; ++c) h->mutable_status()->mutable_pool()->add_cpus(c);
  return o;
}

v1::Object Instance(const std::string& name, const std::string& host, std::vector<uint32_t> cpus) {
  v1::Object o;
  v1::KernelInstance* ki = o.mutable_kernel_instance();
  ki->set_api_version("mkfleet.io/v1");
  ki->set_kind("KernelInstance");
  ki->mutable_metadata()->set_name(name);
  ki->mutable_spec()->mutable_resources()->set_memory(2ull << 30);
  ki->mutable_status()->set_phase("Running");
  ki->mutable_status()->mutable_placement()->set_host(host);
  for (uint32_t c : cpus) ki->mutable_status()->mutable_placement()->add_cpus(c);
  return o;
}

// A fleet of two hosts and one instance, and a store whose changes the test feeds.
class ConsoleServerTest : public ::testing::Test {
 protected:
  void SetUp() override {
    objects_["Host"] = {Host("node-a", "a"), Host("node-b", "b")};
    objects_["KernelInstance"] = {Instance("web-1", "node-a", {2, 3})};
    Start({});
  }
  void Start(Options options) {
    server_.reset();
    Sources s;
    s.list = [this](const std::string& kind) -> absl::StatusOr<std::vector<v1::Object>> { return objects_[kind]; };
    s.get = [this](const std::string& kind, const std::string& name) -> absl::StatusOr<std::optional<v1::Object>> {
      for (const v1::Object& o : objects_[kind]) {
        const std::string& n = o.has_host() ? o.host().metadata().name() : o.kernel_instance().metadata().name();
        if (n == name) return o;
      }
      return std::nullopt;
    };
    s.topology = [](const std::string& host) -> absl::StatusOr<v1::TopologyInfo> {
      if (host == "node-b") return absl::UnavailableError("host node-b: its agent has not reported its topology yet");
      v1::TopologyInfo t;
      t.add_numa_nodes()->set_node(0);
      for (uint32_t c = 0; c < 4; ++c) {
        v1::CoreInfo* core = t.add_cores();
        core->set_core(c);
        core->add_pus(c);
        core->add_pus(c + 4);
      }
      return t;
    };
    s.events = [](const std::string& kind, const std::string& name) -> absl::StatusOr<std::vector<v1::Event>> {
      std::vector<v1::Event> out;
      for (const char* reason : {"Scheduled", "Started", "StandbyTakeover"}) {
        v1::Event e;
        e.set_kind("KernelInstance");
        e.set_name("web-1");
        e.set_reason(reason);
        if ((kind.empty() || kind == e.kind()) && (name.empty() || name == e.name())) out.push_back(e);
      }
      return out;
    };
    s.changes = [this](int64_t after, absl::Duration timeout, int64_t* seen) -> absl::StatusOr<std::vector<std::string>> {
      absl::MutexLock lock(&mu_);
      auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) { return revision_ > after; };
      mu_.AwaitWithTimeout(absl::Condition(&ready), timeout);
      *seen = std::max(after, revision_);
      if (revision_ <= after) return std::vector<std::string>{};
      if (after < floor_) return absl::OutOfRangeError("compacted");
      std::vector<std::string> keys;
      for (const auto& [rev, key] : changes_) {
        if (rev > after) keys.push_back(key);
      }
      return keys;
    };
    s.instance_counts = instance_counts_;
    s.revision = [this]() -> absl::StatusOr<int64_t> {
      absl::MutexLock lock(&mu_);
      return revision_;
    };
    auto served = Server::Serve("127.0.0.1:0", "--http", std::move(s), options);
    ASSERT_TRUE(served.ok()) << served.status();
    server_ = *std::move(served);
    client_ = std::make_unique<httplib::Client>("127.0.0.1", server_->port());
    client_->set_read_timeout(10, 0);
  }
  void Change(const std::string& key) {
    absl::MutexLock lock(&mu_);
    changes_.emplace_back(++revision_, key);
  }
  void Compact() {
    absl::MutexLock lock(&mu_);
    floor_ = ++revision_;
  }
  nlohmann::json GetJson(const std::string& path, int want = 200) {
    auto r = client_->Get(path);
    EXPECT_TRUE(r) << path;
    if (!r) return {};
    EXPECT_EQ(r->status, want) << path << ": " << r->body;
    EXPECT_EQ(r->get_header_value("Content-Type"), "application/json") << path;
    return nlohmann::json::parse(r->body);
  }
  // Reads /api/watch until `until` is in what came, or 10 s.
  std::string Watch(const std::function<void()>& meanwhile, const std::string& until) {
    std::string got;
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(10, 0);
    std::thread feeder;
    bool fed = false;
    c.Get("/api/watch", [&](const char* data, size_t n) {
      got.append(data, n);
      if (!fed && got.find("event: hello") != std::string::npos) {
        fed = true;
        feeder = std::thread(meanwhile);
      }
      return got.find(until) == std::string::npos;
    });
    if (feeder.joinable()) feeder.join();
    return got;
  }

  absl::Mutex mu_;
  int64_t revision_ ABSL_GUARDED_BY(mu_) = 10;
  int64_t floor_ ABSL_GUARDED_BY(mu_) = 0;
  std::deque<std::pair<int64_t, std::string>> changes_ ABSL_GUARDED_BY(mu_);
  std::map<std::string, std::vector<v1::Object>> objects_;
  std::function<std::pair<std::map<std::string, int64_t>, std::map<std::string, int64_t>>()> instance_counts_;
  std::unique_ptr<Server> server_;
  std::unique_ptr<httplib::Client> client_;
};

TEST_F(ConsoleServerTest, ServesThePagesFromTheBinary) {
  auto index = client_->Get("/");
  ASSERT_TRUE(index);
  EXPECT_EQ(index->status, 200);
  EXPECT_THAT(index->get_header_value("Content-Type"), HasSubstr("text/html"));
  EXPECT_THAT(index->body, HasSubstr("<script src=\"/app.js\"></script>"));
  auto js = client_->Get("/app.js");
  ASSERT_TRUE(js);
  EXPECT_THAT(js->get_header_value("Content-Type"), HasSubstr("text/javascript"));
  EXPECT_THAT(js->body, HasSubstr("new EventSource('/api/watch')"));
  auto css = client_->Get("/style.css");
  ASSERT_TRUE(css);
  EXPECT_THAT(css->get_header_value("Content-Type"), HasSubstr("text/css"));
  nlohmann::json missing = GetJson("/nope", 404);
  EXPECT_EQ(missing["code"], "NOT_FOUND");
}

TEST_F(ConsoleServerTest, TheApiShowsObjectsAsManifestsDo) {
  nlohmann::json hosts = GetJson("/api/hosts");
  EXPECT_EQ(hosts["kind"], "Host");
  ASSERT_EQ(hosts["items"].size(), 2u);
  EXPECT_EQ(hosts["items"][0]["metadata"]["name"], "node-a");
  EXPECT_EQ(hosts["items"][0]["status"]["reachable"], true);
  EXPECT_EQ(hosts["items"][0]["status"]["pool"]["cpus"].size(), 6u);
  // A label selector keeps the hosts with every label given.
  nlohmann::json zone_b = GetJson("/api/hosts?label=zone%3Db");
  ASSERT_EQ(zone_b["items"].size(), 1u);
  EXPECT_EQ(zone_b["items"][0]["metadata"]["name"], "node-b");
  EXPECT_EQ(GetJson("/api/hosts?label=zone%3Db&label=zone%3Da")["items"].size(), 0u);
  nlohmann::json web = GetJson("/api/instances/web-1");
  EXPECT_EQ(web["status"]["phase"], "Running");
  EXPECT_EQ(web["spec"]["resources"]["memory"], "2Gi");  // a quantity, never "2147483648"
  nlohmann::json absent = GetJson("/api/instances/nope", 404);
  EXPECT_EQ(absent["error"], "KernelInstance/nope does not exist");
  // Filters applied before printing: the instances on a host, a set's members.
  EXPECT_EQ(GetJson("/api/instances?host=node-a")["items"].size(), 1u);
  EXPECT_EQ(GetJson("/api/instances?host=node-b")["items"].size(), 0u);
  EXPECT_EQ(GetJson("/api/instances?owner=InstanceSet/x")["items"].size(), 0u);
  // The fleet page's summary: numbers, not objects.
  nlohmann::json fleet = GetJson("/api/fleet");
  ASSERT_EQ(fleet["hosts"].size(), 2u);
  EXPECT_EQ(fleet["hosts"][0]["name"], "node-a");
  EXPECT_EQ(fleet["hosts"][0]["cpus"], 6);
  EXPECT_EQ(fleet["hosts"][0]["instances"], 1);
  EXPECT_EQ(fleet["hosts"][1]["instances"], 0);
  EXPECT_EQ(fleet["reachable"], 2);
  EXPECT_EQ(fleet["instances"], 1);
  EXPECT_EQ(fleet["phases"]["Running"], 1);
  EXPECT_EQ(GetJson("/api/fleet?label=zone%3Db")["hosts"].size(), 1u);
  // With the controller's counts, no instance is listed at all.
  Options options;
  instance_counts_ = [] {
    return std::make_pair(std::map<std::string, int64_t>{{"Running", 5}, {"Failed", 2}},
                          std::map<std::string, int64_t>{{"node-b", 7}});
  };
  Start(options);
  fleet = GetJson("/api/fleet");
  EXPECT_EQ(fleet["instances"], 7);
  EXPECT_EQ(fleet["phases"]["Failed"], 2);
  EXPECT_EQ(fleet["hosts"][1]["instances"], 7);
  EXPECT_EQ(fleet["hosts"][0]["instances"], 0);
  nlohmann::json events = GetJson("/api/events?kind=KernelInstance&name=web-1&limit=2");
  ASSERT_EQ(events["items"].size(), 2u);  // the newest two
  EXPECT_EQ(events["items"][1]["reason"], "StandbyTakeover");
}

TEST_F(ConsoleServerTest, HostPicturesAsSvgAndText) {
  auto svg = client_->Get("/api/hosts/node-a/topology.svg");
  ASSERT_TRUE(svg);
  EXPECT_EQ(svg->status, 200);
  EXPECT_EQ(svg->get_header_value("Content-Type"), "image/svg+xml");
  size_t pus = 0;
  for (size_t at = svg->body.find("<rect class=\"pu\""); at != std::string::npos;
       at = svg->body.find("<rect class=\"pu\"", at + 1)) {
    ++pus;
  }
  EXPECT_EQ(pus, 8u);
  EXPECT_THAT(svg->body, HasSubstr("data-cpu=\"2\" data-owner=\"web-1\""));
  auto text = client_->Get("/api/hosts/node-a/topology.txt");
  ASSERT_TRUE(text);
  EXPECT_THAT(text->body, HasSubstr("w web-1 (Running, 2 CPUs)"));
  nlohmann::json unavailable = GetJson("/api/hosts/node-b/topology.svg", 503);
  EXPECT_THAT(unavailable["error"].get<std::string>(), HasSubstr("has not reported its topology yet"));
  GetJson("/api/hosts/nope/topology.svg", 404);
}

TEST_F(ConsoleServerTest, TheWatchStreamSaysWhatChanged) {
  std::string got = Watch(
      [this] {
        Change("/status/KernelInstance/web-1");
        Change("/events/000042");
      },
      "Event");
  EXPECT_THAT(got, HasSubstr("event: hello\ndata: {\"revision\":10}\n\n"));
  EXPECT_THAT(got, HasSubstr("event: change\ndata: {\"revision\":1"));
  EXPECT_THAT(got, HasSubstr("\"KernelInstance/web-1\""));
  // Changes it can no longer list: the page is told to load everything again.
  got = Watch([this] { Compact(); }, "event: resync");
  EXPECT_THAT(got, HasSubstr("event: resync\ndata: {\"revision\":"));
}

TEST_F(ConsoleServerTest, StreamsAreLimitedAndEndWhenTheServerStops) {
  Options options;
  options.max_streams = 1;
  Start(options);
  std::atomic<bool> first_open{false};
  std::thread first([&] {
    httplib::Client c("127.0.0.1", server_->port());
    c.set_read_timeout(30, 0);
    c.Get("/api/watch", [&](const char*, size_t) {
      first_open = true;
      return true;
    });
  });
  for (int i = 0; i < 200 && !first_open; ++i) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  ASSERT_TRUE(first_open);
  nlohmann::json refused = GetJson("/api/watch", 503);
  EXPECT_EQ(refused["error"], "too many open event streams");
  // Stopping ends the open stream within a second or so, not at its client's timeout.
  const auto start = std::chrono::steady_clock::now();
  server_.reset();
  first.join();
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(5));
}

TEST(ConsoleServeTest, PlaintextOnLoopbackOnly) {
  auto wide = Server::Serve("0.0.0.0:0", "--http", Sources{});
  EXPECT_EQ(wide.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_THAT(wide.status().message(), HasSubstr("--http 0.0.0.0:0: the console is served in plaintext"));
  auto bad = Server::Serve("localhost", "--http", Sources{});
  EXPECT_THAT(bad.status().message(), HasSubstr("expected HOST:PORT"));
}

}  // namespace
}  // namespace mkfleet::console
