// ChainStorage: blockstore's Chain behind the server's Storage interface. A thin pass-through:
// every check and decision about the data lives in Chain; this class adds the layer depth the
// strata:layer context needs, and the two whole-chain operations the control socket runs while
// the server is paused: Snapshot and Revert (close, blockstore Revert, reopen).
//
// Size, sub-block and path are cached at open: they cannot change (a revert keeps the virtual
// size), so protocol code reading them while a revert swaps the Chain never sees a gap.
#ifndef STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_
#define STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_

#include <atomic>
#include <memory>
#include <string>

#include "blockstore/chain.h"
#include "server/engine/storage.h"

namespace strata {

class ChainStorage final : public Storage {
 public:
  ChainStorage(std::unique_ptr<Chain> chain, bool direct_io);

  uint64_t size() const override { return size_; }
  uint32_t sub_block_size() const override { return sub_block_size_; }
  bool writable() const override { return writable_; }
  bool direct_io() const override { return direct_io_; }
  int top_position() const override { return top_position_.load(std::memory_order_relaxed); }
  std::string Describe() const override;

  absl::Status MapRead(uint64_t offset, uint64_t length, std::vector<Segment>* out,
                       ReadPin* pin) const override;
  absl::StatusOr<WritePlan> PrepareWrite(uint64_t offset, uint64_t length) override;
  void FinishWrite(const WritePlan& plan, bool succeeded) override;
  absl::Status ReplenishSlots() override;
  absl::Status Zero(uint64_t offset, uint64_t length, bool may_trim,
                    std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) override;
  absl::Status Trim(uint64_t offset, uint64_t length) override;
  absl::Status Flush() override;
  absl::Status Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const override;
  void Refresh() override;

  // The chain (null only after a revert whose reopen failed). REQUIRES for any use that
  // changes it: the server is paused (Server::RunPaused).
  Chain* chain() const { return chain_.get(); }
  const std::string& top_path() const { return top_path_; }

  // REQUIRES: the server is paused and no client holds this export (a revert changes the
  // disk under a client's feet). Flushes, closes the chain, runs blockstore's Revert (to the
  // parent, or to snapshot `name`), and reopens. On failure the previous chain is reopened
  // (Revert is atomic), so the disk is served as before.
  absl::Status Revert(const std::string& name);

 private:
  absl::Status Missing() const;

  std::unique_ptr<Chain> chain_;
  const bool direct_io_;
  const bool writable_;
  const uint64_t size_;
  const uint32_t sub_block_size_;
  const std::string top_path_;
  std::atomic<int> top_position_{0};
};

// Opens the chain whose top is `top_path` (a read-only chain takes shared locks only, so
// snapshots of a served disk can be opened beside it).
absl::StatusOr<std::unique_ptr<ChainStorage>> OpenChainStorage(const std::string& top_path,
                                                               bool writable, bool direct_io);

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_
