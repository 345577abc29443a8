#include "blockstore/journal.h"

#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using Records = std::vector<std::pair<uint32_t, ClusterEntry>>;

constexpr uint64_t kOffset = 64 << 10;  // slot 1, as in a layer
constexpr uint64_t kSize = 64 << 10;    // 16 blocks
constexpr uint64_t kStart = 1000;

class JournalTest : public ::testing::Test {
 protected:
  void SetUp() override {
    auto file = Env::Default()->Open(dir_.File("journal"), {.writable = true, .create = true});
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
    ASSERT_TRUE(file_->Allocate(0, kOffset + kSize).ok());
    journal_.Reset(file_.get(), kOffset, kSize, kStart);
  }
  static Records Flush(uint32_t first_cluster, int count) {
    Records records;
    for (int i = 0; i < count; ++i) {
      records.push_back({first_cluster + i, {.slot = 100u + i, .present = 1, .zero = 2}});
    }
    return records;
  }
  // Replays a fresh journal over the same region; *seen gets the records it applied.
  absl::Status Replay(Records* seen, uint64_t end_seq = 0, uint64_t start = kStart) {
    Journal fresh;
    fresh.Reset(file_.get(), kOffset, kSize, start);
    absl::Status s = fresh.Replay(end_seq, [&](const JournalRecord& r) {
      seen->push_back({r.cluster, r.entry});
      return absl::OkStatus();
    });
    replayed_tail_ = fresh.tail();
    return s;
  }
  void FlipByte(uint64_t journal_pos) {
    char c;
    ASSERT_TRUE(file_->Read(kOffset + journal_pos, 1, &c).ok());
    c ^= 0x40;
    ASSERT_TRUE(file_->Write(kOffset + journal_pos, absl::string_view(&c, 1)).ok());
  }

  testing::TempDir dir_;
  std::unique_ptr<File> file_;
  Journal journal_;
  uint64_t replayed_tail_ = 0;
};

TEST_F(JournalTest, AppendsWholeBlocksAndReplaysInOrder) {
  ASSERT_TRUE(journal_.Append(Flush(1, 3)).ok());
  EXPECT_EQ(journal_.tail(), kJournalBlockSize);
  EXPECT_EQ(journal_.next_seq(), kStart + kRecordsPerJournalBlock) << "padded to the block";
  ASSERT_TRUE(journal_.Append(Flush(10, 130)).ok());  // two blocks
  EXPECT_EQ(journal_.tail(), 3 * kJournalBlockSize);
  Records seen;
  ASSERT_TRUE(Replay(&seen).ok());
  Records want = Flush(1, 3);
  for (const auto& r : Flush(10, 130)) want.push_back(r);
  EXPECT_EQ(seen, want);
  EXPECT_EQ(replayed_tail_, journal_.tail());
}

TEST_F(JournalTest, FitsCountsWholeBlocks) {
  EXPECT_TRUE(journal_.Fits(16 * kRecordsPerJournalBlock));
  EXPECT_FALSE(journal_.Fits(16 * kRecordsPerJournalBlock + 1));
  ASSERT_TRUE(journal_.Append(Flush(1, 1)).ok());
  EXPECT_FALSE(journal_.Fits(15 * kRecordsPerJournalBlock + 1));
  EXPECT_TRUE(journal_.Fits(15 * kRecordsPerJournalBlock));
}

TEST_F(JournalTest, TornLastFlushIsDropped) {
  ASSERT_TRUE(journal_.Append(Flush(1, 2)).ok());
  ASSERT_TRUE(journal_.Append(Flush(10, 200)).ok());  // blocks 1 and 2
  FlipByte(kJournalBlockSize + 8);                     // its first block tore
  Records seen;
  ASSERT_TRUE(Replay(&seen).ok());
  EXPECT_EQ(seen, Flush(1, 2));
  EXPECT_EQ(replayed_tail_, kJournalBlockSize);
}

TEST_F(JournalTest, DamageBeforeALaterFlushIsReported) {
  ASSERT_TRUE(journal_.Append(Flush(1, 2)).ok());
  ASSERT_TRUE(journal_.Append(Flush(10, 2)).ok());
  FlipByte(40);  // the first flush completed: the second was written after its sync
  Records seen;
  absl::Status s = Replay(&seen);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("a completed flush was damaged"), absl::string_view::npos) << s;
  EXPECT_NE(s.message().find(absl::StrCat("@ ", kOffset + 32)), absl::string_view::npos) << s;
}

TEST_F(JournalTest, BoundedReplayThatStopsEarlyIsDamage) {
  ASSERT_TRUE(journal_.Append(Flush(1, 2)).ok());
  Records seen;
  EXPECT_TRUE(Replay(&seen, journal_.next_seq()).ok());
  seen.clear();
  absl::Status s = Replay(&seen, journal_.next_seq() + 1);
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << s;
  EXPECT_NE(s.message().find("before the end the frozen header records"), absl::string_view::npos)
      << s;
}

TEST_F(JournalTest, ANewEpochLeavesOlderRecordsStale) {
  ASSERT_TRUE(journal_.Append(Flush(1, 2)).ok());
  const uint64_t next = journal_.NextEpochStart();
  EXPECT_EQ(next, kStart + JournalCapacity(kSize));
  journal_.StartEpoch(next);
  EXPECT_EQ(journal_.tail(), 0u);
  Records seen;
  ASSERT_TRUE(Replay(&seen, 0, next).ok());
  EXPECT_TRUE(seen.empty());
  ASSERT_TRUE(journal_.Append(Flush(7, 1)).ok());
  ASSERT_TRUE(Replay(&seen, 0, next).ok());
  EXPECT_EQ(seen, Flush(7, 1));
}

TEST_F(JournalTest, AnApplyErrorNamesTheRecord) {
  ASSERT_TRUE(journal_.Append(Flush(1, 2)).ok());
  Journal fresh;
  fresh.Reset(file_.get(), kOffset, kSize, kStart);
  int calls = 0;
  absl::Status s = fresh.Replay(0, [&](const JournalRecord&) {
    return ++calls == 2 ? absl::DataLossError("cluster 2: bad") : absl::OkStatus();
  });
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(s.message(), absl::StrCat("journal record @ ", kOffset + 32, ": cluster 2: bad"));
}

}  // namespace
}  // namespace strata
