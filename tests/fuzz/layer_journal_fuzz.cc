// Fuzzes the layer's record decoders (blockstore/journal.h, format.h): the journal region
// replayed by Journal::Replay into the in-memory index (ClusterTable, cluster_table.h), and the
// same bytes read as a checkpoint table. Input: a flags byte, journal_start_seq and
// journal_end_seq (8 bytes each, little-endian, in the ranges LayerHeader::DecodeFrom admits)
// and then the region, padded with zeros to whole 4 KiB blocks. A mutated record almost never
// matches its CRC, so when the flags byte is odd every record's CRC is made to match and
// replay sees records that are intact but out of sequence, of another flush or kind.
// Invariants: every record replay applies re-encodes to its bytes at the position its
// sequence fixes, the index holds exactly the last entry applied per cluster, and a
// checkpoint entry re-encodes to its bytes.
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <map>
#include <string>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "blockstore/cluster_table.h"
#include "blockstore/coding.h"
#include "blockstore/crc32c.h"
#include "blockstore/file.h"
#include "blockstore/format.h"
#include "blockstore/journal.h"

namespace strata {
namespace {

// A read-only file in memory: all Journal::Replay needs.
class MemoryFile final : public File {
 public:
  explicit MemoryFile(std::string bytes) : File("fuzz.strata"), bytes_(std::move(bytes)) {}
  absl::Status Read(uint64_t offset, size_t n, char* dst) const override {
    if (offset > bytes_.size() || n > bytes_.size() - offset) {
      return absl::DataLossError(absl::StrCat("read [", offset, ", +", n, ") past the end"));
    }
    std::memcpy(dst, bytes_.data() + offset, n);
    return absl::OkStatus();
  }
  absl::Status Write(uint64_t, absl::string_view) override { return ReadOnly(); }
  absl::Status Sync() override { return ReadOnly(); }
  absl::Status Allocate(uint64_t, uint64_t) override { return ReadOnly(); }
  absl::Status PunchHole(uint64_t, uint64_t) override { return ReadOnly(); }
  absl::Status Truncate(uint64_t) override { return ReadOnly(); }
  absl::StatusOr<uint64_t> Size() const override { return bytes_.size(); }
  absl::StatusOr<uint64_t> AllocatedBytes() const override { return bytes_.size(); }
  int fd() const override { return -1; }
  const std::string& bytes() const { return bytes_; }

 private:
  static absl::Status ReadOnly() { return absl::PermissionDeniedError("read-only"); }
  std::string bytes_;
};

constexpr size_t kPrefixBytes = 17;  // flags, start and end sequence
constexpr uint32_t kDiskClusters = 1 << 20;

// As JournalRecord::EncodeTo seals a record: the masked CRC32C of bytes 4..31 in bytes 0..3.
void SealRecords(std::string* region) {
  for (size_t pos = 0; pos < region->size(); pos += kJournalRecordSize) {
    char* r = region->data() + pos;
    EncodeFixed32(r, crc32c::Mask(crc32c::Value(r + 4, kJournalRecordSize - 4)));
  }
}

void CheckCheckpointTable(const std::string& table) {
  for (size_t pos = 0; pos + kTableEntrySize <= table.size(); pos += kTableEntrySize) {
    uint32_t cluster;
    ClusterEntry entry;
    DecodeTableEntry(table.data() + pos, &cluster, &entry);
    char again[kTableEntrySize];
    EncodeTableEntry(cluster, entry, again);
    if (std::memcmp(again, table.data() + pos, kTableEntrySize) != 0) abort();
  }
}

}  // namespace
}  // namespace strata

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace strata;
  if (size < kPrefixBytes) return 0;
  const char* p = reinterpret_cast<const char*>(data);
  const uint64_t start_seq = DecodeFixed64(p + 1);
  const uint64_t end_seq = DecodeFixed64(p + 9);
  std::string region(p + kPrefixBytes, size - kPrefixBytes);
  region.resize(std::max<uint64_t>(
      (region.size() + kJournalBlockSize - 1) / kJournalBlockSize * kJournalBlockSize,
      kJournalBlockSize), '\0');
  if (data[0] & 1) SealRecords(&region);
  const uint64_t capacity = JournalCapacity(region.size());
  if (start_seq == 0 || start_seq > UINT64_MAX - 2 * capacity ||
      (end_seq != 0 && (end_seq < start_seq || end_seq > start_seq + capacity))) {
    return 0;  // a header with these would not decode
  }
  CheckCheckpointTable(region);

  MemoryFile file(std::move(region));
  Journal journal;
  journal.Reset(&file, 0, file.bytes().size(), start_seq);
  ClusterTable<ClusterEntry> index;
  std::map<uint32_t, ClusterEntry> model;
  const absl::Status s = journal.Replay(end_seq, [&](const JournalRecord& r) {
    const uint64_t pos = (r.sequence - start_seq) * kJournalRecordSize;
    char again[kJournalRecordSize];
    r.EncodeTo(again);
    if (std::memcmp(again, file.bytes().data() + pos, kJournalRecordSize) != 0) abort();
    // Layer::CheckEntry's first checks: a cluster of the disk (a 64 GiB one at 64 KiB
    // clusters here, so that the index stays small), masks that do not overlap.
    if (r.cluster >= kDiskClusters) return absl::DataLossError("cluster beyond disk");
    if ((r.entry.present & r.entry.zero) != 0) return absl::DataLossError("masks overlap");
    index.Set(r.cluster, r.entry);
    if (r.entry.empty()) {
      model.erase(r.cluster);
    } else {
      model[r.cluster] = r.entry;
    }
    return absl::OkStatus();
  });
  if (s.ok() && end_seq != 0 && journal.next_seq() != end_seq) abort();
  if (journal.tail() > file.bytes().size()) abort();
  if (index.size() != model.size()) abort();
  auto it = model.begin();
  index.ForEach([&](uint64_t cluster, const ClusterEntry& e) {
    if (it == model.end() || it->first != cluster || !(it->second == e)) abort();
    ++it;
  });
  return 0;
}
