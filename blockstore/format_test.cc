#include "blockstore/format.h"

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
  EXPECT_NE(s.message().find("header size"), absl::string_view::npos) << s;
}

TEST(LayerHeaderTest, VirtualSizeNotAMultipleOf512IsRejected) {
  LayerHeader h = SampleHeader();
  h.virtual_size = (1 << 30) + 100;
  std::string block;
  h.EncodeTo(&block);
  LayerHeader d;
  absl::Status s = d.DecodeFrom(block);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(s.message().find("virtual size"), absl::string_view::npos) << s;
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

}  // namespace
}  // namespace strata
