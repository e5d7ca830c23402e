// LivenessProbe: does an instance answer? On a real host a vsock connect to CID = instance
// id; on the emulator, the emulated kernel's probe hook; where the instance runs mkguest,
// a KMP heartbeat.
// Thread-safety: implementations are safe to call concurrently.
#ifndef MKFLEET_AGENTS_LIVENESS_H_
#define MKFLEET_AGENTS_LIVENESS_H_

#include <cstdint>
#include <memory>
#include <string>

#include <functional>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "kernel/emulator/emulated_kernel.h"
#include "kmp/connection.h"

namespace mkfleet::agents {

class LivenessProbe {
 public:
  virtual ~LivenessProbe() = default;
  virtual bool Probe(const std::string& instance, uint32_t id) = 0;
};

// vsock stream connect to (CID id, port); success means alive.
std::unique_ptr<LivenessProbe> NewVsockProbe(uint32_t port, int timeout_ms = 50);
std::unique_ptr<LivenessProbe> NewEmulatorProbe(kernel::EmulatedKernel& emulator);

// Where an instance's guest (mkguest) is reached: vsock (CID id, kmp::kPort) on a real host,
// an AF_UNIX socket under the emulator. An error when there is no guest to reach.
using GuestDialer = std::function<absl::StatusOr<std::unique_ptr<kmp::Connection>>(uint32_t id)>;

// KMP heartbeats (docs/morph.md) where the instance runs a guest: alive when the guest
// answers HEARTBEAT_REQ within `timeout` naming the instance's id (a guest of another
// instance answering is not it). An instance without a guest (nothing to dial) is asked
// through `fallback`. One connection per instance is kept between probes.
std::unique_ptr<LivenessProbe> NewKmpProbe(GuestDialer dial, std::unique_ptr<LivenessProbe> fallback,
                                           absl::Duration timeout = absl::Milliseconds(50));

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_LIVENESS_H_
