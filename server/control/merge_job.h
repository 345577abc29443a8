// MergeJob: the one snapshot deletion (a stream, blockstore/stream.h) a server runs at a time,
// on its own thread ("strata-merge") beside the guest's I/O, and what `list`, `stats` and the
// CLI's progress bar read of it.
//
// States: running; then done, failed (the journal stays: the deletion is still asked for, and
// the next request or restart resumes it), cancelled (`strata cancel`: the journal goes and
// the snapshot stays), or stopped (the server shut down: resumed at the next start).
#ifndef STRATA_SERVER_CONTROL_MERGE_JOB_H_
#define STRATA_SERVER_CONTROL_MERGE_JOB_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <string>
#include <thread>

#include "absl/status/status.h"
#include "blockstore/mutex.h"
#include "nlohmann/json.hpp"

namespace strata {

class Chain;

class MergeJob {
 public:
  enum class State { kRunning, kDone, kFailed, kCancelled, kStopped };
  // Starts the stream journaled at `journal_path` on `chain` (which outlives the job).
  // `snapshot` names it in messages; `on_end` runs on the job's thread when it ends.
  MergeJob(Chain* chain, std::string journal_path, std::string snapshot,
           std::function<void(State, const absl::Status&)> on_end);
  // Stops a running job (state stopped, journal kept) and waits for its thread.
  ~MergeJob();

  // Asks a running job to stop and give the deletion up; returns at once.
  void Cancel();
  // Asks a running job to stop, keeping the journal; waits for its thread.
  void Stop();
  State state() const;
  const std::string& snapshot() const { return snapshot_; }
  const std::string& journal_path() const { return journal_path_; }
  // {"snapshot", "state", "bytes_done", "bytes_total", "bytes_copied", "rate_bytes_per_second",
  //  "eta_seconds", "elapsed_seconds", "error"} (PROTOCOL.md, "delete-snapshot").
  nlohmann::json Describe() const;

 private:
  void Run(Chain* chain, std::function<void(State, const absl::Status&)> on_end);

  const std::string journal_path_;
  const std::string snapshot_;
  const int64_t started_ns_;
  std::atomic<bool> stop_{false};
  std::atomic<bool> cancel_{false};
  std::atomic<uint64_t> done_{0}, total_{0}, copied_{0};
  mutable Mutex mu_;
  State state_ ABSL_GUARDED_BY(mu_) = State::kRunning;
  absl::Status error_ ABSL_GUARDED_BY(mu_);
  int64_t ended_ns_ ABSL_GUARDED_BY(mu_) = 0;
  std::thread thread_;
};

absl::string_view Name(MergeJob::State state);

}  // namespace strata

#endif  // STRATA_SERVER_CONTROL_MERGE_JOB_H_
