#include "common/metrics.h"

#include <future>
#include <string>

#include "common/grpc_server.h"
#include "common/testing/scrape.h"
#include "gmock/gmock.h"
#include "grpcpp/generic/generic_stub.h"
#include "gtest/gtest.h"

namespace mkfleet::metrics {
namespace {

using ::testing::HasSubstr;
using mkfleet::testing::HttpGet;
using mkfleet::testing::Promtool;

class Empty final : public grpc::Service {};

TEST(MetricsTest, ServesTheRegistryInPrometheusTextThatPromtoolAccepts) {
  auto endpoint = Endpoint::Serve("127.0.0.1:0", "--metrics-listen");
  ASSERT_TRUE(endpoint.ok()) << endpoint.status();
  ASSERT_GT((*endpoint)->port(), 0);
  EXPECT_TRUE(Enabled());
  auto& things = prometheus::BuildCounter()
                     .Name("mkfleet_test_things_total")
                     .Help("Things the test counted.")
                     .Register(Registry())
                     .Add({{"kind", "a"}});
  for (int i = 0; i < 3; ++i) things.Increment();
  auto& wait = prometheus::BuildHistogram()
                   .Name("mkfleet_test_wait_seconds")
                   .Help("How long the test waited.")
                   .Register(Registry())
                   .Add({}, LatencyBuckets());
  wait.Observe(0.003);

  // A server started after Serve records its requests (here: a health check).
  Empty service;
  int port = 0;
  auto server = StartGrpcServerOnPorts(service, "test", {{"127.0.0.1:0", grpc::InsecureServerCredentials(), &port}}, 4);
  ASSERT_NE(server, nullptr);
  grpc::GenericStub stub(grpc::CreateChannel("127.0.0.1:" + std::to_string(port), grpc::InsecureChannelCredentials()));
  for (int i = 0; i < 2; ++i) {
    grpc::ClientContext ctx;
    grpc::Slice empty("");  // an empty HealthCheckRequest: the server's overall health
    grpc::ByteBuffer request(&empty, 1), reply;
    std::promise<grpc::Status> done;
    stub.UnaryCall(&ctx, "/grpc.health.v1.Health/Check", grpc::StubOptions(), &request, &reply,
                   [&done](grpc::Status s) { done.set_value(s); });
    grpc::Status s = done.get_future().get();
    ASSERT_TRUE(s.ok()) << s.error_message();
  }
  server->Shutdown(std::chrono::system_clock::now());

  const std::string text = HttpGet((*endpoint)->port(), "/metrics");
  EXPECT_THAT(text, HasSubstr("# TYPE mkfleet_test_things_total counter"));
  EXPECT_THAT(text, HasSubstr("mkfleet_test_things_total{kind=\"a\"} 3"));
  EXPECT_THAT(text, HasSubstr("mkfleet_test_wait_seconds_count 1"));
  EXPECT_THAT(text, HasSubstr("mkfleet_test_wait_seconds_bucket{le=\"0.004\"} 1"));
  EXPECT_THAT(text, HasSubstr("mkfleet_test_wait_seconds_bucket{le=\"0.002\"} 0"));
  EXPECT_THAT(text, HasSubstr(
                        "mkfleet_grpc_server_handled_total{code=\"OK\",method=\"Check\",service=\"grpc.health.v1.Health\"} 2"));
  EXPECT_THAT(text, HasSubstr("mkfleet_grpc_server_handling_seconds_count{method=\"Check\",service=\"grpc.health.v1.Health\"} 2"));
  auto [rc, said] = Promtool(text, ::testing::TempDir());
  EXPECT_EQ(rc, 0) << said << "\n" << text;
}

TEST(MetricsTest, PlaintextIsRefusedOffLoopbackAndTheFlagNamed) {
  auto any = Endpoint::Serve("0.0.0.0:0", "--metrics-listen");
  ASSERT_FALSE(any.ok());
  EXPECT_THAT(any.status().message(), HasSubstr("--metrics-listen 0.0.0.0:0"));
  EXPECT_THAT(any.status().message(), HasSubstr("loopback"));
  auto bad = Endpoint::Serve("9464", "--metrics-listen");
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(bad.status().message(), HasSubstr("HOST:PORT"));
}

}  // namespace
}  // namespace mkfleet::metrics
