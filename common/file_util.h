// Files written so that a crash (of the process or of the machine) leaves either the old
// contents or the new ones, never a mix: the one way mkfleet replaces a file.
//
// WriteFileAtomically writes `data` to a temporary file beside `path`, fsyncs it, renames it
// over `path`, then fsyncs the directory so that the rename itself is durable. ReadFile
// reads a whole file. Errors carry the path and errno text.
// Thread-safety: stateless; concurrent writers of one path must serialize themselves.
#ifndef MKFLEET_COMMON_FILE_UTIL_H_
#define MKFLEET_COMMON_FILE_UTIL_H_

#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace mkfleet {

// `mode` is the new file's permission bits. The temporary file is "<path>.tmp".
// With `sync` false nothing is fsync'd: the replacement is still atomic for a crash of the
// process (state that dies with the machine anyway, like an emulated kernel's).
absl::Status WriteFileAtomically(const std::string& path, absl::string_view data, int mode = 0600,
                                 bool sync = true);

// NotFound when `path` does not exist; Internal on other errors. With `follow_symlinks`
// false (a daemon's own state files) a symbolic link is refused (ELOOP).
absl::StatusOr<std::string> ReadFile(const std::string& path, bool follow_symlinks = true);

// fsync of the directory `dir` (after creating, renaming or removing an entry in it).
absl::Status SyncDirectory(const std::string& dir);

// CRC-32 (zlib's polynomial) of `data`, for checksummed records.
uint32_t Crc32(absl::string_view data);

// Little-endian fixed-width encoding, for file formats that move between machines.
void PutFixed32(std::string* out, uint32_t v);
uint32_t GetFixed32(const char* p);

}  // namespace mkfleet

#endif  // MKFLEET_COMMON_FILE_UTIL_H_
