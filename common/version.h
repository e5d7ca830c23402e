// The version every mkfleet binary reports (--version) and agents send in Inventory.
#ifndef MKFLEET_COMMON_VERSION_H_
#define MKFLEET_COMMON_VERSION_H_

namespace mkfleet {
inline constexpr char kVersion[] = "0.1.0";
}  // namespace mkfleet

#endif  // MKFLEET_COMMON_VERSION_H_
