#include "blockstore/format.h"

#include <functional>
#include <tuple>

#include "absl/strings/str_cat.h"
#include "blockstore/coding.h"
#include "blockstore/crc32c.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

LayerHeader SampleHeader() {
  LayerHeader h;
  h.sequence = 7;
  h.virtual_size = 1 << 30;
  h.uuid = NewUuid();
  h.parent_uuid = NewUuid();
  h.state = LayerState::kFrozen;
  h.parent_format = ParentFormat::kStrata;
  h.parent_size = 1 << 30;
  h.created_ns = 1700000000123456789;
  h.frozen_ns = 1700000001000000000;
  h.table_offset = 64 << 20;
  h.table_entries = 12;
  h.table_crc = 0xdeadbeef;
  h.journal_offset = 64 << 10;
  h.journal_size = 8 << 20;
  h.journal_start_seq = 99;
  h.parent_path = "base@before-upgrade.strata";
  h.snapshot_name = "after-upgrade";
  return h;
}

TEST(Crc32cTest, KnownValue) {
  // The CRC32C check value from RFC 3720 / every CRC catalogue.
  EXPECT_EQ(crc32c::Value("123456789", 9), 0xe3069283u);
  EXPECT_EQ(crc32c::Extend(crc32c::Value("1234", 4), "56789", 5), 0xe3069283u);
  EXPECT_EQ(crc32c::Unmask(crc32c::Mask(0x12345678u)), 0x12345678u);
}

TEST(CodingTest, LittleEndian) {
  char buf[8];
  EncodeFixed32(buf, 0x01020304);
  EXPECT_EQ(buf[0], 4);
  EXPECT_EQ(DecodeFixed32(buf), 0x01020304u);
  EncodeFixed64(buf, 0x0102030405060708ull);
  EXPECT_EQ(buf[0], 8);
  EXPECT_EQ(DecodeFixed64(buf), 0x0102030405060708ull);
}

TEST(LayerHeaderTest, RoundTrip) {
  LayerHeader h = SampleHeader();
  std::string block;
  h.EncodeTo(&block);
  ASSERT_EQ(block.size(), kHeaderBlockSize);
  LayerHeader d;
  ASSERT_TRUE(d.DecodeFrom(block).ok());
  EXPECT_EQ(d.sequence, h.sequence);
  EXPECT_EQ(d.uuid, h.uuid);
  EXPECT_EQ(d.parent_uuid, h.parent_uuid);
  EXPECT_EQ(d.state, LayerState::kFrozen);
  EXPECT_EQ(d.parent_format, ParentFormat::kStrata);
  EXPECT_EQ(d.created_ns, h.created_ns);
  EXPECT_EQ(d.table_offset, h.table_offset);
  EXPECT_EQ(d.table_crc, h.table_crc);
  EXPECT_EQ(d.journal_start_seq, h.journal_start_seq);
  EXPECT_EQ(d.parent_path, h.parent_path);
  EXPECT_EQ(d.snapshot_name, h.snapshot_name);
}

TEST(LayerHeaderTest, EveryFlippedByteIsDetected) {
  std::string block;
  SampleHeader().EncodeTo(&block);
  // All 4096: a decode is a CRC over 4 KiB, so the whole sweep takes milliseconds.
  for (size_t i = 0; i < block.size(); ++i) {
    std::string bad = block;
    bad[i] ^= 0x01;
    LayerHeader d;
    absl::Status s = d.DecodeFrom(bad);
    EXPECT_FALSE(s.ok()) << "byte " << i;
  }
}

TEST(LayerHeaderTest, BadMagicSaysNotALayer) {
  std::string block(kHeaderBlockSize, 'x');
  LayerHeader d;
  absl::Status s = d.DecodeFrom(block);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("not a strata layer"), absl::string_view::npos);
}

TEST(LayerHeaderTest, BadGeometryWithValidCrcIsRejected) {
  LayerHeader h = SampleHeader();
  h.sub_block_size = 512;  // 128 sub-blocks per 64 KiB cluster: more than a mask holds
  std::string block;
  h.EncodeTo(&block);
  LayerHeader d;
  EXPECT_EQ(d.DecodeFrom(block).code(), absl::StatusCode::kDataLoss);
}

// Re-encodes the CRC after a test changed bytes of an encoded header.
void Reseal(std::string* block) {
  EncodeFixed32(block->data() + kHeaderBlockSize - 4,
                crc32c::Mask(crc32c::Value(block->data(), kHeaderBlockSize - 4)));
}

TEST(LayerHeaderTest, HeaderSizeOtherThan4096IsRejected) {
  std::string block;
  SampleHeader().EncodeTo(&block);
  EncodeFixed32(block.data() + 12, 8192);  // header_size
  Reseal(&block);
  LayerHeader d;
  absl::Status s = d.DecodeFrom(block);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("header_size"), absl::string_view::npos) << s;
}

TEST(LayerHeaderTest, VirtualSizeNotAMultipleOf512IsRejected) {
  LayerHeader h = SampleHeader();
  h.virtual_size = (1 << 30) + 100;
  std::string block;
  h.EncodeTo(&block);
  LayerHeader d;
  absl::Status s = d.DecodeFrom(block);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("virtual_size"), absl::string_view::npos) << s;
}

// Issue 13: fields a crafted header (valid CRC) carried through decode, each refused with the
// field named. Every case is a value `strata create` never writes.
TEST(LayerHeaderTest, AbsurdFieldsAreRefusedNamingTheField) {
  struct Case {
    const char* field;
    std::function<void(LayerHeader*)> edit;
    std::pair<size_t, uint32_t> raw = {0, 0};  // (offset, value) patched into the block
  };
  const Case cases[] = {
      {"header_size", [](LayerHeader*) {}, {12, 0}},
      {"header_size", [](LayerHeader*) {}, {12, 256}},
      {"sequence", [](LayerHeader* h) { h->sequence = ~uint64_t{0}; }},
      {"sequence", [](LayerHeader* h) { h->sequence = uint64_t{1} << 63; }},
      {"sequence", [](LayerHeader* h) { h->sequence = 0; }},
      {"journal_size", [](LayerHeader* h) { h->journal_size = 0; }},
      {"journal_size", [](LayerHeader* h) { h->journal_size = uint64_t{1} << 60; }},
      {"journal_offset", [](LayerHeader* h) { h->journal_offset = 0; }},
      {"cluster_size", [](LayerHeader* h) { h->cluster_size = 0; }},
      {"virtual_size", [](LayerHeader* h) { h->virtual_size = 0; }},
      {"parent_path", [](LayerHeader* h) { h->parent_path.clear(); }},
      {"parent_path", [](LayerHeader* h) { h->parent_path = std::string("base\0/etc/passwd", 16); }},
      {"parent_uuid", [](LayerHeader* h) { h->parent_uuid = Uuid{}; }},
      {"parent_uuid",
       [](LayerHeader* h) {
         h->parent_format = ParentFormat::kRaw;  // a raw parent has no UUID
       }},
      {"parent_format is none",
       [](LayerHeader* h) { h->parent_format = ParentFormat::kNone; }},
      {"snapshot_name", [](LayerHeader* h) { h->snapshot_name = std::string("a\0b", 3); }},
  };
  for (const Case& c : cases) {
    LayerHeader h = SampleHeader();
    c.edit(&h);
    std::string block;
    h.EncodeTo(&block);
    if (c.raw.first != 0) {
      EncodeFixed32(block.data() + c.raw.first, c.raw.second);
      Reseal(&block);
    }
    LayerHeader d;
    absl::Status s = d.DecodeFrom(block);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.field << ": " << s;
    EXPECT_NE(s.message().find(c.field), absl::string_view::npos) << c.field << ": " << s;
  }
}

TEST(LayerHeaderTest, ExtremesCreateWritesStillDecode) {
  LayerHeader h = SampleHeader();
  h.sequence = kMaxHeaderSequence;
  h.journal_size = kMaxJournalSize;
  h.parent_path = std::string(kMaxParentPathLength, 'p');
  std::string block;
  h.EncodeTo(&block);
  LayerHeader d;
  EXPECT_TRUE(d.DecodeFrom(block).ok());
  h = SampleHeader();
  h.parent_format = ParentFormat::kNone;
  h.parent_path.clear();
  h.parent_uuid = Uuid{};
  h.parent_size = 0;
  h.EncodeTo(&block);
  EXPECT_TRUE(d.DecodeFrom(block).ok());
}

// One rule for create and open: what ValidateLayerSizes refuses, decode refuses too.
TEST(LayerSizesTest, CreateAndDecodeShareTheRule) {
  EXPECT_TRUE(ValidateLayerSizes(1 << 30, kDefaultClusterSize, kDefaultSubBlockSize,
                                 kDefaultJournalSize).ok());
  for (auto [size, cluster, journal] :
       {std::tuple<uint64_t, uint32_t, uint64_t>{1000, 65536, 8 << 20},
        {1 << 30, 4096, 8 << 20},
        {1 << 30, 65536, 4097},
        {uint64_t{1} << 50, 65536, 8 << 20}}) {
    absl::Status s = ValidateLayerSizes(size, cluster, 4096, journal);
    EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << size;
    LayerHeader h = SampleHeader();
    h.virtual_size = size;
    h.cluster_size = cluster;
    h.journal_offset = cluster;
    h.journal_size = journal;
    h.table_entries = 0;
    std::string block;
    h.EncodeTo(&block);
    LayerHeader d;
    absl::Status decoded = d.DecodeFrom(block);
    EXPECT_EQ(decoded.code(), absl::StatusCode::kDataLoss) << size;
    EXPECT_EQ(decoded.message(), s.message());
  }
}

TEST(GeometryTest, LimitsOfFormatH) {
  EXPECT_TRUE(IsValidGeometry(kDefaultClusterSize, kDefaultSubBlockSize));
  EXPECT_TRUE(IsValidGeometry(kMinClusterSize, kMinSubBlockSize));
  EXPECT_TRUE(IsValidGeometry(kMaxClusterSize, kMaxClusterSize / 32));
  EXPECT_FALSE(IsValidGeometry(kMaxClusterSize, kMaxClusterSize / 64));  // 64 sub-blocks
  EXPECT_FALSE(IsValidGeometry(3 << 13, 4096));                          // not a power of two
  EXPECT_FALSE(IsValidGeometry(kMinClusterSize / 2, 512));
  EXPECT_FALSE(IsValidGeometry(65536, 256));
  EXPECT_FALSE(IsValidGeometry(65536, 131072));
}

TEST(JournalRecordTest, RoundTripAndCorruption) {
  JournalRecord r;
  r.sequence = 42;
  r.cluster = 1842;
  r.entry = {.slot = 77, .present = 0x00ff, .zero = 0x0f00};
  char buf[kJournalRecordSize];
  r.EncodeTo(buf);
  JournalRecord d;
  ASSERT_TRUE(d.DecodeFrom(buf).ok());
  EXPECT_EQ(d.sequence, 42u);
  EXPECT_EQ(d.cluster, 1842u);
  EXPECT_EQ(d.entry, r.entry);
  buf[20] ^= 1;
  EXPECT_EQ(d.DecodeFrom(buf).code(), absl::StatusCode::kDataLoss);
}

TEST(JournalRecordTest, ZeroFilledRegionIsNotARecord) {
  char buf[kJournalRecordSize] = {};
  JournalRecord d;
  EXPECT_FALSE(d.DecodeFrom(buf).ok());
}

TEST(UuidTest, RandomAndFormatted) {
  Uuid a = NewUuid(), b = NewUuid();
  EXPECT_NE(a, b);
  EXPECT_EQ(UuidToString(a).size(), 36u);
  EXPECT_FALSE(IsNil(a));
  EXPECT_TRUE(IsNil(Uuid{}));
}

// --- Merge journal ---

MergeJournalRecord SampleMergeJournal() {
  MergeJournalRecord r;
  r.phase = MergePhase::kCopy;
  r.child = "disk.strata";
  r.parent = "disk@s1.strata";
  r.child_uuid = NewUuid();
  r.parent_uuid = NewUuid();
  r.child_was_active = true;
  r.copied_entries = 1842;
  r.dirs = {".", "/srv/branches"};
  return r;
}

// `body` with the `crc=` line a writer would add: an intact journal of any content.
std::string WithCrc(const std::string& body) {
  return absl::StrCat(body, "crc=", crc32c::Value(body.data(), body.size()), "\n");
}

TEST(MergeJournalTest, RoundTrip) {
  const MergeJournalRecord r = SampleMergeJournal();
  std::string text;
  r.EncodeTo(&text);
  MergeJournalRecord d;
  ASSERT_TRUE(d.DecodeFrom(text).ok()) << d.DecodeFrom(text);
  EXPECT_TRUE(d == r) << "decoded: " << d.child << " " << d.parent << " " << d.copied_entries;
}

// The example of FORMAT.md §7, byte for byte.
TEST(MergeJournalTest, LayoutIsTheDocumentedExample) {
  MergeJournalRecord r = SampleMergeJournal();
  r.child_uuid = Uuid{0x3f, 0x2a, 0x9c, 0x1e, 0x5b, 0x7d, 0x4e, 0x21,
                      0x9a, 0x0c, 0x6d, 0x8e, 0x1f, 0x2b, 0x3c, 0x4d};
  r.parent_uuid = Uuid{0x8c, 0x1d, 0x2e, 0x3f, 0x4a, 0x5b, 0x4c, 0x6d,
                       0x8e, 0x7f, 0x90, 0x1a, 0x2b, 0x3c, 0x4d, 0x5e};
  std::string text;
  r.EncodeTo(&text);
  EXPECT_EQ(text,
            "strata-merge 2\n"
            "phase=copy\n"
            "child=disk.strata\n"
            "parent=disk@s1.strata\n"
            "child_uuid=3f2a9c1e-5b7d-4e21-9a0c-6d8e1f2b3c4d\n"
            "parent_uuid=8c1d2e3f-4a5b-4c6d-8e7f-901a2b3c4d5e\n"
            "child_was_active=1\n"
            "copied_entries=1842\n"
            "dir=.\n"
            "dir=/srv/branches\n"
            "crc=560844225\n");
  r.phase = MergePhase::kRelink;
  r.EncodeTo(&text);
  EXPECT_NE(text.find("\nphase=relink\n"), std::string::npos);
}

// A commit into a raw base (issue 12) adds two lines; a journal without them (every one
// version 2 wrote before) still reads as a merge into a strata parent.
TEST(MergeJournalTest, IntoBaseRoundTripsAndOlderJournalsStillRead) {
  MergeJournalRecord r = SampleMergeJournal();
  r.child = "disk.strata";
  r.parent = "base.raw";
  r.parent_uuid = Uuid{};
  r.into_base = true;
  r.successor_uuid = NewUuid();
  std::string text;
  r.EncodeTo(&text);
  EXPECT_NE(text.find("\ntarget=raw\nsuccessor_uuid=" + UuidToString(r.successor_uuid) + "\n"),
            std::string::npos);
  MergeJournalRecord d;
  ASSERT_TRUE(d.DecodeFrom(text).ok()) << d.DecodeFrom(text);
  EXPECT_TRUE(d == r);
  SampleMergeJournal().EncodeTo(&text);
  ASSERT_TRUE(d.DecodeFrom(text).ok());
  EXPECT_FALSE(d.into_base);
  EXPECT_TRUE(IsNil(d.successor_uuid));
  const std::string body = text.substr(0, text.rfind("crc="));
  EXPECT_EQ(d.DecodeFrom(WithCrc(body + "successor_uuid=" + UuidToString(NewUuid()) + "\n")).code(),
            absl::StatusCode::kDataLoss);
  EXPECT_EQ(d.DecodeFrom(WithCrc(body + "target=strata\n")).code(), absl::StatusCode::kDataLoss);
}

TEST(MergeJournalTest, EveryTruncationIsRejected) {
  std::string text;
  SampleMergeJournal().EncodeTo(&text);
  // Only the final newline may go: the CRC line is still whole without it.
  for (size_t n = 0; n + 1 < text.size(); ++n) {
    MergeJournalRecord d;
    EXPECT_EQ(d.DecodeFrom(text.substr(0, n)).code(), absl::StatusCode::kDataLoss) << n;
  }
}

TEST(MergeJournalTest, EveryDamagedByteIsRejected) {
  std::string text;
  SampleMergeJournal().EncodeTo(&text);
  for (size_t i = 0; i < text.size(); ++i) {
    std::string bad = text;
    bad[i] ^= 0x20;  // keeps no digit a digit, no newline a newline
    MergeJournalRecord d;
    EXPECT_EQ(d.DecodeFrom(bad).code(), absl::StatusCode::kDataLoss) << "byte " << i;
  }
}

TEST(MergeJournalTest, IntactJournalWithBadFieldsIsRejected) {
  const std::string head = "strata-merge 2\nphase=copy\nchild=c.strata\nparent=p.strata\n";
  const std::string uuids =
      "child_uuid=11111111-2222-4333-8444-555555555555\n"
      "parent_uuid=66666666-7777-4888-9999-aaaaaaaaaaaa\n";
  const std::string tail = "child_was_active=1\ncopied_entries=3\n";
  MergeJournalRecord d;
  ASSERT_TRUE(d.DecodeFrom(WithCrc(head + uuids + tail)).ok());
  const std::string bad_bodies[] = {
      head + uuids,                                        // fields missing
      head + uuids + tail + "copied_entries=4\n",          // a field twice
      head + uuids + tail + "colour=blue\n",               // an unknown field
      "strata-merge 2\nphase=merge\nchild=c.strata\nparent=p.strata\n" + uuids + tail,
      head + "child_uuid=11111111\nparent_uuid=0\n" + tail,
      head + uuids + "child_was_active=yes\ncopied_entries=3\n",
      head + uuids + "child_was_active=1\ncopied_entries=-3\n",
      "strata-merge 2\nphase=copy\nchild=\nparent=p.strata\n" + uuids + tail,
      head + uuids + tail + "dir=\n",
  };
  for (const std::string& body : bad_bodies) {
    EXPECT_EQ(d.DecodeFrom(WithCrc(body)).code(), absl::StatusCode::kDataLoss) << body;
  }
}

TEST(MergeJournalTest, AnotherVersionIsNamedNotGuessed) {
  MergeJournalRecord d;
  absl::Status s = d.DecodeFrom(WithCrc("strata-merge 1\nphase=copy\nchild=../vm/c.strata\n"));
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(s.message().find("\"strata-merge 1\""), absl::string_view::npos) << s;
  EXPECT_EQ(d.DecodeFrom("").code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(d.DecodeFrom(std::string(4096, '\0')).code(), absl::StatusCode::kDataLoss);
}

}  // namespace
}  // namespace strata
