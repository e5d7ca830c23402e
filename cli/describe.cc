// mkapply describe.
#include <deque>
#include <map>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "cli/commands.h"
#include "proto/morph_phase.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "console/picture.h"
#include "manifests/loader.h"

namespace mkfleet::cli {

namespace v1 = mkfleet::v1;

namespace {

// A rollout's revision, phase and waves (a set's or a policy's).
void PrintRollout(uint32_t current, uint32_t newest, const v1::RolloutStatus& ro, std::ostream& out) {
  if (ro.phase().empty()) return;
  out << "Revision:     " << current << (newest != current ? absl::StrCat(" (newest ", newest, ")") : "") << "\n";
  out << "Rollout:      " << ro.phase() << ": " << ro.message() << "\n";
  for (const v1::WaveStatus& w : ro.waves()) {
    out << "  " << (w.value().empty() ? "members" : w.value()) << ": " << w.updated() << "/" << w.total()
        << " updated, " << w.ready() << " ready, " << w.failed() << " failed\n";
  }
  for (const std::string& r : ro.reasons()) out << "  failed: " << r << "\n";
}

}  // namespace

int RunDescribe(const GetOptions& options, std::ostream& out, std::ostream& err) {
  if (!options.args.empty()) {
    std::vector<Target> targets;
    if (int c = ExpandTargets(options, "describe", /*whole_type_needs_selector=*/false, &targets, err); c != kExitOk) {
      return c;
    }
    int code = kExitOk;
    for (size_t i = 0; i < targets.size(); ++i) {
      GetOptions one = options;
      one.args.clear();
      one.selector.clear();
      one.kind = targets[i].kind;
      one.name = targets[i].name;
      if (i > 0) out << "\n";
      const int c = RunDescribe(one, out, err);
      if (c == kExitInvalid) return c;
      if (c != kExitOk) code = c;
    }
    return code;
  }
  std::string kind;
  if (!ResolveKind(options.kind, &kind, err)) return kExitInvalid;
  if (options.name.empty()) {
    err << "error: describe needs KIND NAME\n";
    return kExitInvalid;
  }
  if (options.topology && kind != "Host") {
    err << "error: --topology is for hosts (describe host NAME --topology)\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  auto get = [&](const std::string& k, const std::string& name, v1::GetResponse* response) {
    v1::GetRequest request;
    request.set_kind(k);
    request.set_name(name);
    auto got = (*client)->Get(request);
    if (got.ok()) *response = *std::move(got);
    return got.status();
  };
  v1::GetResponse response;
  absl::Status s = get(kind, options.name, &response);
  if (!s.ok()) return Report(s, options.controller, err);
  if (response.objects_size() != 1) {
    err << "error: " << kind << "/" << options.name << " does not exist\n";
    return kExitFailure;
  }
  const v1::Object& o = response.objects(0);
  const v1::ObjectMeta& m = manifests::MetadataOf(o);
  out << "Name:         " << m.name() << "\n";
  out << "Kind:         " << kind << "\n";
  if (!m.labels().empty()) {
    out << "Labels:       " << LabelsText(m.labels(), ", ") << "\n";
  }
  out << "Source:       " << SourceText(m) << (m.source_path().empty() ? "" : "  (" + m.source_path() + ")")
      << "   generation " << m.generation() << ", revision " << m.revision() << "\n";
  if (!m.change_cause().empty()) out << "Change cause: " << m.change_cause() << "\n";
  if (o.has_kernel_instance()) {
    const v1::KernelInstance& ki = o.kernel_instance();
    const v1::InstanceStatus& st = ki.status();
    if (!st.owner().empty()) out << "Owner:        " << st.owner() << "\n";
    out << "Kernel:       " << ki.spec().kernel().image()
        << (ki.spec().kernel().cmdline().empty() ? "" : "  cmdline \"" + ki.spec().kernel().cmdline() + "\"") << "\n";
    out << "Wants:        " << ki.spec().resources().cpus() << " CPUs, " << Bytes(ki.spec().resources().memory())
        << ", phase " << v1::Phase_Name(ki.spec().phase()) << ", failover "
        << v1::FailoverPolicy_Name(ki.spec().failover().policy()) << "\n";
    out << "Phase:        " << (st.phase().empty() ? "-" : st.phase()) << "  (kernel "
        << v1::KernelState_Name(st.kernel_state()) << (st.role().empty() ? "" : ", role " + st.role())
        << (st.kernel().empty() || st.kernel() == m.name() ? "" : ", served by kernel " + st.kernel())
        << ", observed generation " << st.observed_generation() << ", restarts " << st.restart_count() << ")\n";
    if (!st.revision().empty()) {
      out << "Revision:     " << st.revision()
          << (st.previous_revision().empty() ? "" : "  (previous " + st.previous_revision() + ")") << "\n";
    }
    if (!st.rollout_owner().empty()) {
      out << "Rollout:      " << st.rollout_owner() << ", runs "
          << (st.rollout_revision() == 0 ? std::string("no kept revision") : "revision " + std::to_string(st.rollout_revision()))
          << "\n";
    }
    if (st.has_morph()) {
      const v1::MorphStatus& mo = st.morph();
      out << "Live update:  " << MorphPhaseName(mo.phase()) << "  " << mo.old_kernel() << " -> " << mo.new_kernel()
          << ", revision " << mo.previous_revision() << " -> " << mo.revision()
          << (mo.handover_gap_us() > 0 ? absl::StrCat(", handover gap ", mo.handover_gap_us() / 1000.0, " ms") : "")
          << (mo.reason().empty() ? "" : "; " + mo.reason()) << "\n";
    }
    const v1::Placement& p = st.placement();
    if (p.cpus_size() > 0) {
      std::vector<uint32_t> cpus(p.cpus().begin(), p.cpus().end());
      std::vector<std::string> memory, devices;
      for (const auto& nb : p.memory()) memory.push_back(absl::StrCat(Bytes(nb.bytes()), " on node ", nb.node()));
      for (const auto& d : p.devices()) devices.push_back(d.pci());
      out << "Placement:    host " << p.host() << ", instance id " << p.instance_id() << "\n";
      out << "  CPUs:       " << Ranges(cpus) << " (boot CPU " << p.boot_cpu() << ")\n";
      out << "  Memory:     " << (memory.empty() ? "-" : absl::StrJoin(memory, ", ")) << "\n";
      if (!devices.empty()) out << "  Devices:    " << absl::StrJoin(devices, ", ") << "\n";
      if (p.llc_mask() != 0) out << "  LLC ways:   mask 0x" << std::hex << p.llc_mask() << std::dec << "\n";
    } else {
      out << "Placement:    none\n";
    }
    PrintConditions(st.conditions(), out);
  } else if (o.has_host()) {
    const v1::Host& h = o.host();
    const v1::HostStatus& st = h.status();
    out << "Agent:        " << h.spec().agent() << (st.agent_version().empty() ? "" : "  (mkagent " + st.agent_version() + ")")
        << "\n";
    out << "Reachable:    " << (st.reachable() ? "yes" : "no") << ", dialect " << (st.dialect().empty() ? "-" : st.dialect())
        << "\n";
    std::vector<uint32_t> cpus(st.pool().cpus().begin(), st.pool().cpus().end());
    std::vector<uint32_t> free(st.pool().cpus_free().begin(), st.pool().cpus_free().end());
    out << "Pool CPUs:    " << Ranges(cpus) << " (" << free.size() << " of " << cpus.size() << " free: " << Ranges(free)
        << ")\n";
    std::vector<std::string> memory;
    for (const auto& nb : st.pool().memory()) {
      uint64_t f = 0;
      for (const auto& fb : st.pool().memory_free()) f += fb.node() == nb.node() ? fb.bytes() : 0;
      memory.push_back(absl::StrCat("node ", nb.node(), " ", Bytes(f), " free of ", Bytes(nb.bytes())));
    }
    out << "Pool memory:  " << (memory.empty() ? "-" : absl::StrJoin(memory, ", ")) << "\n";
    out << "Pool devices: " << (st.pool().devices().empty() ? "-" : absl::StrJoin(st.pool().devices(), ", "));
    if (!st.pool().devices().empty()) out << " (" << st.pool().devices_free_size() << " free)";
    out << "\n";
    PrintConditions(st.conditions(), out);
    v1::GetResponse all;
    s = get("KernelInstance", "", &all);
    if (!s.ok()) return Report(s, options.controller, err);
    for (const v1::KernelRef& k : st.unmanaged()) {
      out << "Unmanaged:    " << k.name() << " (" << v1::KernelState_Name(k.kernel_state()).substr(13) << ", CPUs "
          << Ranges(std::vector<uint32_t>(k.placement().cpus().begin(), k.placement().cpus().end()))
          << "): no object owns it; "
          << (h.spec().unmanaged() == v1::UNMANAGED_REMOVE ? "being deleted (unmanaged: Remove)" : "left alone") << "\n";
    }
    out << "Drift policy: "
        << (h.spec().drift_policy() == v1::DRIFT_REPORT    ? "Report"
            : h.spec().drift_policy() == v1::DRIFT_CORRECT ? "Correct"
                                                           : "the controller's (--drift-policy)")
        << "\n";
    for (const v1::Drift& d : st.drift()) {
      out << "Drift:        " << d.object() << " " << d.field() << ": wanted " << d.wanted() << ", found " << d.found()
          << " (" << d.policy() << ", since " << ClockTime(d.since_unix_ms()) << ")\n";
    }
    Table t({"  NAME", "PHASE", "CPUS", "MEMORY", "ROLE"});
    int n = 0;
    for (const v1::Object& i : all.objects()) {
      const v1::InstanceStatus& st2 = i.kernel_instance().status();
      if (st2.placement().host() != m.name()) continue;
      ++n;
      t.Add({"  " + i.kernel_instance().metadata().name(), st2.phase().empty() ? "-" : st2.phase(),
             Ranges(std::vector<uint32_t>(st2.placement().cpus().begin(), st2.placement().cpus().end())),
             Bytes(SumBytes(st2.placement().memory())), st2.role().empty() ? "-" : st2.role()});
    }
    out << "Instances:    " << n << (n ? "\n" : "\n");
    if (n) t.Print(out);
    if (options.topology) {
      auto topology = (*client)->Topology(m.name());
      if (!topology.ok()) {
        // The rest was printed: the map alone is missing.
        return Report(topology.status(), options.controller, err);
      }
      std::vector<v1::Object> instances(all.objects().begin(), all.objects().end());
      out << "Topology:     ";
      out << console::TextMap(console::BuildPicture(m.name(), topology->topology(), st, instances));
    }
  } else if (o.has_rollout_policy()) {
    const v1::RolloutPolicy& p = o.rollout_policy();
    out << "Selector:     " << LabelsText(p.spec().selector().match_labels()) << " (" << p.status().members() << " instance(s))\n";
    PrintRollout(p.status().current_revision(), p.status().update_revision(), p.status().rollout(), out);
    for (const std::string& c : p.status().conflicts()) out << "  conflict: " << c << "\n";
    PrintConditions(p.status().conditions(), out);
  } else if (o.has_git_source()) {
    const v1::GitSource& g = o.git_source();
    const v1::GitSourceStatus& st = g.status();
    out << "URL:          " << g.spec().url() << "\n";
    out << "Ref:          " << RefText(g.spec().ref(), /*short_commit=*/false) << "   path " << (g.spec().path().empty() ? "/" : g.spec().path()) << "   prune "
        << (g.spec().prune() ? "yes" : "no") << (g.spec().suspend() ? "   SUSPENDED" : "") << "\n";
    if (!g.spec().verify().keyring().empty()) out << "Verify:       signed by a key of " << g.spec().verify().keyring() << "\n";
    auto commit = [&](const char* label, const v1::CommitInfo& c) {
      if (c.sha().empty()) {
        out << label << "-\n";
        return;
      }
      out << label << c.sha().substr(0, 7) << " " << c.subject() << "  (" << c.author() << ", "
          << ClockTime(c.time_unix_ms()) << (c.signed_by().empty() ? "" : ", signed by " + c.signed_by()) << ")\n";
    };
    commit("Fetched:      ", st.last_fetched());
    commit("Applied:      ", st.last_applied());
    out << "Objects:      " << st.objects() << "\n";
    out << "Last fetch:   " << (st.last_fetch_unix_ms() == 0 ? "-" : ClockTime(st.last_fetch_unix_ms()))
        << "   next fetch " << (st.next_fetch_unix_ms() == 0 ? "-" : ClockTime(st.next_fetch_unix_ms())) << "\n";
    if (st.errors_size() > 0) {
      out << "Errors (" << st.errors_size() << "):\n";
      for (const std::string& e : st.errors()) out << "  " << e << "\n";
    }
    PrintConditions(st.conditions(), out);
  } else if (o.has_role_binding()) {
    const v1::RoleBinding& b = o.role_binding();
    out << "Role:         " << RoleText(b.spec().role()) << "\n";
    for (const v1::Subject& subject : b.spec().subjects()) {
      out << "Subject:      " << (subject.kind() == v1::SUBJECT_GROUP ? "Group/" : "User/") << subject.name() << "\n";
    }
  } else {
    const v1::InstanceSet& set = o.instance_set();
    out << "Count:        "
        << (set.spec().has_per_host() ? absl::StrCat("perHost ", set.spec().per_host())
                                      : absl::StrCat("replicas ", set.spec().replicas()))
        << "\n";
    out << "Replicas:     " << set.status().replicas() << " (" << set.status().ready_replicas() << " ready, "
        << set.status().updated_replicas() << " updated)\n";
    PrintRollout(set.status().current_revision(), set.status().update_revision(), set.status().rollout(), out);
    PrintConditions(set.status().conditions(), out);
  }
  // Recent events about it.
  v1::EventsRequest request;
  request.set_kind(kind);
  request.set_name(options.name);
  std::deque<v1::Event> recent;
  (*client)->Events(request, [&](const v1::Event& e) {
    recent.push_back(e);
    if (recent.size() > 10) recent.pop_front();
    return true;
  }).IgnoreError();
  if (recent.empty()) {
    out << "Events:       (none)\n";
  } else {
    out << "Events (last " << recent.size() << "):\n";
    Table t({"  TIME", "TYPE", "REASON", "COUNT", "MESSAGE"});
    for (const v1::Event& ev : recent) {
      t.Add({"  " + ClockTime(ev.time_unix_ms()), ev.type(), ev.reason(), std::to_string(std::max(1, ev.count())),
             ev.message()});
    }
    t.Print(out);
  }
  return kExitOk;
}

}  // namespace mkfleet::cli
