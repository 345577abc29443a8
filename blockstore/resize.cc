#include "blockstore/resize.h"

#include "absl/strings/str_cat.h"
#include "blockstore/chain.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

// The size `size` asks for, from the disk's `current` one; kInvalidArgument when it overflows.
absl::StatusOr<uint64_t> TargetSize(const std::string& top_path, uint64_t current, NewSize size) {
  const uint64_t base = size.relative ? current : 0;
  if (size.bytes > UINT64_MAX - base - 511) {
    return absl::InvalidArgumentError(absl::StrCat(top_path, ": size out of range"));
  }
  return (base + size.bytes + 511) / 512 * 512;
}

// Why `target` cannot be the new size of the disk whose active layer `top_path` has header
// `h`; OK when it can (equal included).
absl::Status CheckGrow(const std::string& top_path, const LayerHeader& h, uint64_t target) {
  if (target < h.virtual_size) {
    return absl::InvalidArgumentError(absl::StrCat(
        top_path, " is ", h.virtual_size, " bytes: shrinking it to ", target,
        " is not supported (it would discard the data past the new end); only growing is"));
  }
  if (target == h.virtual_size) return absl::OkStatus();
  if (h.virtual_size % h.sub_block_size != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        top_path, " is ", h.virtual_size, " bytes, which does not end on a sub-block boundary (",
        h.sub_block_size, " bytes): such a disk cannot grow (the sub-block holding its end "
        "would mix its last bytes with the new zeros)"));
  }
  if (target / h.cluster_size >= kMaxClustersPerLayer) {
    return absl::InvalidArgumentError(absl::StrCat(
        top_path, ": ", target, " bytes is more than a layer of ", h.cluster_size,
        "-byte clusters can address (2^32 clusters)"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ResizeResult> ResizeDisk(Env* env, const std::string& top_path, NewSize size,
                                        const Progress& progress,
                                        const std::vector<std::string>& allowed_parent_dirs) {
  // The top's exclusive lock first: a server holds it while clients may be connected, and NBD
  // has no way to tell them the size changed (they read it once, at the handshake).
  LockSet locks;
  if (auto s = locks.Exclusive(env, top_path); !s.ok()) {
    if (!absl::IsFailedPrecondition(s)) return s;
    return absl::FailedPreconditionError(absl::StrCat(
        s.message(), ". A resize is offline only: stop the server first (NBD cannot tell "
                     "connected clients that the size changed)"));
  }
  if (auto r = RecoverChain(env, top_path, &locks, progress); !r.ok()) return r.status();
  auto header = ReadLayerHeader(env, top_path);
  if (!header.ok()) return header.status();
  if (header->state != LayerState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat(
        top_path, " is a frozen snapshot, which never changes: resize the disk's active layer "
                  "(the top of its chain)"));
  }
  auto target = TargetSize(top_path, header->virtual_size, size);
  if (!target.ok()) return target.status();
  if (auto s = CheckGrow(top_path, *header, *target); !s.ok()) return s;
  ResizeResult result{header->virtual_size, *target};
  if (*target == header->virtual_size) return result;
  // Only a chain that opens is grown: a broken link is reported as it is, not after a change.
  // Unlocked: this process holds the top's lock already (flock refuses a second descriptor).
  {
    auto chain = Chain::Open(top_path, {.writable = false, .lock = false, .env = env,
                                        .allowed_parent_dirs = allowed_parent_dirs});
    if (!chain.ok()) return chain.status();
  }
  // The commit point: the header update's first copy reaching the disk.
  if (auto s = EditLayerHeader(env, top_path,
                               [&](LayerHeader* h) { h->virtual_size = result.new_size; });
      !s.ok()) {
    return s;
  }
  return result;
}

}  // namespace strata
