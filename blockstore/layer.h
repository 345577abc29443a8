// Layer: one layer file (format.h, FORMAT.md) open in memory: its header, its cluster index,
// and the two units that keep them: the journal (journal.h), which makes index changes durable,
// and the slot allocator (slot_allocator.h), which says where new data may go.
//
// Design note. The index lives in memory (ClusterTable). Changes are marked dirty; a flush
// (PrepareFlush under the owner's lock, WriteFlush without it, FinishFlush under it again)
// appends the dirty entries to the journal, or, when the journal is full, writes a checkpoint
// table and switches the header, which starts a new journal epoch. Slots (cluster-sized units
// of the file) come from the allocator's reserve of ready slots (host space already allocated:
// the preallocated tail, and freed slots allocated again), which a caller refills in the
// background (slots(), Chain::ReplenishSlots) or AllocateSlot() refills inline. A slot freed by
// a zero/trim is reused only after the index change that freed it is durable, so no durable
// index entry can ever point at another cluster's bytes.
//
// Not thread-safe: the owner serializes calls (Chain's mutex; flushes additionally serialized
// among themselves; SlotAllocator::Fill may run outside it). REQUIRES for mutations: the layer
// is open writable and active.
#ifndef STRATA_BLOCKSTORE_LAYER_H_
#define STRATA_BLOCKSTORE_LAYER_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "absl/container/flat_hash_set.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "blockstore/cluster_table.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/journal.h"
#include "blockstore/slot_allocator.h"

namespace strata {

struct LayerCreateParams {
  uint64_t virtual_size = 0;
  uint32_t cluster_size = kDefaultClusterSize;
  uint32_t sub_block_size = kDefaultSubBlockSize;
  ParentFormat parent_format = ParentFormat::kNone;
  std::string parent_path;      // as stored: relative to the layer's directory
  Uuid parent_uuid{};
  uint64_t parent_size = 0;
  uint64_t journal_size = kDefaultJournalSize;
  Uuid uuid{};  // nil: a new random one (a caller that must record it first picks it)
};

// A new empty active layer on the parent `h` names, with h's geometry (a revert's, a commit
// into the base's successor).
LayerCreateParams EmptyLayerOn(const LayerHeader& h);

// What one flush writes, captured under the owner's lock (see the design note).
struct FlushBatch {
  std::vector<std::pair<uint32_t, ClusterEntry>> records;  // dirty entries, or the whole index
  bool checkpoint = false;                                 // records is the whole index
  uint32_t table_slot = 0;                                 // checkpoint: where the table goes
  uint32_t table_slots = 0;
  uint32_t old_table_slot = 0;                             // freed by a checkpoint
  uint32_t old_table_slots = 0;
  std::vector<uint32_t> freed_slots;                       // reusable once durable
  std::optional<LayerHeader> header;  // a checkpoint's new header, published by FinishFlush
};

// Both header copies of a layer file, as read and decoded: ReadLayerHeader picks one, `check`
// compares them.
struct HeaderCopies {
  std::string blocks;        // the two raw blocks, kHeaderCopyOffset[i] into it
  LayerHeader header[2];
  absl::Status status[2];    // of each copy's DecodeFrom
  // The valid copy with the higher sequence. REQUIRES: one is valid.
  int newest() const;
};
// kDataLoss naming the file when the two blocks cannot be read.
absl::StatusOr<HeaderCopies> ReadHeaderCopies(File* file);

// Reads and checks only the header of the layer at `path` (the valid copy with the higher
// sequence); *copy, if given, receives which copy that was.
absl::StatusOr<LayerHeader> ReadLayerHeader(File* file, int* copy = nullptr);
absl::StatusOr<LayerHeader> ReadLayerHeader(Env* env, const std::string& path);
// Edits the header of the layer at `path` without loading its index (relinking a child, a
// merge's final switch): sequence + 1, both copies written as Layer::UpdateHeader does.
absl::Status EditLayerHeader(Env* env, const std::string& path,
                             const std::function<void(LayerHeader*)>& edit);

class Layer;
// Copies the sub-blocks `mask` of a cluster from slot `from_slot` of `from` to slot `to_slot` of
// `to` (same geometry) through `env`, a run of consecutive sub-blocks at a time. Not durable
// until `to` is synced.
absl::Status CopyClusterData(Env* env, const Layer& from, uint32_t from_slot, Layer* to,
                             uint32_t to_slot, uint32_t mask);

class Layer {
 public:
  // Creates a new active layer file (fails if it exists) and makes it durable.
  static absl::StatusOr<std::unique_ptr<Layer>> Create(Env* env, const std::string& path,
                                                       const LayerCreateParams& params);
  // Opens a layer: checks the header against the file, reads the checkpoint table and replays
  // the journal. A writable open starts a new journal epoch (a checkpoint when the journal
  // holds records, else a header update), so appends start on a clean block boundary and no
  // block a torn flush left can be replayed after them. kWritable requires an active layer; kMergeTarget
  // also opens a frozen one, for an offline commit into it.
  enum class Mode { kReadOnly, kWritable, kMergeTarget };
  static absl::StatusOr<std::unique_ptr<Layer>> Open(Env* env, const std::string& path, Mode mode,
                                                     bool direct_io = false);
  // The same on a file already open in `mode`'s access (a parent opened by OpenParentFile,
  // parent_place.h); a direct_io twin must be the same file.
  static absl::StatusOr<std::unique_ptr<Layer>> Open(Env* env, std::unique_ptr<File> file,
                                                     Mode mode, bool direct_io = false);
  ~Layer();

  const LayerHeader& header() const { return header_; }
  const std::string& path() const { return file_->path(); }
  // The layer's file was renamed or linked while open (a snapshot): see File::set_path.
  void set_path(const std::string& path);
  File* file() const { return file_.get(); }
  // The descriptor segments name for data I/O (O_DIRECT when opened so).
  int data_fd() const { return data_file_ ? data_file_->fd() : file_->fd(); }
  bool writable() const { return writable_; }
  uint32_t cluster_size() const { return header_.cluster_size; }
  uint32_t sub_block_size() const { return header_.sub_block_size; }
  uint64_t DataOffset(uint32_t slot, uint32_t sub_block) const {
    return uint64_t{slot} * header_.cluster_size + uint64_t{sub_block} * header_.sub_block_size;
  }

  // --- Index ---
  ClusterEntry Get(uint64_t cluster) const { return index_.Get(cluster); }
  const ClusterTable<ClusterEntry>& index() const { return index_; }
  // Number of data slots referenced by the index.
  uint64_t referenced_slots() const { return referenced_slots_; }
  // Drops the in-memory index of a frozen layer once the chain flattened it.
  void ReleaseIndex() { index_.Clear(); }

  // --- Mutation ---
  // A slot for new data; may block on fallocate (offline callers): a ready slot, else a
  // durable-free one allocated again, else the file grown by a new extent. kResourceExhausted
  // when the volume is full. The write path takes slots()->Take() instead, which never blocks.
  absl::StatusOr<uint32_t> AllocateSlot() { return slots_.Allocate(); }
  // The slot allocator, for an owner that takes ready slots and refills them in the background.
  SlotAllocator* slots() { return &slots_; }
  // Sets the entry of `cluster`, marks it dirty, and queues a slot it no longer references
  // for freeing after the next flush. Aborts on an entry whose present and zero masks overlap.
  void SetEntry(uint64_t cluster, const ClusterEntry& entry);

  // Flush in three steps (see the design note). Data must be synced between PrepareFlush and
  // WriteFlush (Chain::Flush does it) for entries captured to point at durable data.
  // WriteFlush changes nothing a reader under the owner's lock sees; FinishFlush publishes.
  absl::StatusOr<FlushBatch> PrepareFlush();
  absl::Status WriteFlush(FlushBatch* batch);
  // Once the batch is durable (ok): publishes a checkpoint's header and quarantines the slots
  // it freed under `reuse_tag`. Else marks its entries dirty again and forces a checkpoint.
  void FinishFlush(FlushBatch* batch, bool ok, uint64_t reuse_tag = 0);
  // Quarantined slots become reusable once every read that may still use them ended: those
  // with a tag below `oldest_pinned_tag` (the owner's oldest read in flight; see Chain).
  void ReleaseQuarantined(uint64_t oldest_pinned_tag) {
    slots_.ReleaseQuarantined(oldest_pinned_tag);
  }
  bool has_quarantined() const { return slots_.has_quarantined(); }
  // All three steps plus the data sync, for single-threaded callers (no concurrent reads).
  absl::Status Flush();

  // True when the next flush must write a checkpoint table (the dirty entries do not fit in
  // the journal), which allocates space; a plain journal append never does.
  bool FlushNeedsCheckpoint() const;

  // Flushes, then marks the layer frozen under `name` at `frozen_ns` (header switch), then
  // gives back the space a frozen layer no longer needs. The three steps below, in order.
  absl::Status Freeze(const std::string& name, int64_t frozen_ns);
  // Flushes and writes both header copies as frozen (the commit point of a snapshot), leaving
  // header() as it was: a live chain publishes the new header under its own lock.
  absl::StatusOr<LayerHeader> WriteFrozenHeader(const std::string& name, int64_t frozen_ns);
  void PublishHeader(LayerHeader header) { header_ = std::move(header); }
  // Takes the header and data size of `reopened`, the same file opened again after a stream
  // copied into it (Chain::DropFrozenLayer): this layer's index was dropped after flattening.
  void AdoptReopened(const Layer& reopened) {
    header_ = reopened.header_;
    referenced_slots_ = reopened.referenced_slots_;
  }
  // A frozen layer never journals or grows again: punches the unused journal and the ready
  // free slots, and truncates the file after the last slot in use. Failing only wastes space, so errors are ignored.
  // REQUIRES: the index is still loaded (before ReleaseIndex).
  void ReleaseUnusedSpace();
  // Flushes, then rewrites the header to link to `parent`: the commit point of a stream into
  // this layer (stream.h). A frozen layer records where its journal ends again (a stream
  // journals into it with the end unknown, as a merge does).
  absl::Status Relink(const ParentRef& parent);
  // Rewrites the header (the other copy, sequence + 1) after `edit` changed it, and syncs.
  absl::Status UpdateHeader(const std::function<void(LayerHeader*)>& edit);
  // The same without changing header(): returns the header now on disk.
  absl::StatusOr<LayerHeader> WriteEditedHeader(
      const std::function<void(LayerHeader*)>& edit) const;

  // First slot after the header and journal region.
  uint32_t first_data_slot() const { return first_data_slot_; }
  // Slots below this are referenced, on a free list, or the checkpoint table.
  uint64_t high_water() const { return slots_.high_water(); }
  uint64_t cluster_count() const {
    return (header_.virtual_size + header_.cluster_size - 1) / header_.cluster_size;
  }
  // Where the journal replay stopped (bytes into the journal), for `check`.
  uint64_t journal_tail() const { return journal_.tail(); }
  // Data-area slots below high_water() that hold no data and are not the checkpoint table.
  std::vector<uint32_t> UnreferencedSlots() const;
  uint32_t table_slot() const;   // first slot of the checkpoint table
  uint32_t table_slots() const;  // its length in slots (0: no table)

 private:
  Layer() = default;
  absl::Status LoadTable();
  absl::Status CheckFitsFile() const;
  absl::Status ReplayJournal();
  absl::Status StartJournalEpoch();
  void FinishFailedFlush(const FlushBatch& batch);
  absl::Status RebuildAllocator();
  std::vector<uint32_t> UnreferencedSlotsBelow(uint64_t high_water) const;
  absl::Status WriteCheckpoint(FlushBatch* batch);
  // kDataLoss "cluster N: ..." (without the layer: callers add where it was read).
  absl::Status CheckEntry(uint64_t cluster, const ClusterEntry& entry) const;
  absl::Status Corrupt(absl::string_view what) const;
  uint32_t SlotsFor(uint64_t bytes) const {
    return static_cast<uint32_t>((bytes + header_.cluster_size - 1) / header_.cluster_size);
  }

  std::unique_ptr<File> file_;
  std::unique_ptr<File> data_file_;  // O_DIRECT twin when direct_io
  bool writable_ = false;
  LayerHeader header_;
  int current_header_copy_ = 0;

  ClusterTable<ClusterEntry> index_;
  uint64_t referenced_slots_ = 0;
  absl::flat_hash_set<uint32_t> dirty_;

  uint32_t first_data_slot_ = 0;
  SlotAllocator slots_;
  Journal journal_;  // touched only by the flush path
  bool force_checkpoint_ = false;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_LAYER_H_
