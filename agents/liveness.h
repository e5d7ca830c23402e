// LivenessProbe: does an instance answer? On a real host a vsock connect to CID = instance
// id; on the emulator, the emulated kernel's probe hook.
// Thread-safety: implementations are safe to call concurrently.
#ifndef MKFLEET_AGENTS_LIVENESS_H_
#define MKFLEET_AGENTS_LIVENESS_H_

#include <cstdint>
#include <memory>
#include <string>

#include "kernel/emulator/emulated_kernel.h"

namespace mkfleet::agents {

class LivenessProbe {
 public:
  virtual ~LivenessProbe() = default;
  virtual bool Probe(const std::string& instance, uint32_t id) = 0;
};

// vsock stream connect to (CID id, port); success means alive.
std::unique_ptr<LivenessProbe> NewVsockProbe(uint32_t port, int timeout_ms = 50);
std::unique_ptr<LivenessProbe> NewEmulatorProbe(kernel::EmulatedKernel& emulator);

}  // namespace mkfleet::agents

#endif  // MKFLEET_AGENTS_LIVENESS_H_
