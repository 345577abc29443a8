// Moving a snapshot's bytes onto a raw copy, for `strata backup` (backup_command.h): the
// snapshot is read either through a server's read-only `@NAME` export (libnbd, several reads
// in flight) or from its frozen chain opened read-only; either way the ranges asked for are
// written onto the copy, and a piece that reads as zeros becomes a hole there.
#ifndef STRATA_CLI_BACKUP_COPY_H_
#define STRATA_CLI_BACKUP_COPY_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"

namespace strata {
class File;
}

namespace strata::cli {

using Range = std::pair<uint64_t, uint64_t>;  // (offset, length), as ChangedRanges gives them

// Receives one piece of a range as read; pieces arrive in any order.
using PieceSink = std::function<absl::Status(uint64_t offset, absl::Span<const char> data)>;

class SnapshotReader {
 public:
  virtual ~SnapshotReader() = default;
  virtual uint64_t size() const = 0;
  // Where the bytes come from, for messages: the NBD URI or the snapshot's file.
  virtual const std::string& source() const = 0;
  // The ranges that hold data, in order (holes and zeros left out): what a full copy writes.
  virtual absl::StatusOr<std::vector<Range>> DataRanges() = 0;
  // Reads `ranges` in pieces of at most 1 MiB, each handed to `sink`; stops at the first error.
  virtual absl::Status Read(const std::vector<Range>& ranges, const PieceSink& sink) = 0;
};

// TLS for OpenNbdReader, as `strata serve --tls-certs/--tls-psk` asks (all empty: plain).
struct NbdTls {
  std::string certs;     // a directory with ca-cert.pem (and client-cert.pem, client-key.pem)
  std::string psk_file;  // psktool's username:hexkey file
  std::string username;  // the PSK user (libnbd's default is the login name)
  bool on() const { return !certs.empty() || !psk_file.empty(); }
};

// The export `export_name` of the NBD server on unix socket `socket`. kUnavailable when nobody
// listens there (no socket file, or a stale one): the caller may read the files instead.
absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenNbdReader(const std::string& socket,
                                                              const std::string& export_name,
                                                              const NbdTls& tls = {});
// The chain topped by the frozen layer at `snapshot_path`, opened read-only (shared locks).
absl::StatusOr<std::unique_ptr<SnapshotReader>> OpenChainReader(
    const std::string& snapshot_path, const std::vector<std::string>& allowed_parent_dirs);

struct CopyStats {
  uint64_t ranges = 0;
  uint64_t bytes = 0;       // bytes of the ranges: read from the snapshot
  uint64_t zero_bytes = 0;  // of them, read as zeros: holes in the copy, not written
};

struct CopyOptions {
  bool out_is_empty = false;  // `out` reads as zeros (a new file): zero pieces punch no hole
  uint64_t rate_limit = 0;    // bytes per second read, at most (0: no limit)
};
// Copies `ranges` of `reader` onto `out` and syncs it, with a progress bar.
absl::StatusOr<CopyStats> CopyRanges(SnapshotReader& reader, const std::vector<Range>& ranges,
                                     File* out, const CopyOptions& options);

}  // namespace strata::cli

#endif  // STRATA_CLI_BACKUP_COPY_H_
