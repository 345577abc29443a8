// Offline merge of a layer into its parent (deleting a snapshot) or into its raw base.
// Revert is in revert.h.
//
// CommitLayer(C) merges layer C into its parent P, a frozen strata layer, and takes C out of
// the chain, as Hyper-V merges an .AVHD into its parent: P takes C's place — its file name,
// and its state: the disk's active layer when C was the top, else C's snapshot name, time and
// children. The snapshot P stood for is gone, and the chain is one layer shorter.
// Crash safety (FORMAT.md §3). A merge journal (`<C>.merge`, written by rename; its layout is
// MergeJournalRecord in format.h, FORMAT.md §7) records the phase, how far the copy got, and
// both layers' UUIDs; its paths are relative to its own directory, so it means the same files
// from any working directory. Before the copy P's
// header says `merging`, which every open but the merge's refuses: P is then neither
// snapshot. Copy phase: C's sub-blocks are written into P, flushed in batches, the journal's
// progress advanced after each batch; C still hides every sub-block the copy touched, so the
// chain through C reads the same at every instant and a restart continues from the recorded
// cluster. Relink phase: P's header takes C's state, C's children learn P's UUID, P is renamed
// over C, each step idempotent and done only after checking the files still carry the
// journal's UUIDs; then the journal is removed. RecoverChain (recovery.h) finishes an
// interrupted merge; there is nothing to roll back to (P's old content is partly overwritten,
// which is what deleting its snapshot means).
// Refuses when C, P or a child of C is in use (flock), or P has children other than C in the
// directories a merge can know about (P's, C's, the chain's, and those of the children
// registered beside them: children.h), or a registered child of P is gone.
#ifndef STRATA_BLOCKSTORE_COMMIT_H_
#define STRATA_BLOCKSTORE_COMMIT_H_

#include <cstdint>
#include <functional>
#include <string>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace strata {

class Env;

// Called with bytes copied so far and the total.
using Progress = std::function<void(uint64_t done, uint64_t total)>;

struct CommitResult {
  std::string merged_into;  // where P is now (C's former path; into the base: the base)
  uint64_t bytes_copied = 0;
};

// The copy flushes P and records its progress every `batch_bytes`; a resumed merge repeats
// at most that much.
inline constexpr uint64_t kCommitBatchBytes = 256ull << 20;
absl::StatusOr<CommitResult> CommitLayer(Env* env, const std::string& layer_path,
                                         const Progress& progress = nullptr,
                                         uint64_t batch_bytes = kCommitBatchBytes);

// CommitIntoBase(C) writes layer C, the lowest strata layer of a chain on a raw base, into
// that base file (as `qemu-img commit` writes an overlay into its raw backing file), and takes
// C out of the chain: an active C (the disk's top) is replaced by a new empty active layer on
// the base at C's path, or with `drop` removed (the base alone is the disk); a frozen C's one
// child is linked to the base and C removed. C's present sub-blocks land at their offsets,
// its zeroed ones are punched out (written as zeros where the file system cannot punch).
// Crash safety as CommitLayer's, with the merge journal beside the base (`<base>.merge`,
// `target=raw`): every chain on the base finds it, also once C left the chain. Copy: C hides
// every sub-block written, so the chain reads the same at every instant; the base is synced
// before each progress record. Relink: the successor's rename over C (its UUID recorded in the
// journal), or the child's header switch then C's removal, each idempotent.
// Refuses when C's parent is not raw, C, the base or C's child is in use (flock; a strata
// reader of the base holds it shared; QEMU's fcntl locks on the base count too), the base is not writable or smaller than C's data (the
// whole disk with `drop`), another layer stands on the base in the directories a merge can know
// about (CommitLayer's), or a frozen C has other than one child there.
struct IntoBaseOptions {
  bool drop = false;
  Progress progress = nullptr;
  uint64_t batch_bytes = kCommitBatchBytes;
};
absl::StatusOr<CommitResult> CommitIntoBase(Env* env, const std::string& layer_path,
                                            const IntoBaseOptions& options = {});

// Deletes snapshot `name` of the chain topped by `top_path`: commits the layer above the
// snapshot's layer into it.
absl::StatusOr<CommitResult> DeleteSnapshot(Env* env, const std::string& top_path,
                                            const std::string& name,
                                            const Progress& progress = nullptr);


class LockSet;
// Finishes the merge whose journal is `journal_path`, under `locks` (nullptr: none). Only
// RecoverChain calls it; returns what it did.
absl::StatusOr<std::string> FinishInterruptedCommit(Env* env, const std::string& journal_path,
                                                    LockSet* locks, const Progress& progress);

// RecoverChain(env, top_path, own locks, progress) by its old name, for callers that only
// finished merges (crash_test.cc) until they move to recovery.h.
absl::StatusOr<std::string> ResumeInterruptedCommit(Env* env, const std::string& top_path,
                                                    const Progress& progress = nullptr);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_COMMIT_H_
