// Taking a snapshot on the file system: the frozen layer gets its own file name and the
// disk's path names a new empty active layer on top of it, in an order that a crash at any
// step leaves recoverable (FORMAT.md, "Snapshot"):
//   1. create the new layer at `.<name>.new` (parent = the future frozen file), synced;
//   2. hard-link the active layer to `<stem>@<snapshot>.strata`, directory synced;
//   3. freeze it (flush, checkpoint, header switch to frozen);
//   4. rename `.<name>.new` over the disk's path, directory synced.
// RecoverInterruptedSnapshot() finishes after 3 and rolls back before it.
#ifndef STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_
#define STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

class Env;
class Layer;

// Names are 1-64 characters of [A-Za-z0-9._-], not starting with '.': they become file names.
absl::Status ValidateSnapshotName(absl::string_view name);
// `<dir>/<stem>@<name>.strata` for a disk at `top_path` (`<dir>/<stem>[.strata]`).
std::string SnapshotPath(const std::string& top_path, absl::string_view name);
// Step 1 alone, so a live snapshot can do it before pausing I/O: the new layer's creation
// and its syncs then cost no pause. A pending file nobody uses is removed at the next open.
absl::Status PrepareNextLayer(Env* env, const Layer& active, const std::string& top_path,
                              const std::string& name);
// Runs steps 1-4 for the open active layer `active` at `top_path` (step 1 only if
// PrepareNextLayer did not already); returns the frozen path.
absl::StatusOr<std::string> FreezeAndStack(Env* env, Layer* active, const std::string& top_path,
                                           const std::string& name, int64_t frozen_ns);
// Finishes or rolls back a snapshot interrupted by a crash; returns what it did ("" if
// nothing was found).
absl::StatusOr<std::string> RecoverInterruptedSnapshot(Env* env, const std::string& top_path);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_
