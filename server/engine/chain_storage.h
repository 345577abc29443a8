// ChainStorage: blockstore's Chain behind the server's Storage interface. A thin pass-through:
// every check and decision about the data lives in Chain, and so does every fact that can
// change (depth, writability, O_DIRECT): this class asks the chain each time, so a live
// snapshot (a layer more) needs no refresh. It adds the two whole-chain operations the control
// socket runs while the server is paused: Snapshot and Revert (revert.h: RevertServed opens the
// reverted chain beside this one and swaps them only after its commit point).
//
// Size, sub-block size and path are held here, from the chain at construction: they never
// change for this object's life (a revert keeps the geometry), and a paused worker still
// negotiates handshakes, which read them, while a revert swaps the chain. The chain is swapped
// only there, with no client connected, so nothing else reads it meanwhile. There is always a
// chain: a revert that fails keeps serving the one it had, unchanged.
#ifndef STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_
#define STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_

#include <atomic>
#include <memory>
#include <string>

#include "blockstore/chain.h"
#include "blockstore/mutex.h"
#include "server/engine/storage.h"

namespace strata {

class ChainStorage final : public Storage {
 public:
  explicit ChainStorage(std::unique_ptr<Chain> chain);

  uint64_t size() const override { return size_; }
  uint32_t sub_block_size() const override { return sub_block_size_; }
  bool writable() const override { return chain_->writable(); }
  bool direct_io() const override { return chain_->direct_io(); }
  // Where the chain's parents may live besides its top's tree: snapshot exports follow the
  // same rule (blockstore/parent_place.h).
  const std::vector<std::string>& allowed_parent_dirs() const {
    return chain_->options().allowed_parent_dirs;
  }
  int top_position() const override { return chain_->top_position(); }
  std::string Describe() const override;
  std::string DescribeLayer(int position) const override;

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
  RemoteBase* remote_base() const override { return chain_->remote_base(); }
  void set_copy_on_read(bool on) { copy_on_read_ = on; }
  bool AdmitCopyOnRead(uint64_t bytes) override;
  void CopyUpFromBase(uint64_t offset, std::string data) override;

  // The chain, never null; another one after a revert. REQUIRES for any use that changes it:
  // the server is paused (Server::RunPaused).
  Chain* chain() const { return chain_.get(); }
  // The path served, the same across reverts.
  const std::string& top_path() const { return top_path_; }

  // REQUIRES: the server is paused and no client holds this export (a revert changes the
  // disk under a client's feet). Reverts the served chain to its parent, or to snapshot
  // `name` (RevertServed). On failure the chain served before goes on, unchanged, and the
  // message says what failed; only a failed directory sync after the commit point ("reverted,
  // but ...") fails with the reverted chain served (chain() tells which).
  absl::Status Revert(const std::string& name);

 private:
  // A background refill (Storage::ClaimBackgroundReplenish) belongs to no request, so a pause
  // does not wait for it: it holds this shared while it uses the chain, Revert exclusively
  // while it swaps the chain.
  mutable Mutex swap_mu_;
  std::unique_ptr<Chain> chain_;
  bool copy_on_read_ = false;
  std::atomic<uint64_t> copying_{0};  // bytes admitted for copy-on-read, not copied yet
  const uint64_t size_;
  const uint32_t sub_block_size_;
  const std::string top_path_;
};

// Opens the chain whose top is `top_path` (a read-only chain takes shared locks only, so
// snapshots of a served disk can be opened beside it). `allowed_parent_dirs`: as ChainOptions'.
absl::StatusOr<std::unique_ptr<ChainStorage>> OpenChainStorage(
    const std::string& top_path, bool writable, bool direct_io,
    const std::vector<std::string>& allowed_parent_dirs = {});

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_CHAIN_STORAGE_H_
