// Journal: the record region of one layer file (FORMAT.md §1 "Journal"; Durability 5). A flush
// appends its records in whole 4 KiB blocks; an open replays the current epoch (the records
// from the header's journal_start_seq on) and tells a torn last flush, which it drops, from
// damage to a completed one, which it reports.
//
// Not thread-safe: the owner's flush path serializes every call. Errors are kDataLoss or the
// file's; their messages name journal positions as file offsets, and the owner adds the layer.
#ifndef STRATA_BLOCKSTORE_JOURNAL_H_
#define STRATA_BLOCKSTORE_JOURNAL_H_

#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "blockstore/file.h"
#include "blockstore/format.h"

namespace strata {

class JournalChunks;

class Journal {
 public:
  // The region [offset, offset + size) of `file` (not owned; outlives the journal), holding the
  // epoch that starts at `start_seq`; empty until Replay.
  void Reset(File* file, uint64_t offset, uint64_t size, uint64_t start_seq);
  // Reads the epoch record by record and calls apply() on each cluster record, in order; an
  // error apply() returns stops the replay, prefixed with the record's position. Stops at the
  // first record whose CRC or sequence does not match (the end of the last flush), after
  // checking that no later flush's record follows. `end_seq` != 0 (a frozen layer recorded
  // where its journal ends): reads exactly that far, and stopping before is damage.
  absl::Status Replay(uint64_t end_seq,
                      const std::function<absl::Status(const JournalRecord&)>& apply);
  // Appends `records` padded to whole blocks, and syncs. Nothing when there are none.
  // REQUIRES: Fits(records.size()).
  absl::Status Append(const std::vector<std::pair<uint32_t, ClusterEntry>>& records);
  // Starts the epoch at `start_seq` (a checkpoint or a writable open switched the header to it):
  // empty, older records stale.
  void StartEpoch(uint64_t start_seq);
  // True when one flush of `records` records fits after what is there.
  bool Fits(uint64_t records) const;
  // The start of the next epoch, past every sequence this region can hold now, so that no
  // block an older epoch left can match a later append at its position.
  uint64_t NextEpochStart() const { return start_seq_ + JournalCapacity(size_); }
  uint64_t tail() const { return tail_; }          // bytes used
  uint64_t next_seq() const { return next_seq_; }  // the sequence of the next record

 private:
  absl::Status CheckNoLaterFlush(uint64_t stop, JournalChunks* chunks) const;

  File* file_ = nullptr;
  uint64_t offset_ = 0, size_ = 0;
  uint64_t start_seq_ = 0;
  uint64_t tail_ = 0;
  uint64_t next_seq_ = 0;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_JOURNAL_H_
