// Layer file format shared by reader and writer, and (last section) the merge journal beside a
// layer. See FORMAT.md for the byte grammar, a worked example and the design trade-offs. Every
// multi-byte integer in a layer file is little-endian (coding.h); the merge journal is text.
#ifndef STRATA_BLOCKSTORE_FORMAT_H_
#define STRATA_BLOCKSTORE_FORMAT_H_

#include <array>
#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace strata {

// "STRATA" + 0x00 + 0x4c ('L'ayer): eight bytes no text file or raw disk image starts with by
// accident, and `file` / `head -c8` show it readably.
inline constexpr char kLayerMagic[8] = {'S', 'T', 'R', 'A', 'T', 'A', '\0', 'L'};
inline constexpr uint32_t kFormatVersion = 1;

// Two header copies, each one 4 KiB block at the start of the file (VHDX does the same): a
// torn header write leaves the other copy valid, and the copy with the higher sequence wins.
inline constexpr uint64_t kHeaderBlockSize = 4096;
inline constexpr uint64_t kHeaderCopyOffset[2] = {0, kHeaderBlockSize};

// Limits. Sub-block masks are 32 bits in the index, so a cluster holds at most 32 sub-blocks;
// a slot number is 32 bits, so a layer file spans at most 2^32 clusters (256 TiB at 64 KiB).
inline constexpr uint32_t kMaxSubBlocksPerCluster = 32;
inline constexpr uint32_t kMinClusterSize = 8192;        // both header copies fit in slot 0
inline constexpr uint32_t kMaxClusterSize = 2u << 20;    // 2 MiB
inline constexpr uint32_t kMinSubBlockSize = 512;
inline constexpr uint32_t kDefaultClusterSize = 64 << 10;
inline constexpr uint32_t kDefaultSubBlockSize = 4 << 10;
inline constexpr uint64_t kMaxClustersPerLayer = uint64_t{1} << 32;
inline constexpr size_t kMaxParentPathLength = 1024;
inline constexpr size_t kMaxSnapshotNameLength = 255;
// The geometry the limits above allow: both sizes powers of two, the cluster 8 KiB .. 2 MiB,
// the sub-block at least 512 B and at most 32 of them per cluster.
inline constexpr bool IsValidGeometry(uint32_t cluster_size, uint32_t sub_block_size) {
  auto pow2 = [](uint32_t v) { return v != 0 && (v & (v - 1)) == 0; };
  return pow2(cluster_size) && cluster_size >= kMinClusterSize &&
         cluster_size <= kMaxClusterSize && pow2(sub_block_size) &&
         sub_block_size >= kMinSubBlockSize && sub_block_size <= cluster_size &&
         cluster_size / sub_block_size <= kMaxSubBlocksPerCluster;
}

// Journal: 32-byte records in 4 KiB blocks. A flush appends whole blocks only, so it never
// rewrites a block holding records an earlier flush made durable (a torn write could destroy
// them). 8 MiB holds 2048 flushes' worth of blocks before a checkpoint empties it.
inline constexpr uint64_t kJournalBlockSize = 4096;
inline constexpr uint64_t kJournalRecordSize = 32;
inline constexpr uint64_t kRecordsPerJournalBlock = kJournalBlockSize / kJournalRecordSize;
inline constexpr uint64_t kDefaultJournalSize = 8 << 20;
// A record's flush_block is 16 bits, so one flush spans at most 65536 blocks: the journal is
// at most 256 MiB (32 times the default; more would only delay checkpoints).
inline constexpr uint64_t kMaxJournalSize = (uint64_t{1} << 16) * kJournalBlockSize;
// Records the journal region can hold: every journal epoch (the records appended between two
// checkpoints) lies within [journal_start_seq, journal_start_seq + capacity).
inline constexpr uint64_t JournalCapacity(uint64_t journal_size) {
  return journal_size / kJournalRecordSize;
}

// A header's sequence starts at 1 and grows by one per header write; a copy at 2^63 or above
// was never written by strata (a header rewritten every nanosecond needs 292 years to get
// there), and one near 2^64 would wrap on the next write and lose to the older copy.
inline constexpr uint64_t kMaxHeaderSequence = (uint64_t{1} << 63) - 1;

// The sizes a layer may have: `strata create` (Layer::Create) accepts these and every open
// (LayerHeader::DecodeFrom) checks them again, so a crafted header cannot carry sizes create
// would refuse. The geometry is IsValidGeometry's, the virtual size a positive multiple of
// 512 bytes of at most 2^32 clusters, the journal whole 4 KiB blocks, 4 KiB .. 256 MiB.
// kInvalidArgument naming the field.
absl::Status ValidateLayerSizes(uint64_t virtual_size, uint32_t cluster_size,
                                uint32_t sub_block_size, uint64_t journal_size);

// Checkpoint table: an array of kTableEntrySize-byte entries sorted by cluster, whose CRC32C is
// in the header.
inline constexpr uint64_t kTableEntrySize = 16;

// An offline merge (commit) of layer L keeps its progress in L's path + ".merge" until it
// completes (commit.h; its layout is the last section of this file); any chain holding L
// refuses to open while it exists. A commit into a raw base B keeps it in B's path + ".merge"
// instead, where every chain on B finds it, also once L has left the chain.
inline std::string MergeJournalPath(const std::string& layer_path) {
  return layer_path + ".merge";
}

// kMerging: a frozen layer that an offline commit is rewriting (its copy phase); it reads as
// neither snapshot, so only the commit opens it (Layer::Mode::kMergeTarget).
enum class LayerState : uint32_t { kActive = 1, kFrozen = 2, kMerging = 3 };
// kNbd: the parent is an NBD export (parent_path holds its URI; a remote base, like a raw one
// but read over the network: remote_base.h).
enum class ParentFormat : uint32_t { kNone = 0, kRaw = 1, kStrata = 2, kNbd = 3 };
absl::string_view Name(LayerState state);
absl::string_view Name(ParentFormat format);
// Parses "raw" / "strata" / "nbd" (as `-F` takes them).
absl::Status ParseParentFormat(absl::string_view text, ParentFormat* format);

using Uuid = std::array<uint8_t, 16>;
std::string UuidToString(const Uuid& uuid);
// As UuidToString writes it (the hyphens may be anywhere or absent).
absl::StatusOr<Uuid> ParseUuid(absl::string_view text);
Uuid NewUuid();  // random (version 4)
inline bool IsNil(const Uuid& uuid) { return uuid == Uuid{}; }

// One header copy (kHeaderBlockSize bytes on disk; FORMAT.md has the offsets).

struct LayerHeader {
  uint64_t sequence = 0;            // higher wins between the two copies
  uint64_t virtual_size = 0;        // bytes
  uint32_t cluster_size = kDefaultClusterSize;
  uint32_t sub_block_size = kDefaultSubBlockSize;
  Uuid uuid{};
  Uuid parent_uuid{};               // nil when the parent is raw or absent; an nbd parent's
                                    // when the export said it is that strata layer
  LayerState state = LayerState::kActive;
  ParentFormat parent_format = ParentFormat::kNone;
  uint64_t parent_size = 0;         // the parent's virtual size when this layer was created
  int64_t created_ns = 0;           // unix time
  int64_t frozen_ns = 0;            // unix time of the snapshot; 0 while active
  uint64_t table_offset = 0;        // checkpoint table, 0 = none
  uint64_t table_entries = 0;
  uint32_t table_crc = 0;           // CRC32C of the whole table
  uint64_t journal_offset = 0;      // journal region
  uint64_t journal_size = 0;
  uint64_t journal_start_seq = 0;   // first record sequence the journal may hold
  uint64_t journal_end_seq = 0;     // frozen: the sequence after its last record (0: unknown)
  std::string parent_path;          // relative to this layer's directory (or absolute)
  std::string snapshot_name;        // set when frozen as a named snapshot

  // Writes exactly kHeaderBlockSize bytes, CRC included.
  void EncodeTo(std::string* dst) const;
  // REQUIRES: block holds kHeaderBlockSize bytes. Checks magic, version, CRC and field ranges.
  absl::Status DecodeFrom(absl::string_view block);
  uint32_t SubBlocksPerCluster() const { return cluster_size / sub_block_size; }
};

// The size rule between a layer and its parent (FORMAT.md §1, "Sizes along a chain"): the
// parent is `parent_size` bytes, what the child recorded (parent_size); the child is as large
// or larger (it grew since: resize.h), and then the parent ends on a sub-block boundary, so a
// sub-block of the child lies wholly within the parent or wholly past its end, where the
// parent answers nothing (reads as zeros). kFailedPrecondition saying which part fails.
absl::Status CheckParentSize(const LayerHeader& child, uint64_t parent_size);

// The mask of every sub-block of a cluster of `sub_blocks` sub-blocks.
inline uint32_t FullSubBlockMask(uint32_t sub_blocks) {
  return sub_blocks >= 32 ? 0xffffffffu : (1u << sub_blocks) - 1;
}

// A layer's link to its parent, as its header records it (a stream relinks a layer past its
// parent: stream.h).
struct ParentRef {
  ParentFormat format = ParentFormat::kNone;
  std::string path;     // relative to the child's directory, or absolute
  Uuid uuid{};          // strata parents; nil otherwise
  uint64_t size = 0;    // the parent's size (parent_size)
  void ApplyTo(LayerHeader* h) const {
    h->parent_format = format;
    h->parent_path = path;
    h->parent_uuid = uuid;
    h->parent_size = size;
  }
};

// The index of one layer for one virtual cluster. A sub-block is in exactly one of three
// states: present (data at slot * cluster_size + sub_block * sub_block_size), zero (reads as
// zeros, no data), or absent (the layer below answers). `slot` 0 means no data slot.
struct ClusterEntry {
  uint32_t slot = 0;
  uint32_t present = 0;
  uint32_t zero = 0;
  bool empty() const { return slot == 0 && present == 0 && zero == 0; }
  bool operator==(const ClusterEntry&) const = default;
};

// A journal record: cluster `cluster` of this layer now has `entry`. Records with kind kPad
// fill the rest of a block. Sequence numbers are contiguous from journal_start_seq, so a
// record's sequence is fixed by its position; replay stops at the first record whose CRC or
// sequence does not match. `flush_block` is the record's block index within the flush that
// wrote it: it tells a torn last flush from damage to an earlier one (FORMAT.md).
enum class RecordKind : uint16_t { kPad = 1, kCluster = 2 };
struct JournalRecord {
  RecordKind kind = RecordKind::kCluster;
  uint16_t flush_block = 0;
  uint64_t sequence = 0;
  uint32_t cluster = 0;
  ClusterEntry entry;
  void EncodeTo(char* dst) const;                      // kJournalRecordSize bytes
  absl::Status DecodeFrom(const char* src);            // kDataLoss on CRC mismatch
  static uint64_t SequenceOf(const char* src);         // unchecked: a quick filter
};

// A checkpoint table entry.
void EncodeTableEntry(uint32_t cluster, const ClusterEntry& entry, char* dst);
void DecodeTableEntry(const char* src, uint32_t* cluster, ClusterEntry* entry);

// --- Merge journal -------------------------------------------------------------------------
// `<C>.merge` beside layer C while C is committed (merged) into its parent P (commit.h;
// FORMAT.md §7). Text, one `key=value` line per field, so an operator can read an interrupted
// merge with `cat`; it is a few hundred bytes, rewritten whole by rename, never in place. The
// last line is `crc=` and the decimal CRC32C (unmasked) of every byte before it: a torn or
// truncated copy never decodes.
//
// Version 2 names files relative to the journal's own directory; version 1 named them as the
// tool was given them, relative to a working directory nobody can know later.
inline constexpr absl::string_view kMergeJournalMagic = "strata-merge 2";
inline constexpr absl::string_view kMergeJournalCrcKey = "crc=";
// The journal's own directory in a `dir=` line: a directory moved or copied with an unfinished
// merge in it then resumes on its own files.
inline constexpr absl::string_view kMergeJournalOwnDir = ".";
// The value of the optional `target=` line of a commit into a raw base.
inline constexpr absl::string_view kMergeJournalRawTarget = "raw";

// kCopy: C's sub-blocks are being copied into P; kRelink: P is taking C's place.
enum class MergePhase : uint8_t { kCopy = 1, kRelink = 2 };
absl::string_view Name(MergePhase phase);  // "copy", "relink": as stored

// A merge journal's fields as stored. No path is resolved here (commit.cc does that).
struct MergeJournalRecord {
  MergePhase phase = MergePhase::kCopy;
  std::string child;               // C's file name (the journal lives beside C)
  std::string parent;              // P as C records its parent (ParentLink from C's directory)
  Uuid child_uuid{};
  Uuid parent_uuid{};
  bool child_was_active = false;
  uint64_t copied_entries = 0;     // C's index entries, in copy order, durably in P
  std::vector<std::string> dirs;   // where C's children may be: absolute, or kMergeJournalOwnDir
  // `commit --into-base`: P is C's raw base, the journal lives beside P (named after it), and
  // `child` is C as a child names its parent from P's directory; parent_uuid is nil. Stored
  // only when set (`target=raw`), so a merge into a strata parent keeps version 2's bytes.
  bool into_base = false;
  // Into the base, C active: the new empty layer that takes C's path; nil when C's path goes.
  Uuid successor_uuid{};
  bool operator==(const MergeJournalRecord&) const = default;

  // Writes the whole journal, magic line first and `crc=` line last.
  void EncodeTo(std::string* dst) const;
  // kDataLoss when the CRC does not match (torn, truncated, damaged) or a field is missing,
  // repeated, unknown or out of range; kFailedPrecondition for an intact journal of another
  // version (the message quotes its first line).
  absl::Status DecodeFrom(absl::string_view text);
};

// --- Stream journal ------------------------------------------------------------------------
// `<X>.stream` beside frozen layer X while X is deleted by streaming it into its child
// (stream.h; FORMAT.md §8): the same text frame as the merge journal.
inline constexpr absl::string_view kStreamJournalMagic = "strata-stream 1";
inline std::string StreamJournalPath(const std::string& layer_path) {
  return layer_path + ".stream";
}

struct StreamJournalRecord {
  std::string layer;        // X's file name (the journal lives beside X)
  Uuid uuid{};              // X's UUID: the journal never acts on another file of that name
  Uuid child_uuid{};        // the layer standing on X when the stream began (it keeps its
                            // UUID when a snapshot freezes it): ties the journal to its chain
  std::string name;         // X's snapshot name, for messages (may be empty)
  uint64_t rate_limit = 0;  // bytes per second the copy keeps under; 0: no limit
  bool operator==(const StreamJournalRecord&) const = default;

  void EncodeTo(std::string* dst) const;
  // kDataLoss when torn, damaged, or a field is missing, repeated, unknown or malformed.
  absl::Status DecodeFrom(absl::string_view text);
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_FORMAT_H_
