#include "blockstore/layer.h"

#include <time.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "absl/strings/str_cat.h"
#include "absl/container/flat_hash_map.h"
#include "blockstore/clock.h"
#include "blockstore/crc32c.h"

namespace strata {

LayerCreateParams EmptyLayerOn(const LayerHeader& h) {
  LayerCreateParams params;
  params.virtual_size = h.virtual_size;
  params.cluster_size = h.cluster_size;
  params.sub_block_size = h.sub_block_size;
  params.journal_size = h.journal_size;
  params.parent_format = h.parent_format;
  params.parent_path = h.parent_path;
  params.parent_uuid = h.parent_uuid;
  params.parent_size = h.parent_size;
  return params;
}
int HeaderCopies::newest() const {
  if (!status[0].ok()) return 1;
  if (!status[1].ok()) return 0;
  return header[1].sequence > header[0].sequence ? 1 : 0;
}

absl::StatusOr<HeaderCopies> ReadHeaderCopies(File* file) {
  HeaderCopies copies;
  copies.blocks.assign(2 * kHeaderBlockSize, '\0');
  if (auto s = file->Read(0, copies.blocks.size(), copies.blocks.data()); !s.ok()) {
    return absl::DataLossError(absl::StrCat("layer ", file->path(), ": ", s.message()));
  }
  for (int i = 0; i < 2; ++i) {
    copies.status[i] = copies.header[i].DecodeFrom(
        absl::string_view(copies.blocks).substr(kHeaderCopyOffset[i], kHeaderBlockSize));
  }
  return copies;
}

absl::StatusOr<LayerHeader> ReadLayerHeader(File* file, int* copy) {
  auto copies = ReadHeaderCopies(file);
  if (!copies.ok()) return copies.status();
  if (!copies->status[0].ok() && !copies->status[1].ok()) {
    return absl::DataLossError(absl::StrCat(
        "layer ", file->path(), ": no valid header: copy 0 @ 0: ", copies->status[0].message(),
        "; copy 1 @ 4096: ", copies->status[1].message()));
  }
  const int pick = copies->newest();
  if (copy != nullptr) *copy = pick;
  return copies->header[pick];
}

absl::StatusOr<LayerHeader> ReadLayerHeader(Env* env, const std::string& path) {
  auto file = env->Open(path, {});
  if (!file.ok()) return file.status();
  return ReadLayerHeader(file->get());
}

Layer::~Layer() {
  // Free slots a refill allocated again hold space no index entry references: give it back,
  // as the flush that freed them did, so that a closed layer leaks nothing (`check`).
  if (writable_) slots_.PunchReadyFree();
}

absl::Status Layer::Corrupt(absl::string_view what) const {
  return absl::DataLossError(absl::StrCat("layer ", path(), ": ", what));
}

namespace {

absl::Status ValidateCreateParams(const LayerCreateParams& params) {
  if (auto s = ValidateLayerSizes(params.virtual_size, params.cluster_size,
                                  params.sub_block_size, params.journal_size);
      !s.ok()) {
    return s;
  }
  if (params.parent_path.size() > kMaxParentPathLength) {
    return absl::InvalidArgumentError(absl::StrCat("parent path longer than ",
                                                   kMaxParentPathLength, " bytes"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<std::unique_ptr<Layer>> Layer::Create(Env* env, const std::string& path,
                                                     const LayerCreateParams& params) {
  if (auto s = ValidateCreateParams(params); !s.ok()) return s;
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
  h.uuid = IsNil(params.uuid) ? NewUuid() : params.uuid;
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
  layer->slots_.Reset(layer->file_.get(), h.cluster_size, layer->first_data_slot_,
                      layer->first_data_slot_, {});
  layer->journal_.Reset(layer->file_.get(), h.journal_offset, h.journal_size, 1);
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
  auto file = env->Open(path, {.writable = mode != Mode::kReadOnly});
  if (!file.ok()) return file.status();
  return Open(env, *std::move(file), mode, direct_io);
}

absl::StatusOr<std::unique_ptr<Layer>> Layer::Open(Env* env, std::unique_ptr<File> file,
                                                   Mode mode, bool direct_io) {
  bool writable = mode != Mode::kReadOnly;
  auto layer = std::unique_ptr<Layer>(new Layer());
  const std::string path = file->path();
  layer->file_ = std::move(file);
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
    if (auto s = CheckSameFile(*layer->file_, **data); !s.ok()) return s;
    layer->data_file_ = std::move(*data);
  }
  if (writable) {
    // A frozen layer's journal region was released; take it back before any flush needs it.
    if (auto s = layer->file_->Allocate(h.journal_offset, h.journal_size); !s.ok()) return s;
    // On a full volume (the server that filled it stopped) the epoch's checkpoint finds no
    // space for its table. The disk must still open, as it is: the checkpoint stays owed
    // (force_checkpoint_), so nothing is appended to the journal before the new epoch starts,
    // and the first flush that finds space makes it.
    if (auto s = layer->StartJournalEpoch(); !s.ok() && !IsNoSpace(s)) return s;
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
  if (journal_.tail() > 0) {
    force_checkpoint_ = true;
    return Flush();
  }
  const uint64_t next = journal_.NextEpochStart();
  absl::Status s = UpdateHeader([&](LayerHeader* h) {
    h->journal_start_seq = next;
    if (h->state != LayerState::kActive) h->journal_end_seq = 0;  // a merge journals on
  });
  if (s.ok()) journal_.StartEpoch(next);
  return s;
}

absl::Status Layer::CheckEntry(uint64_t cluster, const ClusterEntry& e) const {
  const uint32_t full = FullSubBlockMask(header_.SubBlocksPerCluster());
  if (cluster >= cluster_count()) {
    return absl::DataLossError(absl::StrCat("cluster ", cluster, " beyond disk"));
  }
  // A sub-block both present and zero would read as data in one place and zeros in another
  // (Extents vs MapRead), and a merge would keep either: FORMAT.md makes them disjoint.
  if ((e.present & e.zero) != 0) {
    return absl::DataLossError(absl::StrCat("cluster ", cluster,
                                            ": bad sub-block masks: present 0x",
                                            absl::Hex(e.present), " and zero 0x",
                                            absl::Hex(e.zero), " overlap"));
  }
  if (((e.present | e.zero) & ~full) != 0) {
    return absl::DataLossError(absl::StrCat("cluster ", cluster,
                                            ": bad sub-block masks: bits beyond the cluster"));
  }
  if (e.present != 0 && e.slot == 0) {
    return absl::DataLossError(absl::StrCat("cluster ", cluster, ": data without a slot"));
  }
  if (e.slot != 0 && e.slot < first_data_slot_) {
    return absl::DataLossError(absl::StrCat("cluster ", cluster, ": slot ", e.slot,
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
    if (auto s = CheckEntry(cluster, entry); !s.ok()) {
      return Corrupt(absl::StrCat("checkpoint table entry ", i, ": ", s.message()));
    }
    index_.Set(cluster, entry);
  }
  return absl::OkStatus();
}

absl::Status Layer::ReplayJournal() {
  const LayerHeader& h = header_;
  journal_.Reset(file_.get(), h.journal_offset, h.journal_size, h.journal_start_seq);
  // A frozen layer whose header records where its journal ends reads exactly that far:
  // stopping before is damage, and nothing past it belongs to the layer.
  const uint64_t end_seq = h.state != LayerState::kActive ? h.journal_end_seq : 0;
  absl::Status s = journal_.Replay(end_seq, [&](const JournalRecord& record) {
    if (auto s = CheckEntry(record.cluster, record.entry); !s.ok()) return s;
    index_.Set(record.cluster, record.entry);
    return absl::OkStatus();
  });
  return s.ok() ? s : Corrupt(s.message());
}

absl::Status Layer::RebuildAllocator() {
  auto size = file_->Size();
  if (!size.ok()) return size.status();
  const uint64_t end_slot = *size / header_.cluster_size;
  const uint64_t table_end = header_.table_entries ? table_slot() + table_slots() : 0;
  uint64_t high_water = std::max<uint64_t>(first_data_slot_, table_end);
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
    high_water = std::max<uint64_t>(high_water, uint64_t{e.slot} + 1);
  });
  if (!status.ok()) return status;
  if (high_water > end_slot) {
    return Corrupt(absl::StrCat("index references slot ", high_water - 1,
                                " beyond the end of the file (", *size, " bytes)"));
  }
  // A writable layer may take the slots the index leaves free; their space may or may not be
  // allocated (punched after a flush, or leaked by a crash), so they are not ready.
  slots_.Reset(file_.get(), header_.cluster_size, high_water, end_slot,
               writable_ ? UnreferencedSlotsBelow(high_water) : std::vector<uint32_t>{});
  return absl::OkStatus();
}

uint32_t Layer::table_slot() const {
  return static_cast<uint32_t>(header_.table_offset / header_.cluster_size);
}

uint32_t Layer::table_slots() const {
  return header_.table_entries ? SlotsFor(header_.table_entries * kTableEntrySize) : 0;
}

std::vector<uint32_t> Layer::UnreferencedSlots() const {
  return UnreferencedSlotsBelow(slots_.high_water());
}

std::vector<uint32_t> Layer::UnreferencedSlotsBelow(uint64_t high_water) const {
  std::vector<bool> used(high_water, false);
  for (uint32_t i = 0; i < table_slots(); ++i) used[table_slot() + i] = true;
  index_.ForEach([&](uint64_t, const ClusterEntry& e) {
    if (e.slot != 0) used[e.slot] = true;
  });
  std::vector<uint32_t> out;
  // Highest first: the allocator pops from the back, so low slots are reused first.
  for (uint64_t slot = high_water; slot-- > first_data_slot_;) {
    if (!used[slot]) out.push_back(static_cast<uint32_t>(slot));
  }
  return out;
}

void Layer::SetEntry(uint64_t cluster, const ClusterEntry& entry) {
  // A caller's bug, not the disk's: the next flush would make the entry durable and the layer
  // would then fail to open (CheckEntry), so stop before the index holds it.
  if ((entry.present & entry.zero) != 0) {
    std::fprintf(stderr, "strata: layer %s: cluster %llu: present 0x%x and zero 0x%x overlap\n",
                 path().c_str(), static_cast<unsigned long long>(cluster), entry.present,
                 entry.zero);
    std::abort();
  }
  ClusterEntry old = index_.Get(cluster);
  if (old == entry) return;
  if (old.slot != entry.slot) {
    if (old.slot != 0) {
      slots_.Free(old.slot);
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
    auto table = slots_.TakeRun(batch.table_slots);
    if (!table.ok()) return table.status();
    batch.table_slot = *table;
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
  batch.freed_slots = slots_.TakePending();
  return batch;
}

absl::Status Layer::WriteFlush(FlushBatch* batch) {
  absl::Status s = batch->checkpoint ? WriteCheckpoint(batch) : journal_.Append(batch->records);
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
      journal_.StartEpoch(header_.journal_start_seq);
    }
    for (uint32_t slot : batch->freed_slots) slots_.Quarantine(reuse_tag, slot);
    for (uint32_t i = 0; i < batch->old_table_slots; ++i) {
      slots_.Quarantine(reuse_tag, batch->old_table_slot + i);
    }
    return;
  }
  FinishFailedFlush(*batch);
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
    for (uint32_t i = 0; i < batch.table_slots; ++i) slots_.Free(batch.table_slot + i);
  }
  slots_.ReturnPending(batch.freed_slots);
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
  const uint64_t start_seq = journal_.NextEpochStart();  // every older journal record is now stale
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
  return force_checkpoint_ || !journal_.Fits(dirty_.size());
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
    h->journal_end_seq = journal_.next_seq();  // lets an open tell a damaged record from the end
  });
}

absl::Status CopyClusterData(Env* env, const Layer& from, uint32_t from_slot, Layer* to,
                             uint32_t to_slot, uint32_t mask) {
  const uint32_t per_cluster = from.header().SubBlocksPerCluster();
  for (uint32_t sb = 0; sb < per_cluster;) {
    if (!(mask & (1u << sb))) {
      ++sb;
      continue;
    }
    uint32_t end = sb;
    while (end < per_cluster && (mask & (1u << end))) ++end;
    absl::Status s = env->CopyRange(from.file(), from.DataOffset(from_slot, sb), to->file(),
                                    to->DataOffset(to_slot, sb),
                                    uint64_t{end - sb} * from.sub_block_size());
    if (!s.ok()) return s;
    sb = end;
  }
  return absl::OkStatus();
}

absl::Status Layer::Relink(const ParentRef& parent) {
  if (auto s = Flush(); !s.ok()) return s;
  return UpdateHeader([&](LayerHeader* h) {
    parent.ApplyTo(h);
    if (h->state != LayerState::kActive) h->journal_end_seq = journal_.next_seq();
  });
}

void Layer::ReleaseUnusedSpace() {
  uint64_t used = (journal_.tail() + kJournalBlockSize - 1) / kJournalBlockSize * kJournalBlockSize;
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
  end = std::max(end, slots_.QuarantinedEnd());
  slots_.PunchReadyFree();
  if (file_->Truncate(end * header_.cluster_size).ok()) slots_.TruncatedTo(end);
}

}  // namespace strata
