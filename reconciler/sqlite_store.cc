#include <sqlite3.h>
#include <sys/stat.h>

#include <atomic>

#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "reconciler/store.h"

namespace mkfleet::reconciler {
namespace {

// History rows are (revision, position in the transaction): a transaction may hold any
// number of changes. Schema 1 numbered them revision * 65536 + position (at most 65,536
// changes a transaction); it is migrated on open.
constexpr char kSchema[] = R"sql(
CREATE TABLE IF NOT EXISTS kv (key TEXT PRIMARY KEY, value BLOB NOT NULL, create_rev INTEGER NOT NULL,
                               mod_rev INTEGER NOT NULL, lease INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS leases (id INTEGER PRIMARY KEY AUTOINCREMENT, ttl_ms INTEGER NOT NULL, expires_ms INTEGER NOT NULL);
INSERT OR IGNORE INTO meta VALUES ('revision', 0), ('compacted', 0);
)sql";

// A history row's top-level folder ("/objects/" for "/objects/Host/a"; TopFolder below is
// the same for a prefix). The index and the queries that use it must spell it alike.
#define MKFLEET_TOP_FOLDER "substr(key, 1, instr(substr(key, 2), '/') + 1)"

constexpr char kHistory[] = R"sql(
CREATE TABLE IF NOT EXISTS history2 (rev INTEGER NOT NULL, pos INTEGER NOT NULL, key TEXT NOT NULL, value BLOB,
                                     deleted INTEGER NOT NULL, PRIMARY KEY (rev, pos)) WITHOUT ROWID;
DROP INDEX IF EXISTS history2_key;
CREATE INDEX IF NOT EXISTS history2_top ON history2 ()sql" MKFLEET_TOP_FOLDER R"sql(, rev, pos);
)sql";

constexpr char kMigrateV1[] = R"sql(
INSERT INTO history2 (rev, pos, key, value, deleted) SELECT rev >> 16, rev & 65535, key, value, deleted FROM history;
DROP TABLE history;
)sql";

// One prepared statement, reset on destruction.
class Stmt {
 public:
  Stmt(sqlite3* db, const char* sql) { rc_ = sqlite3_prepare_v2(db, sql, -1, &s_, nullptr); }
  ~Stmt() { sqlite3_finalize(s_); }
  bool ok() const { return rc_ == SQLITE_OK; }
  Stmt& Bind(int i, int64_t v) {
    sqlite3_bind_int64(s_, i, v);
    return *this;
  }
  // Keys are TEXT (so they compare and prefix-match as text); values are BLOBs.
  Stmt& Bind(int i, const std::string& v) {
    sqlite3_bind_text(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& BindBlob(int i, const std::string& v) {
    sqlite3_bind_blob(s_, i, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  int Step() { return sqlite3_step(s_); }
  int64_t Steps() const { return sqlite3_stmt_status(s_, SQLITE_STMTSTATUS_VM_STEP, 0); }
  // Ready to bind and step again.
  void Reset() {
    sqlite3_reset(s_);
    sqlite3_clear_bindings(s_);
  }
  int64_t Int(int col) { return sqlite3_column_int64(s_, col); }
  std::string Blob(int col) {
    const void* p = sqlite3_column_blob(s_, col);
    return p == nullptr ? "" : std::string(static_cast<const char*>(p), sqlite3_column_bytes(s_, col));
  }

 private:
  sqlite3_stmt* s_ = nullptr;
  int rc_;
};

thread_local int64_t last_read_steps = 0;

// The top-level folder of the keys under `prefix` ("/objects/" for "/objects/Host/"), as
// the history index computes it from each key; empty when keys under `prefix` may have
// different ones ("/", "/objects").
std::string TopFolder(const std::string& prefix) {
  if (prefix.empty() || prefix[0] != '/') return "";
  size_t second = prefix.find('/', 1);
  return second == std::string::npos ? "" : prefix.substr(0, second + 1);
}

class SqliteStore final : public Store {
 public:
  SqliteStore(sqlite3* db, Clock& clock) : db_(db), clock_(clock) {}
  ~SqliteStore() override { sqlite3_close(db_); }

  absl::StatusOr<std::optional<KeyValue>> Get(const std::string& key) override {
    absl::MutexLock lock(&mu_);
    return GetLocked(key);
  }

  absl::StatusOr<std::vector<KeyValue>> List(const std::string& prefix) override {
    absl::MutexLock lock(&mu_);
    // Through the key index from the prefix to its end (the rows after it, e.g. a fleet's
    // statuses after its objects, are not visited); a prefix of 0xff bytes has no end.
    const std::string end = PrefixEnd(prefix);
    const bool bounded = end != std::string(1, '\0');
    const std::string sql = absl::StrCat("SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key >= ?1 ",
                                         bounded ? "AND key < ?3 " : "", "AND substr(key, 1, ?2) = ?1 ORDER BY key");
    Stmt s(db_, sql.c_str());
    s.Bind(1, prefix).Bind(2, static_cast<int64_t>(prefix.size()));
    if (bounded) s.Bind(3, end);
    std::vector<KeyValue> out;
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) out.push_back({s.Blob(0), s.Blob(1), s.Int(2), s.Int(3), s.Int(4)});
    last_read_steps = s.Steps();
    if (rc != SQLITE_DONE) return Error("list");
    return out;
  }

  absl::StatusOr<int64_t> Put(const std::string& key, const std::string& value, int64_t lease) override {
    return Txn({}, {{Op::Type::kPut, key, value, lease}});
  }

  absl::StatusOr<int64_t> Delete(const std::string& key) override {
    {
      absl::MutexLock lock(&mu_);
      auto kv = GetLocked(key);
      if (!kv.ok()) return kv.status();
      if (!kv->has_value()) return absl::NotFoundError(absl::StrCat("store: no key ", key));
    }
    return Txn({}, {{Op::Type::kDelete, key, "", 0}});
  }

  absl::StatusOr<int64_t> Txn(const std::vector<Compare>& compares, const std::vector<Op>& ops_in) override {
    const std::vector<Op> ops = LastOpPerKey(ops_in);
    absl::MutexLock lock(&mu_);
    if (!Exec("BEGIN IMMEDIATE")) return Error("begin");
    auto rollback = [&](absl::Status s) {
      Exec("ROLLBACK");
      return s;
    };
    for (const Compare& c : compares) {
      auto kv = GetLocked(c.key);
      if (!kv.ok()) return rollback(kv.status());
      int64_t have = kv->has_value() ? (*kv)->mod_revision : 0;
      if (have != c.mod_revision) {
        return rollback(absl::AbortedError(absl::StrCat("store: ", c.key, " is at revision ", have, ", expected ",
                                                        c.mod_revision)));
      }
    }
    auto rev = RevisionLocked();
    if (!rev.ok()) return rollback(rev.status());
    if (ops.empty()) {  // nothing written: no new revision (as etcd)
      Exec("ROLLBACK");
      return *rev;
    }
    int64_t next = *rev + 1;
    Stmt put(db_, "INSERT INTO kv (key, value, create_rev, mod_rev, lease) VALUES (?1, ?2, ?3, ?3, ?4) "
                  "ON CONFLICT(key) DO UPDATE SET value = ?2, mod_rev = ?3, lease = ?4");
    Stmt del(db_, "DELETE FROM kv WHERE key = ?1");
    // History: one row per op, ordered by (revision, position in the transaction).
    Stmt hist(db_, "INSERT INTO history2 (rev, pos, key, value, deleted) VALUES (?1, ?2, ?3, ?4, ?5)");
    if (!put.ok() || !del.ok() || !hist.ok()) return rollback(Error("prepare"));
    for (size_t i = 0; i < ops.size(); ++i) {
      const Op& op = ops[i];
      Stmt& s = op.type == Op::Type::kPut ? put : del;
      s.Reset();
      if (op.type == Op::Type::kPut) {
        s.Bind(1, op.key).BindBlob(2, op.value).Bind(3, next).Bind(4, op.lease);
      } else {
        s.Bind(1, op.key);
      }
      if (s.Step() != SQLITE_DONE) return rollback(Error(op.type == Op::Type::kPut ? "put" : "delete"));
      if (op.type == Op::Type::kDelete && sqlite3_changes(db_) == 0) continue;  // absent: no event (as etcd)
      hist.Reset();
      hist.Bind(1, next).Bind(2, static_cast<int64_t>(i)).Bind(3, op.key).BindBlob(4, op.value);
      hist.Bind(5, op.type == Op::Type::kDelete ? 1 : 0);
      if (hist.Step() != SQLITE_DONE) return rollback(Error("history"));
    }
    Stmt m(db_, "UPDATE meta SET value = ?1 WHERE name = 'revision'");
    m.Bind(1, next);
    if (m.Step() != SQLITE_DONE) return rollback(Error("revision"));
    if (!Exec("COMMIT")) return rollback(Error("commit"));
    revision_.store(next, std::memory_order_release);
    return next;
  }

  // (After any transaction in progress: what a read after it sees is at least this.)
  absl::StatusOr<int64_t> Revision() override {
    absl::MutexLock lock(&mu_);
    return RevisionLocked();
  }

  absl::StatusOr<std::vector<Event>> EventsSince(int64_t after, const std::string& prefix) override {
    absl::MutexLock lock(&mu_);
    Stmt c(db_, "SELECT value FROM meta WHERE name = 'compacted'");
    if (c.Step() != SQLITE_ROW) return Error("compacted");
    int64_t compacted = c.Int(0);
    if (after < compacted) {
      return absl::OutOfRangeError(absl::StrCat("store: history before revision ", compacted + 1,
                                                " was compacted; list again"));
    }
    // Through the index of (top-level folder, revision): the rows of the prefix's folder
    // since `after`, not every row since then (most are the controller's statuses) nor the
    // prefix's whole history in the window (a fleet's objects, when polling what changed).
    // A prefix without a top-level folder ("/", "/objects") reads every row since `after`.
    const std::string top = TopFolder(prefix);
    Stmt s(db_, !top.empty() ? "SELECT rev, key, value, deleted FROM history2 INDEXED BY history2_top "
                               "WHERE " MKFLEET_TOP_FOLDER " = ?4 AND rev > ?1 "
                               "AND substr(key, 1, ?2) = ?3 ORDER BY rev, pos"
                             : "SELECT rev, key, value, deleted FROM history2 WHERE rev > ?1 AND substr(key, 1, ?2) = ?3 "
                               "ORDER BY rev, pos");
    s.Bind(1, after).Bind(2, static_cast<int64_t>(prefix.size())).Bind(3, prefix);
    if (!top.empty()) s.Bind(4, top);
    std::vector<Event> out;
    int rc;
    while ((rc = s.Step()) == SQLITE_ROW) {
      Event e;
      e.revision = s.Int(0);
      e.key = s.Blob(1);
      e.type = s.Int(3) ? Event::Type::kDelete : Event::Type::kPut;
      if (e.type == Event::Type::kPut) e.value = s.Blob(2);
      out.push_back(std::move(e));
    }
    last_read_steps = s.Steps();
    if (rc != SQLITE_DONE) return Error("history");
    return out;
  }

  absl::StatusOr<int64_t> WaitForRevision(int64_t after, absl::Duration timeout) override {
    absl::Duration deadline = clock_.Monotonic() + timeout;
    // Polled from memory: the file is this process's alone (mkcontroller holds its lock),
    // so the last commit's revision is the file's. (Three waiters polling the file every 5
    // ms cost 2.5 % of a 10,000-host controller's CPU.)
    while (true) {
      const int64_t committed = revision_.load(std::memory_order_acquire);
      if (committed < 0 || committed > after || clock_.Monotonic() >= deadline) return Revision();
      clock_.SleepFor(absl::Milliseconds(5));
    }
  }

  absl::Status Compact(int64_t revision) override {
    absl::MutexLock lock(&mu_);
    if (!Exec("BEGIN IMMEDIATE")) return Error("compact");
    Stmt d(db_, "DELETE FROM history2 WHERE rev <= ?1");
    d.Bind(1, revision);
    Stmt m(db_, "UPDATE meta SET value = max(value, ?1) WHERE name = 'compacted'");
    m.Bind(1, revision);
    if (d.Step() != SQLITE_DONE || m.Step() != SQLITE_DONE) {
      absl::Status s = Error("compact");
      Exec("ROLLBACK");
      return s;
    }
    if (!Exec("COMMIT")) return Error("compact");
    // Free pages go back to the file system, and the write-ahead log is folded in and
    // truncated, so the file follows the live data.
    if (!Exec("PRAGMA incremental_vacuum")) return Error("vacuum");
    sqlite3_wal_checkpoint_v2(db_, nullptr, SQLITE_CHECKPOINT_TRUNCATE, nullptr, nullptr);
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> SizeBytes() override {
    absl::MutexLock lock(&mu_);
    Stmt count(db_, "PRAGMA page_count");
    Stmt size(db_, "PRAGMA page_size");
    if (count.Step() != SQLITE_ROW || size.Step() != SQLITE_ROW) return Error("size");
    int64_t bytes = count.Int(0) * size.Int(0);
    const char* file = sqlite3_db_filename(db_, "main");
    struct stat st;
    if (file != nullptr && *file != '\0' && stat((std::string(file) + "-wal").c_str(), &st) == 0) bytes += st.st_size;
    return bytes;
  }

  // Creates the history table, migrating the first format's.
  absl::Status Migrate() {
    absl::MutexLock lock(&mu_);
    if (!Exec(kHistory)) return Error("schema");
    bool v1 = false;
    {
      Stmt old(db_, "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'history'");
      v1 = old.Step() == SQLITE_ROW;
    }
    if (v1) {
      if (!Exec("BEGIN IMMEDIATE")) return Error("migrate");
      if (!Exec(kMigrateV1)) {
        absl::Status s = Error("migrate history");
        Exec("ROLLBACK");
        return s;
      }
      if (!Exec("COMMIT")) return Error("migrate");
    }
    return absl::OkStatus();
  }

  absl::StatusOr<int64_t> GrantLease(absl::Duration ttl) override {
    absl::MutexLock lock(&mu_);
    Stmt s(db_, "INSERT INTO leases (ttl_ms, expires_ms) VALUES (?1, ?2)");
    s.Bind(1, absl::ToInt64Milliseconds(ttl)).Bind(2, NowMs() + absl::ToInt64Milliseconds(ttl));
    if (s.Step() != SQLITE_DONE) return Error("lease");
    return sqlite3_last_insert_rowid(db_);
  }

  absl::Status KeepAlive(int64_t lease) override {
    absl::MutexLock lock(&mu_);
    Stmt s(db_, "UPDATE leases SET expires_ms = ?2 + ttl_ms WHERE id = ?1 AND expires_ms > ?2");
    s.Bind(1, lease).Bind(2, NowMs());
    if (s.Step() != SQLITE_DONE) return Error("keepalive");
    if (sqlite3_changes(db_) == 0) return absl::NotFoundError(absl::StrCat("store: lease ", lease, " expired or unknown"));
    return absl::OkStatus();
  }

  absl::StatusOr<int> ExpireLeases() override {
    std::vector<int64_t> expired;
    {
      absl::MutexLock lock(&mu_);
      Stmt s(db_, "SELECT id FROM leases WHERE expires_ms <= ?1");
      s.Bind(1, NowMs());
      while (s.Step() == SQLITE_ROW) expired.push_back(s.Int(0));
    }
    for (int64_t lease : expired) {
      if (absl::Status s = RevokeLease(lease); !s.ok() && s.code() != absl::StatusCode::kNotFound) return s;
    }
    return static_cast<int>(expired.size());
  }

  absl::Status RevokeLease(int64_t lease) override {
    {
      std::vector<Op> ops;
      {
        absl::MutexLock lock(&mu_);
        Stmt s(db_, "SELECT key FROM kv WHERE lease = ?1");
        s.Bind(1, lease);
        while (s.Step() == SQLITE_ROW) ops.push_back({Op::Type::kDelete, s.Blob(0), "", 0});
        Stmt d(db_, "DELETE FROM leases WHERE id = ?1");
        d.Bind(1, lease);
        if (d.Step() != SQLITE_DONE) return Error("revoke");
        if (sqlite3_changes(db_) == 0) {
          return absl::NotFoundError(absl::StrCat("store: lease ", lease, " expired or unknown"));
        }
      }
      if (!ops.empty()) {
        auto r = Txn({}, ops);
        if (!r.ok()) return r.status();
      }
    }
    return absl::OkStatus();
  }

  bool Exec(const char* sql) { return sqlite3_exec(db_, sql, nullptr, nullptr, nullptr) == SQLITE_OK; }

 private:
  int64_t NowMs() { return absl::ToUnixMillis(clock_.Now()); }

  absl::Status Error(const char* what) {
    return absl::InternalError(absl::StrCat("store: ", what, ": ", sqlite3_errmsg(db_)));
  }

  absl::StatusOr<std::optional<KeyValue>> GetLocked(const std::string& key) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt s(db_, "SELECT key, value, create_rev, mod_rev, lease FROM kv WHERE key = ?1");
    s.Bind(1, key);
    int rc = s.Step();
    if (rc == SQLITE_DONE) return std::optional<KeyValue>();
    if (rc != SQLITE_ROW) return Error("get");
    return std::optional<KeyValue>(KeyValue{s.Blob(0), s.Blob(1), s.Int(2), s.Int(3), s.Int(4)});
  }

  absl::StatusOr<int64_t> RevisionLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    Stmt s(db_, "SELECT value FROM meta WHERE name = 'revision'");
    if (s.Step() != SQLITE_ROW) return Error("revision");
    revision_.store(s.Int(0), std::memory_order_release);
    return s.Int(0);
  }

  sqlite3* db_;
  Clock& clock_;
  absl::Mutex mu_;
  std::atomic<int64_t> revision_{-1};  // the last committed revision (WaitForRevision); -1 until read
};

}  // namespace

absl::StatusOr<std::unique_ptr<Store>> OpenSqliteStore(const std::string& path, Clock& clock) {
  sqlite3* db = nullptr;
  if (sqlite3_open_v2(path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_FULLMUTEX, nullptr) !=
      SQLITE_OK) {
    std::string msg = db != nullptr ? sqlite3_errmsg(db) : "out of memory";
    sqlite3_close(db);
    return absl::UnavailableError(absl::StrCat("store ", path, ": ", msg));
  }
  auto store = std::make_unique<SqliteStore>(db, clock);
  sqlite3_busy_timeout(db, 5000);
  // A damaged file is refused, never written over (PRAGMA quick_check: every page and
  // b-tree, without the slower index cross-checks).
  {
    Stmt check(db, "PRAGMA quick_check");
    int rc = check.Step();
    std::string verdict = rc == SQLITE_ROW ? check.Blob(0) : sqlite3_errmsg(db);
    if (verdict != "ok") {
      return absl::DataLossError(absl::StrCat("store ", path, " is damaged (", verdict.substr(0, 200),
                                              "); restore it from a backup, or move it away to start a new one"));
    }
  }
  // auto_vacuum takes effect on a new file; an existing one without it is vacuumed once.
  bool fresh = false;
  {
    Stmt tables(db, "SELECT count(*) FROM sqlite_master");
    fresh = tables.Step() == SQLITE_ROW && tables.Int(0) == 0;
  }
  bool incremental = false;
  if (!fresh) {
    Stmt mode(db, "PRAGMA auto_vacuum");
    incremental = mode.Step() == SQLITE_ROW && mode.Int(0) == 2;
  }
  if (!store->Exec("PRAGMA auto_vacuum=INCREMENTAL") || (!fresh && !incremental && !store->Exec("VACUUM")) ||
      !store->Exec("PRAGMA journal_mode=WAL") || !store->Exec("PRAGMA synchronous=NORMAL") ||
      !store->Exec("PRAGMA journal_size_limit=67108864") || !store->Exec(kSchema)) {
    return absl::InternalError(absl::StrCat("store ", path, ": ", sqlite3_errmsg(db)));
  }
  absl::Status migrated = store->Migrate();
  if (!migrated.ok()) return absl::Status(migrated.code(), absl::StrCat("store ", path, ": ", migrated.message()));
  return std::unique_ptr<Store>(std::move(store));
}

int64_t SqliteLastReadStepsForTest() { return last_read_steps; }

}  // namespace mkfleet::reconciler
