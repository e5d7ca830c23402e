// mkapply certs: the fleet CA and the credentials it issues (security/certs.h, OpenSSL's
// C API; no `openssl` command is needed).
#include <iostream>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "security/certs.h"

namespace mkfleet::cli {
namespace {

using security::Identity;

int Fail(const absl::Status& s, std::ostream& err) {
  err << "error: " << s.message() << "\n";
  return s.code() == absl::StatusCode::kInvalidArgument || s.code() == absl::StatusCode::kAlreadyExists
             ? kExitInvalid
             : kExitFailure;
}

absl::Status Issue(const CertsOptions& o, const Identity& id, const std::string& out_dir) {
  security::CertOptions c = security::CertOptions::For(id, absl::Now(), absl::Hours(24) * o.days);
  c.dns_names = o.dns;
  c.ip_addresses = o.ips;
  return security::IssueCert(o.dir, c, out_dir);
}

}  // namespace

int RunCerts(const CertsOptions& o, std::ostream& out, std::ostream& err) {
  if (o.days < 1 || o.days > 3650) {
    err << "error: --days: want 1 to 3650, got " << o.days << "\n";
    return kExitInvalid;
  }
  if (o.action == "init") {
    if (absl::Status s = security::InitCa(o.dir, absl::Now(), absl::Hours(24) * o.days * 10); !s.ok()) {
      return Fail(s, err);
    }
    out << "CA            " << o.dir << "/ca.crt (its key " << o.dir << "/ca.key: keep it offline)\n";
    CertsOptions controller = o;
    if (controller.ips.empty()) controller.ips = {"127.0.0.1", "::1"};
    if (controller.dns.empty()) controller.dns = {"localhost"};
    std::string dir = security::IdentityDir(o.dir, Identity::Controller());
    if (absl::Status s = Issue(controller, Identity::Controller(), dir); !s.ok()) return Fail(s, err);
    out << "controller    " << dir << "/  (mkcontroller --tls-dir)\n";
    Identity admin = Identity::User("admin", {"fleet-admins"});
    dir = security::IdentityDir(o.dir, admin);
    if (absl::Status s = Issue(o, admin, dir); !s.ok()) return Fail(s, err);
    out << "user admin    " << dir << "/  (mkapply --tls-dir, or MKFLEET_TLS_DIR; group fleet-admins)\n"
        << "next: mkapply certs issue agent HOST --ca-dir " << o.dir << "   (one per Host)\n";
    return kExitOk;
  }
  Identity id;
  if (o.kind == "controller") {
    id = Identity::Controller();
  } else if (o.kind == "agent") {
    id = Identity::Agent(o.name);
  } else if (o.kind == "user") {
    id = Identity::User(o.name, o.groups);
  } else {
    err << "error: certs issue: want controller, agent HOST or user NAME, got \"" << o.kind << "\"\n";
    return kExitInvalid;
  }
  if (id.kind != Identity::Kind::kController && o.name.empty()) {
    err << "error: certs issue " << o.kind << ": the " << (o.kind == "agent" ? "Host's" : "user's")
        << " name is required\n";
    return kExitInvalid;
  }
  std::string dir = o.out.empty() ? security::IdentityDir(o.dir, id) : o.out;
  if (absl::Status s = Issue(o, id, dir); !s.ok()) return Fail(s, err);
  out << id.ToString() << ": " << dir << "/ (ca.crt, tls.crt, tls.key), valid " << o.days << " days\n";
  return kExitOk;
}

}  // namespace mkfleet::cli
