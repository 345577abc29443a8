// The snapshot tree: every layer that descends from the bottom of a disk's chain, wherever the
// child search (children.h) finds it — the chain itself, the snapshots a revert left off it
// (dead branches), branches created on a snapshot in other directories, and the registered
// children that are gone. `strata tree` and `info --json` show it; deleting a snapshot that is
// off the current chain works on it.
#ifndef STRATA_BLOCKSTORE_TREE_H_
#define STRATA_BLOCKSTORE_TREE_H_

#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "blockstore/children.h"
#include "blockstore/commit.h"
#include "blockstore/format.h"

namespace strata {

class Env;

struct TreeNode {
  std::string path;
  LayerHeader header;
  bool on_chain = false;                // a layer of the chain the tree was read for
  std::vector<TreeNode> children;       // ordered by creation time
  std::vector<RegisteredChild> gone;    // registered children no longer standing
};

struct SnapshotTree {
  std::string raw_base;          // "" when the bottom layer has no raw parent
  std::vector<TreeNode> roots;   // the layers standing on the raw base (the chain's first)
};

// The tree of the chain topped by `top_path`. The raw base's other children are found in the
// directories searched for children (SearchDirs of the chain's): layers elsewhere on the same
// raw file that no registry names are not.
absl::StatusOr<SnapshotTree> ReadSnapshotTree(Env* env, const std::string& top_path);

// Deletes snapshot `name` when it is off the chain topped by `top_path` (a dead branch: left
// by a revert, or on a branch of its own): without children its file is removed (under its
// exclusive lock: nobody may have it open, e.g. as an `@NAME` export); with exactly one child,
// the child is merged into it offline (CommitLayer). Refuses with more children, or when the
// name is on the chain (that is DeleteSnapshot's or the server's business) or nowhere.
struct OffChainDeletion {
  std::string path;         // the snapshot's file
  std::string merged_into;  // "" when it had no child and was removed
  uint64_t bytes_copied = 0;
};
absl::StatusOr<OffChainDeletion> DeleteOffChainSnapshot(Env* env, const std::string& top_path,
                                                        const std::string& name,
                                                        const Progress& progress = nullptr);
// Whether `name` is a snapshot off the chain topped by `top_path` (DeleteOffChainSnapshot's
// case).
bool IsOffChainSnapshot(Env* env, const std::string& top_path, const std::string& name);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_TREE_H_
