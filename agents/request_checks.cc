#include "agents/request_checks.h"

#include <set>

#include "absl/strings/ascii.h"
#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"

namespace mkfleet::agents {
namespace {

namespace v1 = mkfleet::v1;

// `text` for an error message: escaped and cut short.
std::string Quote(absl::string_view text) {
  std::string q = absl::CEscape(text.substr(0, 80));
  if (text.size() > 80) q += "...";
  return absl::StrCat("\"", q, "\"");
}

bool Printable(absl::string_view s) {
  for (char c : s) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

absl::Status Invalid(absl::string_view where, absl::string_view field, absl::string_view what) {
  return absl::InvalidArgumentError(absl::StrCat(where, ": ", field, ": ", what));
}

// An absolute path with no "..", no NUL, bounded; empty when `optional`.
absl::Status CheckPath(absl::string_view where, absl::string_view field, absl::string_view path, bool optional) {
  if (path.empty() && optional) return absl::OkStatus();
  if (path.size() > kMaxPathBytes) return Invalid(where, field, absl::StrCat("longer than ", kMaxPathBytes, " bytes"));
  if (path.empty() || path[0] != '/') return Invalid(where, field, absl::StrCat("must be an absolute path, got ", Quote(path)));
  if (path.find('\0') != absl::string_view::npos) return Invalid(where, field, "must not contain NUL");
  for (absl::string_view part : absl::StrSplit(path, '/')) {
    if (part == "..") return Invalid(where, field, absl::StrCat("must not contain .., got ", Quote(path)));
  }
  return absl::OkStatus();
}

absl::Status CheckList(absl::string_view where, absl::string_view field, int size) {
  if (static_cast<size_t>(size) <= kMaxListItems) return absl::OkStatus();
  return Invalid(where, field, absl::StrCat(size, " items: at most ", kMaxListItems));
}

absl::Status CheckPlacement(absl::string_view where, const v1::Placement& p) {
  for (auto [field, n] : {std::pair<const char*, int>{"create.placement.cpus", p.cpus_size()},
                          {"create.placement.memory", p.memory_size()},
                          {"create.placement.devices", p.devices_size()},
                          {"create.placement.numa_nodes", p.numa_nodes_size()}}) {
    if (absl::Status s = CheckList(where, field, n); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckOwner(absl::string_view where, absl::string_view field, absl::string_view owner) {
  if (owner.size() > 512 || !Printable(owner)) {
    return Invalid(where, field, absl::StrCat("must be at most 512 printable characters, got ", Quote(owner)));
  }
  return absl::OkStatus();
}

absl::Status CheckAction(absl::string_view where, const v1::Action& a) {
  if (a.op_case() == v1::Action::OP_NOT_SET) return absl::InvalidArgumentError(absl::StrCat(where, ": no operation"));
  if (a.op_case() != v1::Action::kPoolChange) {
    if (a.instance().empty()) return absl::InvalidArgumentError(absl::StrCat(where, ": instance is required"));
    if (absl::Status s = CheckInstanceName(a.instance(), "instance"); !s.ok()) {
      return absl::InvalidArgumentError(absl::StrCat(where, ": ", s.message()));
    }
  }
  switch (a.op_case()) {
    case v1::Action::kCreate:
      if (absl::Status s = CheckOwner(where, "create.owner", a.create().owner()); !s.ok()) return s;
      return CheckPlacement(where, a.create().placement());
    case v1::Action::kClaim:
      return CheckOwner(where, "claim.owner", a.claim().owner());
    case v1::Action::kLoad: {
      const v1::KernelSpec& k = a.load().kernel();
      if (absl::Status s = CheckPath(where, "load.kernel.image", k.image(), false); !s.ok()) return s;
      if (absl::Status s = CheckPath(where, "load.kernel.initrd", k.initrd(), true); !s.ok()) return s;
      if (k.cmdline().size() > kMaxCmdlineBytes) {
        return Invalid(where, "load.kernel.cmdline", absl::StrCat("longer than ", kMaxCmdlineBytes, " bytes"));
      }
      if (k.cmdline().find('\0') != std::string::npos) return Invalid(where, "load.kernel.cmdline", "must not contain NUL");
      if (!k.sha256().empty()) {
        bool hex = k.sha256().size() == 64;
        for (char c : k.sha256()) hex = hex && absl::ascii_isxdigit(c);
        if (!hex) return Invalid(where, "load.kernel.sha256", "must be 64 hexadecimal digits");
      }
      if (a.load().rootfs().image().size() > kMaxPathBytes) {
        return Invalid(where, "load.rootfs.image", absl::StrCat("longer than ", kMaxPathBytes, " bytes"));
      }
      return absl::OkStatus();
    }
    case v1::Action::kCpuAdd:
      return CheckList(where, "cpu_add.cpus", a.cpu_add().cpus_size());
    case v1::Action::kCpuRemove:
      return CheckList(where, "cpu_remove.cpus", a.cpu_remove().cpus_size());
    case v1::Action::kMemoryAdd:
      return CheckList(where, "memory_add", a.memory_add().memory_size() + a.memory_add().target_size());
    case v1::Action::kMemoryRemove:
      return CheckList(where, "memory_remove", a.memory_remove().memory_size() + a.memory_remove().target_size());
    case v1::Action::kDeviceAdd:
      return CheckList(where, "device_add.devices", a.device_add().devices_size());
    case v1::Action::kDeviceRemove:
      return CheckList(where, "device_remove.devices", a.device_remove().devices_size());
    case v1::Action::kPoolChange: {
      const v1::PoolChange& p = a.pool_change();
      if (absl::Status s = CheckList(where, "pool_change.cpus", p.cpus_size()); !s.ok()) return s;
      if (absl::Status s = CheckList(where, "pool_change.memory", p.memory_size()); !s.ok()) return s;
      if (absl::Status s = CheckList(where, "pool_change.devices", p.devices_size()); !s.ok()) return s;
      for (const std::string& d : p.devices()) {
        if (d.size() > 64 || !Printable(d)) return Invalid(where, "pool_change.devices", absl::StrCat("bad device ", Quote(d)));
      }
      return absl::OkStatus();
    }
    default:
      return absl::OkStatus();
  }
}

}  // namespace

bool IsInstanceName(absl::string_view name) {
  if (name.empty() || name.size() > kMaxInstanceNameBytes) return false;
  for (char c : name) {
    if (!absl::ascii_islower(c) && !absl::ascii_isdigit(c) && c != '-') return false;
  }
  return name.front() != '-' && name.back() != '-';
}

absl::Status CheckInstanceName(absl::string_view name, absl::string_view what) {
  if (IsInstanceName(name)) return absl::OkStatus();
  return absl::InvalidArgumentError(absl::StrCat(what, " ", Quote(name),
                                                 " is not a valid instance name (1-253 characters of a-z, 0-9 and -, "
                                                 "alphanumeric at both ends)"));
}

absl::Status CheckBatch(const v1::ActionBatch& batch) {
  if (static_cast<size_t>(batch.actions_size()) > kMaxBatchActions) {
    return absl::InvalidArgumentError(
        absl::StrCat(batch.actions_size(), " actions: at most ", kMaxBatchActions, " in one batch"));
  }
  if (batch.batch_id().size() > kMaxIdBytes) {
    return absl::InvalidArgumentError(absl::StrCat("batch_id is longer than ", kMaxIdBytes, " bytes"));
  }
  std::set<absl::string_view> ids;
  for (int i = 0; i < batch.actions_size(); ++i) {
    const v1::Action& a = batch.actions(i);
    if (a.id().empty()) return absl::InvalidArgumentError(absl::StrCat("actions[", i, "]: id is required"));
    if (a.id().size() > kMaxIdBytes) {
      return absl::InvalidArgumentError(absl::StrCat("actions[", i, "]: id is longer than ", kMaxIdBytes, " bytes"));
    }
    if (!Printable(a.id())) {
      return absl::InvalidArgumentError(absl::StrCat("actions[", i, "]: id ", Quote(a.id()), " has unprintable characters"));
    }
    if (!ids.insert(a.id()).second) {
      return absl::InvalidArgumentError(absl::StrCat("actions[", i, "]: id ", a.id(), " is used twice"));
    }
    if (absl::Status s = CheckAction(absl::StrCat("actions[", i, "] (", a.id(), ")"), a); !s.ok()) return s;
  }
  return absl::OkStatus();
}

absl::Status CheckPolicies(const v1::SetPolicyRequest& request) {
  if (static_cast<size_t>(request.policies_size()) > kMaxPolicies) {
    return absl::InvalidArgumentError(absl::StrCat(request.policies_size(), " policies: at most ", kMaxPolicies));
  }
  for (int i = 0; i < request.policies_size(); ++i) {
    const v1::LocalPolicy& p = request.policies(i);
    std::string where = absl::StrCat("policies[", i, "]: ");
    if (absl::Status s = CheckInstanceName(p.instance(), "instance"); !s.ok()) {
      return absl::InvalidArgumentError(where + std::string(s.message()));
    }
    if (!p.standby_instance().empty()) {
      if (absl::Status s = CheckInstanceName(p.standby_instance(), "standby_instance"); !s.ok()) {
        return absl::InvalidArgumentError(where + std::string(s.message()));
      }
    }
  }
  return absl::OkStatus();
}

}  // namespace mkfleet::agents
