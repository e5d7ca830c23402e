// mkapply morph status|prepare|commit|rollback instance NAME.
#include <iostream>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/time/clock.h"
#include "cli/commands.h"
#include "cli/controller_client.h"
#include "cli/remote_util.h"
#include "cli/table.h"
#include "google/protobuf/util/json_util.h"
#include "proto/morph_phase.h"

namespace mkfleet::cli {
namespace {

namespace v1 = mkfleet::v1;

std::string Micros(uint64_t us) {
  if (us == 0) return "-";
  return absl::FormatDuration(absl::Microseconds(us));
}

void PrintStatus(const std::string& name, const v1::MorphResponse& r, std::ostream& out) {
  out << "Instance:           KernelInstance/" << name << " on " << r.host() << " (kernel " << r.kernel() << ")\n";
  out << "Serving revision:   " << (r.revision().empty() ? "-" : r.revision()) << "\n";
  out << "Previous revision:  " << (r.previous_revision().empty() ? "-" : r.previous_revision()) << "\n";
  if (!r.has_morph()) {
    out << "Live update:        none yet\n";
    return;
  }
  const v1::MorphStatus& m = r.morph();
  out << "Live update:        " << m.id() << "\n";
  out << "  Phase:            " << MorphPhaseName(m.phase())
      << (m.manual() && m.phase() == v1::MORPH_VALIDATING && !m.commit_requested()
              ? " (validated: waiting for `mkapply morph commit instance " + name + "`)"
              : "")
      << "\n";
  out << "  Kernels:          " << m.old_kernel() << " -> " << m.new_kernel() << "\n";
  out << "  Revisions:        " << m.previous_revision() << " -> " << m.revision() << "\n";
  out << "  Commit:           " << (m.manual() ? "Manual" : "Auto") << "\n";
  if (m.started_unix_ms() != 0) out << "  Started:          " << ClockTime(m.started_unix_ms()) << "\n";
  if (MorphEnded(m.phase())) {
    out << "  Took:             " << Micros(m.total_us()) << "\n";
    out << "  Handover gap:     " << Micros(m.handover_gap_us()) << "\n";
    out << "  State moved:      " << m.state_bytes() << " bytes\n";
  }
  if (!m.reason().empty()) {
    out << "  Reason:           " << m.reason()
        << (m.failed_in() != v1::MORPH_PHASE_UNSPECIFIED ? absl::StrCat(" (in ", MorphPhaseName(m.failed_in()), ")") : "")
        << "\n";
  }
}

}  // namespace

int RunMorph(const MorphOptions& options, std::ostream& out, std::ostream& err) {
  std::string kind = CanonicalKind(options.kind);
  if (kind != "KernelInstance") {
    err << "error: morph works on instances: mkapply morph " << options.verb << " instance NAME\n";
    return kExitInvalid;
  }
  auto client = NewGrpcControllerClient(options.controller, options.request_timeout, options.tls);
  if (!client.ok()) return ReportSetup(client.status(), err);
  v1::MorphRequest request;
  request.set_verb(options.verb);
  request.set_kind(kind);
  request.set_name(options.name);
  request.set_reason(options.reason);
  auto response = (*client)->Morph(request);
  if (!response.ok()) return Report(response.status(), options.controller, err);
  if (options.verb == "status") {
    if (options.output == "json") {
      std::string text;
      (void)google::protobuf::util::MessageToJsonString(*response, &text);
      out << text << "\n";
    } else {
      PrintStatus(options.name, *response, out);
    }
    return kExitOk;
  }
  out << response->message() << "\n";
  if (!options.wait) return kExitOk;
  // Follow it: a new morph (prepare) shows with another id than the one seen before.
  const std::string before = options.verb == "prepare" ? response->morph().id() : "";
  absl::Time deadline = absl::Now() + options.wait_timeout;
  v1::MorphPhase last = v1::MORPH_PHASE_UNSPECIFIED;
  request.set_verb("status");
  while (absl::Now() < deadline) {
    auto s = (*client)->Morph(request);
    if (!s.ok()) return Report(s.status(), options.controller, err);
    const v1::MorphStatus& m = s->morph();
    bool ours = s->has_morph() && (options.verb != "prepare" || m.id() != before);
    if (ours && m.phase() != last) {
      last = m.phase();
      out << "  " << MorphPhaseName(last) << (m.reason().empty() ? "" : ": " + m.reason()) << "\n" << std::flush;
    }
    if (ours && MorphEnded(m.phase())) {
      PrintStatus(options.name, *s, out);
      bool wanted = options.verb == "rollback" ? m.phase() == v1::MORPH_ROLLED_BACK : m.phase() == v1::MORPH_COMMITTED;
      if (!wanted) err << "error: the live update " << m.id() << " ended " << MorphPhaseName(m.phase()) << "\n";
      return wanted ? kExitOk : kExitFailure;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  err << "error: the live update of KernelInstance/" << options.name << " did not end within "
      << absl::FormatDuration(options.wait_timeout) << "\n";
  return kExitFailure;
}

}  // namespace mkfleet::cli
