#include "guest/guest.h"

#include "absl/strings/str_cat.h"

namespace mkfleet::guest {
namespace {

namespace v1 = mkfleet::v1;
using kmp::MsgType;

template <typename M>
bool Parse(const kmp::Frame& f, M* m) {
  return m->ParseFromString(f.payload);
}

}  // namespace

absl::Status Guest::Refuse(kmp::Connection& conn, const kmp::Frame& f, const std::string& reason) {
  v1::KmpError e;
  e.set_reason(reason);
  return conn.Send(MsgType::kError, e, f.sequence);
}

absl::StatusOr<Guest::End> Guest::Serve(kmp::Connection& conn) {
  while (true) {
    auto f = conn.Receive(absl::Hours(24));
    if (!f.ok()) {
      if (absl::IsDeadlineExceeded(f.status())) continue;
      if (absl::IsUnavailable(f.status())) return End::kClosed;
      return f.status();
    }
    bool committed = false;
    if (absl::Status s = Handle(conn, *f, &committed); !s.ok()) return s;
    if (committed) return End::kCommitted;
  }
}

absl::Status Guest::Handle(kmp::Connection& conn, const kmp::Frame& f, bool* committed) {
  switch (static_cast<MsgType>(f.type)) {
    case MsgType::kHeartbeatReq: {
      v1::KmpHeartbeat hb;
      hb.set_instance_id(instance_id_);
      return conn.Send(MsgType::kHeartbeatRsp, hb, f.sequence);
    }
    case MsgType::kMorphPrepare: {
      v1::KmpMorphPrepare p;
      if (!Parse(f, &p) || p.morph_id().empty() || p.role() == v1::KmpMorphPrepare::ROLE_UNSPECIFIED) {
        return Refuse(conn, f, "MORPH_PREPARE: a morph id and a role are required");
      }
      absl::MutexLock lock(&mu_);
      if (!morph_id_.empty() && morph_id_ != p.morph_id()) {
        return Refuse(conn, f, absl::StrCat("MORPH_PREPARE: morph ", morph_id_, " is in progress"));
      }
      morph_id_ = p.morph_id();
      role_ = p.role();
      return conn.Send(MsgType::kMorphPrepare, p, f.sequence);
    }
    case MsgType::kMorphNegotiate: {
      absl::MutexLock lock(&mu_);
      if (morph_id_.empty()) return Refuse(conn, f, "MORPH_NEGOTIATE: no morph in progress");
      v1::KmpMorphNegotiate n;
      n.set_protocol(1);
      if (role_ == v1::KmpMorphPrepare::ROLE_OLD) {
        auto q = hooks_.Run("quiesce");
        if (!q.ok()) return Refuse(conn, f, std::string(q.status().message()));
        n.set_quiesced(true);
      }
      negotiated_ = true;
      return conn.Send(MsgType::kMorphNegotiate, n, f.sequence);
    }
    case MsgType::kMorphTransferState: {
      v1::KmpStateChunk in;
      if (!Parse(f, &in)) return Refuse(conn, f, "MORPH_TRANSFER_STATE: unreadable payload");
      absl::MutexLock lock(&mu_);
      if (morph_id_.empty() || !negotiated_) return Refuse(conn, f, "MORPH_TRANSFER_STATE: not negotiated");
      if (role_ == v1::KmpMorphPrepare::ROLE_OLD) {
        // Asked for the state: the checkpoint hook's output, in chunks, all answering this request.
        auto state = hooks_.Run("checkpoint");
        if (!state.ok()) return Refuse(conn, f, std::string(state.status().message()));
        size_t off = 0;
        do {
          v1::KmpStateChunk c;
          c.set_morph_id(morph_id_);
          c.set_offset(off);
          size_t n = std::min(kStateChunk, state->size() - off);
          c.set_data(state->substr(off, n));
          off += n;
          c.set_more(off < state->size());
          if (absl::Status s = conn.Send(MsgType::kMorphTransferState, c, f.sequence); !s.ok()) return s;
        } while (off < state->size());
        return absl::OkStatus();
      }
      // The new side: chunks in order; the whole state restored after the last.
      if (in.offset() != state_.size()) {
        return Refuse(conn, f, absl::StrCat("MORPH_TRANSFER_STATE: chunk at ", in.offset(), ", expected ", state_.size()));
      }
      state_ += in.data();
      if (!in.more()) {
        auto r = hooks_.Run("restore", state_);
        if (!r.ok()) return Refuse(conn, f, std::string(r.status().message()));
        restored_ = true;
      }
      v1::KmpStateChunk ack;
      ack.set_morph_id(morph_id_);
      ack.set_offset(state_.size());
      ack.set_more(in.more());
      return conn.Send(MsgType::kMorphTransferState, ack, f.sequence);
    }
    case MsgType::kMorphValidate: {
      absl::MutexLock lock(&mu_);
      if (role_ != v1::KmpMorphPrepare::ROLE_NEW || !restored_) {
        return Refuse(conn, f, "MORPH_VALIDATE: no state restored here");
      }
      v1::KmpMorphValidate v;
      auto r = hooks_.Run("validate");
      v.set_ok(r.ok());
      if (!r.ok()) v.set_message(std::string(r.status().message()));
      return conn.Send(MsgType::kMorphValidate, v, f.sequence);
    }
    case MsgType::kMorphCommit: {
      absl::MutexLock lock(&mu_);
      if (morph_id_.empty()) return Refuse(conn, f, "MORPH_COMMIT: no morph in progress");
      v1::KmpMorphCommit c;
      c.set_morph_id(morph_id_);
      if (role_ == v1::KmpMorphPrepare::ROLE_NEW) {
        // The devices are ours now: the `commit` hook starts serving (before the
        // acknowledgement, which ends the handover gap).
        auto h = hooks_.Run("commit");
        if (!h.ok()) return Refuse(conn, f, std::string(h.status().message()));
      }
      absl::Status s = conn.Send(MsgType::kMorphCommit, c, f.sequence);
      *committed = role_ == v1::KmpMorphPrepare::ROLE_OLD;
      morph_id_.clear();
      role_ = v1::KmpMorphPrepare::ROLE_UNSPECIFIED;
      negotiated_ = restored_ = false;
      state_.clear();
      return s;
    }
    case MsgType::kMorphRollback: {
      absl::MutexLock lock(&mu_);
      if (morph_id_.empty()) return Refuse(conn, f, "MORPH_ROLLBACK: no morph in progress");
      v1::KmpMorphRollback rb;
      rb.set_morph_id(morph_id_);
      absl::Status hook = absl::OkStatus();
      if (role_ == v1::KmpMorphPrepare::ROLE_OLD && negotiated_) hook = hooks_.Run("resume").status();
      morph_id_.clear();
      role_ = v1::KmpMorphPrepare::ROLE_UNSPECIFIED;
      negotiated_ = restored_ = false;
      state_.clear();
      if (!hook.ok()) return Refuse(conn, f, std::string(hook.message()));
      return conn.Send(MsgType::kMorphRollback, rb, f.sequence);
    }
    default:
      return Refuse(conn, f, absl::StrCat("unexpected ", kmp::MsgTypeName(f.type)));
  }
}

}  // namespace mkfleet::guest
