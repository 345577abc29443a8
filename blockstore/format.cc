#include "blockstore/format.h"

#include <sys/random.h>

#include <cstring>
#include <functional>

#include "absl/container/flat_hash_set.h"
#include "absl/status/statusor.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "absl/types/span.h"
#include "blockstore/coding.h"
#include "blockstore/crc32c.h"

namespace strata {
namespace {

// Header field offsets; FORMAT.md lists the same table.
constexpr size_t kOffMagic = 0, kOffVersion = 8, kOffHeaderSize = 12, kOffSequence = 16,
                 kOffVirtualSize = 24, kOffClusterSize = 32, kOffSubBlockSize = 36,
                 kOffUuid = 40, kOffParentUuid = 56, kOffState = 72, kOffParentFormat = 76,
                 kOffParentSize = 80, kOffCreated = 88, kOffFrozen = 96, kOffTableOffset = 104,
                 kOffTableEntries = 112, kOffTableCrc = 120, kOffJournalOffset = 128,
                 kOffJournalSize = 136, kOffJournalStartSeq = 144, kOffParentPathLen = 152,
                 kOffNameLen = 154, kOffJournalEndSeq = 160, kOffParentPath = 256, kOffName = 1280,
                 kOffHeaderCrc = kHeaderBlockSize - 4;
static_assert(kOffParentPath + kMaxParentPathLength <= kOffName);
static_assert(kOffName + kMaxSnapshotNameLength < kOffHeaderCrc);

// Journal record field offsets.
constexpr size_t kRecCrc = 0, kRecKind = 4, kRecFlushBlock = 6, kRecSequence = 8, kRecCluster = 16, kRecSlot = 20,
                 kRecPresent = 24, kRecZero = 28;
static_assert(kRecZero + 4 == kJournalRecordSize);

// The regions a decoded header names, checked before anything divides by its sizes or reads
// where they point.
absl::Status CheckSizesAndRegions(const LayerHeader& h) {
  if (auto s = ValidateLayerSizes(h.virtual_size, h.cluster_size, h.sub_block_size,
                                  h.journal_size);
      !s.ok()) {
    return absl::DataLossError(s.message());
  }
  if (h.journal_offset != h.cluster_size) {
    return absl::DataLossError(absl::StrCat("bad journal_offset ", h.journal_offset,
                                            " (the journal is at slot 1, ", h.cluster_size, ")"));
  }
  // Sequence numbers of the journal's epoch must not wrap, and a frozen layer's recorded end
  // lies within its epoch.
  const uint64_t capacity = JournalCapacity(h.journal_size);
  if (h.journal_start_seq == 0 || h.journal_start_seq > UINT64_MAX - 2 * capacity ||
      (h.journal_end_seq != 0 && (h.journal_end_seq < h.journal_start_seq ||
                                  h.journal_end_seq > h.journal_start_seq + capacity))) {
    return absl::DataLossError(absl::StrCat("bad journal sequence range: start ",
                                            h.journal_start_seq, ", end ", h.journal_end_seq));
  }
  const uint64_t clusters = (h.virtual_size + h.cluster_size - 1) / h.cluster_size;
  if (h.table_entries > clusters ||
      (h.table_entries != 0 && (h.table_offset == 0 || h.table_offset % h.cluster_size != 0))) {
    return absl::DataLossError(absl::StrCat("bad checkpoint table: ", h.table_entries,
                                            " entries @ ", h.table_offset));
  }
  return absl::OkStatus();
}

// The parent link as create writes it: a parent has a format, a non-empty path without NUL
// bytes (the file system would cut it there) and, when strata, a UUID; no parent, none of them.
absl::Status CheckParentLink(const LayerHeader& h) {
  if (h.parent_format == ParentFormat::kNone) {
    if (!h.parent_path.empty() || !IsNil(h.parent_uuid) || h.parent_size != 0) {
      return absl::DataLossError(
          "bad parent_path / parent_uuid / parent_size: set, but parent_format is none");
    }
    return absl::OkStatus();
  }
  if (h.parent_path.empty()) return absl::DataLossError("bad parent_path: empty");
  if (h.parent_path.find('\0') != std::string::npos) {
    return absl::DataLossError("bad parent_path: holds a NUL byte");
  }
  if (h.parent_format != ParentFormat::kNbd &&
      IsNil(h.parent_uuid) != (h.parent_format == ParentFormat::kRaw)) {
    return absl::DataLossError(absl::StrCat("bad parent_uuid: ",
                                            IsNil(h.parent_uuid) ? "nil" : "set",
                                            " for a ", Name(h.parent_format), " parent"));
  }
  return absl::OkStatus();
}

}  // namespace

absl::Status ValidateLayerSizes(uint64_t virtual_size, uint32_t cluster_size,
                                uint32_t sub_block_size, uint64_t journal_size) {
  if (!IsValidGeometry(cluster_size, sub_block_size)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "cluster_size ", cluster_size, " / sub_block_size ", sub_block_size,
        ": both must be powers of two, cluster 8 KiB..2 MiB, sub-block >= 512 B, at most ",
        kMaxSubBlocksPerCluster, " sub-blocks per cluster"));
  }
  if (virtual_size == 0 || virtual_size % 512 != 0 ||
      virtual_size / cluster_size >= kMaxClustersPerLayer) {
    return absl::InvalidArgumentError(absl::StrCat(
        "virtual_size ", virtual_size,
        ": must be a positive multiple of 512 of at most 2^32 clusters"));
  }
  if (journal_size < kJournalBlockSize || journal_size > kMaxJournalSize ||
      journal_size % kJournalBlockSize != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "journal_size ", journal_size, ": must be a multiple of 4 KiB, 4 KiB .. 256 MiB"));
  }
  return absl::OkStatus();
}

absl::string_view Name(LayerState state) {
  switch (state) {
    case LayerState::kActive: return "active";
    case LayerState::kFrozen: return "frozen";
    case LayerState::kMerging: return "merging";
  }
  return "unknown";
}

absl::string_view Name(ParentFormat format) {
  switch (format) {
    case ParentFormat::kNone: return "none";
    case ParentFormat::kRaw: return "raw";
    case ParentFormat::kStrata: return "strata";
    case ParentFormat::kNbd: return "nbd";
  }
  return "unknown";
}

absl::Status ParseParentFormat(absl::string_view text, ParentFormat* format) {
  if (text == "raw") {
    *format = ParentFormat::kRaw;
  } else if (text == "strata") {
    *format = ParentFormat::kStrata;
  } else if (text == "nbd") {
    *format = ParentFormat::kNbd;
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("unknown parent format '", text, "' (expected raw, strata or nbd)"));
  }
  return absl::OkStatus();
}

absl::Status CheckParentSize(const LayerHeader& child, uint64_t parent_size) {
  if (parent_size != child.parent_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "it is ", parent_size, " bytes but was ", child.parent_size,
        " when the layer was created on it"));
  }
  if (parent_size > child.virtual_size) {
    return absl::FailedPreconditionError(absl::StrCat(
        "it is ", parent_size, " bytes, larger than the layer's ", child.virtual_size,
        " (a layer is never smaller than its parent)"));
  }
  if (parent_size < child.virtual_size && parent_size % child.sub_block_size != 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "it is ", parent_size, " bytes, less than the layer's ", child.virtual_size,
        ", and does not end on a sub-block boundary (", child.sub_block_size, " bytes)"));
  }
  return absl::OkStatus();
}

std::string UuidToString(const Uuid& u) {
  return absl::StrFormat("%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x",
                         u[0], u[1], u[2], u[3], u[4], u[5], u[6], u[7], u[8], u[9], u[10], u[11],
                         u[12], u[13], u[14], u[15]);
}

// As UuidToString writes it (lower-case hex; the hyphens are skipped wherever they are).
absl::StatusOr<Uuid> ParseUuid(absl::string_view text) {
  std::string hex;
  for (char c : text) {
    if (c != '-') hex.push_back(c);
  }
  if (hex.size() != 32) return absl::DataLossError("bad uuid");
  Uuid u{};
  for (size_t i = 0; i < u.size(); ++i) {
    int v = 0;
    for (char c : {hex[2 * i], hex[2 * i + 1]}) {
      int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
      if (d < 0) return absl::DataLossError("bad uuid");
      v = v * 16 + d;
    }
    u[i] = static_cast<uint8_t>(v);
  }
  return u;
}

Uuid NewUuid() {
  Uuid u;
  size_t got = 0;
  while (got < u.size()) {
    ssize_t n = getrandom(u.data() + got, u.size() - got, 0);
    if (n > 0) got += static_cast<size_t>(n);
  }
  u[6] = (u[6] & 0x0f) | 0x40;  // version 4
  u[8] = (u[8] & 0x3f) | 0x80;  // RFC 4122 variant
  return u;
}

void LayerHeader::EncodeTo(std::string* dst) const {
  std::string block(kHeaderBlockSize, '\0');
  char* p = block.data();
  std::memcpy(p + kOffMagic, kLayerMagic, sizeof(kLayerMagic));
  EncodeFixed32(p + kOffVersion, kFormatVersion);
  EncodeFixed32(p + kOffHeaderSize, kHeaderBlockSize);
  EncodeFixed64(p + kOffSequence, sequence);
  EncodeFixed64(p + kOffVirtualSize, virtual_size);
  EncodeFixed32(p + kOffClusterSize, cluster_size);
  EncodeFixed32(p + kOffSubBlockSize, sub_block_size);
  std::memcpy(p + kOffUuid, uuid.data(), 16);
  std::memcpy(p + kOffParentUuid, parent_uuid.data(), 16);
  EncodeFixed32(p + kOffState, static_cast<uint32_t>(state));
  EncodeFixed32(p + kOffParentFormat, static_cast<uint32_t>(parent_format));
  EncodeFixed64(p + kOffParentSize, parent_size);
  EncodeFixed64(p + kOffCreated, static_cast<uint64_t>(created_ns));
  EncodeFixed64(p + kOffFrozen, static_cast<uint64_t>(frozen_ns));
  EncodeFixed64(p + kOffTableOffset, table_offset);
  EncodeFixed64(p + kOffTableEntries, table_entries);
  EncodeFixed32(p + kOffTableCrc, table_crc);
  EncodeFixed64(p + kOffJournalOffset, journal_offset);
  EncodeFixed64(p + kOffJournalSize, journal_size);
  EncodeFixed64(p + kOffJournalStartSeq, journal_start_seq);
  EncodeFixed64(p + kOffJournalEndSeq, journal_end_seq);
  EncodeFixed16(p + kOffParentPathLen, static_cast<uint16_t>(parent_path.size()));
  EncodeFixed16(p + kOffNameLen, static_cast<uint16_t>(snapshot_name.size()));
  std::memcpy(p + kOffParentPath, parent_path.data(), parent_path.size());
  std::memcpy(p + kOffName, snapshot_name.data(), snapshot_name.size());
  EncodeFixed32(p + kOffHeaderCrc, crc32c::Mask(crc32c::Value(p, kOffHeaderCrc)));
  *dst = std::move(block);
}

absl::Status LayerHeader::DecodeFrom(absl::string_view block) {
  if (block.size() != kHeaderBlockSize) {
    return absl::DataLossError(absl::StrCat("truncated header (", block.size(), " bytes)"));
  }
  const char* p = block.data();
  if (std::memcmp(p + kOffMagic, kLayerMagic, sizeof(kLayerMagic)) != 0) {
    return absl::DataLossError("bad magic: not a strata layer");
  }
  uint32_t stored = crc32c::Unmask(DecodeFixed32(p + kOffHeaderCrc));
  if (stored != crc32c::Value(p, kOffHeaderCrc)) {
    return absl::DataLossError("header checksum mismatch");
  }
  uint32_t version = DecodeFixed32(p + kOffVersion);
  uint32_t header_size = DecodeFixed32(p + kOffHeaderSize);
  if (version != kFormatVersion) {
    return absl::UnimplementedError(absl::StrCat("unsupported format version ", version));
  }
  sequence = DecodeFixed64(p + kOffSequence);
  virtual_size = DecodeFixed64(p + kOffVirtualSize);
  cluster_size = DecodeFixed32(p + kOffClusterSize);
  sub_block_size = DecodeFixed32(p + kOffSubBlockSize);
  std::memcpy(uuid.data(), p + kOffUuid, 16);
  std::memcpy(parent_uuid.data(), p + kOffParentUuid, 16);
  uint32_t raw_state = DecodeFixed32(p + kOffState);
  uint32_t raw_format = DecodeFixed32(p + kOffParentFormat);
  parent_size = DecodeFixed64(p + kOffParentSize);
  created_ns = static_cast<int64_t>(DecodeFixed64(p + kOffCreated));
  frozen_ns = static_cast<int64_t>(DecodeFixed64(p + kOffFrozen));
  table_offset = DecodeFixed64(p + kOffTableOffset);
  table_entries = DecodeFixed64(p + kOffTableEntries);
  table_crc = DecodeFixed32(p + kOffTableCrc);
  journal_offset = DecodeFixed64(p + kOffJournalOffset);
  journal_size = DecodeFixed64(p + kOffJournalSize);
  journal_start_seq = DecodeFixed64(p + kOffJournalStartSeq);
  journal_end_seq = DecodeFixed64(p + kOffJournalEndSeq);
  uint16_t path_len = DecodeFixed16(p + kOffParentPathLen);
  uint16_t name_len = DecodeFixed16(p + kOffNameLen);

  // A header with a valid CRC can still carry values this code cannot use (written by a
  // buggy or newer writer): reject them here so nothing below trusts them.
  if (header_size != kHeaderBlockSize) {
    return absl::DataLossError(absl::StrCat("bad header_size ", header_size, " (expected ",
                                            kHeaderBlockSize, ")"));
  }
  if (sequence == 0 || sequence > kMaxHeaderSequence) {
    return absl::DataLossError(
        absl::StrCat("bad sequence ", sequence, " (1 .. 2^63-1: strata counts from 1)"));
  }
  if (raw_state < static_cast<uint32_t>(LayerState::kActive) ||
      raw_state > static_cast<uint32_t>(LayerState::kMerging)) {
    return absl::DataLossError(absl::StrCat("bad state ", raw_state));
  }
  if (raw_format > static_cast<uint32_t>(ParentFormat::kNbd)) {
    return absl::DataLossError(absl::StrCat("bad parent format ", raw_format));
  }
  if (path_len > kMaxParentPathLength || name_len > kMaxSnapshotNameLength) {
    return absl::DataLossError(absl::StrCat("bad parent_path_len ", path_len,
                                            " or snapshot_name_len ", name_len, " (at most ",
                                            kMaxParentPathLength, " and ",
                                            kMaxSnapshotNameLength, ")"));
  }
  if (auto s = CheckSizesAndRegions(*this); !s.ok()) return s;
  state = static_cast<LayerState>(raw_state);
  parent_format = static_cast<ParentFormat>(raw_format);
  parent_path.assign(p + kOffParentPath, path_len);
  snapshot_name.assign(p + kOffName, name_len);
  if (snapshot_name.find('\0') != std::string::npos) {
    return absl::DataLossError("bad snapshot_name: holds a NUL byte");
  }
  return CheckParentLink(*this);
}

void JournalRecord::EncodeTo(char* dst) const {
  std::memset(dst, 0, kJournalRecordSize);
  EncodeFixed16(dst + kRecKind, static_cast<uint16_t>(kind));
  EncodeFixed16(dst + kRecFlushBlock, flush_block);
  EncodeFixed64(dst + kRecSequence, sequence);
  EncodeFixed32(dst + kRecCluster, cluster);
  EncodeFixed32(dst + kRecSlot, entry.slot);
  EncodeFixed32(dst + kRecPresent, entry.present);
  EncodeFixed32(dst + kRecZero, entry.zero);
  uint32_t crc = crc32c::Value(dst + 4, kJournalRecordSize - 4);
  EncodeFixed32(dst + kRecCrc, crc32c::Mask(crc));
}

absl::Status JournalRecord::DecodeFrom(const char* src) {
  uint32_t stored = crc32c::Unmask(DecodeFixed32(src + kRecCrc));
  if (stored != crc32c::Value(src + 4, kJournalRecordSize - 4)) {
    return absl::DataLossError("journal record checksum mismatch");
  }
  uint16_t raw_kind = DecodeFixed16(src + kRecKind);
  if (raw_kind != static_cast<uint16_t>(RecordKind::kPad) &&
      raw_kind != static_cast<uint16_t>(RecordKind::kCluster)) {
    return absl::DataLossError(absl::StrCat("bad journal record kind ", raw_kind));
  }
  kind = static_cast<RecordKind>(raw_kind);
  flush_block = DecodeFixed16(src + kRecFlushBlock);
  sequence = DecodeFixed64(src + kRecSequence);
  cluster = DecodeFixed32(src + kRecCluster);
  entry.slot = DecodeFixed32(src + kRecSlot);
  entry.present = DecodeFixed32(src + kRecPresent);
  entry.zero = DecodeFixed32(src + kRecZero);
  return absl::OkStatus();
}

uint64_t JournalRecord::SequenceOf(const char* src) { return DecodeFixed64(src + kRecSequence); }

void EncodeTableEntry(uint32_t cluster, const ClusterEntry& entry, char* dst) {
  EncodeFixed32(dst, cluster);
  EncodeFixed32(dst + 4, entry.slot);
  EncodeFixed32(dst + 8, entry.present);
  EncodeFixed32(dst + 12, entry.zero);
}

void DecodeTableEntry(const char* src, uint32_t* cluster, ClusterEntry* entry) {
  *cluster = DecodeFixed32(src);
  entry->slot = DecodeFixed32(src + 4);
  entry->present = DecodeFixed32(src + 8);
  entry->zero = DecodeFixed32(src + 12);
}

// --- Merge journal ---------------------------------------------------------------------------

namespace {

// The fields every merge journal has once; `dir` lines may repeat (or be absent).
constexpr absl::string_view kMergeJournalFields[] = {
    "phase", "child", "parent", "child_uuid", "parent_uuid", "child_was_active",
    "copied_entries"};


// Sets the field `key` of *r from its stored `value`.
absl::Status DecodeMergeField(absl::string_view key, absl::string_view value,
                              MergeJournalRecord* r) {
  const absl::Status bad = absl::DataLossError(absl::StrCat("bad ", key, " \"", value, "\""));
  if (key == "phase") {
    if (value != Name(MergePhase::kCopy) && value != Name(MergePhase::kRelink)) return bad;
    r->phase = value == Name(MergePhase::kCopy) ? MergePhase::kCopy : MergePhase::kRelink;
  } else if (key == "child" || key == "parent" || key == "dir") {
    if (value.empty()) return bad;
    if (key == "dir") {
      r->dirs.emplace_back(value);
    } else {
      (key == "child" ? r->child : r->parent) = std::string(value);
    }
  } else if (key == "child_uuid" || key == "parent_uuid") {
    absl::StatusOr<Uuid> u = ParseUuid(value);
    if (!u.ok()) return bad;
    (key == "child_uuid" ? r->child_uuid : r->parent_uuid) = *u;
  } else if (key == "child_was_active") {
    if (value != "0" && value != "1") return bad;
    r->child_was_active = value == "1";
  } else if (key == "copied_entries") {
    if (!absl::SimpleAtoi(value, &r->copied_entries)) return bad;
  } else if (key == "target") {
    if (value != kMergeJournalRawTarget) return bad;
    r->into_base = true;
  } else if (key == "successor_uuid") {
    absl::StatusOr<Uuid> u = ParseUuid(value);
    if (!u.ok()) return bad;
    r->successor_uuid = *u;
  } else {
    return absl::DataLossError(absl::StrCat("unknown field \"", key, "\""));
  }
  return absl::OkStatus();
}

}  // namespace

namespace {

// The text journals' common frame: CRC line last, magic line first, one key=value a line.
// Calls field(key, value) for each line; keys other than `repeatable` may appear once, and
// every one of `required` must.
absl::Status DecodeTextJournal(
    absl::string_view text, absl::string_view magic_wanted,
    absl::Span<const absl::string_view> required, absl::string_view repeatable,
    const std::function<absl::Status(absl::string_view, absl::string_view)>& field,
    const std::function<absl::Status(absl::string_view)>& other_magic) {
  // The CRC first: nothing of a torn or damaged journal is trusted, not even its magic.
  const size_t crc_at = text.rfind(kMergeJournalCrcKey);
  uint32_t crc = 0;
  if (crc_at == absl::string_view::npos || (crc_at > 0 && text[crc_at - 1] != '\n') ||
      !absl::SimpleAtoi(absl::StripAsciiWhitespace(
                            text.substr(crc_at + kMergeJournalCrcKey.size())), &crc) ||
      crc != crc32c::Value(text.data(), crc_at)) {
    return absl::DataLossError("checksum mismatch (torn, truncated or damaged)");
  }
  const absl::string_view body = text.substr(0, crc_at);
  const size_t eol = body.find('\n');
  const absl::string_view magic = body.substr(0, eol);
  if (magic != magic_wanted) return other_magic(magic);
  absl::flat_hash_set<std::string> seen;
  const absl::string_view fields = eol == absl::string_view::npos ? "" : body.substr(eol + 1);
  for (absl::string_view line : absl::StrSplit(fields, '\n', absl::SkipEmpty())) {
    std::pair<absl::string_view, absl::string_view> kv =
        absl::StrSplit(line, absl::MaxSplits('=', 1));
    if (kv.first != repeatable && !seen.insert(std::string(kv.first)).second) {
      return absl::DataLossError(absl::StrCat("field \"", kv.first, "\" repeated"));
    }
    if (auto s = field(kv.first, kv.second); !s.ok()) return s;
  }
  for (absl::string_view key : required) {
    if (!seen.contains(key)) {
      return absl::DataLossError(absl::StrCat("field \"", key, "\" missing"));
    }
  }
  return absl::OkStatus();
}

std::string WithCrcLine(const std::string& body) {
  return absl::StrCat(body, kMergeJournalCrcKey, crc32c::Value(body.data(), body.size()), "\n");
}

}  // namespace

absl::string_view Name(MergePhase phase) {
  switch (phase) {
    case MergePhase::kCopy: return "copy";
    case MergePhase::kRelink: return "relink";
  }
  return "unknown";
}

void MergeJournalRecord::EncodeTo(std::string* dst) const {
  std::string body = absl::StrCat(
      kMergeJournalMagic, "\nphase=", Name(phase), "\nchild=", child, "\nparent=", parent,
      "\nchild_uuid=", UuidToString(child_uuid), "\nparent_uuid=", UuidToString(parent_uuid),
      "\nchild_was_active=", child_was_active ? 1 : 0, "\ncopied_entries=", copied_entries, "\n");
  if (into_base) {
    absl::StrAppend(&body, "target=", kMergeJournalRawTarget, "\nsuccessor_uuid=",
                    UuidToString(successor_uuid), "\n");
  }
  for (const std::string& dir : dirs) absl::StrAppend(&body, "dir=", dir, "\n");
  *dst = WithCrcLine(body);
}


absl::Status MergeJournalRecord::DecodeFrom(absl::string_view text) {
  *this = MergeJournalRecord();
  absl::Status s = DecodeTextJournal(
      text, kMergeJournalMagic, kMergeJournalFields, "dir",
      [this](absl::string_view key, absl::string_view value) {
        return DecodeMergeField(key, value, this);
      },
      [](absl::string_view magic) {
        return absl::FailedPreconditionError(absl::StrCat(
            "written by an older strata (\"", magic, "\": its paths are relative to the "
            "directory that strata ran in): finish the merge with that version, from that "
            "directory"));
      });
  if (s.ok() && !into_base && !IsNil(successor_uuid)) {
    return absl::DataLossError("field \"successor_uuid\" without \"target=raw\"");
  }
  return s;
}

// --- Stream journal --------------------------------------------------------------------------

void StreamJournalRecord::EncodeTo(std::string* dst) const {
  *dst = WithCrcLine(absl::StrCat(kStreamJournalMagic, "\nlayer=", layer, "\nuuid=",
                                  UuidToString(uuid), "\nchild_uuid=", UuidToString(child_uuid), "\nname=", name, "\nrate_limit=",
                                  rate_limit, "\n"));
}

absl::Status StreamJournalRecord::DecodeFrom(absl::string_view text) {
  *this = StreamJournalRecord();
  constexpr absl::string_view kFields[] = {"layer", "uuid", "child_uuid", "name", "rate_limit"};
  return DecodeTextJournal(
      text, kStreamJournalMagic, kFields, "",
      [this](absl::string_view key, absl::string_view value) -> absl::Status {
        const absl::Status bad =
            absl::DataLossError(absl::StrCat("bad ", key, " \"", value, "\""));
        if (key == "layer") {
          if (value.empty() || value.find('/') != absl::string_view::npos) return bad;
          layer = std::string(value);
        } else if (key == "uuid" || key == "child_uuid") {
          absl::StatusOr<Uuid> u = ParseUuid(value);
          if (!u.ok()) return bad;
          (key == "uuid" ? uuid : child_uuid) = *u;
        } else if (key == "name") {
          name = std::string(value);
        } else if (key == "rate_limit") {
          if (!absl::SimpleAtoi(value, &rate_limit)) return bad;
        } else {
          return absl::DataLossError(absl::StrCat("unknown field \"", key, "\""));
        }
        return absl::OkStatus();
      },
      [](absl::string_view magic) {
        return absl::FailedPreconditionError(
            absl::StrCat("not a stream journal of this strata (\"", magic, "\")"));
      });
}

}  // namespace strata
