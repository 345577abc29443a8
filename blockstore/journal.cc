#include "blockstore/journal.h"

#include <algorithm>
#include <string>

#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace strata {

// Reads the journal region record by record, a chunk at a time.
class JournalChunks {
 public:
  JournalChunks(File* file, uint64_t offset, uint64_t size)
      : file_(file), offset_(offset), size_(size) {}
  // The kJournalRecordSize bytes at `pos` bytes into the journal; valid until the next call.
  absl::StatusOr<const char*> Record(uint64_t pos);

 private:
  File* const file_;
  const uint64_t offset_, size_;
  uint64_t chunk_start_ = 0;
  std::string chunk_;
};

absl::StatusOr<const char*> JournalChunks::Record(uint64_t pos) {
  // 64 KiB at a time: replay usually stops in the first chunk, so an empty journal costs one
  // small read.
  constexpr uint64_t kChunk = 64 << 10;
  if (pos < chunk_start_ || pos + kJournalRecordSize > chunk_start_ + chunk_.size()) {
    chunk_start_ = pos / kChunk * kChunk;
    chunk_.resize(std::min(kChunk, size_ - chunk_start_));
    if (auto s = file_->Read(offset_ + chunk_start_, chunk_.size(), chunk_.data()); !s.ok()) {
      return absl::DataLossError(absl::StrCat("journal: ", s.message()));
    }
  }
  return chunk_.data() + (pos - chunk_start_);
}

void Journal::Reset(File* file, uint64_t offset, uint64_t size, uint64_t start_seq) {
  file_ = file;
  offset_ = offset;
  size_ = size;
  StartEpoch(start_seq);
}

void Journal::StartEpoch(uint64_t start_seq) {
  start_seq_ = next_seq_ = start_seq;
  tail_ = 0;
}

bool Journal::Fits(uint64_t records) const {
  uint64_t blocks = (records + kRecordsPerJournalBlock - 1) / kRecordsPerJournalBlock;
  return tail_ + blocks * kJournalBlockSize <= size_;
}

absl::Status Journal::Replay(uint64_t end_seq,
                             const std::function<absl::Status(const JournalRecord&)>& apply) {
  StartEpoch(start_seq_);
  const uint64_t limit = end_seq != 0 ? (end_seq - start_seq_) * kJournalRecordSize : size_;
  JournalChunks chunks(file_, offset_, size_);
  for (uint64_t pos = 0; pos < limit; pos += kJournalRecordSize) {
    auto raw = chunks.Record(pos);
    if (!raw.ok()) return raw.status();
    JournalRecord record;
    // The first record that fails its CRC or breaks the sequence is where the last flush
    // ended (or tore): everything before it was made durable by a completed flush.
    if (!record.DecodeFrom(*raw).ok() || record.sequence != next_seq_) {
      if (end_seq != 0) {
        return absl::DataLossError(absl::StrCat(
            "journal record @ ", offset_ + pos, ": checksum or sequence mismatch before the ",
            "end the frozen header records (sequence ", end_seq, ")"));
      }
      return CheckNoLaterFlush(pos, &chunks);
    }
    if (record.kind == RecordKind::kCluster) {
      if (auto s = apply(record); !s.ok()) {
        return absl::Status(s.code(),
                            absl::StrCat("journal record @ ", offset_ + pos, ": ", s.message()));
      }
    }
    ++next_seq_;
    tail_ = pos + kJournalRecordSize;
  }
  return absl::OkStatus();
}

absl::Status Journal::CheckNoLaterFlush(uint64_t stop, JournalChunks* chunks) const {
  // A torn last flush may leave any subset of its blocks, so intact records of that flush
  // past the stop are expected. An intact record of a *later* flush is not: a flush is
  // written only after the one before it was synced, so the record at the stop belonged to a
  // completed flush and is damaged. Records of older epochs carry other sequence numbers.
  const uint64_t stop_block = stop / kJournalBlockSize;
  for (uint64_t block = stop_block + 1; block * kJournalBlockSize < size_; ++block) {
    for (uint64_t i = 0; i < kRecordsPerJournalBlock; ++i) {
      const uint64_t pos = block * kJournalBlockSize + i * kJournalRecordSize;
      auto raw = chunks->Record(pos);
      if (!raw.ok()) return raw.status();
      const uint64_t expected = start_seq_ + pos / kJournalRecordSize;
      // Most of the region is zeros or older epochs: the sequence alone rules them out,
      // without a checksum or an error status per record.
      if (JournalRecord::SequenceOf(*raw) != expected) continue;
      JournalRecord record;
      if (!record.DecodeFrom(*raw).ok() || record.sequence != expected ||
          record.flush_block > block) {
        continue;
      }
      if (block - record.flush_block > stop_block) {
        return absl::DataLossError(absl::StrCat(
            "journal record @ ", offset_ + stop, " (sequence ",
            start_seq_ + stop / kJournalRecordSize,
            "): checksum or sequence mismatch, but a later flush's record @ ", offset_ + pos,
            " is intact: a completed flush was damaged"));
      }
      break;  // this block belongs to the torn flush: look at the next one
    }
  }
  return absl::OkStatus();
}

absl::Status Journal::Append(const std::vector<std::pair<uint32_t, ClusterEntry>>& records) {
  if (records.empty()) return absl::OkStatus();
  const uint64_t count = records.size();
  const uint64_t padded = (count + kRecordsPerJournalBlock - 1) / kRecordsPerJournalBlock *
                          kRecordsPerJournalBlock;
  std::string buf(padded * kJournalRecordSize, '\0');
  for (uint64_t i = 0; i < padded; ++i) {
    JournalRecord record;
    record.sequence = next_seq_ + i;
    record.flush_block = static_cast<uint16_t>(i / kRecordsPerJournalBlock);
    if (i < count) {
      record.kind = RecordKind::kCluster;
      record.cluster = records[i].first;
      record.entry = records[i].second;
    } else {
      record.kind = RecordKind::kPad;
    }
    record.EncodeTo(buf.data() + i * kJournalRecordSize);
  }
  absl::Status s = file_->Write(offset_ + tail_, buf);
  if (s.ok()) s = file_->Sync();
  if (!s.ok()) return s;
  tail_ += buf.size();
  next_seq_ += padded;
  return absl::OkStatus();
}

}  // namespace strata
