#include "blockstore/commit.h"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "blockstore/children.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/layer.h"
#include "blockstore/recovery.h"

namespace strata {
namespace {

constexpr uint64_t kMaxRun = 64ull << 20;     // one copy_file_range call at most

// The merge journal in memory: its fields (format.h, MergeJournalRecord) with the paths
// resolved.
struct MergeJournal {
  MergePhase phase = MergePhase::kCopy;
  // Paths to use. On disk C by file name (the journal lives beside C), P as a child records
  // its parent (ParentLink): both resolve the same from any directory.
  std::string child_path;
  std::string parent_path;
  Uuid child_uuid{};
  Uuid parent_uuid{};
  bool child_was_active = false;
  // How many of C's index entries, taken in the copy order (CopyInto), are durably in P. C
  // does not change during the merge, so the order is the same on every run.
  uint64_t copied_entries = 0;
  // Absolute directories searched for C's children at the relink, fixed when the merge began.
  std::vector<std::string> dirs;
};

// The journal lives beside C's path: a file in the chain from start to end (P moves there).
std::string JournalPathOf(const MergeJournal& j) { return MergeJournalPath(j.child_path); }

std::string Encode(const MergeJournal& j) {
  MergeJournalRecord r{j.phase, BaseName(j.child_path),
                       ParentLink(DirName(j.child_path), j.parent_path), j.child_uuid,
                       j.parent_uuid, j.child_was_active, j.copied_entries, {}};
  // The journal's own directory as ".": a directory moved or copied with an unfinished merge
  // in it then resumes on its own files, never on those where it used to be.
  const std::string own_dir = AbsoluteDir(j.child_path);
  for (const std::string& dir : j.dirs) {
    r.dirs.push_back(dir == own_dir ? std::string(kMergeJournalOwnDir) : dir);
  }
  std::string text;
  r.EncodeTo(&text);
  return text;
}

absl::StatusOr<MergeJournal> ReadJournal(Env* env, const std::string& path) {
  auto text = ReadWholeFile(env, path);
  if (!text.ok()) return text.status();
  MergeJournalRecord r;
  if (absl::Status s = r.DecodeFrom(*text); !s.ok()) {
    return absl::Status(s.code(), absl::StrCat("merge journal ", path, ": ", s.message()));
  }
  if (MergeJournalPath(r.child) != BaseName(path)) {
    return absl::DataLossError(absl::StrCat(
        "merge journal ", path, ": does not name the layer beside it and its parent"));
  }
  MergeJournal j{r.phase, ResolvePath(DirName(path), r.child),
                 ResolvePath(DirName(path), r.parent), r.child_uuid, r.parent_uuid,
                 r.child_was_active, r.copied_entries, {}};
  for (const std::string& dir : r.dirs) {
    j.dirs.push_back(dir == kMergeJournalOwnDir ? AbsoluteDir(path) : dir);
  }
  return j;
}

// Replaces the journal atomically: a torn write leaves the previous version.
absl::Status WriteJournal(Env* env, const MergeJournal& j) {
  std::string path = JournalPathOf(j);
  std::string tmp = path + ".tmp";
  (void)env->Remove(tmp);
  auto file = env->Open(tmp, {.writable = true, .create = true});
  if (!file.ok()) return file.status();
  absl::Status s = (*file)->Write(0, Encode(j));
  if (s.ok()) s = (*file)->Sync();
  file->reset();
  if (s.ok()) s = env->Rename(tmp, path);
  if (s.ok()) s = env->SyncDir(DirName(path));
  return s;
}

// Copy phase: C's index entries in slot order, from journal.copied_entries on, into P.
absl::Status CopyInto(Env* env, Layer* child, Layer* parent, MergeJournal* journal,
                      const Progress& progress, uint64_t batch_bytes, uint64_t* bytes_copied) {
  const uint32_t sbs = child->sub_block_size();
  const uint32_t per_cluster = child->header().SubBlocksPerCluster();
  std::vector<std::pair<uint64_t, ClusterEntry>> work;
  child->index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
    work.emplace_back(cluster, e);
  });
  // In the child's slot order, new parent slots are allocated in the same order: both sides
  // of a copy run are contiguous, however the child's clusters were written.
  std::stable_sort(work.begin(), work.end(),
                   [](const auto& a, const auto& b) { return a.second.slot < b.second.slot; });
  work.erase(work.begin(), work.begin() + static_cast<long>(
                                             std::min<uint64_t>(journal->copied_entries, work.size())));
  uint64_t total = 0;
  for (const auto& [cluster, e] : work) {
    total += uint64_t{static_cast<uint32_t>(__builtin_popcount(e.present))} * sbs;
  }
  uint64_t done = 0, since_flush = 0;
  size_t journal_done_base = 0;  // entries of `work` already counted in the journal
  // A run of sub-blocks contiguous in both files becomes one copy.
  uint64_t run_from = 0, run_to = 0, run_len = 0;
  auto emit = [&]() -> absl::Status {
    if (run_len == 0) return absl::OkStatus();
    absl::Status s = env->CopyRange(child->file(), run_from, parent->file(), run_to, run_len);
    // Start writing the run back now, without waiting: the batch's flush then finds most of
    // it on disk, and reading the next runs overlaps with writing this one.
    if (s.ok()) {
      (void)sync_file_range(parent->file()->fd(), static_cast<off64_t>(run_to),
                            static_cast<off64_t>(run_len), SYNC_FILE_RANGE_WRITE);
    }
    run_len = 0;
    return s;
  };
  for (size_t i = 0; i < work.size(); ++i) {
    auto [cluster, e] = work[i];
    ClusterEntry p = parent->Get(cluster);
    if (e.present != 0 && p.slot == 0) {
      auto slot = parent->AllocateSlot();
      if (!slot.ok()) return slot.status();
      p.slot = *slot;
    }
    for (uint32_t sb = 0; sb < per_cluster; ++sb) {
      if (!(e.present & (1u << sb))) continue;
      uint64_t from = child->DataOffset(e.slot, sb), to = parent->DataOffset(p.slot, sb);
      if (run_len > 0 && run_from + run_len == from && run_to + run_len == to &&
          run_len < kMaxRun) {
        run_len += sbs;
      } else {
        if (auto s = emit(); !s.ok()) return s;
        run_from = from, run_to = to, run_len = sbs;
      }
    }
    p.present = (p.present | e.present) & ~e.zero;
    p.zero = (p.zero | e.zero) & ~e.present;
    if (p.present == 0) p.slot = 0;
    parent->SetEntry(cluster, p);
    uint64_t bytes = uint64_t{static_cast<uint32_t>(__builtin_popcount(e.present))} * sbs;
    done += bytes;
    since_flush += bytes;
    bool last = i + 1 == work.size();
    if (since_flush >= batch_bytes || last) {
      if (auto s = emit(); !s.ok()) return s;
      // Invariant: progress is recorded only after P's copies and index are durable.
      if (auto s = parent->Flush(); !s.ok()) return s;
      journal->copied_entries += i + 1 - journal_done_base;
      journal_done_base = i + 1;
      if (auto s = WriteJournal(env, *journal); !s.ok()) return s;
      since_flush = 0;
      if (progress) progress(done, total);
    }
  }
  *bytes_copied = done;
  return absl::OkStatus();
}

absl::Status Lock(Env* env, LockSet* locks, const std::string& path) {
  return locks ? locks->Exclusive(env, path) : absl::OkStatus();
}

// Locks C and P and checks that they are the layers the journal names, before anything is
// changed: a journal must never act on other files (moved, replaced, or another disk's).
// Returns true when P already sits at C's path (the relink's final rename happened).
absl::StatusOr<bool> LockJournalLayers(Env* env, const MergeJournal& j, LockSet* locks) {
  auto check = [&](const std::string& path, const Uuid& want) -> absl::StatusOr<Uuid> {
    if (auto s = Lock(env, locks, path); !s.ok()) return s;
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) return h.status();
    if (h->uuid != want && !(path == j.child_path && h->uuid == j.parent_uuid)) {
      return absl::FailedPreconditionError(absl::StrCat(
          "merge journal ", JournalPathOf(j), " names ", path, " as layer ", UuidToString(want),
          " but that file is layer ", UuidToString(h->uuid),
          ": refusing to touch it (were files moved or replaced?)"));
    }
    return h->uuid;
  };
  auto at_c = check(j.child_path, j.child_uuid);
  if (!at_c.ok()) return at_c.status();
  if (*at_c == j.parent_uuid) return j.phase == MergePhase::kRelink;
  if (auto at_p = check(j.parent_path, j.parent_uuid); !at_p.ok()) return at_p.status();
  return false;
}

// Copy phase: P fenced, C's data copied in, P checkpointed; then the journal says relink.
absl::StatusOr<uint64_t> CopyPhase(Env* env, MergeJournal* journal, const Progress& progress,
                                   uint64_t batch_bytes) {
  uint64_t copied = 0;
  {
    auto child = Layer::Open(env, journal->child_path, Layer::Mode::kReadOnly);
    if (!child.ok()) return child.status();
    auto parent = Layer::Open(env, journal->parent_path, Layer::Mode::kMergeTarget);
    if (!parent.ok()) return parent.status();
    // The fence: from here until the relink gives P C's state, P holds a mix of both layers,
    // so every open but a merge's refuses it (info, export, serve --read-only of P). It
    // journals like an active layer meanwhile: its journal's end is not known (0). A C that
    // grew (resize.h) grows P to its size in the same header write, before any copy lands
    // past P's old end: P then takes C's place at C's size.
    const uint64_t size = std::max((*parent)->header().virtual_size,
                                   (*child)->header().virtual_size);
    if ((*parent)->header().state != LayerState::kMerging ||
        (*parent)->header().virtual_size != size) {
      if (auto s = (*parent)->UpdateHeader([size](LayerHeader* h) {
            h->state = LayerState::kMerging;
            h->journal_end_seq = 0;
            h->virtual_size = size;
          });
          !s.ok()) {
        return s;
      }
    }
    if (auto s = CopyInto(env, child->get(), parent->get(), journal, progress, batch_bytes,
                          &copied);
        !s.ok()) {
      return s;
    }
  }
  // Reopening checkpoints the journal the copy appended to (FORMAT.md §2, rule 5), so P's
  // journal ends where it starts: the end a frozen header must record (journal_end_seq).
  auto parent = Layer::Open(env, journal->parent_path, Layer::Mode::kMergeTarget);
  if (!parent.ok()) return parent.status();
  if (auto s = (*parent)->UpdateHeader(
          [](LayerHeader* h) { h->journal_end_seq = h->journal_start_seq; });
      !s.ok()) {
    return s;
  }
  (*parent)->ReleaseUnusedSpace();
  journal->phase = MergePhase::kRelink;
  if (auto s = WriteJournal(env, *journal); !s.ok()) return s;
  return copied;
}

// Relink phase: P takes C's place — C's path, and C's state (active) or snapshot name and
// children (frozen). Every step is idempotent so a resume can repeat it; the rename over C's
// path is the last one. REQUIRES: LockJournalLayers checked both files.
absl::Status Relink(Env* env, const MergeJournal& j, LockSet* locks) {
  auto child = ReadLayerHeader(env, j.child_path);
  if (!child.ok()) return child.status();
  auto parent = ReadLayerHeader(env, j.parent_path);
  if (!parent.ok()) return parent.status();
  const bool moves = DirName(j.child_path) != DirName(j.parent_path);
  // P's own parent link must still resolve from C's directory.
  std::string link = parent->parent_path;
  if (parent->parent_format != ParentFormat::kNone && moves) {
    link = ParentLink(DirName(j.child_path), ResolvePath(DirName(j.parent_path), link));
  }
  // One header write ends the fence: P goes from merging to C's state.
  if (auto s = EditLayerHeader(env, j.parent_path, [&](LayerHeader* h) {
        h->state = child->state;
        h->snapshot_name = child->snapshot_name;
        h->frozen_ns = child->frozen_ns;
        h->parent_path = link;
        if (child->state == LayerState::kActive) h->journal_end_seq = 0;
      });
      !s.ok()) {
    return s;
  }
  // C's children keep their parent path (P moves there) and learn P's UUID.
  auto children = FindChildren(env, j.dirs, j.child_uuid);
  if (!children.ok()) return children.status();
  for (const Child& c : *children) {
    if (auto s = Lock(env, locks, c.path); !s.ok()) return s;
    if (auto s = EditLayerHeader(env, c.path, [&](LayerHeader* h) { h->parent_uuid = j.parent_uuid; });
        !s.ok()) {
      return s;
    }
  }
  if (auto s = env->Rename(j.parent_path, j.child_path); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(j.child_path)); !s.ok()) return s;
  // A rename across directories is durable only once both are synced.
  return moves ? env->SyncDir(DirName(j.parent_path)) : absl::OkStatus();
}

absl::StatusOr<CommitResult> RunCommit(Env* env, MergeJournal journal, LockSet* locks,
                                       const Progress& progress, uint64_t batch_bytes) {
  CommitResult result;
  auto renamed = LockJournalLayers(env, journal, locks);
  if (!renamed.ok()) return renamed.status();
  if (!*renamed) {
    if (journal.phase == MergePhase::kCopy) {
      auto copied = CopyPhase(env, &journal, progress, batch_bytes);
      if (!copied.ok()) return copied.status();
      result.bytes_copied = *copied;
    }
    if (auto s = Relink(env, journal, locks); !s.ok()) return s;
  }
  result.merged_into = journal.child_path;
  if (auto s = env->Remove(JournalPathOf(journal)); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(JournalPathOf(journal))); !s.ok()) return s;
  return result;
}

// CommitLayer once the chain is recovered and its top locked in `locks`; `chain_dirs`: the
// directories of the chain the commit is asked for in.
absl::StatusOr<CommitResult> CommitRecovered(Env* env, const std::string& layer_path,
                                             const std::vector<std::string>& chain_dirs,
                                             LockSet* locks, const Progress& progress,
                                             uint64_t batch_bytes) {
  auto child = ReadLayerHeader(env, layer_path);
  if (!child.ok()) return child.status();
  if (child->parent_format != ParentFormat::kStrata) {
    return absl::FailedPreconditionError(absl::StrCat(
        layer_path, " has no strata parent to commit into (its parent is ",
        Name(child->parent_format), ")"));
  }
  std::string parent_path = ResolvePath(DirName(layer_path), child->parent_path);
  auto parent = ReadLayerHeader(env, parent_path);
  if (!parent.ok()) return parent.status();
  if (parent->uuid != child->parent_uuid) {
    return absl::FailedPreconditionError(absl::StrCat(
        parent_path, " is not the parent ", layer_path, " was created on (UUID differs)"));
  }
  if (parent->state != LayerState::kFrozen) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into ", parent_path, ": it is ", Name(parent->state),
        ", not a frozen snapshot"));
  }
  std::vector<std::string> known = {AbsoluteDir(layer_path), AbsoluteDir(parent_path)};
  for (const std::string& dir : chain_dirs) AddUnique(&known, dir);
  std::vector<std::string> dirs = SearchDirs(env, known);
  // Other children of P would silently change content: refuse.
  auto children = FindChildren(env, dirs, parent->uuid);
  if (!children.ok()) return children.status();
  std::vector<std::string> others;
  for (const Child& c : *children) {
    if (c.uuid != child->uuid) others.push_back(c.path);
  }
  if (!others.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into ", parent_path, ": it has other children (",
        absl::StrJoin(others, ", "), ") whose content would change"));
  }
  MergeJournal journal;
  journal.child_path = layer_path;
  journal.parent_path = parent_path;
  journal.child_uuid = child->uuid;
  journal.parent_uuid = parent->uuid;
  journal.child_was_active = child->state == LayerState::kActive;
  journal.dirs = dirs;
  // Lock before writing the journal: a served chain must not see one appear.
  if (auto s = Lock(env, locks, layer_path); !s.ok()) return s;
  if (auto s = Lock(env, locks, parent_path); !s.ok()) return s;
  if (auto s = WriteJournal(env, journal); !s.ok()) return s;
  return RunCommit(env, journal, locks, progress, batch_bytes);
}

}  // namespace

absl::StatusOr<std::string> FinishInterruptedCommit(Env* env, const std::string& journal_path,
                                                    LockSet* locks, const Progress& progress) {
  auto journal = ReadJournal(env, journal_path);
  if (!journal.ok()) return journal.status();
  auto done = RunCommit(env, *journal, locks, progress, kCommitBatchBytes);
  if (!done.ok()) {
    return absl::Status(done.status().code(),
                        absl::StrCat("finishing the interrupted commit of ", journal->child_path,
                                     " into ", journal->parent_path, ": ",
                                     done.status().message()));
  }
  return absl::StrCat("completed the interrupted commit of ", journal->child_path, " into ",
                      journal->parent_path);
}

absl::StatusOr<CommitResult> CommitLayer(Env* env, const std::string& layer_path,
                                         const Progress& progress, uint64_t batch_bytes) {
  LockSet locks;
  if (auto r = RecoverChain(env, layer_path, &locks, progress); !r.ok()) return r.status();
  return CommitRecovered(env, layer_path, ChainDirs(env, layer_path), &locks, progress,
                         batch_bytes);
}

absl::StatusOr<CommitResult> DeleteSnapshot(Env* env, const std::string& top_path,
                                            const std::string& name, const Progress& progress) {
  LockSet locks;
  if (auto r = RecoverChain(env, top_path, &locks, progress); !r.ok()) return r.status();
  std::string above = top_path;
  for (int depth = 0; depth < 65536; ++depth) {
    auto h = ReadLayerHeader(env, above);
    if (!h.ok()) return h.status();
    if (h->parent_format != ParentFormat::kStrata) break;
    std::string parent_path = ResolvePath(DirName(above), h->parent_path);
    auto p = ReadLayerHeader(env, parent_path);
    if (!p.ok()) return p.status();
    if (p->snapshot_name == name) {
      return CommitRecovered(env, above, ChainDirs(env, top_path), &locks, progress,
                             kCommitBatchBytes);
    }
    above = parent_path;
  }
  return absl::NotFoundError(absl::StrCat("no snapshot '", name, "' in the chain of ", top_path));
}

std::string RevertPendingPath(const std::string& top_path) {
  return absl::StrCat(DirName(top_path), "/.", BaseName(top_path), ".revert");
}

absl::Status Revert(Env* env, const std::string& top_path, const std::string& snapshot_name) {
  LockSet locks;
  if (auto r = RecoverChain(env, top_path, &locks); !r.ok()) return r.status();
  auto top = ReadLayerHeader(env, top_path);
  if (!top.ok()) return top.status();
  const LayerHeader& target = *top;
  if (target.state != LayerState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat(top_path, " is not an active layer"));
  }
  LayerCreateParams params;
  // Going back to a snapshot goes back to its size too (a disk grown since shrinks to it); a
  // disk with no parent keeps its own.
  params.virtual_size =
      target.parent_format == ParentFormat::kNone ? target.virtual_size : target.parent_size;
  params.cluster_size = target.cluster_size;
  params.sub_block_size = target.sub_block_size;
  params.journal_size = target.journal_size;
  params.parent_format = target.parent_format;
  params.parent_path = target.parent_path;
  params.parent_uuid = target.parent_uuid;
  params.parent_size = target.parent_size;
  if (!snapshot_name.empty()) {
    // Walk down to the named snapshot.
    std::string path = top_path;
    LayerHeader h = target;
    for (;;) {
      if (h.parent_format != ParentFormat::kStrata) {
        return absl::NotFoundError(absl::StrCat("no snapshot '", snapshot_name,
                                                "' in the chain of ", top_path));
      }
      path = ResolvePath(DirName(path), h.parent_path);
      auto next = ReadLayerHeader(env, path);
      if (!next.ok()) return next.status();
      h = *next;
      if (h.snapshot_name == snapshot_name) break;
    }
    params.parent_path = ParentLink(DirName(top_path), path);
    params.parent_uuid = h.uuid;
    params.virtual_size = params.parent_size = h.virtual_size;
  }
  // RecoverChain removed any leftover of an earlier revert: the name is free.
  std::string pending = RevertPendingPath(top_path);
  auto fresh = Layer::Create(env, pending, params);
  if (!fresh.ok()) return fresh.status();
  fresh->reset();
  if (auto s = env->Rename(pending, top_path); !s.ok()) return s;
  return env->SyncDir(DirName(top_path));
}

absl::Status RecordBranchDir(Env* env, const std::string& parent_path,
                             const std::string& child_path) {
  const std::string parent_dir = AbsoluteDir(parent_path), child_dir = AbsoluteDir(child_path);
  std::vector<std::string> dirs = RecordedBranchDirs(env, parent_dir);
  if (parent_dir == child_dir ||
      std::find(dirs.begin(), dirs.end(), child_dir) != dirs.end()) {
    return absl::OkStatus();
  }
  dirs.push_back(child_dir);
  const std::string path = parent_dir + "/" + kBranchDirsFile, tmp = path + ".tmp";
  (void)env->Remove(tmp);
  auto file = env->Open(tmp, {.writable = true, .create = true});
  if (!file.ok()) return file.status();
  absl::Status s = (*file)->Write(0, absl::StrCat(absl::StrJoin(dirs, "\n"), "\n"));
  if (s.ok()) s = (*file)->Sync();
  file->reset();
  if (s.ok()) s = env->Rename(tmp, path);
  if (s.ok()) s = env->SyncDir(parent_dir);
  return s;
}

}  // namespace strata
