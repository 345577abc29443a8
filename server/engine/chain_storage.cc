#include "server/engine/chain_storage.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "blockstore/revert.h"
#include "server/log.h"

namespace strata {

ChainStorage::ChainStorage(std::unique_ptr<Chain> chain)
    : chain_(std::move(chain)),
      size_(chain_->size()),
      sub_block_size_(chain_->sub_block_size()),
      top_path_(chain_->top_path()) {}

std::string ChainStorage::Describe() const {
  const int above = top_position();
  std::string text = absl::StrFormat("strata chain %s (%d layer%s above the base)", top_path_,
                                     above, above == 1 ? "" : "s");
  // A frozen top never changes: a strata on this export as its NBD base records this UUID and
  // checks it on every connection (server/remote/nbd_base.h reads the tag).
  const LayerInfo top = chain_->Layers().back();
  if (!top.is_raw_base && top.header.state == LayerState::kFrozen) {
    absl::StrAppend(&text, ", frozen layer ", UuidToString(top.header.uuid));
  }
  return text;
}

std::string ChainStorage::DescribeLayer(int position) const {
  return chain_->DescribeLayer(position);
}

absl::Status ChainStorage::MapRead(uint64_t offset, uint64_t length, std::vector<Segment>* out,
                                   ReadPin* pin) const {
  return chain_->MapRead(offset, length, out, pin);
}
absl::StatusOr<WritePlan> ChainStorage::PrepareWrite(uint64_t offset, uint64_t length) {
  return chain_->PrepareWrite(offset, length);
}
absl::Status ChainStorage::ReplenishSlots() {
  ReaderMutexLock lock(&swap_mu_);
  return chain_->ReplenishSlots();
}
void ChainStorage::FinishWrite(const WritePlan& plan, bool succeeded) {
  chain_->FinishWrite(plan, succeeded);
}
absl::Status ChainStorage::Zero(uint64_t offset, uint64_t length, bool may_trim,
                                std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) {
  return chain_->Zero(offset, length, may_trim, data_ranges);
}
absl::Status ChainStorage::Trim(uint64_t offset, uint64_t length) {
  return chain_->Trim(offset, length);
}
absl::Status ChainStorage::Flush() { return chain_->Flush(); }
absl::Status ChainStorage::Extents(uint64_t offset, uint64_t length,
                                   std::vector<Extent>* out) const {
  return chain_->Extents(offset, length, out);
}

namespace {

// Bytes of copy-on-read admitted at once (ChainStorage::AdmitCopyOnRead): what the blocking
// pool may hold queued for it, so a guest streaming its disk cannot grow the server.
constexpr uint64_t kMaxCopyOnReadBytes = 64 << 20;

}  // namespace

bool ChainStorage::AdmitCopyOnRead(uint64_t bytes) {
  if (!copy_on_read_ || !chain_->writable()) return false;
  if (copying_.fetch_add(bytes) + bytes <= kMaxCopyOnReadBytes) return true;
  copying_.fetch_sub(bytes);
  return false;
}

void ChainStorage::CopyUpFromBase(uint64_t offset, std::string data) {
  ReaderMutexLock lock(&swap_mu_);
  const uint64_t sb = sub_block_size_;
  const uint64_t cluster = chain_->cluster_size();
  // Whole sub-blocks only: a partial one would need its other bytes from the base again.
  const uint64_t start = (offset + sb - 1) / sb * sb;
  const uint64_t end = std::max(start, (offset + data.size()) / sb * sb);
  bool replenish = false;
  for (uint64_t at = start; at < end;) {
    const uint64_t piece_end = std::min(end, (at / cluster + 1) * cluster);
    const absl::string_view piece(data.data() + (at - offset), piece_end - at);
    absl::StatusOr<CopyUpResult> r = chain_->CopyUpFromBase(at, piece);
    if (NeedsSlots(r.status()) && chain_->ReplenishSlots().ok()) {
      r = chain_->CopyUpFromBase(at, piece);
    }
    if (r.ok()) {
      replenish |= r->replenish;
    } else if (!IsWriteConflict(r.status())) {
      STRATA_LOG_LIMITED(kError, "copy-on-read @ %#x: %s (the base still answers)", at,
                         r.status().message());
      break;
    }
    at = piece_end;
  }
  if (replenish) (void)chain_->ReplenishSlots();
  copying_.fetch_sub(data.size());
}

absl::Status ChainStorage::Revert(const std::string& name) {
  MutexLock swap(&swap_mu_);
  return RevertServed(&chain_, name);
}

absl::StatusOr<std::unique_ptr<ChainStorage>> OpenChainStorage(
    const std::string& top_path, bool writable, bool direct_io,
    const std::vector<std::string>& allowed_parent_dirs) {
  ChainOptions options;
  options.allowed_parent_dirs = allowed_parent_dirs;
  options.writable = writable;
  options.direct_io = direct_io;
  options.serve_streams = true;  // the server resumes an unfinished snapshot deletion online
  absl::StatusOr<std::unique_ptr<Chain>> chain = Chain::Open(top_path, options);
  if (!chain.ok()) return chain.status();
  return std::make_unique<ChainStorage>(std::move(*chain));
}

}  // namespace strata
