// The shared parts of the Storage interface: group commit of flushes.
#include "server/engine/storage.h"

namespace strata {

absl::Status Storage::Cache(uint64_t, uint64_t) { return absl::OkStatus(); }

absl::Status Storage::GroupFlush() {
  MutexLock lock(&flush_mu_);
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

std::shared_ptr<Export> NewExport(std::string name, Storage* storage,
                                  std::shared_ptr<Storage> owned) {
  auto e = std::make_shared<Export>();
  e->name = std::move(name);
  e->description = storage->Describe();
  e->disk_size = storage->size();
  e->sub_block_size = storage->sub_block_size();
  e->read_only = !storage->writable();
  e->storage = storage;
  e->owned_storage = std::move(owned);
  return e;
}

}  // namespace strata
