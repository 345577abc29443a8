// Taking a snapshot on the file system: the frozen layer gets its own file name and the
// disk's path names a new empty active layer on top of it, in an order that a crash at any
// step leaves recoverable (FORMAT.md, "Snapshot"):
//   1. create the new layer at `.<name>.new` (parent = the future frozen file), synced;
//   2. hard-link the active layer to `<stem>@<snapshot>.strata`, directory synced;
//   3. freeze it (flush, header switch to frozen): the commit point;
//   4. rename `.<name>.new` over the disk's path, directory synced.
// Steps 1-2 (PrepareNextLayer) run before a live snapshot pauses I/O; the pause itself only
// switches writes to the new layer in memory (Chain), and steps 3-4 run after I/O resumed.
// RecoverInterruptedSnapshot() finishes after 3 and rolls back before it; only RecoverChain
// (recovery.h) calls it, so that no command acts over an unfinished snapshot.
#ifndef STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_
#define STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_

#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

class Env;
class Layer;
class LockSet;

// Names are 1-64 characters of [A-Za-z0-9._-], not starting with '.': they become file names.
absl::Status ValidateSnapshotName(absl::string_view name);
// `<dir>/<stem>@<name>.strata` for a disk at `top_path` (`<dir>/<stem>[.strata]`).
std::string SnapshotPath(const std::string& top_path, absl::string_view name);
// Where the next active layer is created (step 1) until step 4 renames it.
std::string PendingLayerPath(const std::string& top_path);
// Steps 1 and 2 for the open active layer `active` at `top_path`; a no-op when they were done
// already for this very snapshot.
absl::Status PrepareNextLayer(Env* env, const Layer& active, const std::string& top_path,
                              const std::string& name);
// Undoes steps 1 and 2 (a snapshot given up before step 3), best effort: a leftover is
// rolled back at the next open anyway.
void AbandonNextLayer(Env* env, const Layer& active, const std::string& top_path,
                      const std::string& name);
// Step 4, after step 3 made the frozen layer durable; may be repeated.
absl::Status StackNextLayer(Env* env, const std::string& top_path);
// Finishes or rolls back a snapshot interrupted by a crash, taking in `locks` (nullptr: none)
// the lock of the new layer before renaming it into place; returns what it did ("" if
// nothing was found).
absl::StatusOr<std::string> RecoverInterruptedSnapshot(Env* env, const std::string& top_path,
                                                       LockSet* locks);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_SNAPSHOT_FILES_H_
