#include "blockstore/layer.h"

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
  auto layer = Create();
  Put(layer.get(), 1, 1);
  ASSERT_TRUE(layer->Flush().ok());
  Put(layer.get(), 2, 1);
  ASSERT_TRUE(layer->Flush().ok());
  uint64_t journal = layer->header().journal_offset;
  layer.reset();
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

}  // namespace
}  // namespace strata
