// Growing a disk offline (`strata resize`), as `qemu-img resize` grows an overlay whose backing
// file is smaller: the active layer's virtual size grows; the frozen layers and the raw base
// keep theirs, and everything past a lower layer's end reads as zeros (the size rule between
// layers: CheckParentSize in format.h, FORMAT.md §1 "Sizes along a chain").
//
// On disk a grow is one header update of the active layer (virtual_size), nothing else: the
// layer's index has no capacity fixed by the size (a sparse checkpoint table plus the journal,
// FORMAT.md §1 "Sizes along a chain"), so nothing moves. The update writes the copy not holding the current header
// first (§2 rule 4): a crash leaves the old size or the new one, data untouched either way.
//
// Not done: shrinking (it discards the data past the new end; qemu-img needs --shrink), growing
// a served disk (NBD has no way to tell connected clients that the size changed: the server
// holds the top's lock, and resize refuses), and growing a disk whose size does not end on a
// sub-block boundary (the sub-block holding the old end would mix old bytes and new zeros).
#ifndef STRATA_BLOCKSTORE_RESIZE_H_
#define STRATA_BLOCKSTORE_RESIZE_H_

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockstore/commit.h"

namespace strata {

class Env;

// The size asked for: `bytes` absolute, or added to the current size (`+10G`). Rounded up to
// a multiple of 512, as `strata create --size` rounds.
struct NewSize {
  uint64_t bytes = 0;
  bool relative = false;
};

struct ResizeResult {
  uint64_t old_size = 0;
  uint64_t new_size = 0;  // == old_size: nothing to do, nothing was written
};

// Grows the disk whose active layer is `top_path` to `size`, after finishing what an
// interrupted operation left (RecoverChain), holding the top's exclusive lock throughout.
// kFailedPrecondition for a disk in use (a server: stop it first), a frozen `top_path`, or an
// old size off a sub-block boundary; kInvalidArgument for a smaller size (shrinking is not
// supported) or one beyond kMaxClustersPerLayer clusters. The same size succeeds, unchanged.
// `allowed_parent_dirs`: as ChainOptions'.
absl::StatusOr<ResizeResult> ResizeDisk(Env* env, const std::string& top_path, NewSize size,
                                        const Progress& progress = nullptr,
                                        const std::vector<std::string>& allowed_parent_dirs = {});

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_RESIZE_H_
