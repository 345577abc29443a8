#include "blockstore/layer.h"

#include <fcntl.h>
#include <unistd.h>

#include <functional>

#include "blockstore/coding.h"
#include "blockstore/crc32c.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::TempDir;

class LayerTest : public ::testing::Test {
 protected:
  std::unique_ptr<Layer> Create(uint64_t journal_size = kDefaultJournalSize) {
    LayerCreateParams p;
    p.virtual_size = 256 << 20;
    p.journal_size = journal_size;
    auto layer = Layer::Create(Env::Default(), path_, p);
    EXPECT_TRUE(layer.ok()) << layer.status();
    return layer.ok() ? std::move(*layer) : nullptr;
  }
  absl::StatusOr<std::unique_ptr<Layer>> Open(Layer::Mode mode = Layer::Mode::kReadOnly) {
    return Layer::Open(Env::Default(), path_, mode);
  }
  void Put(Layer* layer, uint64_t cluster, uint32_t present) {
    auto slot = layer->AllocateSlot();
    ASSERT_TRUE(slot.ok()) << slot.status();
    layer->SetEntry(cluster, {.slot = *slot, .present = present, .zero = 0});
  }

  // Cluster 1 flushed, then cluster 2 flushed: one journal block each. Returns where the
  // journal starts; the layer is closed.
  uint64_t TwoFlushesOfOneRecord() {
    auto layer = Create();
    Put(layer.get(), 1, 1);
    EXPECT_TRUE(layer->Flush().ok());
    Put(layer.get(), 2, 1);
    EXPECT_TRUE(layer->Flush().ok());
    return layer->header().journal_offset;
  }

  TempDir dir_;
  std::string path_ = dir_.File("l.strata");
};

TEST_F(LayerTest, CreateThenOpen) {
  auto created = Create();
  Uuid uuid = created->header().uuid;
  created.reset();
  auto layer = Open();
  ASSERT_TRUE(layer.ok()) << layer.status();
  EXPECT_EQ((*layer)->header().uuid, uuid);
  EXPECT_EQ((*layer)->header().state, LayerState::kActive);
  EXPECT_EQ((*layer)->index().size(), 0u);
}

TEST_F(LayerTest, CreateRefusesExistingFile) {
  Create();
  LayerCreateParams p;
  p.virtual_size = 1 << 20;
  EXPECT_FALSE(Layer::Create(Env::Default(), path_, p).ok());
}

TEST_F(LayerTest, FlushedEntriesSurviveReopenThroughJournal) {
  auto layer = Create();
  Put(layer.get(), 3, 0x1);
  Put(layer.get(), 1000, 0xffff);
  ASSERT_TRUE(layer->Flush().ok());
  Put(layer.get(), 5, 0x2);  // not flushed: lost on reopen
  layer.reset();
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->Get(3).present, 0x1u);
  EXPECT_EQ((*reopened)->Get(1000).present, 0xffffu);
  EXPECT_TRUE((*reopened)->Get(5).empty());
  EXPECT_GT((*reopened)->journal_tail(), 0u);
}

TEST_F(LayerTest, FullJournalCheckpoints) {
  // One 4 KiB journal block: the second flush cannot append and writes a table instead.
  auto layer = Create(kJournalBlockSize);
  for (uint64_t c = 0; c < 10; ++c) Put(layer.get(), c, 1);
  ASSERT_TRUE(layer->Flush().ok());
  for (uint64_t c = 10; c < 300; ++c) Put(layer.get(), c, 1);
  ASSERT_TRUE(layer->Flush().ok());
  EXPECT_EQ(layer->header().table_entries, 300u);
  layer.reset();
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->index().size(), 300u);
  EXPECT_EQ((*reopened)->journal_tail(), 0u);
}

TEST_F(LayerTest, TornJournalRecordEndsReplay) {
  const uint64_t journal = TwoFlushesOfOneRecord();
  // Corrupt the second flush's block: the first flush's record must still be there.
  testing::XorByte(path_, journal + kJournalBlockSize + 10);
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->Get(1).present, 1u);
  EXPECT_TRUE((*reopened)->Get(2).empty());
}

TEST_F(LayerTest, WritableOpenAfterReplayCheckpoints) {
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Flush().ok());
  layer.reset();
  auto reopened = Open(Layer::Mode::kWritable);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->journal_tail(), 0u);
  EXPECT_EQ((*reopened)->header().table_entries, 1u);
}

TEST_F(LayerTest, DamagedHeaderCopyFallsBackToTheOther) {
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Freeze("snap", 1).ok());  // two header updates: copies differ
  layer.reset();
  for (uint64_t copy : {0, 1}) {
    testing::XorByte(path_, kHeaderCopyOffset[copy] + 100);
    auto reopened = Open();
    ASSERT_TRUE(reopened.ok()) << "copy " << copy << ": " << reopened.status();
    EXPECT_EQ((*reopened)->Get(1).present, 1u);
    testing::XorByte(path_, kHeaderCopyOffset[copy] + 100);  // restore
  }
  testing::XorByte(path_, kHeaderCopyOffset[0] + 100);
  testing::XorByte(path_, kHeaderCopyOffset[1] + 100);
  auto broken = Open();
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(broken.status().message().find(path_), absl::string_view::npos);
}

TEST_F(LayerTest, CorruptTableIsDataLossNamingTheFile) {
  auto created = Create();
  Put(created.get(), 1, 1);
  ASSERT_TRUE(created->Flush().ok());
  created.reset();
  auto layer = std::move(*Open(Layer::Mode::kWritable));  // checkpoints the journal
  ASSERT_GT(layer->header().table_entries, 0u);
  ASSERT_TRUE(layer->Freeze("snap", 1).ok());
  uint64_t table = layer->header().table_offset;
  layer.reset();
  testing::XorByte(path_, table + 5);
  auto broken = Open();
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(broken.status().message().find("checkpoint table"), absl::string_view::npos);
}

TEST_F(LayerTest, DamagedJournalRecordOfAFrozenLayerIsDataLoss) {
  // A frozen layer's journal is complete: a bad record before its recorded end is damage,
  // not a torn tail, and must not silently drop the records after it.
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Flush().ok());
  Put(layer.get(), 2, 1);
  ASSERT_TRUE(layer->Freeze("snap", 1).ok());
  uint64_t journal = layer->header().journal_offset;
  layer.reset();
  ASSERT_TRUE(Open().ok());
  testing::XorByte(path_, journal + 8);  // first record's sequence
  auto broken = Open();
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(broken.status().message().find("journal record"), absl::string_view::npos);
}

// Overwrites `n` bytes at `offset` with zeros, as a write that never reached the disk.
void ZeroBytes(const std::string& path, uint64_t offset, uint64_t n) {
  int fd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path;
  std::string zeros(n, '\0');
  ASSERT_EQ(pwrite(fd, zeros.data(), n, static_cast<off_t>(offset)), static_cast<ssize_t>(n));
  close(fd);
}

TEST_F(LayerTest, TornMultiBlockFlushIsNeverReplayedAfterALaterRun) {
  // 200 dirty clusters: one flush of two journal blocks. Power fails during its fdatasync with
  // block 1 on disk but not block 0; a second run then writes cluster 150 and flushes
  // (acknowledged). Block 1's stale records must never be replayed after that run's append,
  // whose first block reuses block 0's position.
  auto layer = Create();
  for (uint64_t c = 0; c < 200; ++c) Put(layer.get(), c, 0x1);
  ASSERT_TRUE(layer->Flush().ok());
  const uint64_t journal = layer->header().journal_offset;
  layer.reset();
  ZeroBytes(path_, journal, kJournalBlockSize);
  {
    auto second = Open(Layer::Mode::kWritable);
    ASSERT_TRUE(second.ok()) << second.status();
    EXPECT_TRUE((*second)->Get(199).empty());  // the torn flush is not replayed
    Put(second->get(), 150, 0x3);
    ASSERT_TRUE((*second)->Flush().ok());
  }
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->Get(150).present, 0x3u);
  for (uint64_t c : {0, 149, 151, 199}) EXPECT_TRUE((*reopened)->Get(c).empty()) << c;
  EXPECT_EQ((*reopened)->referenced_slots(), 1u);
}

TEST_F(LayerTest, EveryWritableOpenStartsANewJournalEpoch) {
  auto layer = Create();
  const uint64_t first = layer->header().journal_start_seq;
  layer.reset();
  ASSERT_TRUE(Open(Layer::Mode::kWritable).ok());  // empty journal: a header update
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->header().journal_start_seq,
            first + JournalCapacity(kDefaultJournalSize));
}

TEST_F(LayerTest, DamagedRecordOfACompletedFlushIsDataLoss) {
  // A bad record followed by an intact later flush cannot be a torn tail: a flush is written
  // only after the one before it was synced.
  const uint64_t journal = TwoFlushesOfOneRecord();
  testing::XorByte(path_, journal + 20);  // the first flush's only record
  auto broken = Open();
  ASSERT_FALSE(broken.ok());
  EXPECT_EQ(broken.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(broken.status().message().find("a completed flush was damaged"),
            absl::string_view::npos) << broken.status();
  EXPECT_NE(broken.status().message().find(path_), absl::string_view::npos);
}

TEST_F(LayerTest, TornLastFlushWithALaterBlockIntactStillOpens) {
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Flush().ok());                          // block 0
  for (uint64_t c = 10; c < 210; ++c) Put(layer.get(), c, 1);
  ASSERT_TRUE(layer->Flush().ok());                          // blocks 1 and 2
  const uint64_t journal = layer->header().journal_offset;
  layer.reset();
  ZeroBytes(path_, journal + kJournalBlockSize, kJournalBlockSize);  // block 1 never landed
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->Get(1).present, 1u);
  EXPECT_TRUE((*reopened)->Get(10).empty());
  EXPECT_TRUE((*reopened)->Get(209).empty());  // block 2 survived but belongs to the torn flush
}

TEST_F(LayerTest, FrozenLayerReplaysExactlyToItsRecordedEnd) {
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Freeze("snap", 1).ok());
  const LayerHeader h = layer->header();
  layer.reset();
  ASSERT_EQ(h.journal_end_seq, h.journal_start_seq + kRecordsPerJournalBlock);
  // A valid record right after the recorded end, with the sequence replay would expect next.
  JournalRecord stray;
  stray.sequence = h.journal_end_seq;
  stray.cluster = 7;
  stray.entry = {.slot = 0, .present = 0, .zero = 1};
  std::string bytes(kJournalRecordSize, '\0');
  stray.EncodeTo(bytes.data());
  int fd = open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, bytes.data(), bytes.size(),
                   static_cast<off_t>(h.journal_offset + kJournalBlockSize)),
            static_cast<ssize_t>(bytes.size()));
  close(fd);
  auto reopened = Open();
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  EXPECT_EQ((*reopened)->Get(1).present, 1u);
  EXPECT_TRUE((*reopened)->Get(7).empty());
}

// Writes `h` into both header copies of `path`, with a valid CRC; a nonzero raw.first puts
// the 32-bit raw.second at that offset of the block first.
void WriteBothHeaders(const std::string& path, const LayerHeader& h,
                      std::pair<size_t, uint32_t> raw = {0, 0}) {
  std::string block;
  h.EncodeTo(&block);
  if (raw.first != 0) {
    EncodeFixed32(block.data() + raw.first, raw.second);
    EncodeFixed32(block.data() + kHeaderBlockSize - 4,
                  crc32c::Mask(crc32c::Value(block.data(), kHeaderBlockSize - 4)));
  }
  int fd = open(path.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0) << path;
  for (uint64_t at : kHeaderCopyOffset) {
    ASSERT_EQ(pwrite(fd, block.data(), block.size(), static_cast<off_t>(at)),
              static_cast<ssize_t>(block.size()));
  }
  close(fd);
}

TEST_F(LayerTest, CraftedHeaderWithValidCrcIsCorruptNotACrash) {
  auto layer = Create();
  const LayerHeader good = layer->header();
  layer.reset();
  struct Case {
    const char* what;
    std::function<void(LayerHeader*)> edit;
    // A field LayerHeader does not carry: (offset, value) written into the encoded block.
    std::pair<size_t, uint32_t> raw = {0, 0};
  };
  const Case cases[] = {
      {"16 EiB disk with a 2^40-entry table",
       [](LayerHeader* h) {
         h->virtual_size = ~uint64_t{0} - 65535;
         h->table_offset = 1 << 20;
         h->table_entries = uint64_t{1} << 40;
       }},
      {"size not a multiple of 512", [](LayerHeader* h) { h->virtual_size = 1000; }},
      {"header size not 4096", [](LayerHeader*) {}, {12, 512}},
      {"more than 2^32 clusters", [](LayerHeader* h) { h->virtual_size = uint64_t{1} << 50; }},
      {"table beyond the file",
       [](LayerHeader* h) {
         h->table_offset = uint64_t{1} << 40;
         h->table_entries = 10;
       }},
      {"journal beyond the file", [](LayerHeader* h) { h->journal_size = 256 << 20; }},
      {"journal larger than the format allows", [](LayerHeader* h) { h->journal_size = 1ull << 40; }},
      {"journal not at slot 1", [](LayerHeader* h) { h->journal_offset = 3 * 65536; }},
      {"sequence about to wrap", [](LayerHeader* h) { h->journal_start_seq = ~uint64_t{0} - 5; }},
      {"end past what the journal holds",
       [](LayerHeader* h) {
         h->state = LayerState::kFrozen;
         h->journal_end_seq = h->journal_start_seq + JournalCapacity(h->journal_size) + 1;
       }},
  };
  for (const Case& c : cases) {
    LayerHeader h = good;
    c.edit(&h);
    WriteBothHeaders(path_, h, c.raw);
    for (Layer::Mode mode : {Layer::Mode::kReadOnly, Layer::Mode::kWritable}) {
      auto opened = Open(mode);
      ASSERT_FALSE(opened.ok()) << c.what;
      EXPECT_EQ(opened.status().code(), absl::StatusCode::kDataLoss) << c.what;
      EXPECT_NE(opened.status().message().find(path_), absl::string_view::npos) << c.what;
    }
  }
  WriteBothHeaders(path_, good);
  EXPECT_TRUE(Open().ok());
}

TEST_F(LayerTest, FreedSlotIsReusedOnlyAfterFlush) {
  auto layer = Create();
  Put(layer.get(), 1, 1);
  uint32_t slot = layer->Get(1).slot;
  ASSERT_TRUE(layer->Flush().ok());
  layer->SetEntry(1, {.slot = 0, .present = 0, .zero = 1});  // trimmed
  auto next = layer->AllocateSlot();
  ASSERT_TRUE(next.ok());
  EXPECT_NE(*next, slot) << "reused before the free was durable";
  ASSERT_TRUE(layer->Flush().ok());
  auto reused = layer->AllocateSlot();
  ASSERT_TRUE(reused.ok());
  EXPECT_EQ(*reused, slot);
}

TEST_F(LayerTest, FrozenLayerRefusesWritableOpen) {
  auto layer = Create();
  ASSERT_TRUE(layer->Freeze("s1", 1).ok());
  layer.reset();
  auto reopened = Open(Layer::Mode::kWritable);
  ASSERT_FALSE(reopened.ok());
  EXPECT_NE(reopened.status().message().find("frozen"), absl::string_view::npos);
  EXPECT_TRUE(Open(Layer::Mode::kMergeTarget).ok());
}

TEST_F(LayerTest, SequentialAllocationsAreContiguous) {
  auto layer = Create();
  uint32_t previous = 0;
  for (int i = 0; i < 100; ++i) {
    auto slot = layer->AllocateSlot();
    ASSERT_TRUE(slot.ok());
    if (i > 0) {
      EXPECT_EQ(*slot, previous + 1);
    }
    previous = *slot;
  }
}

TEST_F(LayerTest, OverlappingPresentAndZeroMasksAreCorruptOnOpen) {
  uint64_t journal_offset;
  uint32_t slot;
  {
    auto layer = Create();
    Put(layer.get(), 1, 1);
    slot = layer->Get(1).slot;
    ASSERT_TRUE(layer->Flush().ok());
    journal_offset = layer->header().journal_offset;
  }
  // The record that flush wrote, rewritten with a valid CRC and a sub-block both present and
  // zero.
  JournalRecord record;
  record.sequence = 1;
  record.cluster = 1;
  record.entry = {.slot = slot, .present = 1, .zero = 1};
  char raw[kJournalRecordSize];
  record.EncodeTo(raw);
  int fd = open(path_.c_str(), O_WRONLY);
  ASSERT_GE(fd, 0);
  ASSERT_EQ(pwrite(fd, raw, sizeof(raw), static_cast<off_t>(journal_offset)),
            static_cast<ssize_t>(sizeof(raw)));
  close(fd);
  auto opened = Open();
  ASSERT_FALSE(opened.ok());
  EXPECT_EQ(opened.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_NE(opened.status().message().find(path_), absl::string_view::npos) << opened.status();
  EXPECT_NE(opened.status().message().find("cluster 1: "), absl::string_view::npos)
      << opened.status();
  EXPECT_NE(opened.status().message().find("overlap"), absl::string_view::npos)
      << opened.status();
}

TEST_F(LayerTest, SettingOverlappingMasksAborts) {
  auto layer = Create();
  EXPECT_DEATH(layer->SetEntry(3, {.slot = 0, .present = 2, .zero = 2}),
               "cluster 3: present 0x2 and zero 0x2 overlap");
}

}  // namespace
}  // namespace strata
