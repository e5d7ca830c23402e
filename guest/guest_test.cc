#include "guest/guest.h"

#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <filesystem>
#include <fstream>
#include <thread>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace mkfleet::guest {
namespace {

namespace fs = std::filesystem;
namespace v1 = mkfleet::v1;
using kmp::MsgType;
using ::testing::HasSubstr;

class GuestTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = fs::path(::testing::TempDir()) / ("guest-" + std::to_string(getpid()));
    fs::remove_all(dir_);
    fs::create_directories(dir_ / "hooks");
  }
  void TearDown() override {
    agent_.reset();
    if (server_.joinable()) server_.join();
    fs::remove_all(dir_);
  }
  void Hook(const std::string& name, const std::string& script) {
    fs::path p = dir_ / "hooks" / name;
    std::ofstream(p) << "#!/bin/sh\n" << script << "\n";
    chmod(p.c_str(), 0755);
  }
  // Starts a guest of `id` serving one end of a socket pair; the test holds the other.
  void Start(uint32_t id, absl::Duration hook_timeout = absl::Seconds(5)) {
    int fds[2];
    ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds), 0);
    agent_ = std::make_unique<kmp::Connection>(fds[0]);
    guest_ = std::make_unique<Guest>(id, Hooks((dir_ / "hooks").string(), hook_timeout));
    server_ = std::thread([this, fd = fds[1]] {
      kmp::Connection c(fd);
      auto end = guest_->Serve(c);
      end_ = end.ok() ? *end : Guest::End::kClosed;
    });
  }
  template <typename M>
  absl::StatusOr<M> Call(MsgType type, const google::protobuf::MessageLite& req) {
    auto f = agent_->Call(type, req, absl::Seconds(5));
    if (!f.ok()) return f.status();
    M m;
    if (!m.ParseFromString(f->payload)) return absl::DataLossError("unparsable");
    return m;
  }
  v1::KmpMorphPrepare Prepare(v1::KmpMorphPrepare::Role role) {
    v1::KmpMorphPrepare p;
    p.set_morph_id("m1");
    p.set_role(role);
    return p;
  }

  fs::path dir_;
  std::unique_ptr<kmp::Connection> agent_;
  std::unique_ptr<Guest> guest_;
  std::thread server_;
  Guest::End end_ = Guest::End::kClosed;
};

TEST_F(GuestTest, AnswersHeartbeatsWithItsInstance) {
  Start(7);
  auto hb = Call<v1::KmpHeartbeat>(MsgType::kHeartbeatReq, v1::KmpHeartbeat());
  ASSERT_TRUE(hb.ok()) << hb.status();
  EXPECT_EQ(hb->instance_id(), 7u);
}

TEST_F(GuestTest, OldSideQuiescesCheckpointsInChunksAndEndsOnCommit) {
  Hook("quiesce", "echo quiesced > " + (dir_ / "q").string());
  // A state larger than one chunk.
  Hook("checkpoint", "head -c 2500000 /dev/zero | tr '\\000' s");
  Start(1);
  ASSERT_TRUE(Call<v1::KmpMorphPrepare>(MsgType::kMorphPrepare, Prepare(v1::KmpMorphPrepare::ROLE_OLD)).ok());
  auto n = Call<v1::KmpMorphNegotiate>(MsgType::kMorphNegotiate, v1::KmpMorphNegotiate());
  ASSERT_TRUE(n.ok()) << n.status();
  EXPECT_TRUE(n->quiesced());
  EXPECT_TRUE(fs::exists(dir_ / "q"));
  auto first = agent_->Call(MsgType::kMorphTransferState, v1::KmpStateChunk(), absl::Seconds(10));
  ASSERT_TRUE(first.ok()) << first.status();
  std::string state;
  v1::KmpStateChunk c;
  ASSERT_TRUE(c.ParseFromString(first->payload));
  state += c.data();
  while (c.more()) {
    auto next = agent_->Receive(absl::Seconds(5));
    ASSERT_TRUE(next.ok());
    ASSERT_TRUE(c.ParseFromString(next->payload));
    EXPECT_EQ(c.offset(), state.size());
    state += c.data();
  }
  EXPECT_EQ(state.size(), 2500000u);
  EXPECT_TRUE(state == std::string(2500000, 's')) << "the checkpoint's bytes, in order";
  ASSERT_TRUE(Call<v1::KmpMorphCommit>(MsgType::kMorphCommit, v1::KmpMorphCommit()).ok());
  server_.join();
  EXPECT_EQ(end_, Guest::End::kCommitted);
}

TEST_F(GuestTest, NewSideRestoresTheWholeStateThenValidates) {
  Hook("restore", "cat > " + (dir_ / "restored").string());
  Hook("validate", "test -s " + (dir_ / "restored").string());
  Start(2);
  // Out of turn: refused with a reason.
  auto early = agent_->Call(MsgType::kMorphValidate, v1::KmpMorphValidate(), absl::Seconds(5));
  EXPECT_THAT(early.status().message(), HasSubstr("no state restored"));
  ASSERT_TRUE(Call<v1::KmpMorphPrepare>(MsgType::kMorphPrepare, Prepare(v1::KmpMorphPrepare::ROLE_NEW)).ok());
  ASSERT_TRUE(Call<v1::KmpMorphNegotiate>(MsgType::kMorphNegotiate, v1::KmpMorphNegotiate()).ok());
  for (const auto& [off, data, more] :
       {std::tuple<uint64_t, std::string, bool>{0, "counter=", true}, {8, "41", false}}) {
    v1::KmpStateChunk c;
    c.set_morph_id("m1");
    c.set_offset(off);
    c.set_data(data);
    c.set_more(more);
    auto ack = Call<v1::KmpStateChunk>(MsgType::kMorphTransferState, c);
    ASSERT_TRUE(ack.ok()) << ack.status();
    EXPECT_EQ(ack->offset(), off + data.size());
  }
  std::ifstream in(dir_ / "restored");
  std::string restored((std::istreambuf_iterator<char>(in)), {});
  EXPECT_EQ(restored, "counter=41");
  auto v = Call<v1::KmpMorphValidate>(MsgType::kMorphValidate, v1::KmpMorphValidate());
  ASSERT_TRUE(v.ok());
  EXPECT_TRUE(v->ok()) << v->message();
  ASSERT_TRUE(Call<v1::KmpMorphCommit>(MsgType::kMorphCommit, v1::KmpMorphCommit()).ok());
  agent_.reset();
  server_.join();
  EXPECT_EQ(end_, Guest::End::kClosed) << "the new side keeps serving after the commit";
}

TEST_F(GuestTest, RollbackResumesAndFailingOrSlowHooksAreRefusals) {
  Hook("quiesce", "echo busy >&2; exit 3");
  Hook("resume", "echo resumed > " + (dir_ / "r").string());
  Start(3, absl::Milliseconds(500));
  ASSERT_TRUE(Call<v1::KmpMorphPrepare>(MsgType::kMorphPrepare, Prepare(v1::KmpMorphPrepare::ROLE_OLD)).ok());
  auto n = agent_->Call(MsgType::kMorphNegotiate, v1::KmpMorphNegotiate(), absl::Seconds(5));
  EXPECT_EQ(n.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_THAT(n.status().message(), HasSubstr("hook quiesce exited 3: busy"));
  Hook("quiesce", "sleep 5");
  auto slow = agent_->Call(MsgType::kMorphNegotiate, v1::KmpMorphNegotiate(), absl::Seconds(5));
  EXPECT_THAT(slow.status().message(), HasSubstr("hook quiesce ran past"));
  Hook("quiesce", "true");
  ASSERT_TRUE(Call<v1::KmpMorphNegotiate>(MsgType::kMorphNegotiate, v1::KmpMorphNegotiate()).ok());
  ASSERT_TRUE(Call<v1::KmpMorphRollback>(MsgType::kMorphRollback, v1::KmpMorphRollback()).ok());
  EXPECT_TRUE(fs::exists(dir_ / "r"));
  auto again = agent_->Call(MsgType::kMorphCommit, v1::KmpMorphCommit(), absl::Seconds(5));
  EXPECT_THAT(again.status().message(), HasSubstr("no morph in progress"));
  // An unknown message type is refused, and the guest keeps serving.
  kmp::Frame odd;
  odd.type = 77;
  odd.sequence = 99;
  ASSERT_TRUE(agent_->SendFrame(odd).ok());
  auto e = agent_->Receive(absl::Seconds(5));
  ASSERT_TRUE(e.ok());
  EXPECT_EQ(e->type, static_cast<uint16_t>(MsgType::kError));
  EXPECT_TRUE(Call<v1::KmpHeartbeat>(MsgType::kHeartbeatReq, v1::KmpHeartbeat()).ok());
}

}  // namespace
}  // namespace mkfleet::guest
