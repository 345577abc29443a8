#include "blockstore/recovery.h"

#include <sys/stat.h>

#include <algorithm>
#include <cerrno>

#include "absl/strings/str_cat.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/layer.h"
#include "blockstore/revert.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/stream.h"

namespace strata {
namespace {

constexpr int kMaxDepth = 65536;

enum class Leftover { kRevert, kSnapshot, kStream, kMerge, kMergingWithoutJournal };
struct Found {
  Leftover kind;
  std::string path;  // the leftover file (kMergingWithoutJournal: the merging layer)
};

// Every leftover of the chain topped by `top_path`, in the order they must be dealt with: the
// top's own first (they decide which file the top is), then the merges from the top down.
std::vector<Found> FindLeftovers(Env* env, const std::string& top_path) {
  std::vector<Found> found;
  for (auto [kind, path] : {std::pair{Leftover::kRevert, RevertPendingPath(top_path)},
                            std::pair{Leftover::kSnapshot, PendingLayerPath(top_path)}}) {
    if (env->Exists(path)) found.push_back({kind, path});
  }
  for (const std::string& journal : FindStreamJournals(env, top_path)) {
    found.push_back({Leftover::kStream, journal});
  }
  std::string path = top_path;
  bool journal_above = false;  // the layer above this one has a merge journal
  for (int depth = 0; depth < kMaxDepth; ++depth) {
    bool journal = env->Exists(MergeJournalPath(path));
    if (journal) found.push_back({Leftover::kMerge, MergeJournalPath(path)});
    auto h = ReadLayerHeader(env, path);
    if (!h.ok()) break;  // opening the chain reports it
    if (h->state == LayerState::kMerging && !journal_above) {
      found.push_back({Leftover::kMergingWithoutJournal, path});
    }
    // A commit into the raw base keeps its journal beside the base (commit.h).
    const std::string base_journal =
        MergeJournalPath(ResolvePath(DirName(path), h->parent_path));
    if (h->parent_format == ParentFormat::kRaw && env->Exists(base_journal)) {
      found.push_back({Leftover::kMerge, base_journal});
    }
    if (h->parent_format != ParentFormat::kStrata) break;
    journal_above = journal;
    path = ResolvePath(DirName(path), h->parent_path);
  }
  return found;
}

std::string Describe(const Found& f) {
  switch (f.kind) {
    case Leftover::kRevert:
      return absl::StrCat(f.path, ": left by an interrupted revert (which did not happen)");
    case Leftover::kSnapshot:
      return absl::StrCat(f.path, ": the new layer of an interrupted snapshot");
    case Leftover::kStream:
      return absl::StrCat(f.path, ": the journal of a snapshot deletion not finished yet (a "
                                  "server resumes it; any command that changes the disk "
                                  "finishes it)");
    case Leftover::kMerge:
      return absl::StrCat(f.path, ": the journal of an interrupted commit (merge)");
    case Leftover::kMergingWithoutJournal:
      return absl::StrCat(f.path, " is being rewritten by an interrupted commit whose journal is "
                                  "not beside the layer above it here: run `strata commit "
                                  "--resume` on the disk's top layer");
  }
  return f.path;
}

absl::StatusOr<std::string> Recover(Env* env, const std::string& top_path, const Found& f,
                                    LockSet* locks, const Progress& progress,
                                    PendingStreams streams) {
  switch (f.kind) {
    case Leftover::kRevert:
      // The rename is the revert's only step that changes the disk: it did not happen.
      if (auto s = env->Remove(f.path); !s.ok()) return s;
      if (auto s = env->SyncDir(DirName(f.path)); !s.ok()) return s;
      return absl::StrCat("removed ", f.path, ", left by an interrupted revert of ", top_path);
    case Leftover::kSnapshot:
      return RecoverInterruptedSnapshot(env, top_path, locks);
    case Leftover::kStream:
      return RecoverStream(env, top_path, f.path, streams == PendingStreams::kFinish, progress);
    case Leftover::kMerge:
      return FinishInterruptedCommit(env, f.path, locks, progress);
    case Leftover::kMergingWithoutJournal:
      break;
  }
  return absl::FailedPreconditionError(Describe(f));
}

}  // namespace

LockSet::LockSet() = default;
LockSet::~LockSet() = default;

absl::Status LockSet::Exclusive(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  if (!file.ok()) return file.status();
  struct stat st;
  if (fstat((*file)->fd(), &st) != 0) return ErrnoStatus(errno, "stat", path);
  for (const auto& held : files_) {
    struct stat h;
    if (fstat(held->fd(), &h) == 0 && h.st_dev == st.st_dev && h.st_ino == st.st_ino) {
      return absl::OkStatus();
    }
  }
  if (auto s = TryLock(**file, LockMode::kExclusive); !s.ok()) return s;
  files_.push_back(std::move(*file));
  return absl::OkStatus();
}

absl::StatusOr<std::string> RecoverChain(Env* env, const std::string& top_path, LockSet* locks,
                                         const Progress& progress, PendingStreams streams) {
  if (locks != nullptr) {
    if (auto s = locks->Exclusive(env, top_path); !s.ok()) return s;
  }
  std::string log;
  std::vector<std::string> left;  // streams left for the server
  // Each round deals with one leftover, then looks again: finishing one changes the files
  // the next is found by (a finished snapshot puts a new layer at the top).
  for (int round = 0; round < kMaxDepth; ++round) {
    std::vector<Found> found = FindLeftovers(env, top_path);
    std::erase_if(found, [&](const Found& f) {
      return std::find(left.begin(), left.end(), f.path) != left.end();
    });
    if (found.empty()) return log;
    auto done = Recover(env, top_path, found.front(), locks, progress, streams);
    if (!done.ok()) return done.status();
    if (done->empty()) {
      left.push_back(found.front().path);
    } else {
      absl::StrAppend(&log, *done, "\n");
    }
  }
  return absl::InternalError(absl::StrCat(top_path, ": interrupted operations keep appearing"));
}

std::vector<InterruptedOperation> FindInterruptedOperations(Env* env,
                                                            const std::string& top_path) {
  std::vector<InterruptedOperation> out;
  for (const Found& f : FindLeftovers(env, top_path)) {
    out.push_back({Describe(f), f.kind != Leftover::kMergingWithoutJournal});
  }
  return out;
}

absl::StatusOr<std::string> ResumeInterruptedCommit(Env* env, const std::string& top_path,
                                                    const Progress& progress) {
  LockSet locks;
  return RecoverChain(env, top_path, &locks, progress);
}

}  // namespace strata
