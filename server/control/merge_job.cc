#include "server/control/merge_job.h"

#include <pthread.h>

#include <cmath>

#include "blockstore/file.h"
#include "blockstore/stream.h"
#include "server/engine/stats.h"
#include "server/log.h"

namespace strata {

absl::string_view Name(MergeJob::State state) {
  switch (state) {
    case MergeJob::State::kRunning: return "running";
    case MergeJob::State::kDone: return "done";
    case MergeJob::State::kFailed: return "failed";
    case MergeJob::State::kCancelled: return "cancelled";
    case MergeJob::State::kStopped: return "stopped";
  }
  return "unknown";
}

MergeJob::MergeJob(Chain* chain, std::string journal_path, std::string snapshot,
                   std::function<void(State, const absl::Status&)> on_end)
    : journal_path_(std::move(journal_path)),
      snapshot_(std::move(snapshot)),
      started_ns_(MonotonicNs()) {
  thread_ = std::thread([this, chain, on_end = std::move(on_end)]() mutable {
    pthread_setname_np(pthread_self(), "strata-merge");
    Run(chain, std::move(on_end));
  });
}

MergeJob::~MergeJob() { Stop(); }

void MergeJob::Cancel() {
  cancel_ = true;
  stop_ = true;
}

void MergeJob::Stop() {
  stop_ = true;
  if (thread_.joinable()) thread_.join();
}

MergeJob::State MergeJob::state() const {
  MutexLock lock(&mu_);
  return state_;
}

void MergeJob::Run(Chain* chain, std::function<void(State, const absl::Status&)> on_end) {
  StreamOptions options;
  options.stop = &stop_;
  options.progress = [this](const StreamProgress& p) {
    done_ = p.done;
    total_ = p.total;
    copied_ = p.copied;
  };
  STRATA_LOG(kInfo, "deleting snapshot '%s' online (%s)", snapshot_, journal_path_);
  absl::StatusOr<StreamResult> result = RunStream(Env::Default(), chain, journal_path_, options);
  State state = State::kDone;
  absl::Status error = result.status();
  if (absl::IsCancelled(error)) {
    state = cancel_ ? State::kCancelled : State::kStopped;
    if (cancel_) error = AbandonStream(Env::Default(), journal_path_);
  } else if (!error.ok()) {
    state = State::kFailed;
  }
  const double seconds = static_cast<double>(MonotonicNs() - started_ns_) / 1e9;
  if (state == State::kDone) {
    STRATA_LOG(kInfo, "snapshot '%s' deleted: %llu bytes copied in %.3f s", snapshot_,
               static_cast<unsigned long long>(result->copied), seconds);
  } else if (state == State::kFailed || !error.ok()) {
    STRATA_LOG(kError, "deleting snapshot '%s' %s: %s", snapshot_, Name(state), error.message());
  } else {
    STRATA_LOG(kInfo, "deleting snapshot '%s' %s after %.3f s", snapshot_, Name(state), seconds);
  }
  {
    MutexLock lock(&mu_);
    state_ = state;
    error_ = error;
    ended_ns_ = MonotonicNs();
  }
  if (on_end) on_end(state, error);
}

nlohmann::json MergeJob::Describe() const {
  MutexLock lock(&mu_);
  const int64_t end = ended_ns_ != 0 ? ended_ns_ : MonotonicNs();
  const double elapsed = static_cast<double>(end - started_ns_) / 1e9;
  const uint64_t done = done_, total = total_, copied = copied_;
  const double rate = elapsed > 0 ? static_cast<double>(copied) / elapsed : 0;
  const double done_rate = elapsed > 0 ? static_cast<double>(done) / elapsed : 0;
  nlohmann::json j{{"snapshot", snapshot_},
                   {"state", std::string(Name(state_))},
                   {"bytes_done", done},
                   {"bytes_total", total},
                   {"bytes_copied", copied},
                   {"rate_bytes_per_second", std::round(rate)},
                   {"elapsed_seconds", std::round(elapsed * 1000) / 1000},
                   {"journal", journal_path_}};
  j["eta_seconds"] = state_ == State::kRunning && done_rate > 0
                         ? nlohmann::json(std::round(static_cast<double>(total - std::min(done, total)) /
                                                     done_rate * 10) / 10)
                         : nlohmann::json(nullptr);
  j["error"] = error_.ok() ? nlohmann::json(nullptr) : nlohmann::json(std::string(error_.message()));
  return j;
}

}  // namespace strata
