// DtNode: a flattened device tree held as a plain tree of nodes and raw properties, and
// its conversion to and from the DTB format with libfdt. The multikernel codec
// (device_tree.h) builds and reads these; nothing else touches libfdt.
//
// Properties hold raw bytes; integers are big-endian cells as the DTB format wants.
// Thread-safety: plain values; the functions are reentrant.
#ifndef MKFLEET_KERNEL_FDT_H_
#define MKFLEET_KERNEL_FDT_H_

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mkfleet::kernel {

// The kernel accepts blobs of at most 1 MiB.
inline constexpr size_t kMaxBlobBytes = 1 << 20;

struct DtNode {
  std::string name;
  std::vector<std::pair<std::string, std::string>> props;  // in order
  std::vector<DtNode> children;                             // in order

  // Adds a child (always a new one) and returns it.
  DtNode& Add(std::string child_name);
  const DtNode* Find(absl::string_view child_name) const;

  void SetU32(absl::string_view prop, uint32_t v);
  void SetU64(absl::string_view prop, uint64_t v);
  void SetU32s(absl::string_view prop, const std::vector<uint32_t>& v);
  void SetU64s(absl::string_view prop, const std::vector<uint64_t>& v);
  void SetString(absl::string_view prop, absl::string_view v);
  void SetStrings(absl::string_view prop, const std::vector<std::string>& v);

  bool Has(absl::string_view prop) const { return Raw(prop) != nullptr; }
  const std::string* Raw(absl::string_view prop) const;
  // Typed reads: NotFound when the property is missing, InvalidArgument when its size does
  // not fit the type. Messages name the node and the property.
  absl::StatusOr<uint32_t> U32(absl::string_view prop) const;
  absl::StatusOr<uint64_t> U64(absl::string_view prop) const;
  absl::StatusOr<std::vector<uint32_t>> U32s(absl::string_view prop) const;
  absl::StatusOr<std::vector<uint64_t>> U64s(absl::string_view prop) const;
  absl::StatusOr<std::string> String(absl::string_view prop) const;
  absl::StatusOr<std::vector<std::string>> Strings(absl::string_view prop) const;
};

// How a blob's strings block holds property names: each once (what the kernel is given), or
// once per property (libfdt then writes each property without searching the block; for
// blobs only mkfleet reads, such as the emulator's state file).
enum class DtbNames { kShared, kRepeated };

// Serializes `root` (its name is ignored: the root is unnamed). InvalidArgument if the blob
// would exceed kMaxBlobBytes.
absl::StatusOr<std::string> ToDtb(const DtNode& root, DtbNames names = DtbNames::kShared);
// Parses a blob. InvalidArgument for anything malformed (bad header, size mismatch,
// nesting deeper than 32).
absl::StatusOr<DtNode> FromDtb(absl::string_view blob);

}  // namespace mkfleet::kernel

#endif  // MKFLEET_KERNEL_FDT_H_
