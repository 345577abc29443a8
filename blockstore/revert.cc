#include "blockstore/revert.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "blockstore/chain.h"
#include "blockstore/children.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

// A failure before the commit point, which the caller undid.
absl::Status Unchanged(const absl::Status& cause) {
  return absl::Status(cause.code(), absl::StrCat(cause.message(),
                                                 "; the revert did not happen, the disk is "
                                                 "unchanged"));
}

absl::Status Prefixed(absl::string_view what, const absl::Status& cause) {
  return absl::Status(cause.code(), absl::StrCat(what, ": ", cause.message()));
}

// Whether the disk `top_path` (header `top`) is registered as a child of its parent: a disk
// created by `strata create -b` on a snapshot, maybe from another directory.
bool IsRegistered(Env* env, const std::string& top_path, const LayerHeader& top) {
  if (top.parent_format != ParentFormat::kStrata) return false;
  const std::string parent = ResolvePath(DirName(top_path), top.parent_path);
  for (const RegisteredChild& c : ReadChildRegistry(env, AbsoluteDir(parent))) {
    if (c.child_uuid == top.uuid) return true;
  }
  return false;
}

// A registered disk reverted onto another snapshot is registered there before its new layer
// exists (as `create -b` registers), so a merge into that snapshot finds it.
absl::Status RegisterOnNewParent(Env* env, const std::string& top_path, const LayerHeader& top,
                                 const std::string& new_parent, LayerCreateParams* params) {
  if (params->parent_uuid == top.parent_uuid || !IsRegistered(env, top_path, top)) {
    return absl::OkStatus();
  }
  params->uuid = NewUuid();
  return RegisterChildUnlessReadOnly(env, new_parent, params->parent_uuid, top_path,
                                     params->uuid);
}

// Step 1: checks the top and the target, then creates the new layer at RevertPendingPath().
// REQUIRES: the caller holds the top's exclusive lock and the chain is recovered.
absl::Status CreateRevertLayer(Env* env, const std::string& top_path,
                               const std::string& snapshot_name, LayerHeader* old_top) {
  auto top = ReadLayerHeader(env, top_path);
  if (!top.ok()) return Unchanged(top.status());
  const LayerHeader& target = *top;
  *old_top = target;
  if (target.state != LayerState::kActive) {
    return Unchanged(absl::FailedPreconditionError(absl::StrCat(top_path,
                                                                " is not an active layer")));
  }
  LayerCreateParams params = EmptyLayerOn(target);
  // Going back to a snapshot goes back to its size too (a disk grown since shrinks to it); a
  // disk with no parent keeps its own.
  if (target.parent_format != ParentFormat::kNone) params.virtual_size = target.parent_size;
  if (!snapshot_name.empty()) {
    // Walk down to the named snapshot.
    std::string path = top_path;
    LayerHeader h = target;
    for (;;) {
      if (h.parent_format != ParentFormat::kStrata) {
        return Unchanged(absl::NotFoundError(absl::StrCat("no snapshot '", snapshot_name,
                                                          "' in the chain of ", top_path)));
      }
      path = ResolvePath(DirName(path), h.parent_path);
      auto next = ReadLayerHeader(env, path);
      if (!next.ok()) return Unchanged(next.status());
      h = *next;
      if (h.snapshot_name == snapshot_name) break;
    }
    params.parent_path = ParentLink(DirName(top_path), path);
    params.parent_uuid = h.uuid;
    params.virtual_size = params.parent_size = h.virtual_size;
    if (auto s = RegisterOnNewParent(env, top_path, target, path, &params); !s.ok()) {
      return Unchanged(s);
    }
  }
  const std::string pending = RevertPendingPath(top_path);
  // Recovery removed any leftover of an interrupted revert; one whose clean-up failed while
  // this process held the top's lock is ours too.
  (void)env->Remove(pending);
  auto fresh = Layer::Create(env, pending, params);  // removes a half-created file itself
  if (!fresh.ok()) return Unchanged(Prefixed(absl::StrCat("creating ", pending), fresh.status()));
  return absl::OkStatus();
}

// Undoes step 1. Best effort: RecoverChain removes the file at the next writable open.
void RemoveRevertLayer(Env* env, const std::string& top_path) {
  if (env->Remove(RevertPendingPath(top_path)).ok()) (void)env->SyncDir(DirName(top_path));
}

// Step 3, the commit point; undoes step 1 when it fails.
absl::Status RenameRevertLayer(Env* env, const std::string& top_path) {
  const std::string pending = RevertPendingPath(top_path);
  absl::Status s = env->Rename(pending, top_path);
  if (s.ok()) return s;
  RemoveRevertLayer(env, top_path);
  return Unchanged(Prefixed(absl::StrCat("renaming ", pending, " over ", top_path), s));
}

// After the commit point: the rename made durable, and the discarded layer's registration
// (when it had one and the disk now stands on another parent) forgotten.
absl::Status SyncRevert(Env* env, const std::string& top_path, const LayerHeader& old_top) {
  if (old_top.parent_format == ParentFormat::kStrata) {
    // Best effort: an entry left behind is a gone child, which makes merges into the old
    // parent refuse until `check --repair` forgets it; never one that hides a child.
    const std::string parent = ResolvePath(DirName(top_path), old_top.parent_path);
    (void)PruneChildRegistry(env, AbsoluteDir(parent), [&](const RegisteredChild& c) {
      return c.child_uuid == old_top.uuid && !StillStanding(env, c);
    });
  }
  absl::Status s = env->SyncDir(DirName(top_path));
  if (s.ok()) return s;
  return absl::Status(s.code(), absl::StrCat("reverted, but syncing directory ", DirName(top_path),
                                             " failed: ", s.message(),
                                             ": a crash of the host may bring the discarded "
                                             "layer back"));
}

}  // namespace

std::string RevertPendingPath(const std::string& top_path) {
  return absl::StrCat(DirName(top_path), "/.", BaseName(top_path), ".revert");
}

absl::Status Revert(Env* env, const std::string& top_path, const std::string& snapshot_name) {
  LockSet locks;
  if (auto r = RecoverChain(env, top_path, &locks); !r.ok()) return r.status();
  LayerHeader old_top;
  if (auto s = CreateRevertLayer(env, top_path, snapshot_name, &old_top); !s.ok()) return s;
  if (auto s = RenameRevertLayer(env, top_path); !s.ok()) return s;
  return SyncRevert(env, top_path, old_top);
}

absl::Status RevertServed(std::unique_ptr<Chain>* chain, const std::string& snapshot_name) {
  Chain& served = **chain;
  Env* env = served.env();
  const std::string top = served.top_path();  // a copy: `served` closes at step 4
  if (!served.writable()) {
    return absl::FailedPreconditionError(absl::StrCat(top, " is open read-only"));
  }
  // What the served chain acknowledged is then in its files, which stay as they are until
  // the commit point, and its own open file after it.
  if (auto s = served.Flush(); !s.ok()) {
    return Unchanged(Prefixed(absl::StrCat("flushing ", top, " first"), s));
  }
  // Step 1. The served chain holds the top's lock and recovered the chain when it opened.
  LayerHeader old_top;
  if (auto s = CreateRevertLayer(env, top, snapshot_name, &old_top); !s.ok()) return s;
  // Step 2.
  ChainOptions options = served.options();
  options.top_file = RevertPendingPath(top);
  auto reverted = Chain::Open(top, options);
  if (!reverted.ok()) {
    RemoveRevertLayer(env, top);
    return Unchanged(Prefixed(absl::StrCat("opening the reverted chain on ", options.top_file),
                              reverted.status()));
  }
  // Step 3.
  if (auto s = RenameRevertLayer(env, top); !s.ok()) return s;
  // Step 4. In memory only: nothing here can fail.
  (*reverted)->TopFileRenamed();
  chain->swap(*reverted);
  reverted->reset();  // the discarded layer's last descriptor
  return SyncRevert(env, top, old_top);
}

}  // namespace strata
