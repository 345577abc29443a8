// Offline merge of a layer into its parent (deleting a snapshot), and revert.
//
// CommitLayer(C) merges layer C into its parent P, a frozen strata layer, and takes C out of
// the chain, as Hyper-V merges an .AVHD into its parent: P takes C's place — its file name,
// and its state: the disk's active layer when C was the top, else C's snapshot name, time and
// children. The snapshot P stood for is gone, and the chain is one layer shorter.
// Crash safety. A merge journal (`<C>.merge`, written by rename) records the phase and how
// far the copy got. Copy phase: C's sub-blocks are written into P, flushed in batches, the
// journal's progress advanced after each batch; while C is still in the chain it hides every
// sub-block the copy touches in P, so the disk reads the same at every instant and a restart
// simply continues from the recorded cluster. Relink phase: header switches, then P renamed
// over C, each idempotent; then the journal is removed. Any chain holding C refuses to open
// while the
// journal exists; ResumeInterruptedCommit() finishes the work (there is nothing to roll back
// to: P's snapshot state is partly overwritten by then, which is what deleting it means).
// Refuses when C or P is in use (flock) or P has children other than C.
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
  std::string merged_into;  // where P is now (C's former path)
  uint64_t bytes_copied = 0;
};

// The copy flushes P and records its progress every `batch_bytes`; a resumed merge repeats
// at most that much.
inline constexpr uint64_t kCommitBatchBytes = 256ull << 20;
absl::StatusOr<CommitResult> CommitLayer(Env* env, const std::string& layer_path,
                                         const Progress& progress = nullptr,
                                         uint64_t batch_bytes = kCommitBatchBytes);

// Deletes snapshot `name` of the chain topped by `top_path`: commits the layer above the
// snapshot's layer into it.
absl::StatusOr<CommitResult> DeleteSnapshot(Env* env, const std::string& top_path,
                                            const std::string& name,
                                            const Progress& progress = nullptr);

// Finds merge journals along the chain topped by `top_path` (whose top may be missing if the
// crash hit a rename) and completes them. Returns a description of what was done, "" if
// nothing was found.
absl::StatusOr<std::string> ResumeInterruptedCommit(Env* env, const std::string& top_path,
                                                    const Progress& progress = nullptr);

// Discards the active layer's changes: replaces `top_path` with a new empty active layer on
// the same parent, or on the frozen snapshot `snapshot_name` further down the chain (the
// layers in between stay as files, a branch). Atomic (rename).
absl::Status Revert(Env* env, const std::string& top_path, const std::string& snapshot_name = "");

// Layer files in `dir` whose header names `parent_uuid` as parent (paths).
absl::StatusOr<std::vector<std::string>> FindChildren(Env* env, const std::string& dir,
                                                      const std::array<uint8_t, 16>& parent_uuid);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_COMMIT_H_
