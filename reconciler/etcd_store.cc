#include "reconciler/etcd_store.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <mutex>
#include <thread>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "etcd/etcdserver/etcdserverpb/rpc.grpc.pb.h"
#include "grpcpp/grpcpp.h"

namespace mkfleet::reconciler {
namespace {

namespace pb = etcdserverpb;


std::chrono::system_clock::time_point Deadline(absl::Duration d) {
  return std::chrono::system_clock::now() + absl::ToChronoMilliseconds(d);
}

absl::StatusCode Code(grpc::StatusCode c) { return static_cast<absl::StatusCode>(c); }

class EtcdStore : public Store {
 public:
  explicit EtcdStore(EtcdStoreOptions options) : options_(std::move(options)) {
    grpc::ChannelArguments args;
    args.SetMaxReceiveMessageSize(-1);  // a replay of a large transaction is one message
    args.SetMaxSendMessageSize(-1);
    for (const std::string& e : options_.endpoints) {
      Endpoint ep;
      ep.url = e;
      ep.channel = grpc::CreateCustomChannel(e.substr(e.find("://") + 3), grpc::InsecureChannelCredentials(), args);
      ep.kv = pb::KV::NewStub(ep.channel);
      ep.watch = pb::Watch::NewStub(ep.channel);
      ep.lease = pb::Lease::NewStub(ep.channel);
      ep.maintenance = pb::Maintenance::NewStub(ep.channel);
      endpoints_.push_back(std::move(ep));
    }
  }

  ~EtcdStore() override {
    {
      std::lock_guard<std::mutex> lock(rev_mu_);
      stopping_ = true;
      if (follow_ctx_ != nullptr) follow_ctx_->TryCancel();
    }
    rev_cv_.notify_all();
    if (follower_.joinable()) follower_.join();
  }

  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) override {
    pb::RangeRequest req;
    req.set_key(options_.prefix + key);
    pb::RangeResponse resp;
    if (absl::Status s = Call(&pb::KV::Stub::Range, &Endpoint::kv, req, &resp); !s.ok()) return s;
    if (resp.kvs_size() == 0) return std::optional<KeyValue>();
    return std::optional<KeyValue>(FromPb(resp.kvs(0)));
  }

  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) override {
    // Pages of 2,000 keys, every page at the first page's revision (one consistent view).
    const std::string full = options_.prefix + prefix;
    const std::string end = PrefixEnd(full);
    std::string from = full.empty() ? std::string(1, '\0') : full;
    int64_t at = 0;
    std::vector<KeyValue> out;
    while (true) {
      pb::RangeRequest req;
      req.set_key(from);
      req.set_range_end(end);
      req.set_limit(2000);
      req.set_revision(at);
      pb::RangeResponse resp;
      if (absl::Status s = Call(&pb::KV::Stub::Range, &Endpoint::kv, req, &resp); !s.ok()) return s;
      if (at == 0) at = resp.header().revision();
      for (const auto& kv : resp.kvs()) out.push_back(FromPb(kv));
      if (!resp.more() || resp.kvs_size() == 0) break;
      from = resp.kvs(resp.kvs_size() - 1).key() + std::string(1, '\0');
    }
    return out;
  }

  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease) override {
    pb::PutRequest req;
    req.set_key(options_.prefix + key);
    req.set_value(value);
    req.set_lease(lease);
    pb::PutResponse resp;
    if (absl::Status s = Call(&pb::KV::Stub::Put, &Endpoint::kv, req, &resp); !s.ok()) return s;
    return resp.header().revision();
  }

  absl::StatusOr<int64_t> Delete(const std::string& key) override {
    pb::DeleteRangeRequest req;
    req.set_key(options_.prefix + key);
    pb::DeleteRangeResponse resp;
    if (absl::Status s = Call(&pb::KV::Stub::DeleteRange, &Endpoint::kv, req, &resp); !s.ok()) return s;
    if (resp.deleted() == 0) return absl::NotFoundError(absl::StrCat("store: no key ", key));
    return resp.header().revision();
  }

  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops_in) override {
    const std::vector<Op> ops = LastOpPerKey(ops_in);
    int64_t bytes = 0;
    for (const Op& op : ops) bytes += op.key.size() + options_.prefix.size() + op.value.size() + 16;
    const bool fits = static_cast<int>(ops.size()) <= options_.max_txn_ops &&
                      static_cast<int>(compares.size()) <= options_.max_txn_ops && bytes <= options_.max_txn_bytes;
    if (fits) return TxnOnce(compares, ops.begin(), ops.end());
    if (!compares.empty()) {
      return absl::InvalidArgumentError(absl::StrCat(
          "store: a transaction of ", ops.size(), " operations and ", compares.size(), " compares (", bytes,
          " bytes) is past this etcd store's limits (", options_.max_txn_ops, " operations, ",
          options_.max_txn_bytes, " bytes); start etcd with a larger --max-txn-ops and --max-request-bytes and "
          "mkcontroller with --etcd-max-txn-ops to match"));
    }
    // No compare: chunks, each atomic.
    int64_t rev = 0;
    auto begin = ops.begin();
    while (begin != ops.end()) {
      auto end = begin;
      int64_t chunk_bytes = 0;
      while (end != ops.end() && end - begin < options_.max_txn_ops) {
        int64_t b = end->key.size() + options_.prefix.size() + end->value.size() + 16;
        if (end != begin && chunk_bytes + b > options_.max_txn_bytes) break;
        chunk_bytes += b;
        ++end;
      }
      auto r = TxnOnce({}, begin, end);
      if (!r.ok()) return r.status();
      rev = *r;
      begin = end;
    }
    return rev;
  }

  absl::StatusOr<int64_t> Revision() override {
    pb::RangeRequest req;
    req.set_key(std::string(1, '\0'));
    req.set_count_only(true);
    req.set_limit(1);
    pb::RangeResponse resp;
    if (absl::Status s = Call(&pb::KV::Stub::Range, &Endpoint::kv, req, &resp); !s.ok()) return s;
    return resp.header().revision();
  }

  absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) override {
    auto current = Revision();
    if (!current.ok()) return current.status();
    std::vector<Event> out;
    if (*current <= after) return out;
    // The whole keyspace is watched (every revision has at least one event there, so the
    // replay is known complete once one at `current` shows); only this prefix is kept.
    const std::string full = options_.prefix + prefix;
    grpc::ClientContext ctx;
    ctx.set_deadline(Deadline(options_.call_timeout));
    Endpoint& ep = endpoints_[current_.load() % endpoints_.size()];
    auto stream = ep.watch->Watch(&ctx);
    pb::WatchRequest req;
    auto* create = req.mutable_create_request();
    create->set_key(std::string(1, '\0'));
    create->set_range_end(std::string(1, '\0'));
    create->set_start_revision(after + 1);
    if (!stream->Write(req)) return ToAbsl(stream->Finish(), ep);
    pb::WatchResponse resp;
    bool done = false;
    while (!done && stream->Read(&resp)) {
      if (resp.compact_revision() > 0 || resp.canceled()) {
        ctx.TryCancel();
        stream->Finish().IgnoreError();
        if (resp.compact_revision() > 0) {
          return absl::OutOfRangeError(absl::StrCat("store: history before revision ", resp.compact_revision(),
                                                    " was compacted; list again"));
        }
        return absl::UnavailableError(absl::StrCat("store: etcd ", ep.url, " cancelled the watch: ",
                                                   resp.cancel_reason()));
      }
      for (const auto& e : resp.events()) {
        if (e.kv().mod_revision() > *current) {
          done = true;
          break;
        }
        if (absl::StartsWith(e.kv().key(), full)) {
          Event ev;
          ev.type = e.type() == mvccpb::Event::DELETE ? Event::Type::kDelete : Event::Type::kPut;
          ev.revision = e.kv().mod_revision();
          ev.key = e.kv().key().substr(options_.prefix.size());
          if (ev.type == Event::Type::kPut) ev.value = e.kv().value();
          out.push_back(std::move(ev));
        }
        if (e.kv().mod_revision() == *current) done = true;
      }
    }
    ctx.TryCancel();
    grpc::Status s = stream->Finish();
    if (!done) {
      return absl::UnavailableError(absl::StrCat("store: etcd ", ep.url, ": the watch ended before revision ",
                                                 *current, ": ", s.error_message()));
    }
    return out;
  }

  absl::StatusOr<int64_t> WaitForRevision(int64_t after, absl::Duration timeout) override {
    std::unique_lock<std::mutex> lock(rev_mu_);
    if (latest_ > after) return latest_;
    if (!follower_.joinable()) {
      // The first wait: the present, then the follow keeps latest_ from there.
      lock.unlock();
      auto now = Revision();
      if (!now.ok()) return now.status();
      lock.lock();
      latest_ = std::max(latest_, *now);
      if (!follower_.joinable() && !stopping_) follower_ = std::thread([this] { Follow(); });
    }
    rev_cv_.wait_for(lock, absl::ToChronoMilliseconds(timeout), [&] { return latest_ > after || stopping_; });
    return latest_;
  }

  absl::Status Compact(int64_t revision) override {
    auto current = Revision();
    if (!current.ok()) return current.status();
    int64_t to = std::min(revision + 1, *current);
    if (to <= 1) return absl::OkStatus();
    pb::CompactionRequest req;
    req.set_revision(to);
    req.set_physical(true);  // returns once the space is free (SizeBytes shows it)
    pb::CompactionResponse resp;
    absl::Status s = Call(&pb::KV::Stub::Compact, &Endpoint::kv, req, &resp);
    if (!s.ok() && absl::StrContains(s.message(), "compacted")) return absl::OkStatus();  // already
    return s;
  }

  absl::StatusOr<int64_t> SizeBytes() override {
    pb::StatusRequest req;
    pb::StatusResponse resp;
    if (absl::Status s = Call(&pb::Maintenance::Stub::Status, &Endpoint::maintenance, req, &resp); !s.ok()) return s;
    return resp.dbsizeinuse() > 0 ? resp.dbsizeinuse() : resp.dbsize();
  }

  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    pb::LeaseGrantRequest req;
    req.set_ttl(std::max<int64_t>(1, absl::ToInt64Seconds(absl::Ceil(ttl, absl::Seconds(1)))));
    pb::LeaseGrantResponse resp;
    if (absl::Status s = Call(&pb::Lease::Stub::LeaseGrant, &Endpoint::lease, req, &resp); !s.ok()) return s;
    if (!resp.error().empty()) return absl::UnavailableError(absl::StrCat("store: lease grant: ", resp.error()));
    return resp.id();
  }

  absl::Status KeepAlive(int64_t lease) override {
    for (size_t tried = 0; tried < endpoints_.size(); ++tried) {
      size_t i = current_.load() % endpoints_.size();
      Endpoint& ep = endpoints_[i];
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(options_.call_timeout));
      auto stream = ep.lease->LeaseKeepAlive(&ctx);
      pb::LeaseKeepAliveRequest req;
      req.set_id(lease);
      pb::LeaseKeepAliveResponse resp;
      bool ok = stream->Write(req) && stream->Read(&resp);
      stream->WritesDone();
      ctx.TryCancel();
      grpc::Status s = stream->Finish();
      if (ok) {
        if (resp.ttl() <= 0) return absl::NotFoundError(absl::StrCat("store: lease ", lease, " expired or unknown"));
        return absl::OkStatus();
      }
      if (s.error_code() != grpc::StatusCode::UNAVAILABLE && s.error_code() != grpc::StatusCode::CANCELLED) {
        return ToAbsl(s, ep);
      }
      current_.compare_exchange_strong(i, i + 1);
    }
    return absl::UnavailableError("store: no etcd endpoint answered the lease keep-alive");
  }

  absl::Status RevokeLease(int64_t lease) override {
    pb::LeaseRevokeRequest req;
    req.set_id(lease);
    pb::LeaseRevokeResponse resp;
    return Call(&pb::Lease::Stub::LeaseRevoke, &Endpoint::lease, req, &resp);
  }

  absl::StatusOr<int> ExpireLeases() override { return 0; }  // etcd expires them itself

 private:
  struct Endpoint {
    std::string url;
    std::shared_ptr<grpc::Channel> channel;
    std::unique_ptr<pb::KV::Stub> kv;
    std::unique_ptr<pb::Watch::Stub> watch;
    std::unique_ptr<pb::Lease::Stub> lease;
    std::unique_ptr<pb::Maintenance::Stub> maintenance;
  };

  // A stored key as the store's callers see it (without the prefix).
  KeyValue FromPb(const mvccpb::KeyValue& kv) const {
    return {kv.key().substr(options_.prefix.size()), kv.value(), kv.create_revision(), kv.mod_revision(), kv.lease()};
  }

  absl::Status ToAbsl(const grpc::Status& s, const Endpoint& ep) const {
    std::string msg = s.error_message();
    if (absl::StartsWith(msg, "etcdserver: ")) msg = msg.substr(12);
    return absl::Status(Code(s.error_code()), absl::StrCat("store: etcd ", ep.url, ": ", msg));
  }

  // One unary call, on the current endpoint and then the others while they are unavailable.
  template <typename StubT, typename Req, typename Resp>
  absl::Status Call(grpc::Status (StubT::*method)(grpc::ClientContext*, const Req&, Resp*),
                    std::unique_ptr<StubT> Endpoint::*stub, const Req& req, Resp* resp) {
    grpc::Status last;
    for (size_t tried = 0; tried < endpoints_.size(); ++tried) {
      size_t i = current_.load() % endpoints_.size();
      Endpoint& ep = endpoints_[i];
      grpc::ClientContext ctx;
      ctx.set_deadline(Deadline(options_.call_timeout));
      last = ((*(ep.*stub)).*method)(&ctx, req, resp);
      if (last.ok()) return absl::OkStatus();
      if (last.error_code() != grpc::StatusCode::UNAVAILABLE) return ToAbsl(last, ep);
      current_.compare_exchange_strong(i, i + 1);  // the next endpoint, once per failure
    }
    return absl::UnavailableError(absl::StrCat("store: no etcd endpoint answered (", last.error_message(), ")"));
  }

  template <typename It>
  absl::StatusOr<int64_t> TxnOnce(const std::vector<Compare>& compares, It begin, It end) {
    pb::TxnRequest req;
    for (const Compare& c : compares) {
      auto* cmp = req.add_compare();
      cmp->set_result(pb::Compare::EQUAL);
      cmp->set_target(pb::Compare::MOD);
      cmp->set_key(options_.prefix + c.key);
      cmp->set_mod_revision(c.mod_revision);
      req.add_failure()->mutable_request_range()->set_key(options_.prefix + c.key);
    }
    for (It it = begin; it != end; ++it) {
      if (it->type == Op::Type::kPut) {
        auto* put = req.add_success()->mutable_request_put();
        put->set_key(options_.prefix + it->key);
        put->set_value(it->value);
        put->set_lease(it->lease);
      } else {
        req.add_success()->mutable_request_delete_range()->set_key(options_.prefix + it->key);
      }
    }
    pb::TxnResponse resp;
    absl::Status s = Call(&pb::KV::Stub::Txn, &Endpoint::kv, req, &resp);
    if (!s.ok()) {
      if (absl::StrContains(s.message(), "too many operations")) {
        return absl::InvalidArgumentError(absl::StrCat(s.message(), " (mkcontroller's --etcd-max-txn-ops is above "
                                                                    "etcd's --max-txn-ops; lower it or raise etcd's)"));
      }
      return s;
    }
    if (resp.succeeded()) return resp.header().revision();
    // Name the first compare that failed, from the failure branch's reads.
    for (size_t i = 0; i < compares.size() && i < static_cast<size_t>(resp.responses_size()); ++i) {
      const auto& range = resp.responses(i).response_range();
      int64_t have = range.kvs_size() > 0 ? range.kvs(0).mod_revision() : 0;
      if (have != compares[i].mod_revision) {
        return absl::AbortedError(absl::StrCat("store: ", compares[i].key, " is at revision ", have, ", expected ",
                                               compares[i].mod_revision));
      }
    }
    return absl::AbortedError("store: a compare failed");
  }

  // The background watch WaitForRevision follows: every revision of the cluster raises
  // latest_. Reconnects (from the newest revision) when the stream breaks.
  void Follow() {
    while (true) {
      auto ctx = std::make_shared<grpc::ClientContext>();
      int64_t from;
      {
        std::lock_guard<std::mutex> lock(rev_mu_);
        if (stopping_) return;
        follow_ctx_ = ctx;
        from = latest_ + 1;
      }
      Endpoint& ep = endpoints_[current_.load() % endpoints_.size()];
      auto stream = ep.watch->Watch(ctx.get());
      pb::WatchRequest req;
      auto* create = req.mutable_create_request();
      create->set_key(std::string(1, '\0'));
      create->set_range_end(std::string(1, '\0'));
      create->set_start_revision(from);
      pb::WatchResponse resp;
      if (stream->Write(req)) {
        while (stream->Read(&resp)) {
          if (resp.compact_revision() > 0 || resp.canceled()) break;
          int64_t rev = resp.header().revision();
          for (const auto& e : resp.events()) rev = std::max<int64_t>(rev, e.kv().mod_revision());
          {
            std::lock_guard<std::mutex> lock(rev_mu_);
            if (rev > latest_) latest_ = rev;
          }
          rev_cv_.notify_all();
        }
      }
      ctx->TryCancel();
      stream->Finish().IgnoreError();
      {
        std::unique_lock<std::mutex> lock(rev_mu_);
        follow_ctx_ = nullptr;
        if (stopping_) return;
        rev_cv_.wait_for(lock, std::chrono::milliseconds(200), [&] { return stopping_; });
        if (stopping_) return;
      }
      auto now = Revision();  // a compacted start: go on from the present
      if (now.ok()) {
        std::lock_guard<std::mutex> lock(rev_mu_);
        latest_ = std::max(latest_, *now);
      }
      rev_cv_.notify_all();
    }
  }

  const EtcdStoreOptions options_;
  std::vector<Endpoint> endpoints_;
  std::atomic<size_t> current_{0};

  std::mutex rev_mu_;
  std::condition_variable rev_cv_;
  int64_t latest_ = 0;
  bool stopping_ = false;
  std::shared_ptr<grpc::ClientContext> follow_ctx_;
  std::thread follower_;
};

}  // namespace

absl::StatusOr<std::vector<std::string>> ParseEtcdEndpoints(const std::string& spec) {
  if (!absl::StartsWith(spec, "etcd:")) {
    return absl::InvalidArgumentError(absl::StrCat("want etcd:http://HOST:PORT[,...], got \"", spec, "\""));
  }
  std::vector<std::string> out;
  for (absl::string_view e : absl::StrSplit(spec.substr(5), ',')) {
    std::string url(e);
    if (absl::StartsWith(url, "https://")) {
      return absl::InvalidArgumentError(absl::StrCat("\"", url, "\": https endpoints are not supported yet (http only)"));
    }
    if (!absl::StartsWith(url, "http://") || url.size() <= 7 || url.find(':', 7) == std::string::npos ||
        url.find('/', 7) != std::string::npos) {
      return absl::InvalidArgumentError(absl::StrCat("\"", url, "\": want http://HOST:PORT"));
    }
    out.push_back(url);
  }
  return out;
}

absl::StatusOr<std::unique_ptr<Store>> OpenEtcdStore(const EtcdStoreOptions& options) {
  if (options.endpoints.empty()) return absl::InvalidArgumentError("etcd store: no endpoint");
  if (options.max_txn_ops < 1) return absl::InvalidArgumentError("etcd store: max_txn_ops must be at least 1");
  auto store = std::make_unique<EtcdStore>(options);
  if (absl::Status s = store->Revision().status(); !s.ok()) return s;  // the cluster answers
  return std::unique_ptr<Store>(std::move(store));
}

}  // namespace mkfleet::reconciler
