// The shared parts of the Storage interface: group commit of flushes.
#include "server/storage.h"

namespace strata {

absl::Status Storage::Cache(uint64_t, uint64_t) { return absl::OkStatus(); }

absl::Status Storage::GroupFlush() {
  absl::MutexLock lock(&flush_mu_);
  // The flush that covers us must begin after now: the one after any flush already running.
  const uint64_t target = flush_started_ + 1;
  for (;;) {
    if (flush_done_ >= target) return flush_status_;
    if (!flush_running_) break;
    flush_mu_.Await(absl::Condition(
        +[](Storage* s) ABSL_EXCLUSIVE_LOCKS_REQUIRED(s->flush_mu_) { return !s->flush_running_; },
        this));
  }
  // Leader: run one flush for everyone who arrived up to now.
  flush_running_ = true;
  flush_started_ = target;
  flush_mu_.Unlock();
  absl::Status st = Flush();
  flush_mu_.Lock();
  flush_running_ = false;
  flush_done_ = target;
  flush_status_ = st;
  return st;
}

}  // namespace strata
