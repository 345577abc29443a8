// ChainStorage: blockstore's Chain behind the server's Storage interface. A thin pass-through:
// every check and decision about the data lives in Chain; this file only adds the layer depth
// that the strata:layer context needs.
#include <atomic>

#include "absl/strings/str_format.h"
#include "blockstore/chain.h"
#include "server/storage.h"

namespace strata {
namespace {

class ChainStorage final : public Storage {
 public:
  ChainStorage(std::unique_ptr<Chain> chain, bool direct_io)
      : chain_(std::move(chain)), direct_io_(direct_io) {
    Refresh();
  }

  uint64_t size() const override { return chain_->size(); }
  uint32_t sub_block_size() const override { return chain_->sub_block_size(); }
  bool writable() const override { return chain_->writable(); }
  bool direct_io() const override { return direct_io_; }
  int top_position() const override { return top_position_.load(std::memory_order_relaxed); }
  std::string Describe() const override {
    return absl::StrFormat("strata chain %s (%d layers above the base)", chain_->top_path(),
                           top_position());
  }

  absl::Status MapRead(uint64_t offset, uint64_t length,
                       std::vector<Segment>* out) const override {
    return chain_->MapRead(offset, length, out);
  }
  absl::StatusOr<WritePlan> PrepareWrite(uint64_t offset, uint64_t length) override {
    return chain_->PrepareWrite(offset, length);
  }
  void FinishWrite(const WritePlan& plan, bool succeeded) override {
    chain_->FinishWrite(plan, succeeded);
  }
  absl::Status Zero(uint64_t offset, uint64_t length, bool may_trim,
                    std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) override {
    return chain_->Zero(offset, length, may_trim, data_ranges);
  }
  absl::Status Trim(uint64_t offset, uint64_t length) override {
    return chain_->Trim(offset, length);
  }
  absl::Status Flush() override { return chain_->Flush(); }
  absl::Status Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const override {
    return chain_->Extents(offset, length, out);
  }
  // Layers() stats every file: called at open and after a pause (snapshot), never per request.
  void Refresh() override {
    int top = 0;
    for (const LayerInfo& info : chain_->Layers()) top = std::max(top, info.position);
    top_position_.store(top, std::memory_order_relaxed);
  }

  Chain* chain() { return chain_.get(); }

 private:
  std::unique_ptr<Chain> chain_;
  const bool direct_io_;
  std::atomic<int> top_position_{0};
};

}  // namespace

absl::StatusOr<std::unique_ptr<Storage>> OpenChainStorage(const std::string& top_path,
                                                          bool writable, bool direct_io) {
  ChainOptions options;
  options.writable = writable;
  options.direct_io = direct_io;
  absl::StatusOr<std::unique_ptr<Chain>> chain = Chain::Open(top_path, options);
  if (!chain.ok()) return chain.status();
  return std::unique_ptr<Storage>(new ChainStorage(std::move(*chain), direct_io));
}

}  // namespace strata
