// RemoteBase: a chain's base image read over the network instead of from a local file — a
// parent of format "nbd" (FORMAT.md §1), a golden image served once for many hosts (by another
// strata, qemu-nbd, nbdkit; Ceph RBD or HTTP behind them). It stands where a raw base stands:
// position 0 of the chain, bytes at virtual offset X are the export's bytes at X, never
// written. blockstore has no sockets: the program supplies the client (server/remote/nbd_base.h)
// through a RemoteBaseOpener in ChainOptions / CreateOptions.
#ifndef STRATA_BLOCKSTORE_REMOTE_BASE_H_
#define STRATA_BLOCKSTORE_REMOTE_BASE_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "blockstore/format.h"

namespace strata {

// What `stats` and `list` say of a remote base.
struct RemoteBaseState {
  bool connected = false;      // at least one connection is up
  int connections = 0;         // up now
  uint64_t reconnects = 0;     // connections made again after one was lost
  uint64_t reads = 0;          // read requests sent
  uint64_t failed_reads = 0;   // reads answered with an error (EIO to the client)
  std::string last_error;      // why the last connection or read failed; "" if none did
};

class RemoteBase {
 public:
  virtual ~RemoteBase() = default;

  // The URI as the layer's header records it.
  virtual const std::string& uri() const = 0;
  virtual uint64_t size() const = 0;
  // The strata layer the export says it serves (a `strata serve --read-only` of a frozen
  // layer), nil when it says nothing of the kind.
  virtual Uuid layer_uuid() const = 0;
  // Never blocks. Reads [offset, offset + out.size()) into `out` and then calls done(status)
  // exactly once, from any thread. A lost or hung connection fails the read (kUnavailable,
  // EIO to a client) after a bounded time; `out` is never touched after done ran.
  virtual void ReadAsync(uint64_t offset, absl::Span<char> out,
                         std::function<void(absl::Status)> done) = 0;
  // Blocks: ReadAsync, waited for.
  absl::Status Read(uint64_t offset, absl::Span<char> out);
  // Metadata only (no I/O: the export's allocation map is read once when it connects). The
  // runs [start, end) of [offset, offset + length) that hold data, in order; everything when
  // the export does not offer base:allocation.
  virtual std::vector<std::pair<uint64_t, uint64_t>> DataRanges(uint64_t offset,
                                                                uint64_t length) const = 0;
  virtual RemoteBaseState State() const = 0;
};

// Connects to the export at `uri` for the layer `layer_path` (for messages); the chain then
// checks its size and identity against the header. Blocks until connected or refused.
using RemoteBaseOpener = std::function<absl::StatusOr<std::unique_ptr<RemoteBase>>(
    const std::string& uri, const std::string& layer_path)>;

// The opener a chain uses when its options give none: set once by the program at start (the
// strata binary installs libnbd's), as Env::Default() stands for the real file system. Until
// then a chain on an NBD base does not open.
void SetDefaultRemoteBaseOpener(RemoteBaseOpener opener);
const RemoteBaseOpener& DefaultRemoteBaseOpener();
// `opener` if it is set, else the default.
inline const RemoteBaseOpener& OpenerOrDefault(const RemoteBaseOpener& opener) {
  return opener ? opener : DefaultRemoteBaseOpener();
}

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_REMOTE_BASE_H_
