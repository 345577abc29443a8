// Revert: discards the active layer's changes, replacing the top with a new empty active layer
// on the same parent, or on the frozen snapshot `snapshot_name` further down the chain (the
// layers in between stay as files, a branch).
//
// The same steps offline (`strata revert`) and on a served chain (`revert` on the control
// socket); FORMAT.md §3 has the crash model:
//   1. prepare: check the top is active and the snapshot is in the chain, then create the new
//      layer at RevertPendingPath(top), synced, its directory synced. Nothing else changes.
//   2. served only: open a chain on the new layer beside the served one, before anything else
//      changes. It shares the frozen layers' locks with the served chain (both shared) and
//      takes the new file's exclusively, so an open that would fail fails here.
//   3. commit point: the new layer renamed over the top.
//   4. served only: the new chain replaces the served one, which closes (its top, the
//      discarded layer, lost its last name at 3). Then the directory is synced.
// A failure before 3 removes the new file and leaves the disk as it was (a served chain stays
// open and serves on; a crash leaves the file for RecoverChain to remove). A rename never
// half happens, so after 3 nothing can leave the disk unserved: only the directory sync can
// fail, and then the reverted chain is served but the revert may not survive a crash.
#ifndef STRATA_BLOCKSTORE_REVERT_H_
#define STRATA_BLOCKSTORE_REVERT_H_

#include <memory>
#include <string>

#include "absl/status/status.h"

namespace strata {

class Chain;
class Env;

// Offline: recovers the chain topped by `top_path` and reverts it, holding the top's lock.
absl::Status Revert(Env* env, const std::string& top_path, const std::string& snapshot_name = "");

// Served: reverts the open writable chain `*chain` (kFailedPrecondition for a read-only one),
// flushing it first, through its own Env and with its options. On success `*chain` is the reverted chain. On failure it is the same open
// chain, unchanged, and the message says what failed and that the disk is unchanged — except
// when only the final directory sync failed: `*chain` is then the reverted chain and the
// message starts "reverted, but".
absl::Status RevertServed(std::unique_ptr<Chain>* chain, const std::string& snapshot_name = "");

// Where step 1 creates the new layer: `.<top>.revert` beside the top.
std::string RevertPendingPath(const std::string& top_path);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_REVERT_H_
