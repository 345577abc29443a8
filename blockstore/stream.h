// Stream: deleting a frozen layer X (a snapshot) while the disk is served, by copying up into
// the layer standing on X (its child) what X holds and the child lacks, then linking the child
// to X's parent and removing X's file — QEMU's block-stream, done for any layer of the chain.
//
// Why upwards (FORMAT.md §8 has the byte-level protocol). X is never written: every reader of
// the chain, of X's own `@NAME` export and of every other snapshot reads the same bytes before,
// during and after, and a crash at any instant leaves a chain that reads the same with or
// without the copies already made (they duplicate what X answers). The child gains only
// sub-blocks it lacked, in places nobody reads until its index says so; its content never
// changes. The commit point is one header write of the child (its parent link); the flat view
// is then rebuilt without X and swapped in under the chain's lock (no I/O pause). Cost: the
// bytes of X the child does not hide are copied (at most X's data), and that much space is
// needed until X's file goes.
//
// The child is the active layer (deleting the newest snapshot: copies go through
// Chain::CopyUp, beside the guest's writes, which always win) or a frozen layer (opened a
// second time for the copy; nothing else writes it). A live snapshot during a stream into the
// active layer freezes the child; the stream then goes on into it as a frozen layer.
//
// A stream is journaled in `<X>.stream` (format.h, StreamJournalRecord) from its start until X
// is removed. RecoverChain finishes one whose commit point passed (removes X and the journal);
// one that did not is resumed: by the server online (RunStream), or offline by RecoverChain
// (FinishStreamOffline) for any other command that changes the chain.
#ifndef STRATA_BLOCKSTORE_STREAM_H_
#define STRATA_BLOCKSTORE_STREAM_H_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/format.h"

namespace strata {

class Chain;
class Env;
class LockSet;

struct StreamProgress {
  uint64_t done = 0;    // bytes of X's data dealt with (copied, or hidden by the child already)
  uint64_t total = 0;   // bytes of X's data
  uint64_t copied = 0;  // bytes copied in this run
};

inline constexpr uint64_t kStreamBatchBytes = 64ull << 20;
struct StreamOptions {
  // The child is flushed (copies made durable) every `flush_interval` while copies were made,
  // and a frozen child also after every `batch_bytes` of copies: a run interrupted by a crash
  // repeats at most that much. The active layer waits for the interval only, because its
  // flush also writes back every guest write not yet synced (under a random-write load, a long
  // writeback each time).
  uint64_t batch_bytes = kStreamBatchBytes;
  std::chrono::milliseconds flush_interval{5000};
  std::function<void(const StreamProgress&)> progress;
  // Set by another thread: the run stops soon with kCancelled, the journal kept (a server
  // shutting down; it resumes at the next start). Null: never.
  const std::atomic<bool>* stop = nullptr;
};

struct StreamResult {
  std::string removed;  // X's path
  uint64_t copied = 0;
};

// What deleting snapshot `name` of the served chain `chain` would take, checked: X is the
// frozen layer named so; the chain's layer above it is X's only child as far as strata can
// know (children.h); space. Writes nothing. `needed` is an upper bound (X's data).
struct StreamPlan {
  std::string layer_path;  // X
  std::string child_path;
  StreamJournalRecord record;  // the journal to write
  uint64_t needed_bytes = 0;
  uint64_t free_bytes = 0;
};
absl::StatusOr<StreamPlan> PlanStream(Env* env, const Chain& chain, const std::string& name,
                                      uint64_t rate_limit);
// The same for the frozen layer below `layer_path` (a layer of the chain): `strata commit`.
absl::StatusOr<StreamPlan> PlanStreamBelow(Env* env, const Chain& chain,
                                           const std::string& layer_path, uint64_t rate_limit);
// Writes the plan's journal (the stream's start): atomic, synced, directory synced.
absl::Status BeginStream(Env* env, const StreamPlan& plan);

// Runs the stream journaled at `journal_path` on the served, writable chain `chain`, from
// wherever an earlier run got, to the end: copy, commit, X removed, journal removed.
absl::StatusOr<StreamResult> RunStream(Env* env, Chain* chain, const std::string& journal_path,
                                       const StreamOptions& options);
// Gives a stream up before its commit point (`strata cancel`): removes the journal. The chain
// is consistent as it is; copies already made stay (they read as X did).
absl::Status AbandonStream(Env* env, const std::string& journal_path);

// The stream journals of the chain topped by `top_path` (found in its layers' directories,
// and belonging to it: the layer they recorded as X's child is in the chain).
std::vector<std::string> FindStreamJournals(Env* env, const std::string& top_path);
// For RecoverChain, holding the chain's locks: a stream past its commit point is finished (X
// and the journal removed); one before it is finished offline when `finish` (copies, commit),
// else left for the server to resume. Returns what it did ("" when it left it).
absl::StatusOr<std::string> RecoverStream(Env* env, const std::string& top_path,
                                          const std::string& journal_path, bool finish,
                                          const std::function<void(uint64_t, uint64_t)>& progress);

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_STREAM_H_
