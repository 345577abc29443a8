// Recovery of interrupted operations: the one entry point every command that changes a chain
// calls before it changes anything (Chain::Open for writing, CommitLayer, DeleteSnapshot,
// Revert, check --repair, and the `strata` commands that change a disk).
//
// An operation interrupted by a crash or kill leaves one of these behind (FORMAT.md §3):
//   `.<top>.revert`   a revert before its rename: removed (the revert did not happen);
//   `.<top>.new`      a snapshot: finished after its commit point, else rolled back;
//   `<layer>.stream`  an online deletion of <layer> (stream.h): finished after its commit
//                     point; before it, finished offline, or left for the server to resume;
//   `<layer>.merge`   a commit (merge) of <layer> into its parent: finished, never undone.
// RecoverChain deals with them in that order, again from the start after each one (finishing
// one can change the chain the next is found in), until none is left. Doing a later command
// over an earlier leftover is what breaks chains: a merge over an unfinished snapshot, for
// example, lets the snapshot's recovery rename an old layer over the merged one.
#ifndef STRATA_BLOCKSTORE_RECOVERY_H_
#define STRATA_BLOCKSTORE_RECOVERY_H_

#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/commit.h"

namespace strata {

class Env;
class File;

// Exclusive flocks (non-blocking) held for the length of one operation. Locking a file this
// set already holds (the same inode, under any name) is a no-op: flock refuses a second lock
// on another descriptor of the same file even to its own process.
class LockSet {
 public:
  LockSet();
  ~LockSet();
  // kFailedPrecondition naming the file when another process holds any lock on it.
  absl::Status Exclusive(Env* env, const std::string& path);

 private:
  std::vector<std::unique_ptr<File>> files_;
};

// Finishes or rolls back every interrupted operation on the chain topped by `top_path`,
// holding (in `locks`; nullptr: take none, for a caller that knows no one else can run) the
// top's exclusive lock first and the lock of every file it changes. Returns one line per
// operation dealt with, "" when there was none.
// kServe: the caller is the server, which resumes an unfinished stream online itself.
enum class PendingStreams { kFinish, kServe };
absl::StatusOr<std::string> RecoverChain(Env* env, const std::string& top_path, LockSet* locks,
                                         const Progress& progress = nullptr,
                                         PendingStreams streams = PendingStreams::kFinish);

// What RecoverChain would deal with, without changing anything (`check`).
struct InterruptedOperation {
  std::string what;          // names the file left behind
  bool recoverable = false;  // RecoverChain can finish or roll it back
};
std::vector<InterruptedOperation> FindInterruptedOperations(Env* env,
                                                            const std::string& top_path);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_RECOVERY_H_
