#include "blockstore/commit.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <memory>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/strings/ascii.h"
#include "blockstore/crc32c.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/snapshot_files.h"

namespace strata {
namespace {

constexpr uint64_t kMaxRun = 64ull << 20;     // one copy_file_range call at most

enum class Phase { kCopy, kRelink };

// `<P>.merge`: text, one key=value per line, the last line `crc=` over everything before it.
struct MergeJournal {
  Phase phase = Phase::kCopy;
  std::string child_path;  // as given to the tool (or resolved from the chain)
  std::string parent_path;
  Uuid child_uuid{};
  Uuid parent_uuid{};
  bool child_was_active = false;
  // How many of C's index entries, taken in the copy order (CopyInto), are durably in P. C
  // does not change during the merge, so the order is the same on every run.
  uint64_t copied_entries = 0;
};

std::string Encode(const MergeJournal& j) {
  std::string body = absl::StrCat(
      "strata-merge 1\nphase=", j.phase == Phase::kCopy ? "copy" : "relink",
      "\nchild=", j.child_path, "\nparent=", j.parent_path, "\nchild_uuid=", UuidToString(j.child_uuid),
      "\nparent_uuid=", UuidToString(j.parent_uuid), "\nchild_was_active=", j.child_was_active,
      "\ncopied_entries=", j.copied_entries, "\n");
  return absl::StrCat(body, "crc=", crc32c::Value(body.data(), body.size()), "\n");
}

absl::StatusOr<Uuid> ParseUuid(absl::string_view text) {
  Uuid u{};
  std::string hex;
  for (char c : text) {
    if (c != '-') hex.push_back(c);
  }
  if (hex.size() != 32) return absl::DataLossError("bad uuid");
  for (int i = 0; i < 16; ++i) {
    int v = 0;
    for (int k = 0; k < 2; ++k) {
      char c = hex[2 * i + k];
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return absl::DataLossError("bad uuid");
      v = v * 16 + d;
    }
    u[i] = static_cast<uint8_t>(v);
  }
  return u;
}

absl::StatusOr<MergeJournal> ReadJournal(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  if (!file.ok()) return file.status();
  auto size = (*file)->Size();
  if (!size.ok()) return size.status();
  std::string text(*size, '\0');
  if (auto s = (*file)->Read(0, text.size(), text.data()); !s.ok()) return s;
  size_t crc_at = text.rfind("crc=");
  uint32_t crc = 0;
  if (crc_at == std::string::npos ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(text.substr(crc_at + 4)), &crc) ||
      crc != crc32c::Value(text.data(), crc_at)) {
    return absl::DataLossError(absl::StrCat("merge journal ", path, ": checksum mismatch"));
  }
  MergeJournal j;
  for (absl::string_view line : absl::StrSplit(text.substr(0, crc_at), '\n')) {
    std::pair<std::string, std::string> kv = absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.first == "phase") j.phase = kv.second == "copy" ? Phase::kCopy : Phase::kRelink;
    if (kv.first == "child") j.child_path = kv.second;
    if (kv.first == "parent") j.parent_path = kv.second;
    if (kv.first == "child_was_active") j.child_was_active = kv.second == "1";
    if (kv.first == "copied_entries" && !absl::SimpleAtoi(kv.second, &j.copied_entries)) {
      return absl::DataLossError(absl::StrCat("merge journal ", path, ": bad copied_entries"));
    }
    if (kv.first == "child_uuid" || kv.first == "parent_uuid") {
      auto u = ParseUuid(kv.second);
      if (!u.ok()) return absl::DataLossError(absl::StrCat("merge journal ", path, ": bad uuid"));
      (kv.first == "child_uuid" ? j.child_uuid : j.parent_uuid) = *u;
    }
  }
  return j;
}

// The journal lives beside C's path: a file in the chain from start to end (P moves there).
std::string JournalPathOf(const MergeJournal& j) { return MergeJournalPath(j.child_path); }

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

absl::Status LockExclusive(File* file) {
  if (flock(file->fd(), LOCK_EX | LOCK_NB) == 0) return absl::OkStatus();
  return absl::FailedPreconditionError(absl::StrCat(
      file->path(), " is in use (a running `strata serve`?): stop the server first"));
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

// Relink phase: P takes C's place — C's path, and C's state (active) or snapshot name and
// children (frozen). Every step is idempotent so a resume can repeat it; the rename over C's
// path is the last one.
absl::Status Relink(Env* env, const MergeJournal& j) {
  if (auto at_c = ReadLayerHeader(env, j.child_path);
      at_c.ok() && at_c->uuid == j.parent_uuid && !env->Exists(j.parent_path)) {
    return absl::OkStatus();  // the final rename already happened
  }
  auto child = ReadLayerHeader(env, j.child_path);
  if (!child.ok()) return child.status();
  auto parent = ReadLayerHeader(env, j.parent_path);
  if (!parent.ok()) return parent.status();
  // P's own parent link must still resolve from C's directory.
  std::string link = parent->parent_path;
  if (parent->parent_format != ParentFormat::kNone &&
      DirName(j.child_path) != DirName(j.parent_path)) {
    link = ParentLink(DirName(j.child_path), ResolvePath(DirName(j.parent_path), link));
  }
  if (auto s = EditLayerHeader(env, j.parent_path, [&](LayerHeader* h) {
        h->state = child->state;
        h->snapshot_name = child->snapshot_name;
        h->frozen_ns = child->frozen_ns;
        h->parent_path = link;
      });
      !s.ok()) {
    return s;
  }
  // C's children keep their parent path (P moves there) and learn P's UUID.
  auto children = FindChildren(env, DirName(j.child_path), j.child_uuid);
  if (!children.ok()) return children.status();
  for (const std::string& path : *children) {
    if (auto s = EditLayerHeader(env, path, [&](LayerHeader* h) { h->parent_uuid = j.parent_uuid; });
        !s.ok()) {
      return s;
    }
  }
  if (auto s = env->Rename(j.parent_path, j.child_path); !s.ok()) return s;
  return env->SyncDir(DirName(j.child_path));
}

absl::StatusOr<CommitResult> RunCommit(Env* env, MergeJournal journal, const Progress& progress,
                                       uint64_t batch_bytes = kCommitBatchBytes) {
  CommitResult result;
  const std::string& parent_path = journal.parent_path;
  if (journal.phase == Phase::kCopy) {
    auto child = Layer::Open(env, journal.child_path, Layer::Mode::kReadOnly);
    if (!child.ok()) return child.status();
    auto parent = Layer::Open(env, parent_path, Layer::Mode::kMergeTarget);
    if (!parent.ok()) return parent.status();
    if (auto s = LockExclusive((*child)->file()); !s.ok()) return s;
    if (auto s = LockExclusive((*parent)->file()); !s.ok()) return s;
    if ((*child)->header().uuid != journal.child_uuid ||
        (*parent)->header().uuid != journal.parent_uuid) {
      return absl::DataLossError(absl::StrCat("merge journal ", JournalPathOf(journal),
                                              " names layers that are not these files"));
    }
    if (auto s = CopyInto(env, child->get(), parent->get(), &journal, progress, batch_bytes,
                          &result.bytes_copied);
        !s.ok()) {
      return s;
    }
    // The parent's checkpoint makes its index compact before the relink.
    if (auto s = (*parent)->Freeze((*parent)->header().snapshot_name,
                                   (*parent)->header().frozen_ns);
        !s.ok()) {
      return s;
    }
    journal.phase = Phase::kRelink;
    if (auto s = WriteJournal(env, journal); !s.ok()) return s;
  }
  if (auto s = Relink(env, journal); !s.ok()) return s;
  result.merged_into = journal.child_path;
  if (auto s = env->Remove(JournalPathOf(journal)); !s.ok()) return s;
  if (auto s = env->SyncDir(DirName(JournalPathOf(journal))); !s.ok()) return s;
  return result;
}

}  // namespace

absl::StatusOr<std::vector<std::string>> FindChildren(Env* env, const std::string& dir,
                                                      const Uuid& parent_uuid) {
  auto names = env->ListDir(dir);
  if (!names.ok()) return names.status();
  std::vector<std::string> out;
  for (const std::string& name : *names) {
    std::string path = dir + "/" + name;
    auto h = ReadLayerHeader(env, path);  // files that are not layers fail here: skipped
    if (h.ok() && h->parent_format == ParentFormat::kStrata && h->parent_uuid == parent_uuid) {
      out.push_back(path);
    }
  }
  return out;
}

absl::StatusOr<CommitResult> CommitLayer(Env* env, const std::string& layer_path,
                                         const Progress& progress, uint64_t batch_bytes) {
  if (auto resumed = ResumeInterruptedCommit(env, layer_path, progress); !resumed.ok()) {
    return resumed.status();
  }
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
  // Other children of P would silently change content: refuse.
  std::vector<std::string> others;
  for (const std::string& dir : {DirName(parent_path), DirName(layer_path)}) {
    auto children = FindChildren(env, dir, parent->uuid);
    if (!children.ok()) return children.status();
    for (const std::string& path : *children) {
      auto h = ReadLayerHeader(env, path);
      if (h.ok() && h->uuid != child->uuid &&
          std::find(others.begin(), others.end(), path) == others.end()) {
        others.push_back(path);
      }
    }
    if (dir == DirName(layer_path) && DirName(parent_path) == dir) break;
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
  // Lock before writing the journal: a served chain must not see one appear.
  {
    auto c = env->Open(layer_path, {});
    auto p = env->Open(parent_path, {});
    if (!c.ok()) return c.status();
    if (!p.ok()) return p.status();
    if (auto s = LockExclusive(c->get()); !s.ok()) return s;
    if (auto s = LockExclusive(p->get()); !s.ok()) return s;
    if (auto s = WriteJournal(env, journal); !s.ok()) return s;
  }
  return RunCommit(env, journal, progress, batch_bytes);
}

absl::StatusOr<CommitResult> DeleteSnapshot(Env* env, const std::string& top_path,
                                            const std::string& name, const Progress& progress) {
  std::string above = top_path;
  for (int depth = 0; depth < 65536; ++depth) {
    auto h = ReadLayerHeader(env, above);
    if (!h.ok()) return h.status();
    if (h->parent_format != ParentFormat::kStrata) break;
    std::string parent_path = ResolvePath(DirName(above), h->parent_path);
    auto p = ReadLayerHeader(env, parent_path);
    if (!p.ok()) return p.status();
    if (p->snapshot_name == name) return CommitLayer(env, above, progress);
    above = parent_path;
  }
  return absl::NotFoundError(absl::StrCat("no snapshot '", name, "' in the chain of ", top_path));
}

absl::StatusOr<std::string> ResumeInterruptedCommit(Env* env, const std::string& top_path,
                                                    const Progress& progress) {
  std::string result;
  std::string path = top_path;
  for (int depth = 0; depth < 65536; ++depth) {
    std::string journal_path = MergeJournalPath(path);
    if (env->Exists(journal_path)) {
      auto journal = ReadJournal(env, journal_path);
      if (!journal.ok()) return journal.status();
      auto done = RunCommit(env, *journal, progress);
      if (!done.ok()) {
        return absl::Status(done.status().code(),
                            absl::StrCat("resuming the interrupted commit of ",
                                         journal->child_path, " into ", journal->parent_path,
                                         ": ", done.status().message()));
      }
      absl::StrAppend(&result, "completed the interrupted commit of ", journal->child_path,
                      " into ", journal->parent_path, "\n");
    }
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) {
      if (path == top_path && absl::IsNotFound(h.status())) break;
      return h.status();
    }
    if (h->parent_format != ParentFormat::kStrata) break;
    path = ResolvePath(DirName(path), h->parent_path);
  }
  return result;
}

absl::Status Revert(Env* env, const std::string& top_path, const std::string& snapshot_name) {
  auto top = Layer::Open(env, top_path, Layer::Mode::kReadOnly);
  if (!top.ok()) return top.status();
  if (auto s = LockExclusive((*top)->file()); !s.ok()) return s;
  LayerHeader target = (*top)->header();
  std::string target_path = top_path;
  if (target.state != LayerState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat(top_path, " is not an active layer"));
  }
  LayerCreateParams params;
  params.virtual_size = target.virtual_size;
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
    params.parent_size = h.virtual_size;
  }
  std::string pending = absl::StrCat(DirName(top_path), "/.", BaseName(top_path), ".revert");
  (void)env->Remove(pending);
  auto fresh = Layer::Create(env, pending, params);
  if (!fresh.ok()) return fresh.status();
  fresh->reset();
  if (auto s = env->Rename(pending, top_path); !s.ok()) return s;
  return env->SyncDir(DirName(top_path));
}

}  // namespace strata
