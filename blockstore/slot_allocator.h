// SlotAllocator: which slots (cluster-sized units) of one layer file may take new data, and
// which of those are ready, their space already allocated on the host volume.
//
// Design note. Slots below high_water() are referenced, free, or the checkpoint table; the
// preallocated tail [high_water, end_slot) is ready. A slot the index stops referencing is
// pending until the flush that freed it is durable, then quarantined under that flush's read
// epoch until no read mapped before can use it (FORMAT.md, Durability 2), then free. The flush
// punched its space, so a free slot is ready only once allocated again. The reserve is every
// ready slot: the tail plus free slots allocated again.
//
// Take() hands out ready slots only and does no I/O: the io_uring write path calls it under
// the chain's lock. Filling the reserve up to its target (an extent) is blocking, in three
// steps so that the owner's lock is not held during the fallocate: PlanRefill (under the lock)
// decides and claims what to allocate, Fill (without it) allocates, Publish (under it again)
// makes the slots ready. Allocate() and TakeRun() are blocking in one step, for offline callers
// and for a checkpoint table.
//
// Not thread-safe: the owner serializes every call, except Fill (see there), and runs at most
// one refill at a time.
#ifndef STRATA_BLOCKSTORE_SLOT_ALLOCATOR_H_
#define STRATA_BLOCKSTORE_SLOT_ALLOCATOR_H_

#include <cstdint>
#include <optional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/file.h"

namespace strata {

class SlotAllocator {
 public:
  // What one refill allocates: claimed by PlanRefill, allocated by Fill, published by Publish.
  struct Refill {
    std::vector<uint32_t> slots;  // free slots to allocate again, ascending
    uint64_t grow_at = 0;         // a new extent [grow_at, grow_at + grow_slots)
    uint64_t grow_slots = 0;
    // Set by Fill.
    size_t filled = 0;    // slots[0, filled) are allocated
    uint64_t grown = 0;   // slots of the extent allocated, from grow_at
    absl::Status status;  // the first failure
  };

  // Starts over for `file` (not owned; outlives the allocator), which has `end_slot` slots;
  // `free_slots` (highest first) are below `high_water` and hold no data.
  void Reset(File* file, uint32_t cluster_size, uint64_t high_water, uint64_t end_slot,
             std::vector<uint32_t> free_slots);

  // --- No I/O ---
  // A ready slot (lowest reused first), or nullopt when the reserve is empty.
  std::optional<uint32_t> Take();
  // Slots in the reserve.
  uint64_t ready() const { return ready_free_.size() + (end_slot_ - high_water_); }
  // Slots a refill aims for: an extent (an eighth of the file, 16 MiB .. 1 GiB).
  uint64_t target() const;
  // True when the reserve fell below a quarter of its target: time to refill in the background.
  bool low() const;
  // True when a refill would do something useful: the reserve is low, or free slots wait to
  // be allocated again (reusing them keeps the file from growing).
  bool wants_refill() const { return !free_.empty() || low(); }
  // `slot` no longer holds data: reusable after the next durable flush (TakePending).
  void Free(uint32_t slot) { pending_free_.push_back(slot); }
  // Hands the slots freed since the last call to a flush, which owns them until it ends.
  std::vector<uint32_t> TakePending() { return std::exchange(pending_free_, {}); }
  // A flush failed: its slots stay unusable until the next one.
  void ReturnPending(const std::vector<uint32_t>& slots);
  // A durable flush freed `slot`; reusable once every read pinned before `tag` ended.
  void Quarantine(uint64_t tag, uint32_t slot) { quarantined_.push_back({tag, slot}); }
  // Quarantined slots with a tag below `oldest_pinned_tag` become free.
  void ReleaseQuarantined(uint64_t oldest_pinned_tag);
  bool has_quarantined() const { return !quarantined_.empty(); }
  // One past the highest quarantined slot (0: none): space a frozen layer must keep.
  uint64_t QuarantinedEnd() const;
  uint64_t high_water() const { return high_water_; }
  uint64_t end_slot() const { return end_slot_; }
  // The file was truncated to `end` slots, none of them free or ready above it.
  void TruncatedTo(uint64_t end) { high_water_ = end_slot_ = end; }
  // Blocking. Gives the space of the free slots allocated again back to the host volume (a
  // layer being closed or frozen: no index entry references it); they are free again. Failing
  // only wastes space, so errors are ignored.
  void PunchReadyFree();

  // --- Blocking (may fallocate) ---
  // A slot for new data: ready, else free (allocated again), else the tail grown by an
  // extent. kResourceExhausted, naming the file, when the volume is full.
  absl::StatusOr<uint32_t> Allocate();
  // `n` contiguous slots at the high water (a checkpoint table), growing the file as needed.
  absl::StatusOr<uint32_t> TakeRun(uint32_t n);
  // The three refill steps in one, for a single-threaded owner.
  absl::Status Replenish();

  // --- Refill in three steps (see the design note) ---
  // Under the owner's lock: claims free slots (up to the target's worth) and, when the reserve
  // with them stays below its low-water mark, an extent, which brings it past the target.
  Refill PlanRefill();
  // Without the owner's lock: allocates what `refill` claims. Reads only the file and the
  // cluster size, which Reset alone sets.
  void Fill(Refill* refill) const;
  // Under the owner's lock: the allocated slots join the reserve, the rest are free again. OK
  // unless an allocation failed and no slot is ready (kResourceExhausted when the volume is
  // full): writers that took the reserve while Fill ran are no failure.
  absl::Status Publish(const Refill& refill);

 private:
  uint64_t LowWater() const;
  // Grows the file by an extent (one cluster when the volume is nearly full).
  absl::Status Grow();
  // Allocates [at, at + slots) of the file, falling back to one slot; returns how many.
  absl::StatusOr<uint64_t> AllocateExtent(uint64_t at, uint64_t slots) const;

  File* file_ = nullptr;
  uint64_t cluster_size_ = 0;
  uint64_t high_water_ = 0;  // slots below are in use, free, or the checkpoint table
  uint64_t end_slot_ = 0;    // slots below are allocated on the host volume (or free)
  std::vector<uint32_t> free_;        // space punched; highest first (Take pops the back)
  std::vector<uint32_t> ready_free_;  // free slots allocated again; highest first
  std::vector<uint32_t> pending_free_;
  std::vector<std::pair<uint64_t, uint32_t>> quarantined_;  // (reuse tag, slot)
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_SLOT_ALLOCATOR_H_
