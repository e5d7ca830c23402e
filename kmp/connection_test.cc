#include "kmp/connection.h"

#include <sys/socket.h>
#include <unistd.h>

#include <filesystem>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "mkfleet/v1/kmp.pb.h"

namespace mkfleet::kmp {
namespace {

namespace v1 = mkfleet::v1;
using ::testing::HasSubstr;

std::pair<std::unique_ptr<Connection>, std::unique_ptr<Connection>> Pair() {
  int fds[2];
  EXPECT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  return {std::make_unique<Connection>(fds[0]), std::make_unique<Connection>(fds[1])};
}

TEST(KmpConnectionTest, CallIsAnsweredBySequence) {
  auto [agent, guest] = Pair();
  std::thread server([&g = guest] {
    auto req = g->Receive(absl::Seconds(5));
    ASSERT_TRUE(req.ok()) << req.status();
    EXPECT_EQ(req->type, static_cast<uint16_t>(MsgType::kHeartbeatReq));
    // An unrelated frame first (a health report), then the answer.
    v1::KmpHealth health;
    health.set_healthy(true);
    ASSERT_TRUE(g->Send(MsgType::kHealthStatus, health, 0).ok());
    v1::KmpHeartbeat hb;
    hb.set_instance_id(7);
    ASSERT_TRUE(g->Send(MsgType::kHeartbeatRsp, hb, req->sequence).ok());
  });
  auto rsp = agent->Call(MsgType::kHeartbeatReq, v1::KmpHeartbeat(), absl::Seconds(5));
  server.join();
  ASSERT_TRUE(rsp.ok()) << rsp.status();
  v1::KmpHeartbeat hb;
  ASSERT_TRUE(hb.ParseFromString(rsp->payload));
  EXPECT_EQ(hb.instance_id(), 7u);
  // The unrelated frame is still there for Receive.
  auto other = agent->Receive(absl::Seconds(1));
  ASSERT_TRUE(other.ok());
  EXPECT_EQ(other->type, static_cast<uint16_t>(MsgType::kHealthStatus));
}

TEST(KmpConnectionTest, ErrorsTimeoutsAndClosedPeers) {
  auto [agent, guest] = Pair();
  // No answer: DeadlineExceeded.
  auto slow = agent->Call(MsgType::kHeartbeatReq, v1::KmpHeartbeat(), absl::Milliseconds(50));
  EXPECT_EQ(slow.status().code(), absl::StatusCode::kDeadlineExceeded);
  // An ERROR answer: FailedPrecondition with the peer's reason.
  ASSERT_TRUE(guest->Receive(absl::Seconds(1)).ok());  // the heartbeat above
  std::thread server([&g = guest] {
    auto req = g->Receive(absl::Seconds(5));
    ASSERT_TRUE(req.ok());
    v1::KmpError e;
    e.set_reason("no morph in progress");
    ASSERT_TRUE(g->Send(MsgType::kError, e, req->sequence).ok());
  });
  auto refused = agent->Call(MsgType::kMorphCommit, v1::KmpMorphCommit(), absl::Seconds(5));
  server.join();
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(refused.status().message(), HasSubstr("MORPH_COMMIT refused: no morph in progress"));
  guest.reset();
  EXPECT_EQ(agent->Receive(absl::Seconds(1)).status().code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(agent->closed());
}

TEST(KmpConnectionTest, ABadFrameIsAnsweredWithErrorAndEndsTheConnection) {
  int fds[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
  Connection guest(fds[1]);
  std::string garbage(40, 'G');
  ASSERT_EQ(write(fds[0], garbage.data(), garbage.size()), static_cast<ssize_t>(garbage.size()));
  auto f = guest.Receive(absl::Seconds(1));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_TRUE(guest.closed());
  // The sender got an ERROR frame saying why.
  Connection sender(fds[0]);
  auto e = sender.Receive(absl::Seconds(1));
  ASSERT_TRUE(e.ok()) << e.status();
  EXPECT_EQ(e->type, static_cast<uint16_t>(MsgType::kError));
  v1::KmpError err;
  ASSERT_TRUE(err.ParseFromString(e->payload));
  EXPECT_THAT(err.reason(), HasSubstr("bad magic"));
}

TEST(KmpConnectionTest, UnixListenDialAccept) {
  std::string path = ::testing::TempDir() + "/kmp-" + std::to_string(getpid()) + ".sock";
  auto lfd = ListenUnix(path);
  ASSERT_TRUE(lfd.ok()) << lfd.status();
  auto client = DialUnix(path, absl::Seconds(2));
  ASSERT_TRUE(client.ok()) << client.status();
  auto server = Accept(*lfd, absl::Seconds(2));
  ASSERT_TRUE(server.ok()) << server.status();
  ASSERT_TRUE((*client)->Send(MsgType::kHeartbeatReq, v1::KmpHeartbeat(), 9).ok());
  auto got = (*server)->Receive(absl::Seconds(1));
  ASSERT_TRUE(got.ok());
  EXPECT_EQ(got->sequence, 9u);
  close(*lfd);
  std::filesystem::remove(path);
  EXPECT_EQ(DialUnix(path, absl::Milliseconds(100)).status().code(), absl::StatusCode::kUnavailable);
}

}  // namespace
}  // namespace mkfleet::kmp
