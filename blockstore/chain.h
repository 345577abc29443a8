// Chain: a virtual disk made of an optional raw base plus strata layers, the top one active.
//
// Design note. Reads resolve through two O(1) lookups whatever the depth: the active layer's
// own index, then a flattened view of every frozen layer and the base (flat_view.h), rebuilt
// only when a snapshot freezes the active layer. blockstore does the metadata; the caller moves
// the bytes: MapRead() turns a virtual range into file segments, PrepareWrite() allocates and
// returns where a write goes, FinishWrite() records it in the index once the data is written.
// The synchronous Read()/Write()/... wrappers do the I/O themselves for the tool and tests.
//
// Slots for new data come from the active layer's reserve of ready slots (space already
// allocated on the host volume; slot_allocator.h), so PrepareWrite never does I/O. When the
// reserve runs dry PrepareWrite fails with NeedsSlots(); ReplenishSlots() refills it (blocking).
// plan.replenish asks for that in the background before it runs dry.
//
// Thread safety: every method may be called concurrently from several threads (one internal
// mutex guards the metadata; no I/O happens under it except a checkpoint table's fallocate in
// Flush and, when the journal is full, a checkpoint in SwitchSnapshot). Flushes, replenishing
// and the snapshot steps are serialized by their own mutexes, which I/O may hold. File
// descriptors in segments stay valid for the lifetime of the Chain, across snapshots.
//
// Cost of each call: "metadata only" calls take the internal mutex and do no I/O (safe on an
// io_uring ring thread); "blocks" calls may wait on file I/O (fallocate, fsync, reads).
#ifndef STRATA_BLOCKSTORE_CHAIN_H_
#define STRATA_BLOCKSTORE_CHAIN_H_

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"
#include "blockstore/mutex.h"
#include "absl/types/span.h"
#include "blockstore/format.h"
#include "blockstore/remote_base.h"

namespace strata {

class Layer;
class FlatView;
class RawBase;

// A run of the virtual disk and where its bytes live.
// kRemote: the remote base's bytes (remote_base.h), read through Chain::remote_base(), not a
// descriptor; file_offset is then the offset in the export (= the virtual offset).
struct Segment {
  enum class Kind : uint8_t { kData, kZero, kRemote };
  Kind kind = Kind::kZero;
  uint64_t length = 0;
  int fd = -1;               // kData only
  uint64_t file_offset = 0;  // kData and kRemote
  // The chain position answering it, as in Extent::layer (0 = the raw base, -1 = nobody), for
  // messages: Chain::DescribeLayer(layer) names its file. kData runs coalesce only within one
  // file; kZero runs also across layers, and then name the layer of their first sub-block.
  int layer = -1;
};

// Where a write goes. When the request does not start or end on a sub-block boundary, the
// range is widened to whole sub-blocks and the caller must first read the current contents of
// the widened margins (head_fill / tail_fill, in order) and write them around the payload.
struct WritePlan {
  uint64_t start = 0;                 // widened start (<= request offset)
  uint64_t end = 0;                   // widened end (>= request offset + length)
  std::vector<Segment> head_fill;     // current contents of [start, request offset)
  std::vector<Segment> tail_fill;     // current contents of [request end, end)
  std::vector<Segment> targets;       // where [start, end) goes; kData in the active layer
  uint64_t fill_pin = 0;              // keeps the fills' slots from reuse until FinishWrite
  // The write took slots and left the reserve below its low-water mark, or freed slots wait to
  // be allocated again: run ReplenishSlots() off the ring thread soon, so that later writes do
  // not fail with NeedsSlots() and reuse freed space before the file grows.
  bool replenish = false;
  bool widened() const { return !head_fill.empty() || !tail_fill.empty(); }
};

class Chain;

// The two retryable failures of PrepareWrite, both kUnavailable, told apart by a payload:
// a widened edge conflicts with another write in flight on the same sub-block (retry after
// some write finishes) ...
bool IsWriteConflict(const absl::Status& status);
// ... or the active layer has no ready slot left (retry after Chain::ReplenishSlots()).
bool NeedsSlots(const absl::Status& status);

// Keeps the slots a MapRead returned from being reused until the caller has read them: a slot
// that a trim frees meanwhile stays quarantined (FORMAT.md, Durability 2), so a pread issued
// after MapRead returned never sees another cluster's bytes. Release() once the reads it
// covers completed (the destructor does). REQUIRES: released before the Chain is destroyed.
class ReadPin {
 public:
  ReadPin() = default;
  ReadPin(ReadPin&& other) noexcept { *this = std::move(other); }
  ReadPin& operator=(ReadPin&& other) noexcept;
  ~ReadPin() { Release(); }
  void Release();

 private:
  friend class Chain;
  const Chain* chain_ = nullptr;
  uint64_t epoch_ = 0;
};

// Block status of a run. `layer` is the chain position answering it: 0 = the raw base,
// 1..N = strata layers from the bottom (N = active), -1 = nobody (no base: reads as zeros).
struct Extent {
  uint64_t offset = 0;
  uint64_t length = 0;
  int layer = -1;
  bool zero = false;   // reads as zeros
  bool data = false;   // backed by data in a file (false: hole / zero marker / nobody)
  // data only: where the range starts in its layer's file, when it lies there in one piece;
  // -1 otherwise (a run of one layer's data coalesces even where its file offsets jump).
  int64_t file_offset = -1;
};

struct LayerInfo {
  int position = 0;          // as in Extent::layer
  std::string path;
  bool is_raw_base = false;      // position 0: the base (a raw file, or an NBD export)
  bool is_remote_base = false;   // the base is an NBD export; path is its URI
  RemoteBaseState remote;        // is_remote_base only
  LayerHeader header;        // for strata layers
  uint64_t allocated_bytes = 0;  // bytes of data slots referenced by the index
  uint64_t file_bytes = 0;       // bytes the file occupies on the host (st_blocks)
  // A live snapshot switched away from this layer but could not make it durable yet (see
  // CompleteSnapshot): header.snapshot_name holds the pending name, header.state still active.
  bool freezing = false;
  // Set on the active layer above a freezing one: its file is still at `path` (the pending
  // name) and is renamed to this, the disk's path, once the snapshot below is durable.
  std::string final_path;
};

class Env;

// Chain::writable() and Chain::direct_io() report these back: the one place the server (its
// Storage, its exports) learns them from.
struct ChainOptions {
  bool writable = true;      // opens the top layer for writing; it must be active
  bool direct_io = false;    // O_DIRECT data descriptors (the caller aligns buffers; the
                             // synchronous wrappers below refuse)
  bool lock = true;          // flock the files (false: inspect a chain a server holds)
  Env* env = nullptr;        // nullptr: the real file system
  // The caller runs an unfinished stream (a snapshot deletion, stream.h) online itself: the
  // open leaves it (writable opens otherwise finish it first).
  bool serve_streams = false;
  // Non-empty: the top layer is read from this file, which the caller renames to top_path
  // next (a served revert's new layer, revert.h) and then calls TopFileRenamed(). No recovery
  // runs: the caller holds the disk's locks through the chain it serves, and recovery would
  // remove this very file.
  std::string top_file;
  // Directories trusted to hold parents besides top_path's own tree (parent_place.h).
  std::vector<std::string> allowed_parent_dirs;
  // Connects to a parent of format nbd; without it such a chain does not open.
  RemoteBaseOpener open_remote_base;
};

struct CreateOptions {
  std::string parent;                 // relative: to the new layer's directory (as qemu-img);
                                      // empty: a disk with no base, of `size` bytes
  ParentFormat parent_format = ParentFormat::kNone;  // stated, never probed
  uint64_t size = 0;                  // without a parent; rounded up to 512 bytes
  uint32_t cluster_size = kDefaultClusterSize;       // with a strata parent: the parent's
  uint32_t sub_block_size = kDefaultSubBlockSize;
  // Layers stacked on it later take the same. Small journals checkpoint often (tests).
  uint64_t journal_size = kDefaultJournalSize;
  Env* env = nullptr;
  RemoteBaseOpener open_remote_base;  // a parent of format nbd: `parent` is its URI
};
// Creates an empty active layer at `layer_path` (like `qemu-img create -b PARENT -F FMT`). A
// strata parent must be frozen. The parent is recorded by name when it shares the layer's
// directory (the pair can move together), else by absolute path.
absl::StatusOr<LayerHeader> CreateLayer(const std::string& layer_path,
                                        const CreateOptions& options);

struct RebaseOptions {
  std::string parent;  // the new path; relative: to the layer's directory (as qemu-img)
  ParentFormat parent_format = ParentFormat::kNone;  // kNone: the one the header records
  Env* env = nullptr;
  RemoteBaseOpener open_remote_base;  // an nbd parent: `parent` is its new URI
};
// `strata rebase -u`: points the layer at `layer_path` (active or frozen) to its parent's new
// path after the files moved, data untouched (like `qemu-img rebase -u`). Checked: the new
// parent must be the one the header names (same format and size; for a strata parent the
// same UUID and geometry, frozen), else kFailedPrecondition saying what differs. Takes the
// layer's exclusive lock, so a served disk is refused. Crash-safe: one header update (two
// copies). Returns the header now on disk.
absl::StatusOr<LayerHeader> RebaseLayer(const std::string& layer_path,
                                        const RebaseOptions& options);

// What one Chain::CopyUp did.
struct CopyUpResult {
  uint64_t bytes = 0;      // copied into the active layer
  bool replenish = false;  // as WritePlan::replenish
};

class Chain {
 public:
  // Opens the chain whose top is `top_path`, following parent links down to the base and
  // checking UUIDs, sizes and formats; errors name the file and the broken link. A writable
  // chain takes an exclusive flock on the top layer (and shared ones below), so a second
  // server or an offline merge refuses while it is open, and fills the active layer's reserve
  // of slots (a full volume does not fail the open: writes then fail as they would). Blocks.
  static absl::StatusOr<std::unique_ptr<Chain>> Open(const std::string& top_path,
                                                     ChainOptions options = {});
  ~Chain();

  uint64_t size() const { return size_; }
  uint32_t sub_block_size() const { return sub_block_size_; }
  uint32_t cluster_size() const { return cluster_size_; }
  bool writable() const { return options_.writable; }
  bool direct_io() const { return options_.direct_io; }
  const ChainOptions& options() const { return options_; }
  Env* env() const { return env_; }  // options().env, or the real file system
  const std::string& top_path() const { return top_path_; }
  // The remote base (a parent of format nbd), or null: kRemote segments are read through it.
  RemoteBase* remote_base() const { return remote_.get(); }
  // Metadata only. The file the chain was opened from (ChainOptions::top_file) is now at
  // top_path(): messages and the layer list name it there. REQUIRES: no other thread uses the
  // chain yet.
  void TopFileRenamed();
  // Position of the active layer (as in Extent::layer): the number of strata layers.
  int top_position() const;
  std::vector<LayerInfo> Layers() const;
  // Names chain position `position` (as in Extent::layer and Segment::layer) for messages:
  // "layer 3 (/img/disk@s1.strata)", "base (/img/base.raw)", the file by the path the chain
  // knows it under now (absolute when the chain was opened by an absolute path).
  std::string DescribeLayer(int position) const;

  // --- Metadata API for a caller that does its own I/O (the server) ---

  // Metadata only. Appends to *out the segments covering [offset, offset + length), coalesced.
  // *pin keeps their slots from reuse until released (after the caller's reads completed).
  absl::Status MapRead(uint64_t offset, uint64_t length, std::vector<Segment>* out,
                       ReadPin* pin) const;
  // Metadata only. Takes ready slots for a write of [offset, offset + length) and says where
  // it goes. Retryable failures: IsWriteConflict(), NeedsSlots() (clusters it already gave a
  // slot keep it, so each retry after a replenish makes progress); kFailedPrecondition when
  // read-only; the sticky failure().
  absl::StatusOr<WritePlan> PrepareWrite(uint64_t offset, uint64_t length);
  // Metadata only. Records a prepared write once its data is written (succeeded) or abandons it. Call it
  // exactly once for every plan PrepareWrite returned: it also ends the plan's pin on its
  // fills. Finishing a plan twice, or one PrepareWrite did not return, aborts the process (a
  // broken invariant that would let overlapping unaligned writes corrupt each other).
  void FinishWrite(const WritePlan& plan, bool succeeded);
  // Blocks (fallocate). Refills the active layer's reserve of ready slots: free slots
  // allocated again (up to an extent's worth), and, below the low-water mark, the file grown
  // by an extent (an eighth of the file, 16 MiB .. 1 GiB). Does not hold the mutex that
  // MapRead and PrepareWrite take while it allocates. One at a time; thread-safe. OK unless an
  // allocation failed with no slot ready (kResourceExhausted naming the file when the host
  // volume is full); writers may have taken every slot meanwhile, so an OK calls for a retry of
  // the write, not a promise of a slot.
  absl::Status ReplenishSlots();
  // Metadata only. Marks the whole sub-blocks of [offset, offset + length) as reading zeros,
  // without data.
  // Sub-block-unaligned edges cannot be marked: they are appended to *data_ranges as
  // (offset, length) for the caller to write as zero data (through PrepareWrite). With
  // `may_trim` (no NBD NO_HOLE) a cluster left without data gives its space back; without it
  // the space stays reserved, so later writes there cannot fail for lack of space.
  absl::Status Zero(uint64_t offset, uint64_t length, bool may_trim,
                    std::vector<std::pair<uint64_t, uint64_t>>* data_ranges);
  // Metadata only. Discards [offset, offset + length): whole sub-blocks read as zeros afterwards and release
  // their space; partial sub-blocks are left as they are (TRIM is advisory).
  absl::Status Trim(uint64_t offset, uint64_t length);
  // Blocks (fsync). Makes every finished write durable: data synced, then the index journal appended and
  // synced (FORMAT.md, "Durability"). A failed sync is sticky (see failure()).
  absl::Status Flush();
  // OK, or why the disk takes no more writes: a sync of a layer failed, so writes since the
  // last completed flush may be lost (Linux marks the pages of a failed writeback clean: a
  // later successful fdatasync proves nothing about them). Every later write, zero, trim and
  // flush fails with this; reads go on. Reopening the chain gives its last durable state.
  absl::Status failure() const;
  // Metadata only. Appends block status of [offset, offset + length) to *out, merged into
  // maximal runs.
  absl::Status Extents(uint64_t offset, uint64_t length, std::vector<Extent>* out) const;

  // Freezes the active layer as snapshot `name` and puts a new empty active layer on top of it
  // at the same path; the frozen layer moves to `<stem>@<name>.strata` beside it. Three steps,
  // so that a live server stops I/O only for the middle one (snapshot_files.h):
  //   PrepareSnapshot (blocks): creates and opens the next layer's file and links the
  //     snapshot's name (the fsync-heavy part); I/O goes on. Completes an earlier snapshot
  //     first. The new layer starts with no ready slots: its first write needs ReplenishSlots.
  //   SwitchSnapshot: from here on writes go to the new layer. In memory only, unless the old
  //     layer's journal is full (it is then checkpointed here, which can fail cleanly); waits
  //     for a ReplenishSlots in progress.
  //     REQUIRES: no write prepared and unfinished (the server drains first).
  //   CompleteSnapshot (blocks): makes the frozen layer durable and renames the new one into place.
  //     Until it succeeds Flush() retries it first, so no flush acknowledges a write above a
  //     snapshot that could still be lost, and the chain reopens as before the snapshot.
  // Snapshot() runs all three; CancelSnapshot() gives up a prepared, unswitched snapshot.
  struct SnapshotResult {
    std::string frozen_path;
    Uuid frozen_uuid;
  };
  absl::StatusOr<SnapshotResult> Snapshot(absl::string_view name);
  absl::Status PrepareSnapshot(absl::string_view name);
  absl::StatusOr<SnapshotResult> SwitchSnapshot(absl::string_view name);
  absl::Status CompleteSnapshot();
  void CancelSnapshot();
  // A live snapshot made durable, wherever that happened (CompleteSnapshot, or the Flush or
  // PrepareSnapshot that completed it first). `lock`: the frozen layer's flock, exclusive
  // until the new layer was renamed to the disk's path, then made shared so snapshot readers
  // can open it; not OK if that failed (the layer may then be unlocked).
  struct CompletedSnapshot {
    std::string name;
    std::string frozen_path;
    Uuid frozen_uuid;
    absl::Status lock;
  };
  // Called exactly once per snapshot SwitchSnapshot made, when it becomes durable, on the
  // thread that completed it and with the flush lock held: it must not call into this Chain.
  void SetSnapshotListener(std::function<void(const CompletedSnapshot&)> listener);

  // --- Online stream (stream.h): deleting a frozen layer while the disk is served ---

  // Blocks (one copy). Copies up into the active layer what cluster `cluster` of its parent
  // `from` (a frozen layer opened by the caller, whose index entry is `entry`) holds and the
  // active layer lacks: data sub-blocks are copied, zero marks taken over; sub-blocks the
  // active layer has (written, zeroed, or being written) stay.
  // While the copy runs, a write overlapping the cluster gets IsWriteConflict() (it is parked
  // and retried), so a guest write is never overwritten by older data. Retryable failures:
  // IsWriteConflict() when a write is in flight on the cluster (try the cluster later),
  // NeedsSlots(); kAborted when the active layer's parent is no longer `from` (a snapshot
  // froze the layer: the stream continues into it as a frozen layer).
  absl::StatusOr<CopyUpResult> CopyUp(uint64_t cluster, const ClusterEntry& entry,
                                      const Layer& from);
  // Blocks (one write). Copy-on-read (`strata serve --copy-on-read`, as QEMU's): `data` was
  // read from the remote base at `offset` (sub-block aligned, whole sub-blocks, within one
  // cluster); the sub-blocks of it that the chain still reads from the base are written into
  // the active layer, so that later reads stop depending on the base. Sub-blocks any layer
  // has, or a write in flight is about to have, stay as they are: IsWriteConflict() when a
  // write is in flight on the cluster (the caller drops the copy: it is an optimization);
  // NeedsSlots() as PrepareWrite. Not durable until the next flush, and needs none: the base
  // still holds the same bytes.
  absl::StatusOr<CopyUpResult> CopyUpFromBase(uint64_t offset, absl::string_view data);
  // Blocks. The commit point of a stream into the active layer: flushes (every copy made
  // durable), rewrites the active layer's header to link to `link` (the parent of
  // `from_uuid`), then drops `from_uuid` from the chain (DropFrozenLayer). kAborted as CopyUp.
  absl::Status CommitStream(const Uuid& from_uuid, const ParentRef& link);
  // Blocks (reads every frozen layer's index). Takes the frozen layer `uuid` out of the chain
  // once no layer reads through it (the layer above it was relinked past it, on disk): the
  // flat view is rebuilt from the remaining layers' files and swapped in under the lock, and
  // the layers' headers are reread. Reads mapped before keep their file until they end.
  absl::Status DropFrozenLayer(const Uuid& uuid);

  // --- Synchronous wrappers (offline tool, tests): all block; writes replenish as needed ---
  absl::Status Read(uint64_t offset, absl::Span<char> out) const;
  absl::Status Write(uint64_t offset, absl::string_view data);
  absl::Status WriteZeroes(uint64_t offset, uint64_t length, bool may_trim = true);

 private:
  Chain();
  // Opens the layers from the top down, checking each link, into *stack (top first); sets
  // base_. Takes no layer's lock (the base's, when it opens it).
  absl::Status OpenLayers(std::vector<std::unique_ptr<Layer>>* stack);
  // Takes the opened layers: the top becomes active_, the others are flattened into view_.
  void Adopt(std::vector<std::unique_ptr<Layer>> stack);
  absl::Status CheckRange(uint64_t offset, uint64_t length) const;
  absl::Status CheckWritable() const;
  absl::Status CheckNewSnapshotName(absl::string_view name) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  absl::Status ReadSegments(const std::vector<Segment>& segments, char* out) const;
  // PrepareWrite, replenishing and retrying while it needs slots or conflicts: for synchronous
  // callers.
  absl::StatusOr<WritePlan> PrepareWriteBlocking(uint64_t offset, uint64_t length);
  void MapReadLocked(uint64_t offset, uint64_t length, std::vector<Segment>* out) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Who answers `length` bytes at virtual `offset`, within sub-block `sub_block` of `cluster`:
  // the active layer, else the flat view of the frozen ones, else the base, else nobody.
  Segment SegmentFor(uint64_t cluster, uint32_t sub_block, uint64_t offset, uint64_t length) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // Calls fn(virtual offset, SegmentFor(...)) for each sub-block piece of [offset, offset +
  // length), in order: the one walk behind MapRead and Extents.
  template <typename Fn>
  void ForEachSegment(uint64_t offset, uint64_t length, Fn fn) const
      ABSL_SHARED_LOCKS_REQUIRED(mu_);
  // The path `layer`'s file has now (see Layers(): final_path).
  std::string CurrentPathLocked(const Layer& layer) const ABSL_SHARED_LOCKS_REQUIRED(mu_);
  bool WriteInFlightIn(uint64_t first_cluster, uint64_t end_cluster) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  absl::Status MarkZero(uint64_t offset, uint64_t length, bool may_trim)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Calls fn(cluster, mask of its sub-blocks) for the sub-blocks [start_sb, end_sb).
  void ForEachCluster(uint64_t start_sb, uint64_t end_sb,
                      const std::function<void(uint64_t, uint32_t)>& fn) const;

  absl::Status CompleteSnapshotLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(flush_mu_);
  absl::Status FlushLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(flush_mu_);
  // DropFrozenLayer with snapshot_mu_ held: no snapshot switches while the view is rebuilt.
  absl::Status DropFrozenLayerLocked(const Uuid& uuid) ABSL_EXCLUSIVE_LOCKS_REQUIRED(snapshot_mu_);
  // Layers dropped while reads mapped before may still use their descriptors.
  void ReleaseRetiredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  bool CopyUpInFlightIn(uint64_t first_sb, uint64_t end_sb) const
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // CopyUp and CopyUpFromBase: claims cluster `cluster` (*a, its entry in the active layer) for
  // a copy into it: no write in flight there (IsWriteConflict() otherwise), a slot (NeedsSlots()),
  // and guest writes there wait until EndCopyUpLocked.
  absl::Status ClaimForCopyUpLocked(uint64_t cluster, ClusterEntry* a)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  // Ends the claim: the sub-blocks `copied` become present in `target` unless written or zeroed
  // meanwhile, or `target` is no longer the active layer (a snapshot froze it). Bytes landed.
  uint64_t EndCopyUpLocked(Layer* target, uint64_t cluster, uint32_t copied)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Records a failed sync of `layer_path` as the sticky failure (the first one wins).
  void FailLocked(const std::string& layer_path, const absl::Status& cause)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);

  // Read pins (ReadPin): reads pinned at epoch e may use slots freed by a flush that finished
  // in epoch >= e; each such flush quarantines its slots under its epoch and starts a new one.
  friend class ReadPin;
  uint64_t Pin() const;
  void Unpin(uint64_t epoch) const;
  uint64_t OldestPinnedEpoch() const;
  uint64_t EndReadEpoch();  // returns the epoch ended
  void ReleaseQuarantinedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_);
  void CancelPreparedLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(snapshot_mu_);

  struct Inflight;
  struct PreparedSnapshot;
  struct FreezingLayer;
  Env* env_ = nullptr;
  ChainOptions options_;
  std::string top_path_;
  uint64_t size_ = 0;
  uint32_t cluster_size_ = 0;
  uint32_t sub_block_size_ = 0;

  Mutex snapshot_mu_ ABSL_ACQUIRED_BEFORE(flush_mu_);  // serializes snapshot steps
  Mutex flush_mu_ ABSL_ACQUIRED_BEFORE(replenish_mu_);  // serializes Flush and the freeze
  // Serializes ReplenishSlots, and keeps the active layer in place while one allocates.
  Mutex replenish_mu_ ABSL_ACQUIRED_BEFORE(mu_);
  std::unique_ptr<PreparedSnapshot> prepared_ ABSL_GUARDED_BY(snapshot_mu_);
  std::unique_ptr<FreezingLayer> freezing_ ABSL_GUARDED_BY(flush_mu_);
  std::function<void(const CompletedSnapshot&)> snapshot_listener_ ABSL_GUARDED_BY(flush_mu_);
  const FreezingLayer* freezing_view_ ABSL_GUARDED_BY(mu_) = nullptr;  // freezing_, for Layers()
  mutable Mutex mu_;
  std::unique_ptr<RawBase> base_;                   // may be null
  std::unique_ptr<RemoteBase> remote_;              // instead of base_; may be null
  std::vector<std::unique_ptr<Layer>> frozen_ ABSL_GUARDED_BY(mu_);  // positions 1..N-1
  std::unique_ptr<Layer> active_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<FlatView> view_ ABSL_GUARDED_BY(mu_);
  std::unique_ptr<Inflight> inflight_ ABSL_GUARDED_BY(mu_);
  // Clusters a CopyUp is writing into (each is written by at most one copy at a time).
  std::vector<uint64_t> copyups_ ABSL_GUARDED_BY(mu_);
  // Dropped layers and the read epoch that ended when they were dropped.
  std::vector<std::pair<uint64_t, std::unique_ptr<Layer>>> retired_ ABSL_GUARDED_BY(mu_);
  absl::Status failure_ ABSL_GUARDED_BY(mu_);

  mutable Mutex pin_mu_ ABSL_ACQUIRED_AFTER(mu_);
  mutable uint64_t read_epoch_ ABSL_GUARDED_BY(pin_mu_) = 1;
  mutable std::map<uint64_t, uint64_t> pins_ ABSL_GUARDED_BY(pin_mu_);  // epoch -> reads
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_CHAIN_H_
