// Storage: the one narrow interface through which server/ reaches the disk it serves, the way
// nbdkit filters call next->pread. It mirrors the metadata half of blockstore's Chain
// (blockstore/chain.h): the server asks where bytes live and moves them itself on its io_uring
// ring. ChainStorage (chain_storage.h) adapts a Chain; fake_storage.h is a stand-in for
// protocol tests.
//
// Threading: every method may be called from any worker thread concurrently. MapRead,
// PrepareWrite, FinishWrite and Extents are called on the ring threads and must not sleep
// (metadata only); Zero, Trim, Flush, Cache and ReplenishSlots may block on I/O and run on the
// blocking pool. (Zero and Trim are metadata only in ChainStorage today.)
#ifndef STRATA_SERVER_ENGINE_STORAGE_H_
#define STRATA_SERVER_ENGINE_STORAGE_H_

#include <atomic>
#include <cstdint>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/chain.h"  // Segment, WritePlan, Extent: plain structs
#include "blockstore/mutex.h"
#include "server/nbd/export.h"

namespace strata {

class Storage {
 public:
  virtual ~Storage() = default;

  virtual uint64_t size() const = 0;
  virtual uint32_t sub_block_size() const = 0;
  virtual bool writable() const = 0;
  // True when files were opened with O_DIRECT: buffers, file offsets and lengths of data I/O
  // must be aligned to kDirectIoAlignment.
  virtual bool direct_io() const = 0;
  // Position of the top layer as in Extent::layer (0 = a raw base alone). Used to turn
  // Extent::layer into the strata:layer depth.
  virtual int top_position() const = 0;
  // One line naming what is served, for logs and NBD_INFO_DESCRIPTION.
  virtual std::string Describe() const = 0;
  // Names layer `position` (as in Extent::layer and Segment::layer) for error messages:
  // "layer 3 (/img/disk@s1.strata)", "base (/img/base.raw)".
  virtual std::string DescribeLayer(int position) const = 0;

  // Metadata only. *pin keeps the segments' slots from reuse until released, after the reads
  // completed.
  virtual absl::Status MapRead(uint64_t offset, uint64_t length, std::vector<Segment>* out,
                               ReadPin* pin) const = 0;
  // Metadata only. As Chain::PrepareWrite: IsWriteConflict() (park until a write finishes)
  // and NeedsSlots() (run ReplenishSlots on the blocking pool, then retry) are retryable;
  // plan.replenish asks for ReplenishSlots in the background.
  virtual absl::StatusOr<WritePlan> PrepareWrite(uint64_t offset, uint64_t length) = 0;
  // Metadata only.
  virtual void FinishWrite(const WritePlan& plan, bool succeeded) = 0;
  // May block on I/O (fallocate): refills the space new writes take (Chain::ReplenishSlots).
  // kResourceExhausted when the host volume is full: fail the waiting write with ENOSPC.
  virtual absl::Status ReplenishSlots() { return absl::OkStatus(); }
  virtual absl::Status Zero(uint64_t offset, uint64_t length, bool may_trim,
                            std::vector<std::pair<uint64_t, uint64_t>>* data_ranges) = 0;
  virtual absl::Status Trim(uint64_t offset, uint64_t length) = 0;
  virtual absl::Status Flush() = 0;
  // Metadata only.
  virtual absl::Status Extents(uint64_t offset, uint64_t length,
                               std::vector<Extent>* out) const = 0;
  // Hint that [offset, offset + length) will be read soon (NBD_CMD_CACHE). May block.
  virtual absl::Status Cache(uint64_t offset, uint64_t length);
  // The remote base that kRemote segments are read through (blockstore/remote_base.h), or
  // null when the disk has none.
  virtual RemoteBase* remote_base() const { return nullptr; }
  // Copy-on-read (`strata serve --copy-on-read`): true when `bytes` just read from the remote
  // base are to be copied into the active layer and there is room for them (a bounded amount
  // is copied at a time; past it a read is not copied). The caller then runs CopyUpFromBase
  // off the ring, which gives the room back.
  virtual bool AdmitCopyOnRead(uint64_t /*bytes*/) { return false; }
  // Blocks. Writes what `data` (read from the remote base at `offset`) holds of sub-blocks the
  // disk still reads from the base into the active layer (Chain::CopyUpFromBase). Best
  // effort: a copy that cannot be made is skipped, and the base answers as before.
  virtual void CopyUpFromBase(uint64_t /*offset*/, std::string /*data*/) {}

  // Flush() with group commit, for concurrent callers (blocking-pool threads): a caller waits for
  // a flush that *starts* after it arrived, and one Flush() serves every caller that arrived
  // while the previous one ran. So N connections flushing at once cost two fdatasyncs, not N,
  // and each still covers every write completed before its FLUSH arrived.
  absl::Status GroupFlush();

  // The background refill plan.replenish asks for: at most one queued or running per disk, so
  // a burst of writes that all see the reserve low queues one, not thousands. True: the caller
  // runs ReplenishSlots off the ring, then EndBackgroundReplenish.
  bool ClaimBackgroundReplenish() { return !background_replenish_.exchange(true); }
  void EndBackgroundReplenish() { background_replenish_.store(false); }

 private:
  std::atomic<bool> background_replenish_{false};
  Mutex flush_mu_;
  bool flush_running_ ABSL_GUARDED_BY(flush_mu_) = false;
  uint64_t flush_started_ ABSL_GUARDED_BY(flush_mu_) = 0;  // generation of the last flush begun
  uint64_t flush_done_ ABSL_GUARDED_BY(flush_mu_) = 0;     // generation of the last flush ended
  absl::Status flush_status_ ABSL_GUARDED_BY(flush_mu_);   // result of flush_done_
};

// The export of `storage` named `name`: its description, size and sub-block from the storage,
// read-only when the storage is. `owned` (optional) is kept alive by the export.
std::shared_ptr<Export> NewExport(std::string name, Storage* storage,
                                  std::shared_ptr<Storage> owned = nullptr);

// O_DIRECT alignment used for buffers, file offsets and lengths. 4096 covers every logical
// block size we expect (512-byte and 4K-native devices).
inline constexpr uint64_t kDirectIoAlignment = 4096;

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_STORAGE_H_
