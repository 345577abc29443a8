#include "blockstore/snapshot_files.h"

#include "absl/strings/ascii.h"
#include "absl/strings/match.h"
#include "absl/strings/str_cat.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

std::string Stem(const std::string& top_path) {
  std::string base = BaseName(top_path);
  if (absl::EndsWith(base, ".strata")) base.resize(base.size() - 7);
  return base;
}

// True when `path` is step 2's link: another name of the still-active layer `uuid`.
bool IsLinkTo(Env* env, const std::string& path, const Uuid& uuid) {
  auto h = ReadLayerHeader(env, path);
  return h.ok() && h->uuid == uuid && h->state == LayerState::kActive;
}

}  // namespace

std::string PendingLayerPath(const std::string& top_path) {
  return absl::StrCat(DirName(top_path), "/.", BaseName(top_path), ".new");
}

absl::Status ValidateSnapshotName(absl::string_view name) {
  bool ok = !name.empty() && name.size() <= 64 && name[0] != '.';
  for (char c : name) {
    ok = ok && (absl::ascii_isalnum(static_cast<unsigned char>(c)) || c == '.' || c == '_' ||
                c == '-');
  }
  if (!ok) {
    return absl::InvalidArgumentError(absl::StrCat(
        "bad snapshot name '", name, "': use 1-64 of A-Z a-z 0-9 . _ -, not starting with '.'"));
  }
  return absl::OkStatus();
}

std::string SnapshotPath(const std::string& top_path, absl::string_view name) {
  return absl::StrCat(DirName(top_path), "/", Stem(top_path), "@", name, ".strata");
}

absl::Status PrepareNextLayer(Env* env, const Layer& active, const std::string& top_path,
                              const std::string& name) {
  const LayerHeader& h = active.header();
  std::string frozen_path = SnapshotPath(top_path, name);
  std::string pending = PendingLayerPath(top_path);
  bool linked = env->Exists(frozen_path);
  if (linked && !IsLinkTo(env, frozen_path, h.uuid)) {
    return absl::AlreadyExistsError(absl::StrCat("snapshot file ", frozen_path, " exists"));
  }
  // Step 1, unless done already for this very snapshot.
  auto existing = ReadLayerHeader(env, pending);
  if (!existing.ok() || existing->parent_uuid != h.uuid ||
      existing->parent_path != BaseName(frozen_path) || existing->state != LayerState::kActive) {
    LayerCreateParams params;
    params.virtual_size = h.virtual_size;
    params.cluster_size = h.cluster_size;
    params.sub_block_size = h.sub_block_size;
    params.parent_format = ParentFormat::kStrata;
    params.parent_path = BaseName(frozen_path);
    params.parent_uuid = h.uuid;
    params.parent_size = h.virtual_size;
    params.journal_size = h.journal_size;
    (void)env->Remove(pending);  // prepared for another name, or left by a crash
    auto next = Layer::Create(env, pending, params);
    if (!next.ok()) return next.status();
  }
  if (linked) return absl::OkStatus();
  // Step 2.
  absl::Status s = env->Link(top_path, frozen_path);
  if (s.ok()) s = env->SyncDir(DirName(top_path));
  if (!s.ok()) AbandonNextLayer(env, active, top_path, name);
  return s;
}

void AbandonNextLayer(Env* env, const Layer& active, const std::string& top_path,
                      const std::string& name) {
  std::string frozen_path = SnapshotPath(top_path, name);
  if (IsLinkTo(env, frozen_path, active.header().uuid)) (void)env->Remove(frozen_path);
  (void)env->Remove(PendingLayerPath(top_path));
  (void)env->SyncDir(DirName(top_path));
}

absl::Status StackNextLayer(Env* env, const std::string& top_path) {
  std::string pending = PendingLayerPath(top_path);
  if (env->Exists(pending)) {
    if (auto s = env->Rename(pending, top_path); !s.ok()) return s;
  }
  return env->SyncDir(DirName(top_path));
}

absl::StatusOr<std::string> RecoverInterruptedSnapshot(Env* env, const std::string& top_path,
                                                       LockSet* locks) {
  std::string pending = PendingLayerPath(top_path);
  if (!env->Exists(pending)) return std::string();
  auto top = ReadLayerHeader(env, top_path);
  if (!top.ok()) return top.status();
  auto next = ReadLayerHeader(env, pending);
  if (top->state == LayerState::kFrozen && next.ok() && next->parent_uuid == top->uuid) {
    // Past step 3: the snapshot exists; finish step 4 (unless a live server still holds the
    // new layer: it finishes it itself).
    if (locks != nullptr) {
      if (auto s = locks->Exclusive(env, pending); !s.ok()) return s;
    }
    if (auto s = StackNextLayer(env, top_path); !s.ok()) return s;
    return absl::StrCat("completed the interrupted snapshot '", top->snapshot_name, "' of ",
                        top_path);
  }
  if (top->state == LayerState::kFrozen) {
    return absl::DataLossError(absl::StrCat(top_path, " is frozen and ", pending,
                                            " is not its child: repair by hand"));
  }
  // Before step 3: roll back. Step 2's link is an active `<stem>@NAME.strata` (no snapshot
  // file is active otherwise) of the layer being snapshotted: the top, or the new layer's
  // parent when something (an older strata's revert) replaced the top meanwhile; then the
  // link is the only name left of the discarded layer.
  auto names = env->ListDir(DirName(top_path));
  if (!names.ok()) return names.status();
  std::string prefix = Stem(top_path) + "@";
  for (const std::string& name : *names) {
    if (!absl::StartsWith(name, prefix) || !absl::EndsWith(name, ".strata")) continue;
    std::string path = DirName(top_path) + "/" + name;
    if (IsLinkTo(env, path, top->uuid) || (next.ok() && IsLinkTo(env, path, next->parent_uuid))) {
      if (auto s = env->Remove(path); !s.ok()) return s;
    }
  }
  if (auto s = env->Remove(pending); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(top_path)); !s.ok()) return s;
  return absl::StrCat("rolled back an interrupted snapshot of ", top_path);
}

}  // namespace strata
