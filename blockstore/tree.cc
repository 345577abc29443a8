#include "blockstore/tree.h"

#include <algorithm>
#include <functional>

#include "absl/container/flat_hash_map.h"
#include "absl/container/flat_hash_set.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

// Bounds a hostile or unlucky set of registries (each names more directories).
constexpr size_t kMaxSearchDirs = 256;

// Every layer in the directories children can be in, by parent: one header read per file.
struct LayerIndex {
  absl::flat_hash_map<Uuid, std::vector<ChainLayer>> by_parent;        // strata parents
  absl::flat_hash_map<std::string, std::vector<ChainLayer>> by_raw;    // absolute raw paths
};

// SearchDirs of `known`, then of every directory it adds, until nothing new.
std::vector<std::string> AllSearchDirs(Env* env, std::vector<std::string> dirs) {
  for (size_t searched = 0; searched < dirs.size() && dirs.size() < kMaxSearchDirs;) {
    std::vector<std::string> more = SearchDirs(env, {dirs[searched++]});
    for (const std::string& dir : more) AddUnique(&dirs, dir);
  }
  return dirs;
}

LayerIndex IndexLayers(Env* env, const std::vector<std::string>& dirs) {
  LayerIndex index;
  // A directory that cannot be listed hides its layers from the tree; it is no error here.
  (void)ForEachLayer(env, dirs,
                     [&](const std::string& dir, const std::string& path, const LayerHeader& h) {
                       if (h.parent_format == ParentFormat::kStrata) {
                         index.by_parent[h.parent_uuid].push_back({path, h});
                       } else if (h.parent_format == ParentFormat::kRaw) {
                         index.by_raw[AbsolutePath(ResolvePath(dir, h.parent_path))].push_back(
                             {path, h});
                       }
                     });
  return index;
}

TreeNode Grow(Env* env, const LayerIndex& index, const absl::flat_hash_set<Uuid>& chain,
              const ChainLayer& layer, absl::flat_hash_set<Uuid>* seen) {
  TreeNode node{.path = layer.path, .header = layer.header,
                .on_chain = chain.contains(layer.header.uuid)};
  node.gone = GoneChildren(env, AbsoluteDir(layer.path), layer.header.uuid);
  auto it = index.by_parent.find(layer.header.uuid);
  if (it == index.by_parent.end()) return node;
  std::vector<ChainLayer> children = it->second;
  std::sort(children.begin(), children.end(), [](const ChainLayer& a, const ChainLayer& b) {
    return a.header.created_ns < b.header.created_ns;
  });
  for (const ChainLayer& child : children) {
    // A copy of a layer file has its UUID: show the first, never loop.
    if (seen->insert(child.header.uuid).second) {
      node.children.push_back(Grow(env, index, chain, child, seen));
    }
  }
  return node;
}

void Visit(const std::vector<TreeNode>& nodes, const std::function<void(const TreeNode&)>& f) {
  for (const TreeNode& node : nodes) {
    f(node);
    Visit(node.children, f);
  }
}

std::vector<const TreeNode*> OffChainSnapshots(const SnapshotTree& tree, const std::string& name) {
  std::vector<const TreeNode*> found;
  Visit(tree.roots, [&](const TreeNode& node) {
    if (!node.on_chain && node.header.state == LayerState::kFrozen &&
        node.header.snapshot_name == name) {
      found.push_back(&node);
    }
  });
  return found;
}

// Removes the childless snapshot `node` (its file, then its parent's registry entry: a crash
// between leaves an entry for a child that is gone, which `check --repair` prunes).
absl::Status RemoveLeaf(Env* env, const TreeNode& node) {
  {
    LockSet locks;
    if (auto s = locks.Exclusive(env, node.path); !s.ok()) {
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot delete snapshot '", node.header.snapshot_name, "': ", s.message(),
          " (a client reading its @", node.header.snapshot_name, " export?)"));
    }
    if (auto s = env->Remove(node.path); !s.ok()) return s;
  }
  if (auto s = env->SyncDir(DirName(node.path)); !s.ok()) return s;
  if (node.header.parent_format != ParentFormat::kStrata) return absl::OkStatus();
  const std::string parent = ResolvePath(DirName(node.path), node.header.parent_path);
  auto pruned = PruneChildRegistry(env, AbsoluteDir(parent), [&](const RegisteredChild& c) {
    return c.child_uuid == node.header.uuid;
  });
  return pruned.status();
}

}  // namespace

absl::StatusOr<SnapshotTree> ReadSnapshotTree(Env* env, const std::string& top_path) {
  const std::vector<ChainLayer> layers = ReadChainHeaders(env, top_path);
  if (layers.empty()) return ReadLayerHeader(env, top_path).status();
  absl::flat_hash_set<Uuid> chain;
  for (const ChainLayer& layer : layers) chain.insert(layer.header.uuid);
  const LayerIndex index = IndexLayers(env, AllSearchDirs(env, ChainDirs(top_path, layers)));
  SnapshotTree tree;
  const ChainLayer& bottom = layers.back();
  std::vector<ChainLayer> roots = {bottom};
  if (bottom.header.parent_format == ParentFormat::kRaw) {
    tree.raw_base = ResolvePath(DirName(bottom.path), bottom.header.parent_path);
    if (auto it = index.by_raw.find(AbsolutePath(tree.raw_base)); it != index.by_raw.end()) {
      roots = it->second;
      std::sort(roots.begin(), roots.end(), [](const ChainLayer& a, const ChainLayer& b) {
        return a.header.created_ns < b.header.created_ns;
      });
    }
  }
  absl::flat_hash_set<Uuid> seen;
  for (const ChainLayer& root : roots) {
    if (seen.insert(root.header.uuid).second) {
      tree.roots.push_back(Grow(env, index, chain, root, &seen));
    }
  }
  return tree;
}

bool IsOffChainSnapshot(Env* env, const std::string& top_path, const std::string& name) {
  auto tree = ReadSnapshotTree(env, top_path);
  return tree.ok() && !OffChainSnapshots(*tree, name).empty();
}

absl::StatusOr<OffChainDeletion> DeleteOffChainSnapshot(Env* env, const std::string& top_path,
                                                        const std::string& name,
                                                        const Progress& progress) {
  auto tree = ReadSnapshotTree(env, top_path);
  if (!tree.ok()) return tree.status();
  const std::vector<const TreeNode*> found = OffChainSnapshots(*tree, name);
  if (found.empty()) {
    return absl::NotFoundError(absl::StrCat("no snapshot '", name, "' off the chain of ",
                                            top_path, " (`strata tree ", top_path,
                                            "` shows every snapshot)"));
  }
  if (found.size() > 1) {
    std::vector<std::string> paths;
    for (const TreeNode* node : found) paths.push_back(node->path);
    return absl::FailedPreconditionError(absl::StrCat(
        "several snapshots off the chain of ", top_path, " are named '", name, "' (",
        absl::StrJoin(paths, ", "), "): delete one through a disk whose chain it is on"));
  }
  const TreeNode& x = *found.front();
  const std::string what = absl::StrCat("cannot delete snapshot '", name, "' (", x.path, ")");
  if (x.children.size() > 1) {
    std::vector<std::string> paths;
    for (const TreeNode& child : x.children) paths.push_back(child.path);
    return absl::FailedPreconditionError(absl::StrCat(
        what, ": ", x.children.size(), " layers stand on it (", absl::StrJoin(paths, ", "),
        "); delete all but one of them first"));
  }
  const Uuid keep = x.children.empty() ? Uuid{} : x.children.front().header.uuid;
  std::vector<std::string> known = ChainDirs(env, top_path);
  AddUnique(&known, AbsoluteDir(x.path));
  if (auto s = RefuseOtherChildren(env, SearchDirs(env, known), x.path, x.header.uuid, keep,
                                   what);
      !s.ok()) {
    return s;
  }
  OffChainDeletion done{.path = x.path};
  if (x.children.empty()) {
    if (auto s = RemoveLeaf(env, x); !s.ok()) return s;
    return done;
  }
  auto merged = CommitLayer(env, x.children.front().path, progress);
  if (!merged.ok()) return merged.status();
  done.merged_into = merged->merged_into;
  done.bytes_copied = merged->bytes_copied;
  return done;
}

}  // namespace strata
