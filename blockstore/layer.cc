#include "blockstore/layer.h"

#include <time.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/container/flat_hash_map.h"
#include "blockstore/clock.h"
#include "blockstore/crc32c.h"

namespace strata {
namespace {

// A new extent is an eighth of the file, at least 16 MiB and at most 1 GiB: big enough that a
// sequentially written layer stays in few host extents, small enough that a nearly full
// volume still gets the last of its space one cluster at a time (GrowExtent falls back).
constexpr uint64_t kMinExtentBytes = 16ull << 20;
constexpr uint64_t kMaxExtentBytes = 1ull << 30;

uint32_t FullMask(uint32_t sub_blocks) {
  return sub_blocks == 32 ? 0xffffffffu : (1u << sub_blocks) - 1;
}

absl::Status ValidateGeometry(uint32_t cluster_size, uint32_t sub_block_size) {
  LayerHeader probe;
  probe.cluster_size = cluster_size;
  probe.sub_block_size = sub_block_size;
  auto pow2 = [](uint32_t v) { return v != 0 && (v & (v - 1)) == 0; };
  if (!pow2(cluster_size) || cluster_size < kMinClusterSize || cluster_size > kMaxClusterSize ||
      !pow2(sub_block_size) || sub_block_size < kMinSubBlockSize ||
      sub_block_size > cluster_size || cluster_size / sub_block_size > kMaxSubBlocksPerCluster) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster size ", cluster_size, " / sub-block size ", sub_block_size,
        ": both must be powers of two, cluster 8 KiB..2 MiB, sub-block >= 512 B, at most ",
        kMaxSubBlocksPerCluster, " sub-blocks per cluster"));
  }
  return absl::OkStatus();
}

}  // namespace

// Reads the journal region record by record, a chunk at a time.
class JournalChunks {
 public:
  JournalChunks(File* file, uint64_t offset, uint64_t size);
  // The kJournalRecordSize bytes at `pos` bytes into the journal; valid until the next call.
  absl::StatusOr<const char*> Record(uint64_t pos);

 private:
  File* const file_;
  const uint64_t offset_, size_;
  uint64_t chunk_start_ = 0;
  std::string chunk_;
};

JournalChunks::JournalChunks(File* file, uint64_t offset, uint64_t size)
    : file_(file), offset_(offset), size_(size) {}

absl::StatusOr<const char*> JournalChunks::Record(uint64_t pos) {
  // 64 KiB at a time: replay usually stops in the first chunk, so an empty journal costs one
  // small read.
  constexpr uint64_t kChunk = 64 << 10;
  if (pos < chunk_start_ || pos + kJournalRecordSize > chunk_start_ + chunk_.size()) {
    chunk_start_ = pos / kChunk * kChunk;
    chunk_.resize(std::min(kChunk, size_ - chunk_start_));
    if (auto s = file_->Read(offset_ + chunk_start_, chunk_.size(), chunk_.data()); !s.ok()) {
      return s;
    }
  }
  return chunk_.data() + (pos - chunk_start_);
}

absl::StatusOr<LayerHeader> ReadLayerHeader(File* file, int* copy) {
  std::string blocks(2 * kHeaderBlockSize, '\0');
  if (auto s = file->Read(0, blocks.size(), blocks.data()); !s.ok()) {
    return absl::DataLossError(absl::StrCat("layer ", file->path(), ": ", s.message()));
  }
  LayerHeader copies[2];
  absl::Status status[2];
  for (int i = 0; i < 2; ++i) {
    status[i] = copies[i].DecodeFrom(
        absl::string_view(blocks).substr(kHeaderCopyOffset[i], kHeaderBlockSize));
  }
  if (!status[0].ok() && !status[1].ok()) {
    return absl::DataLossError(absl::StrCat("layer ", file->path(),
                                            ": no valid header: copy 0 @ 0: ", status[0].message(),
                                            "; copy 1 @ 4096: ", status[1].message()));
  }
  int pick = !status[0].ok() ? 1 : !status[1].ok() ? 0 : copies[1].sequence > copies[0].sequence;
  if (copy != nullptr) *copy = pick;
  return copies[pick];
}

absl::StatusOr<LayerHeader> ReadLayerHeader(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  if (!file.ok()) return file.status();
  return ReadLayerHeader(file->get());
}

Layer::~Layer() = default;

absl::Status Layer::Corrupt(absl::string_view what) const {
  return absl::DataLossError(absl::StrCat("layer ", path(), ": ", what));
}

absl::StatusOr<std::unique_ptr<Layer>> Layer::Create(Env* env, const std::string& path,
                                                     const LayerCreateParams& params) {
  if (auto s = ValidateGeometry(params.cluster_size, params.sub_block_size); !s.ok()) return s;
  if (params.virtual_size == 0 || params.virtual_size % 512 != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("virtual size ", params.virtual_size, " must be a positive multiple of 512"));
  }
  if (params.virtual_size / params.cluster_size >= kMaxClustersPerLayer) {
    return absl::InvalidArgumentError("virtual size exceeds 2^32 clusters");
  }
  if (params.parent_path.size() > kMaxParentPathLength) {
    return absl::InvalidArgumentError(absl::StrCat("parent path longer than ",
                                                   kMaxParentPathLength, " bytes"));
  }
  if (params.journal_size < kJournalBlockSize || params.journal_size > kMaxJournalSize ||
      params.journal_size % kJournalBlockSize != 0) {
    return absl::InvalidArgumentError("journal size must be a multiple of 4 KiB, at most 256 MiB");
  }
  auto layer = std::unique_ptr<Layer>(new Layer());
  auto file = env->Open(path, {.writable = true, .create = true});
  if (!file.ok()) return file.status();
  layer->file_ = std::move(*file);
  layer->writable_ = true;
  LayerHeader& h = layer->header_;
  h.sequence = 1;
  h.virtual_size = params.virtual_size;
  h.cluster_size = params.cluster_size;
  h.sub_block_size = params.sub_block_size;
  h.uuid = NewUuid();
  h.parent_uuid = params.parent_uuid;
  h.state = LayerState::kActive;
  h.parent_format = params.parent_format;
  h.parent_size = params.parent_size;
  h.created_ns = WallClockNs();
  h.journal_offset = params.cluster_size;  // slot 1
  h.journal_size = params.journal_size;
  h.journal_start_seq = 1;
  h.parent_path = params.parent_path;
  layer->first_data_slot_ = 1 + layer->SlotsFor(h.journal_size);
  layer->high_water_ = layer->end_slot_ = layer->first_data_slot_;
  layer->next_seq_ = 1;
  // Header and journal space are reserved now so that a flush never needs new space.
  absl::Status s = layer->file_->Allocate(0, uint64_t{layer->first_data_slot_} * h.cluster_size);
  std::string block;
  h.EncodeTo(&block);
  if (s.ok()) s = layer->file_->Write(kHeaderCopyOffset[0], block);
  if (s.ok()) s = layer->file_->Write(kHeaderCopyOffset[1], block);
  if (s.ok()) s = layer->file_->Sync();
  if (s.ok()) s = env->SyncDir(DirName(path));
  if (!s.ok()) {
    layer.reset();
    (void)env->Remove(path);  // a half-created layer is worth nothing; best effort
    return s;
  }
  return layer;
}

absl::StatusOr<std::unique_ptr<Layer>> Layer::Open(Env* env, const std::string& path, Mode mode,
                                                   bool direct_io) {
  bool writable = mode != Mode::kReadOnly;
  auto layer = std::unique_ptr<Layer>(new Layer());
  auto file = env->Open(path, {.writable = writable});
  if (!file.ok()) return file.status();
  layer->file_ = std::move(*file);
  layer->writable_ = writable;

  auto header = ReadLayerHeader(layer->file_.get(), &layer->current_header_copy_);
  if (!header.ok()) return header.status();
  layer->header_ = *header;
  const LayerHeader& h = layer->header_;
  if (h.journal_offset != h.cluster_size) return layer->Corrupt("journal not at slot 1");
  layer->first_data_slot_ = 1 + layer->SlotsFor(h.journal_size);
  if (h.state == LayerState::kMerging && mode != Mode::kMergeTarget) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", path, " is being rewritten by an interrupted merge (`strata commit` or "
        "`strata delete-snapshot`) and holds neither layer's content: finish the merge with "
        "`strata commit --resume` on the disk's top layer"));
  }
  if (mode == Mode::kWritable && h.state != LayerState::kActive) {
    return absl::FailedPreconditionError(absl::StrCat(
        "layer ", path, " is a frozen snapshot ('", h.snapshot_name,
        "'): put a new layer on it with `strata create -b ", path, " -F strata NEW`"));
  }
  if (auto s = layer->CheckFitsFile(); !s.ok()) return s;
  if (auto s = layer->LoadTable(); !s.ok()) return s;
  if (auto s = layer->ReplayJournal(); !s.ok()) return s;
  if (auto s = layer->RebuildAllocator(); !s.ok()) return s;
  if (direct_io) {
    auto data = env->Open(path, {.writable = writable, .direct_io = true});
    if (!data.ok()) return data.status();
    layer->data_file_ = std::move(*data);
  }
  if (writable) {
    // A frozen layer's journal region was released; take it back before any flush needs it.
    if (auto s = layer->file_->Allocate(h.journal_offset, h.journal_size); !s.ok()) return s;
    if (auto s = layer->StartJournalEpoch(); !s.ok()) return s;
  }
  return layer;
}

absl::Status Layer::CheckFitsFile() const {
  // Every region the header names must lie inside the file before anything is read or
  // allocated for it: a crafted header must not make us allocate by its numbers.
  auto size = file_->Size();
  if (!size.ok()) return size.status();
  const uint64_t reserved = uint64_t{first_data_slot_} * header_.cluster_size;
  if (*size < reserved) {
    return Corrupt(absl::StrCat("the file is ", *size, " bytes, shorter than its header and ",
                                "journal (", reserved, " bytes)"));
  }
  const LayerHeader& h = header_;
  if (h.table_entries != 0 &&
      (h.table_offset < reserved || h.table_offset > *size ||
       h.table_entries > (*size - h.table_offset) / kTableEntrySize)) {
    return Corrupt(absl::StrCat("checkpoint table @ ", h.table_offset, " with ", h.table_entries,
                                " entries does not fit the file (", *size, " bytes)"));
  }
  return absl::OkStatus();
}

absl::Status Layer::StartJournalEpoch() {
  // Every writable open starts a new journal epoch past every sequence number the region can
  // hold (FORMAT.md, Durability 5): blocks a torn flush left beyond where replay stopped can
  // then never match the sequence of a later append at their position. With records to keep,
  // the checkpoint does it; otherwise a header update alone.
  if (journal_tail_ > 0) {
    force_checkpoint_ = true;
    return Flush();
  }
  const uint64_t next = NextEpochStart();
  absl::Status s = UpdateHeader([&](LayerHeader* h) {
    h->journal_start_seq = next;
    if (h->state != LayerState::kActive) h->journal_end_seq = 0;  // a merge journals on
  });
  if (s.ok()) next_seq_ = next;
  return s;
}

uint64_t Layer::NextEpochStart() const {
  return header_.journal_start_seq + JournalCapacity(header_.journal_size);
}

absl::Status Layer::ValidateEntry(uint64_t cluster, const ClusterEntry& e) const {
  uint32_t full = FullMask(header_.SubBlocksPerCluster());
  if (cluster >= cluster_count()) return Corrupt(absl::StrCat("cluster ", cluster, " beyond disk"));
  if ((e.present & e.zero) != 0 || ((e.present | e.zero) & ~full) != 0) {
    return Corrupt(absl::StrCat("cluster ", cluster, ": bad sub-block masks"));
  }
  if (e.present != 0 && e.slot == 0) {
    return Corrupt(absl::StrCat("cluster ", cluster, ": data without a slot"));
  }
  if (e.slot != 0 && e.slot < first_data_slot_) {
    return Corrupt(absl::StrCat("cluster ", cluster, ": slot ", e.slot,
                                " inside the header/journal area"));
  }
  return absl::OkStatus();
}

absl::Status Layer::LoadTable() {
  const LayerHeader& h = header_;
  if (h.table_entries == 0) return absl::OkStatus();
  std::string table(h.table_entries * kTableEntrySize, '\0');
  if (auto s = file_->Read(h.table_offset, table.size(), table.data()); !s.ok()) {
    return Corrupt(absl::StrCat("checkpoint table: ", s.message()));
  }
  if (crc32c::Value(table.data(), table.size()) != h.table_crc) {
    return Corrupt(absl::StrCat("checkpoint table @ ", h.table_offset, ": checksum mismatch"));
  }
  int64_t previous = -1;
  for (uint64_t i = 0; i < h.table_entries; ++i) {
    uint32_t cluster;
    ClusterEntry entry;
    DecodeTableEntry(table.data() + i * kTableEntrySize, &cluster, &entry);
    if (int64_t{cluster} <= previous) {
      return Corrupt(absl::StrCat("checkpoint table entry ", i, ": clusters out of order"));
    }
    previous = cluster;
    if (auto s = ValidateEntry(cluster, entry); !s.ok()) return s;
    index_.Set(cluster, entry);
  }
  return absl::OkStatus();
}

absl::Status Layer::ReplayJournal() {
  const LayerHeader& h = header_;
  next_seq_ = h.journal_start_seq;
  journal_tail_ = 0;
  // A frozen layer whose header records where its journal ends reads exactly that far:
  // stopping before is damage, and nothing past it belongs to the layer.
  const bool bounded = h.state != LayerState::kActive && h.journal_end_seq != 0;
  const uint64_t limit =
      bounded ? (h.journal_end_seq - h.journal_start_seq) * kJournalRecordSize : h.journal_size;
  JournalChunks chunks(file_.get(), h.journal_offset, h.journal_size);
  for (uint64_t pos = 0; pos < limit; pos += kJournalRecordSize) {
    auto raw = chunks.Record(pos);
    if (!raw.ok()) return Corrupt(absl::StrCat("journal: ", raw.status().message()));
    JournalRecord record;
    // The first record that fails its CRC or breaks the sequence is where the last flush
    // ended (or tore): everything before it was made durable by a completed flush.
    if (!record.DecodeFrom(*raw).ok() || record.sequence != next_seq_) {
      if (bounded) {
        return Corrupt(absl::StrCat("journal record @ ", h.journal_offset + pos,
                                    ": checksum or sequence mismatch before the end the frozen "
                                    "header records (sequence ", h.journal_end_seq, ")"));
      }
      return CheckNoLaterFlush(pos, &chunks);
    }
    if (record.kind == RecordKind::kCluster) {
      if (auto s = ValidateEntry(record.cluster, record.entry); !s.ok()) {
        return Corrupt(absl::StrCat("journal record @ ", h.journal_offset + pos, ": ",
                                    s.message()));
      }
      index_.Set(record.cluster, record.entry);
    }
    ++next_seq_;
    journal_tail_ = pos + kJournalRecordSize;
  }
  return absl::OkStatus();
}

absl::Status Layer::CheckNoLaterFlush(uint64_t stop, JournalChunks* chunks) const {
  // A torn last flush may leave any subset of its blocks, so intact records of that flush
  // past the stop are expected. An intact record of a *later* flush is not: a flush is
  // written only after the one before it was synced, so the record at the stop belonged to a
  // completed flush and is damaged. Records of older epochs carry other sequence numbers.
  const LayerHeader& h = header_;
  const uint64_t stop_block = stop / kJournalBlockSize;
  for (uint64_t block = stop_block + 1; block * kJournalBlockSize < h.journal_size; ++block) {
    for (uint64_t i = 0; i < kRecordsPerJournalBlock; ++i) {
      const uint64_t pos = block * kJournalBlockSize + i * kJournalRecordSize;
      auto raw = chunks->Record(pos);
      if (!raw.ok()) return Corrupt(absl::StrCat("journal: ", raw.status().message()));
      const uint64_t expected = h.journal_start_seq + pos / kJournalRecordSize;
      // Most of the region is zeros or older epochs: the sequence alone rules them out,
      // without a checksum or an error status per record.
      if (JournalRecord::SequenceOf(*raw) != expected) continue;
      JournalRecord record;
      if (!record.DecodeFrom(*raw).ok() || record.sequence != expected ||
          record.flush_block > block) {
        continue;
      }
      if (block - record.flush_block > stop_block) {
        return Corrupt(absl::StrCat(
            "journal record @ ", h.journal_offset + stop, " (sequence ",
            h.journal_start_seq + stop / kJournalRecordSize,
            "): checksum or sequence mismatch, but a later flush's record @ ",
            h.journal_offset + pos, " is intact: a completed flush was damaged"));
      }
      break;  // this block belongs to the torn flush: look at the next one
    }
  }
  return absl::OkStatus();
}

absl::Status Layer::RebuildAllocator() {
  auto size = file_->Size();
  if (!size.ok()) return size.status();
  end_slot_ = *size / header_.cluster_size;
  uint64_t table_end = header_.table_entries ? table_slot() + table_slots() : 0;
  high_water_ = std::max<uint64_t>(first_data_slot_, table_end);
  referenced_slots_ = 0;
  absl::flat_hash_map<uint32_t, uint64_t> owner;  // slot -> cluster, to find a slot claimed twice
  absl::Status status;
  index_.ForEach([&](uint64_t cluster, const ClusterEntry& e) {
    if (e.slot == 0 || !status.ok()) return;
    ++referenced_slots_;
    auto [it, inserted] = owner.emplace(e.slot, cluster);
    if (!inserted) {
      status = Corrupt(absl::StrCat("slot ", e.slot, " claimed by clusters ", it->second, " and ",
                                    cluster));
    } else if (header_.table_entries && e.slot >= table_slot() && e.slot < table_end) {
      status = Corrupt(absl::StrCat("cluster ", cluster, ": slot ", e.slot,
                                    " overlaps the checkpoint table"));
    }
    high_water_ = std::max<uint64_t>(high_water_, uint64_t{e.slot} + 1);
  });
  if (!status.ok()) return status;
  if (high_water_ > end_slot_) {
    return Corrupt(absl::StrCat("index references slot ", high_water_ - 1,
                                " beyond the end of the file (", *size, " bytes)"));
  }
  if (writable_) free_slots_ = UnreferencedSlots();
  return absl::OkStatus();
}

uint32_t Layer::table_slot() const {
  return static_cast<uint32_t>(header_.table_offset / header_.cluster_size);
}

uint32_t Layer::table_slots() const {
  return header_.table_entries ? SlotsFor(header_.table_entries * kTableEntrySize) : 0;
}

std::vector<uint32_t> Layer::UnreferencedSlots() const {
  std::vector<bool> used(high_water_, false);
  for (uint32_t i = 0; i < table_slots(); ++i) used[table_slot() + i] = true;
  index_.ForEach([&](uint64_t, const ClusterEntry& e) {
    if (e.slot != 0) used[e.slot] = true;
  });
  std::vector<uint32_t> out;
  // Highest first: AllocateSlot pops from the back, so low slots are reused first.
  for (uint64_t slot = high_water_; slot-- > first_data_slot_;) {
    if (!used[slot]) out.push_back(static_cast<uint32_t>(slot));
  }
  return out;
}

absl::Status Layer::GrowExtent() {
  uint64_t cs = header_.cluster_size;
  uint64_t want = std::clamp<uint64_t>(end_slot_ * cs / 8, kMinExtentBytes, kMaxExtentBytes);
  uint64_t slots = std::max<uint64_t>(1, want / cs);
  if (end_slot_ + slots > (1ull << 32)) return absl::ResourceExhaustedError("layer file full");
  absl::Status s = file_->Allocate(end_slot_ * cs, slots * cs);
  if (absl::IsResourceExhausted(s) && slots > 1) {
    slots = 1;  // the volume is nearly full: take what is left, one cluster at a time
    s = file_->Allocate(end_slot_ * cs, cs);
  }
  if (!s.ok()) return s;
  end_slot_ += slots;
  return absl::OkStatus();
}

absl::StatusOr<uint32_t> Layer::AllocateSlot() {
  if (!free_slots_.empty()) {
    uint32_t slot = free_slots_.back();
    // A freed slot had its space punched out; reserve it again so the data write cannot
    // fail for lack of space after we promised it.
    if (auto s = file_->Allocate(uint64_t{slot} * header_.cluster_size, header_.cluster_size);
        !s.ok()) {
      return s;
    }
    free_slots_.pop_back();
    return slot;
  }
  if (high_water_ == end_slot_) {
    if (auto s = GrowExtent(); !s.ok()) return s;
  }
  return static_cast<uint32_t>(high_water_++);
}

void Layer::SetEntry(uint64_t cluster, const ClusterEntry& entry) {
  ClusterEntry old = index_.Get(cluster);
  if (old == entry) return;
  if (old.slot != entry.slot) {
    if (old.slot != 0) {
      pending_free_.push_back(old.slot);
      --referenced_slots_;
    }
    if (entry.slot != 0) ++referenced_slots_;
  }
  index_.Set(cluster, entry);
  dirty_.insert(static_cast<uint32_t>(cluster));
}

absl::StatusOr<FlushBatch> Layer::PrepareFlush() {
  FlushBatch batch;
  batch.checkpoint = FlushNeedsCheckpoint();
  if (batch.checkpoint) {
    batch.table_slots = SlotsFor(index_.size() * kTableEntrySize);
    // The table is one contiguous run at the end of the used space.
    while (high_water_ + batch.table_slots > end_slot_) {
      if (auto s = GrowExtent(); !s.ok()) return s;
    }
    batch.table_slot = static_cast<uint32_t>(high_water_);
    high_water_ += batch.table_slots;
    batch.old_table_slot = table_slot();
    batch.old_table_slots = table_slots();
    batch.records.reserve(index_.size());
    index_.ForEach([&](uint64_t cluster, const ClusterEntry& e) {
      batch.records.emplace_back(static_cast<uint32_t>(cluster), e);
    });
    force_checkpoint_ = false;
  } else {
    batch.records.reserve(dirty_.size());
    for (uint32_t cluster : dirty_) batch.records.emplace_back(cluster, index_.Get(cluster));
    std::sort(batch.records.begin(), batch.records.end(),
              [](const auto& a, const auto& b) { return a.first < b.first; });
  }
  dirty_.clear();
  batch.freed_slots = std::move(pending_free_);
  pending_free_.clear();
  return batch;
}

absl::Status Layer::WriteFlush(FlushBatch* batch) {
  absl::Status s = batch->checkpoint ? WriteCheckpoint(batch) : AppendJournal(*batch);
  if (!s.ok()) return s;
  // The freed slots are unreachable from the durable index now: give their space back to
  // the host volume before anyone can reuse them (FinishFlush). A failed punch only wastes
  // space (a reused slot's stale sub-blocks are never read: they are not present), so it
  // does not fail a flush whose index is durable.
  const uint64_t cs = header_.cluster_size;
  for (uint32_t slot : batch->freed_slots) (void)file_->PunchHole(slot * cs, cs);
  if (batch->old_table_slots > 0) {
    (void)file_->PunchHole(batch->old_table_slot * cs, batch->old_table_slots * cs);
  }
  return absl::OkStatus();
}

void Layer::FinishFlush(FlushBatch* batch, bool ok, uint64_t reuse_tag) {
  if (ok) {
    if (batch->header.has_value()) {
      header_ = *std::move(batch->header);
      journal_tail_ = 0;
      next_seq_ = header_.journal_start_seq;
    }
    for (uint32_t slot : batch->freed_slots) quarantined_.push_back({reuse_tag, slot});
    for (uint32_t i = 0; i < batch->old_table_slots; ++i) {
      quarantined_.push_back({reuse_tag, batch->old_table_slot + i});
    }
    return;
  }
  FinishFailedFlush(*batch);
}

void Layer::ReleaseQuarantined(uint64_t oldest_pinned_tag) {
  auto reusable = [&](const std::pair<uint64_t, uint32_t>& q) {
    return q.first < oldest_pinned_tag;
  };
  for (const auto& q : quarantined_) {
    if (reusable(q)) free_slots_.push_back(q.second);
  }
  std::erase_if(quarantined_, reusable);
}

void Layer::FinishFailedFlush(const FlushBatch& batch) {
  // Nothing of this batch is known durable: its entries must go out with the next flush, and
  // its slots stay unusable until then. The next flush is a checkpoint, which starts a new
  // journal epoch: blocks this attempt may have left in the journal can never be replayed
  // after the ones a retry appends at the same positions.
  force_checkpoint_ = true;
  for (const auto& [cluster, entry] : batch.records) {
    if (!batch.checkpoint || index_.Get(cluster) == entry) dirty_.insert(cluster);
  }
  if (batch.checkpoint) {
    for (uint32_t i = 0; i < batch.table_slots; ++i) {
      pending_free_.push_back(batch.table_slot + i);
    }
  }
  pending_free_.insert(pending_free_.end(), batch.freed_slots.begin(), batch.freed_slots.end());
}

absl::Status Layer::Flush() {
  auto batch = PrepareFlush();
  if (!batch.ok()) return batch.status();
  absl::Status s = file_->Sync();
  if (s.ok()) s = WriteFlush(&*batch);
  FinishFlush(&*batch, s.ok());
  ReleaseQuarantined(UINT64_MAX);  // a single-threaded owner maps no reads concurrently
  return s;
}

absl::Status Layer::AppendJournal(const FlushBatch& batch) {
  if (batch.records.empty()) return absl::OkStatus();
  uint64_t count = batch.records.size();
  uint64_t padded = (count + kRecordsPerJournalBlock - 1) / kRecordsPerJournalBlock *
                    kRecordsPerJournalBlock;
  std::string buf(padded * kJournalRecordSize, '\0');
  for (uint64_t i = 0; i < padded; ++i) {
    JournalRecord record;
    record.sequence = next_seq_ + i;
    record.flush_block = static_cast<uint16_t>(i / kRecordsPerJournalBlock);
    if (i < count) {
      record.kind = RecordKind::kCluster;
      record.cluster = batch.records[i].first;
      record.entry = batch.records[i].second;
    } else {
      record.kind = RecordKind::kPad;
    }
    record.EncodeTo(buf.data() + i * kJournalRecordSize);
  }
  absl::Status s = file_->Write(header_.journal_offset + journal_tail_, buf);
  if (s.ok()) s = file_->Sync();
  if (!s.ok()) return s;
  journal_tail_ += buf.size();
  next_seq_ += padded;
  return absl::OkStatus();
}

absl::Status Layer::WriteCheckpoint(FlushBatch* batch) {
  std::string table(batch->records.size() * kTableEntrySize, '\0');
  for (size_t i = 0; i < batch->records.size(); ++i) {
    EncodeTableEntry(batch->records[i].first, batch->records[i].second,
                     table.data() + i * kTableEntrySize);
  }
  uint64_t table_offset = uint64_t{batch->table_slot} * header_.cluster_size;
  if (!table.empty()) {
    // Invariant: the table is durable before the header that points to it.
    if (auto s = file_->Write(table_offset, table); !s.ok()) return s;
    if (auto s = file_->Sync(); !s.ok()) return s;
  }
  uint32_t crc = crc32c::Value(table.data(), table.size());
  const uint64_t start_seq = NextEpochStart();  // every older journal record is now stale
  // Written now, published by FinishFlush under the owner's lock: readers of header() (a
  // live `list`) never see it change under them.
  auto next = WriteEditedHeader([&](LayerHeader* h) {
    h->table_offset = table.empty() ? 0 : table_offset;
    h->table_entries = batch->records.size();
    h->table_crc = crc;
    h->journal_start_seq = start_seq;
    if (h->state != LayerState::kActive) h->journal_end_seq = 0;  // a merge journals on
  });
  if (!next.ok()) return next.status();
  batch->header = *std::move(next);
  return absl::OkStatus();
}

namespace {

// Invariant (FORMAT.md, Durability 4): the copy not holding the current header is overwritten
// first and synced, so a torn write leaves the current one. Then the other copy gets the same
// bytes, so that later damage to either copy falls back to this header, not the one before.
absl::Status WriteHeaderCopies(File* file, int current_copy, const LayerHeader& next) {
  std::string block;
  next.EncodeTo(&block);
  for (int copy : {1 - current_copy, current_copy}) {
    absl::Status s = file->Write(kHeaderCopyOffset[copy], block);
    if (s.ok()) s = file->Sync();
    if (!s.ok()) return s;
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status EditLayerHeader(Env* env, const std::string& path,
                             const std::function<void(LayerHeader*)>& edit) {
  auto file = env->Open(path, {.writable = true});
  if (!file.ok()) return file.status();
  int copy = 0;
  auto header = ReadLayerHeader(file->get(), &copy);
  if (!header.ok()) return header.status();
  LayerHeader next = *header;
  edit(&next);
  next.sequence = header->sequence + 1;
  return WriteHeaderCopies(file->get(), copy, next);
}

absl::Status Layer::UpdateHeader(const std::function<void(LayerHeader*)>& edit) {
  auto next = WriteEditedHeader(edit);
  if (!next.ok()) return next.status();
  header_ = *std::move(next);
  return absl::OkStatus();
}

absl::StatusOr<LayerHeader> Layer::WriteEditedHeader(
    const std::function<void(LayerHeader*)>& edit) const {
  LayerHeader next = header_;
  edit(&next);
  next.sequence = header_.sequence + 1;
  // Both copies are rewritten from header_, so a retry after a failure writes the same bytes.
  if (auto s = WriteHeaderCopies(file_.get(), current_header_copy_, next); !s.ok()) return s;
  return next;
}

void Layer::set_path(const std::string& path) {
  file_->set_path(path);
  if (data_file_) data_file_->set_path(path);
}

bool Layer::FlushNeedsCheckpoint() const {
  uint64_t blocks = (dirty_.size() + kRecordsPerJournalBlock - 1) / kRecordsPerJournalBlock;
  return force_checkpoint_ || journal_tail_ + blocks * kJournalBlockSize > header_.journal_size;
}

absl::Status Layer::Freeze(const std::string& name, int64_t frozen_ns) {
  auto frozen = WriteFrozenHeader(name, frozen_ns);
  if (!frozen.ok()) return frozen.status();
  PublishHeader(*std::move(frozen));
  ReleaseUnusedSpace();
  return absl::OkStatus();
}

absl::StatusOr<LayerHeader> Layer::WriteFrozenHeader(const std::string& name, int64_t frozen_ns) {
  if (name.size() > kMaxSnapshotNameLength) {
    return absl::InvalidArgumentError("snapshot name longer than 255 bytes");
  }
  // No checkpoint: a frozen layer keeps the journal records it has (opening replays them),
  // so freezing costs one journal append and a header switch.
  if (auto s = Flush(); !s.ok()) return s;
  return WriteEditedHeader([&](LayerHeader* h) {
    h->state = LayerState::kFrozen;
    h->snapshot_name = name;
    h->frozen_ns = frozen_ns;
    h->journal_end_seq = next_seq_;  // lets an open tell a damaged record from the end
  });
}

void Layer::ReleaseUnusedSpace() {
  uint64_t used = (journal_tail_ + kJournalBlockSize - 1) / kJournalBlockSize * kJournalBlockSize;
  if (used < header_.journal_size) {
    (void)file_->PunchHole(header_.journal_offset + used, header_.journal_size - used);
  }
  // Up to the last slot still in use: slots freed at the top (a trim before the snapshot) are
  // never allocated again, so they go too, and `check` finds nothing past the end. A
  // quarantined slot may still be read by a read mapped before its trim: it stays.
  uint64_t end = std::max<uint64_t>(first_data_slot_,
                                    header_.table_entries ? table_slot() + table_slots() : 0);
  index_.ForEach([&](uint64_t, const ClusterEntry& e) {
    end = std::max<uint64_t>(end, uint64_t{e.slot} + 1);
  });
  for (const auto& [tag, slot] : quarantined_) end = std::max<uint64_t>(end, uint64_t{slot} + 1);
  if (file_->Truncate(end * header_.cluster_size).ok()) high_water_ = end_slot_ = end;
}

}  // namespace strata
