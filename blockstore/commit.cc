#include "blockstore/commit.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

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
  // Into the raw base (CommitIntoBase): P is the base, which has no UUID (parent_uuid nil).
  bool into_base = false;
  Uuid successor_uuid{};  // the new empty layer that takes C's path; nil: C's path goes
};

// The journal lives beside a file that is in the chain from start to end: C's path for a
// merge into a strata parent (P moves there), the raw base's for a commit into it (C leaves).
std::string JournalPathOf(const MergeJournal& j) {
  return MergeJournalPath(j.into_base ? j.parent_path : j.child_path);
}

std::string Encode(const MergeJournal& j) {
  // Both files as a child names its parent from the journal's directory: the one the journal
  // lies beside by its file name.
  const std::string dir = DirName(JournalPathOf(j));
  MergeJournalRecord r{j.phase,          ParentLink(dir, j.child_path),
                       ParentLink(dir, j.parent_path), j.child_uuid,
                       j.parent_uuid,    j.child_was_active,
                       j.copied_entries, {},
                       j.into_base,      j.successor_uuid};
  // The journal's own directory as ".": a directory moved or copied with an unfinished merge
  // in it then resumes on its own files, never on those where it used to be.
  const std::string own_dir = AbsoluteDir(JournalPathOf(j));
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
  if (MergeJournalPath(r.into_base ? r.parent : r.child) != BaseName(path)) {
    return absl::DataLossError(absl::StrCat(
        "merge journal ", path, ": does not name the file beside it as ",
        r.into_base ? "the raw base" : "the layer merged"));
  }
  MergeJournal j{r.phase, ResolvePath(DirName(path), r.child),
                 ResolvePath(DirName(path), r.parent), r.child_uuid, r.parent_uuid,
                 r.child_was_active, r.copied_entries, {}, r.into_base, r.successor_uuid};
  for (const std::string& dir : r.dirs) {
    j.dirs.push_back(dir == kMergeJournalOwnDir ? AbsoluteDir(path) : dir);
  }
  return j;
}

// Replaces the journal atomically: a torn write leaves the previous version.
absl::Status WriteJournal(Env* env, const MergeJournal& j) {
  return ReplaceFile(env, JournalPathOf(j), Encode(j));
}

// Where CopyInto puts C's sub-blocks: P's slots (a merge into a strata parent) or their
// virtual offsets in a raw base (into the base).
class CopyTarget {
 public:
  virtual ~CopyTarget() = default;
  virtual File* file() = 0;
  // Takes C's entry `e` of `cluster` into the target's state (P's index; the base's zeroed
  // ranges) and returns where the cluster's data goes: sub-block s at that + s × sub-block.
  virtual absl::StatusOr<uint64_t> Take(uint64_t cluster, const ClusterEntry& e) = 0;
  // Makes every copy and Take so far durable.
  virtual absl::Status Flush() = 0;
  // Nothing at or past this offset is written: a raw base keeps its size, also where its last
  // sub-block is partial (the layer's sub-block there reaches past the disk's end).
  virtual uint64_t end() const { return UINT64_MAX; }
};

// P, a strata layer: C's present sub-blocks into P's slot for the cluster (a new one where P
// has none), C's zero marks become P's.
class LayerTarget final : public CopyTarget {
 public:
  explicit LayerTarget(Layer* parent) : parent_(parent) {}
  File* file() override { return parent_->file(); }
  absl::StatusOr<uint64_t> Take(uint64_t cluster, const ClusterEntry& e) override {
    ClusterEntry p = parent_->Get(cluster);
    if (e.present != 0 && p.slot == 0) {
      auto slot = parent_->AllocateSlot();
      if (!slot.ok()) return slot.status();
      p.slot = *slot;
    }
    const uint64_t data = parent_->DataOffset(p.slot, 0);
    p.present = (p.present | e.present) & ~e.zero;
    p.zero = (p.zero | e.zero) & ~e.present;
    if (p.present == 0) p.slot = 0;
    parent_->SetEntry(cluster, p);
    return data;
  }
  absl::Status Flush() override { return parent_->Flush(); }

 private:
  Layer* parent_;
};

// The raw base: C's data at its virtual offsets, C's zero marks punched out (the base stays
// sparse; written as zeros where the file system cannot punch), contiguous ones in one call.
class RawBaseTarget final : public CopyTarget {
 public:
  RawBaseTarget(File* base, uint64_t size, const LayerHeader& child)
      : base_(base), size_(size), child_(child) {}
  File* file() override { return base_; }
  uint64_t end() const override { return size_; }
  absl::StatusOr<uint64_t> Take(uint64_t cluster, const ClusterEntry& e) override {
    const uint64_t at = cluster * child_.cluster_size, sbs = child_.sub_block_size;
    for (uint32_t sb = 0; sb < child_.SubBlocksPerCluster(); ++sb) {
      if (!(e.zero & (1u << sb))) continue;
      if (zero_len_ > 0 && zero_from_ + zero_len_ == at + sb * sbs) {
        zero_len_ += sbs;
        continue;
      }
      if (auto s = ZeroRun(); !s.ok()) return s;
      zero_from_ = at + sb * sbs, zero_len_ = sbs;
    }
    return at;
  }
  absl::Status Flush() override {
    if (auto s = ZeroRun(); !s.ok()) return s;
    return base_->Sync();
  }

 private:
  absl::Status ZeroRun() {
    const uint64_t from = zero_from_, len = from >= size_ ? 0 : std::min(zero_len_, size_ - from);
    zero_len_ = 0;
    if (len == 0) return absl::OkStatus();
    if (base_->PunchHole(from, len).ok()) return absl::OkStatus();
    const std::string zeros(std::min<uint64_t>(len, kMaxRun), '\0');
    for (uint64_t done = 0; done < len; done += zeros.size()) {
      const uint64_t n = std::min<uint64_t>(zeros.size(), len - done);
      if (auto s = base_->Write(from + done, absl::string_view(zeros.data(), n)); !s.ok()) {
        return s;
      }
    }
    return absl::OkStatus();
  }

  File* base_;
  const uint64_t size_;
  const LayerHeader& child_;
  uint64_t zero_from_ = 0, zero_len_ = 0;  // zero marks not punched yet
};

// Copy phase: C's index entries in slot order, from journal.copied_entries on, into `target`.
absl::Status CopyInto(Env* env, Layer* child, CopyTarget* target, MergeJournal* journal,
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
    // A raw base's partial last sub-block: only the part inside the file.
    run_len = run_to >= target->end() ? 0 : std::min(run_len, target->end() - run_to);
    if (run_len == 0) return absl::OkStatus();
    absl::Status s = env->CopyRange(child->file(), run_from, target->file(), run_to, run_len);
    // Start writing the run back now, without waiting: the batch's flush then finds most of
    // it on disk, and reading the next runs overlaps with writing this one.
    if (s.ok()) {
      (void)sync_file_range(target->file()->fd(), static_cast<off64_t>(run_to),
                            static_cast<off64_t>(run_len), SYNC_FILE_RANGE_WRITE);
    }
    run_len = 0;
    return s;
  };
  for (size_t i = 0; i < work.size(); ++i) {
    auto [cluster, e] = work[i];
    auto data = target->Take(cluster, e);
    if (!data.ok()) return data.status();
    for (uint32_t sb = 0; sb < per_cluster; ++sb) {
      if (!(e.present & (1u << sb))) continue;
      uint64_t from = child->DataOffset(e.slot, sb), to = *data + uint64_t{sb} * sbs;
      if (run_len > 0 && run_from + run_len == from && run_to + run_len == to &&
          run_len < kMaxRun) {
        run_len += sbs;
      } else {
        if (auto s = emit(); !s.ok()) return s;
        run_from = from, run_to = to, run_len = sbs;
      }
    }
    uint64_t bytes = uint64_t{static_cast<uint32_t>(__builtin_popcount(e.present))} * sbs;
    done += bytes;
    since_flush += bytes;
    bool last = i + 1 == work.size();
    if (since_flush >= batch_bytes || last) {
      if (auto s = emit(); !s.ok()) return s;
      // Invariant: progress is recorded only after P's copies and index are durable.
      if (auto s = target->Flush(); !s.ok()) return s;
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
absl::Status NotTheJournalsLayer(const MergeJournal& j, const std::string& path,
                                 const Uuid& want, const Uuid& got) {
  return absl::FailedPreconditionError(absl::StrCat(
      "merge journal ", JournalPathOf(j), " names ", path, " as layer ", UuidToString(want),
      " but that file is layer ", UuidToString(got),
      ": refusing to touch it (were files moved or replaced?)"));
}

absl::StatusOr<bool> LockJournalLayers(Env* env, const MergeJournal& j, LockSet* locks) {
  auto check = [&](const std::string& path, const Uuid& want) -> absl::StatusOr<Uuid> {
    if (auto s = Lock(env, locks, path); !s.ok()) return s;
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) return h.status();
    if (h->uuid != want && !(path == j.child_path && h->uuid == j.parent_uuid)) {
      return NotTheJournalsLayer(j, path, want, h->uuid);
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
    LayerTarget target(parent->get());
    if (auto s = CopyInto(env, child->get(), &target, journal, progress, batch_bytes, &copied);
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
  // P's own parent link must still resolve from C's directory (an NBD base's URI is no path).
  std::string link = parent->parent_path;
  if (parent->parent_format != ParentFormat::kNone &&
      parent->parent_format != ParentFormat::kNbd && moves) {
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

// --- Into the raw base (CommitIntoBase) ---

// Where the successor of an active C is created before it is renamed over C.
std::string SuccessorPendingPath(const std::string& layer_path) {
  return absl::StrCat(DirName(layer_path), "/.", BaseName(layer_path), ".commit");
}

// Locks the base and C, and checks that C is the layer the journal names. Returns true when
// the relink is done: C's path holds the successor, or C is gone after the copy.
absl::StatusOr<bool> LockIntoBaseFiles(Env* env, const MergeJournal& j, LockSet* locks) {
  if (auto s = Lock(env, locks, j.parent_path); !s.ok()) return s;
  if (!env->Exists(j.child_path)) {
    if (j.phase == MergePhase::kRelink && IsNil(j.successor_uuid)) return true;
    return absl::FailedPreconditionError(absl::StrCat(
        "merge journal ", JournalPathOf(j), " names ", j.child_path,
        ", which is not there: refusing to go on (was it moved?)"));
  }
  if (auto s = Lock(env, locks, j.child_path); !s.ok()) return s;
  auto h = ReadLayerHeader(env, j.child_path);
  if (!h.ok()) return h.status();
  if (h->uuid == j.child_uuid) return false;
  if (!IsNil(j.successor_uuid) && h->uuid == j.successor_uuid) return true;
  return NotTheJournalsLayer(j, j.child_path, j.child_uuid, h->uuid);
}

// Copy phase into the base: C's sub-blocks written at their offsets in the base, which CopyInto
// syncs before each progress record; then the journal says relink. The base needs no fence:
// the chain reads every sub-block the copy touches from C, which nothing changes until the
// relink, and no other chain stands on the base (checked before the journal was written, and
// while it exists every chain on the base refuses to open or finishes the commit first).
absl::StatusOr<uint64_t> CopyIntoBasePhase(Env* env, MergeJournal* journal,
                                           const Progress& progress, uint64_t batch_bytes) {
  auto child = Layer::Open(env, journal->child_path, Layer::Mode::kReadOnly);
  if (!child.ok()) return child.status();
  auto base = env->Open(journal->parent_path, {.writable = true});
  if (!base.ok()) return base.status();
  auto size = (*base)->Size();
  if (!size.ok()) return size.status();
  RawBaseTarget target(base->get(), *size, (*child)->header());
  uint64_t copied = 0;
  if (auto s = CopyInto(env, child->get(), &target, journal, progress, batch_bytes, &copied);
      !s.ok()) {
    return s;
  }
  journal->phase = MergePhase::kRelink;
  if (auto s = WriteJournal(env, *journal); !s.ok()) return s;
  return copied;
}

// Relink phase into the base: C leaves the chain. An active C's path gets the successor, an
// empty active layer on the base (created aside, renamed over C: the commit point); else
// C's child (C frozen) is linked to the base, then C's file is removed (the commit point is the
// child's header switch; --drop has no child). Each step is idempotent. REQUIRES:
// LockIntoBaseFiles found C.
absl::Status RelinkIntoBase(Env* env, const MergeJournal& j, LockSet* locks) {
  auto child = ReadLayerHeader(env, j.child_path);
  if (!child.ok()) return child.status();
  if (!IsNil(j.successor_uuid)) {
    const std::string pending = SuccessorPendingPath(j.child_path);
    (void)env->Remove(pending);  // an earlier attempt's, never renamed
    LayerCreateParams params = EmptyLayerOn(*child);
    params.uuid = j.successor_uuid;
    auto fresh = Layer::Create(env, pending, params);
    if (!fresh.ok()) return fresh.status();
    fresh->reset();
    if (auto s = env->Rename(pending, j.child_path); !s.ok()) return s;
    return env->SyncDir(DirName(j.child_path));
  }
  auto children = FindChildren(env, j.dirs, j.child_uuid);
  if (!children.ok()) return children.status();
  for (const Child& c : *children) {
    if (auto s = Lock(env, locks, c.path); !s.ok()) return s;
    // By name when they share a directory, however differently the two paths spell it (the
    // pair can move together).
    const std::string link = AbsoluteDir(c.path) == AbsoluteDir(j.parent_path)
                                 ? BaseName(j.parent_path)
                                 : ParentLink(DirName(c.path), j.parent_path);
    const ParentRef base{ParentFormat::kRaw, link, Uuid{}, child->parent_size};
    if (auto s = EditLayerHeader(env, c.path, [&](LayerHeader* h) { base.ApplyTo(h); });
        !s.ok()) {
      return s;
    }
  }
  if (auto s = env->Remove(j.child_path); !s.ok()) return s;
  return env->SyncDir(DirName(j.child_path));
}

// C leaves the tree; P, now at C's path, takes over C's children.
RegistryHandOver CommitHandOver(Env* env, const MergeJournal& j) {
  // Into the base: C's children now stand on a raw file, which keeps no registry.
  if (j.into_base) return {.gone = j.child_uuid, .gone_dir = AbsoluteDir(j.child_path)};
  RegistryHandOver h{.gone = j.child_uuid,
                     .gone_parent_dir = AbsoluteDir(j.parent_path),
                     .gone_dir = AbsoluteDir(j.child_path),
                     .heir = j.parent_uuid,
                     .heir_path = j.child_path};
  auto p = ReadLayerHeader(env, j.child_path);
  if (p.ok() && p->parent_format == ParentFormat::kStrata) {
    h.heir_parent_dir = AbsoluteDir(ResolvePath(DirName(j.child_path), p->parent_path));
  }
  return h;
}

absl::StatusOr<CommitResult> RunCommit(Env* env, MergeJournal journal, LockSet* locks,
                                       const Progress& progress, uint64_t batch_bytes) {
  CommitResult result;
  auto relinked = journal.into_base ? LockIntoBaseFiles(env, journal, locks)
                                    : LockJournalLayers(env, journal, locks);
  if (!relinked.ok()) return relinked.status();
  if (!*relinked) {
    if (journal.phase == MergePhase::kCopy) {
      auto copied = journal.into_base ? CopyIntoBasePhase(env, &journal, progress, batch_bytes)
                                      : CopyPhase(env, &journal, progress, batch_bytes);
      if (!copied.ok()) return copied.status();
      result.bytes_copied = *copied;
    }
    absl::Status s = journal.into_base ? RelinkIntoBase(env, journal, locks)
                                       : Relink(env, journal, locks);
    if (!s.ok()) return s;
  }
  if (auto s = HandOverRegistrations(env, CommitHandOver(env, journal)); !s.ok()) return s;
  result.merged_into = journal.into_base ? journal.parent_path : journal.child_path;
  if (auto s = env->Remove(JournalPathOf(journal)); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(JournalPathOf(journal))); !s.ok()) return s;
  return result;
}

// `target` (what `layer_path` would be committed into: "its raw base X", "X") may be written:
// it opens for writing and is not marked read-only. Checked before the journal is written, so
// a golden image shared read-only (a read-only mount, another owner's files, or files chmod
// a-w) refuses the commit with nothing changed, instead of leaving a journal no resume can
// finish. Returns the file opened for writing.
absl::StatusOr<std::unique_ptr<File>> OpenCommitTarget(Env* env, const std::string& layer_path,
                                                       absl::string_view target,
                                                       const std::string& path) {
  auto file = env->Open(path, {.writable = true});
  if (!file.ok()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into ", target, ": it cannot be opened for writing (",
        file.status().message(), ")"));
  }
  // Even root can write a file nobody may write: a file marked read-only (a golden image)
  // is meant to stay as it is.
  struct stat st;
  if (fstat((*file)->fd(), &st) != 0) return ErrnoStatus(errno, "stat", path);
  if ((st.st_mode & 0222) == 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into ", target,
        ": the file is marked read-only (no write permission); `chmod u+w` it if it may "
        "change"));
  }
  return file;
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
  const std::vector<std::string> dirs = SearchDirs(env, known);
  // Other children of P would silently change content: refuse.
  if (auto s = RefuseOtherChildren(env, dirs, parent_path, parent->uuid, child->uuid,
                                   absl::StrCat("cannot commit ", layer_path, " into ",
                                                parent_path));
      !s.ok()) {
    return s;
  }
  MergeJournal journal;
  journal.child_path = layer_path;
  journal.parent_path = parent_path;
  journal.child_uuid = child->uuid;
  journal.parent_uuid = parent->uuid;
  journal.child_was_active = child->state == LayerState::kActive;
  journal.dirs = dirs;
  // Lock before writing the journal: a served chain must not see one appear. A parent that
  // other disks' servers hold (a shared golden layer) is refused here, by their shared locks.
  if (auto s = Lock(env, locks, layer_path); !s.ok()) return s;
  if (auto s = Lock(env, locks, parent_path); !s.ok()) {
    return WithContext(s, absl::StrCat("cannot commit ", layer_path, " into ", parent_path));
  }
  if (auto s = OpenCommitTarget(env, layer_path, parent_path, parent_path); !s.ok()) {
    return s.status();
  }
  if (auto s = WriteJournal(env, journal); !s.ok()) return s;
  return RunCommit(env, journal, locks, progress, batch_bytes);
}

// The end of the last sub-block the layer at `path` holds (present or zeroed), at most its
// virtual size: how much of the base the commit writes.
absl::StatusOr<uint64_t> ExtentOf(Env* env, const std::string& path) {
  auto layer = Layer::Open(env, path, Layer::Mode::kReadOnly);
  if (!layer.ok()) return layer.status();
  const LayerHeader& h = (*layer)->header();
  uint64_t end = 0;
  (*layer)->index().ForEach([&](uint64_t cluster, const ClusterEntry& e) {
    const uint32_t used = e.present | e.zero;
    if (used == 0) return;
    const uint64_t sub_blocks = 32 - static_cast<uint64_t>(__builtin_clz(used));
    end = std::max(end, cluster * h.cluster_size + sub_blocks * h.sub_block_size);
  });
  return std::min(end, h.virtual_size);
}

// The base at `base_path` that `layer_path` (header `child`) stands on can take the commit:
// writable, and large enough (`needed` bytes).
absl::Status CheckBaseWritable(Env* env, const std::string& layer_path, const LayerHeader& child,
                               const std::string& base_path, uint64_t needed) {
  auto base = OpenCommitTarget(env, layer_path, absl::StrCat("its raw base ", base_path),
                               base_path);
  if (!base.ok()) return base.status();
  // QEMU locks the images it has open with fcntl (OFD) byte-range locks, not flock: a VM or
  // qemu-nbd reading the base holds one, and would see its disk change.
  struct flock fl = {};
  fl.l_type = F_WRLCK;
  fl.l_whence = SEEK_SET;
  if (fcntl((*base)->fd(), F_OFD_GETLK, &fl) == 0 && fl.l_type != F_UNLCK) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into its raw base ", base_path, ": ", base_path,
        " is in use by another process (it holds a file lock on it, as QEMU and qemu-nbd do): "
        "stop it first"));
  }
  auto size = (*base)->Size();
  if (!size.ok()) return size.status();
  if (*size != child.parent_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", layer_path, ": raw base ", base_path, " is ", *size, " bytes but was ",
        child.parent_size, " when the layer was created: not the base it was created on"));
  }
  if (*size < needed) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into its raw base ", base_path, ": the base is ", *size,
        " bytes and the data needs ", needed, " (a larger disk than its base)"));
  }
  return absl::OkStatus();
}

// CommitIntoBase once the chain below `layer_path` is recovered and it is locked in `locks`.
absl::StatusOr<CommitResult> CommitIntoBaseRecovered(Env* env, const std::string& layer_path,
                                                     bool drop, LockSet* locks,
                                                     const Progress& progress,
                                                     uint64_t batch_bytes) {
  auto child = ReadLayerHeader(env, layer_path);
  if (!child.ok()) return child.status();
  if (child->parent_format != ParentFormat::kRaw) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into a raw base: its parent is ",
        Name(child->parent_format),
        child->parent_format == ParentFormat::kNbd
            ? " (an NBD base is never written: a golden image shared by many; `strata convert` "
              "flattens the chain into a local file)"
            : " (only the lowest layer of a chain on a raw base can; `strata commit` without "
              "--into-base merges into a strata parent)"));
  }
  const bool active = child->state == LayerState::kActive;
  if (drop && !active) {
    return absl::InvalidArgumentError(absl::StrCat(
        "--drop: ", layer_path, " is a frozen snapshot, not the disk's active layer (without "
        "--drop its child is linked to the base)"));
  }
  const std::string base = ResolvePath(DirName(layer_path), child->parent_path);
  if (auto s = Lock(env, locks, layer_path); !s.ok()) return s;
  // Any process reading the base through strata holds a shared lock on it.
  if (auto s = Lock(env, locks, base); !s.ok()) return s;
  auto needed = ExtentOf(env, layer_path);
  if (!needed.ok()) return needed.status();
  if (auto s = CheckBaseWritable(env, layer_path, *child, base,
                                 drop ? child->virtual_size : *needed);
      !s.ok()) {
    return s;
  }
  std::vector<std::string> known = ChainDirs(env, layer_path);
  AddUnique(&known, AbsoluteDir(base));
  const std::vector<std::string> dirs = SearchDirs(env, known);
  // Another disk on the base would see its content change: refuse.
  auto users = FindRawChildren(env, dirs, base);
  if (!users.ok()) return users.status();
  std::vector<std::string> others;
  for (const Child& c : *users) {
    if (c.uuid != child->uuid) others.push_back(c.path);
  }
  if (!others.empty()) {
    return absl::FailedPreconditionError(absl::StrCat(
        "cannot commit ", layer_path, " into ", base, ": other layers stand on that base (",
        absl::StrJoin(others, ", "), ") whose content would change"));
  }
  if (!active) {
    auto children = FindChildren(env, dirs, child->uuid);
    if (!children.ok()) return children.status();
    if (children->size() != 1) {
      std::vector<std::string> names;
      for (const Child& c : *children) names.push_back(c.path);
      return absl::FailedPreconditionError(absl::StrCat(
          "cannot commit snapshot ", layer_path, " into ", base, ": it must have exactly one "
          "child to link to the base, and has ", children->size(),
          names.empty() ? "" : absl::StrCat(" (", absl::StrJoin(names, ", "), ")")));
    }
    if (auto s = Lock(env, locks, children->front().path); !s.ok()) return s;
  }
  MergeJournal journal;
  journal.child_path = layer_path;
  journal.parent_path = base;
  journal.child_uuid = child->uuid;
  journal.child_was_active = active;
  journal.dirs = dirs;
  journal.into_base = true;
  if (active && !drop) journal.successor_uuid = NewUuid();
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

absl::StatusOr<CommitResult> CommitIntoBase(Env* env, const std::string& layer_path,
                                            const IntoBaseOptions& options) {
  LockSet locks;
  if (auto r = RecoverChain(env, layer_path, &locks, options.progress); !r.ok()) {
    return r.status();
  }
  return CommitIntoBaseRecovered(env, layer_path, options.drop, &locks, options.progress,
                                 options.batch_bytes);
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

}  // namespace strata
