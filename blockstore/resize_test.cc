// Growing a disk (resize.h): a chain of raw base + two snapshots + the active layer grows, the
// lower layers keep their sizes, everything past them reads as zeros, and every operation that
// walks the layers (reads, extents, snapshots, merges, streams, revert, check) works across the
// size boundary. The crash sweeps are in crash_sweep_test.cc (family (j)).
#include "blockstore/resize.h"

#include "absl/strings/match.h"
#include "blockstore/chain.h"
#include "blockstore/check.h"
#include "blockstore/commit.h"
#include "blockstore/file.h"
#include "blockstore/layer.h"
#include "blockstore/revert.h"
#include "blockstore/snapshot_files.h"
#include "blockstore/stream.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

using testing::PatternBytes;
using testing::ReadDisk;
using testing::TempDir;

constexpr uint64_t kCluster = 64 << 10;
constexpr uint64_t kOld = 4 << 20;    // the base's, the snapshots' and the disk's first size
constexpr uint64_t kGrow = 3 << 20;   // added by the resize (not a multiple of 4 MiB)
constexpr uint64_t kNew = kOld + kGrow;

class ResizeTest : public ::testing::Test {
 protected:
  // base.raw (pattern), s1 and s2 each with data, the active disk with data up to its end.
  void SetUp() override {
    testing::WriteFileBytes(dir_.File("base.raw"), PatternBytes(kOld, 1));
    ASSERT_TRUE(CreateLayer(top_, {.parent = "base.raw", .parent_format = ParentFormat::kRaw}).ok());
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(0, PatternBytes(1 << 20, 2)).ok());
    ASSERT_TRUE((*chain)->Snapshot("s1").ok());
    ASSERT_TRUE((*chain)->Write((1 << 20) + 1000, PatternBytes(1 << 20, 3)).ok());
    ASSERT_TRUE((*chain)->Snapshot("s2").ok());
    ASSERT_TRUE((*chain)->Write(kOld - 100000, PatternBytes(100000, 4)).ok());
    ASSERT_TRUE((*chain)->WriteZeroes(8192, 64 << 10).ok());
    chain->reset();
    before_ = ReadDisk(top_, kOld);
    s1_ = ReadDisk(SnapshotPath(top_, "s1"), kOld);
    s2_ = ReadDisk(SnapshotPath(top_, "s2"), kOld);
  }

  absl::StatusOr<ResizeResult> Grow(uint64_t bytes = kGrow) {
    return ResizeDisk(Env::Default(), top_, {.bytes = bytes, .relative = true});
  }
  // What the grown disk must read as: the old content, then zeros.
  std::string Grown() const { return before_ + std::string(kGrow, '\0'); }
  // The snapshots read as before, at their own size.
  void ExpectSnapshotsUnchanged() {
    EXPECT_EQ(ReadDisk(SnapshotPath(top_, "s1"), kOld), s1_);
    EXPECT_EQ(ReadDisk(SnapshotPath(top_, "s2"), kOld), s2_);
  }
  void ExpectCheckClean() {
    auto report = CheckChain(Env::Default(), top_, /*repair=*/false);
    ASSERT_TRUE(report.ok()) << report.status();
    EXPECT_TRUE(report->problems.empty()) << report->problems[0];
    EXPECT_TRUE(report->repairable.empty()) << report->repairable[0];
  }

  TempDir dir_;
  const std::string top_ = dir_.File("disk.strata");
  std::string before_, s1_, s2_;
};

TEST_F(ResizeTest, GrowsTheTopOnlyAndReadsZerosPastTheOldEnd) {
  auto result = Grow();
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->old_size, kOld);
  EXPECT_EQ(result->new_size, kNew);
  auto chain = Chain::Open(top_, {.writable = false});
  ASSERT_TRUE(chain.ok()) << chain.status();
  EXPECT_EQ((*chain)->size(), kNew);
  std::string read(kNew, '\x55');
  ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(read)).ok());
  EXPECT_TRUE(read == Grown());
  // Frozen layers and the raw base keep their sizes.
  for (const LayerInfo& layer : (*chain)->Layers()) {
    if (layer.is_raw_base) {
      EXPECT_EQ(layer.allocated_bytes, kOld);
    } else if (layer.header.state == LayerState::kFrozen) {
      EXPECT_EQ(layer.header.virtual_size, kOld) << layer.path;
    }
  }
  ExpectSnapshotsUnchanged();
  ExpectCheckClean();
}

TEST_F(ResizeTest, ExtentsOfTheGrownRangeSayNobodyAnswers) {
  ASSERT_TRUE(Grow().ok());
  auto chain = Chain::Open(top_, {.writable = false});
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::vector<Extent> extents;
  ASSERT_TRUE((*chain)->Extents(kOld - 4096, kGrow + 4096, &extents).ok());
  ASSERT_EQ(extents.size(), 2u);
  EXPECT_EQ(extents[0].layer, (*chain)->top_position());  // the top's write up to the old end
  EXPECT_TRUE(extents[0].data);
  EXPECT_EQ(extents[1].offset, kOld);
  EXPECT_EQ(extents[1].length, kGrow);
  EXPECT_EQ(extents[1].layer, -1);
  EXPECT_TRUE(extents[1].zero);
  EXPECT_FALSE(extents[1].data);
}

TEST_F(ResizeTest, WritesIntoTheNewAreaAcrossTheOldEndSurviveReopen) {
  ASSERT_TRUE(Grow().ok());
  std::string want = Grown();
  const std::string data = PatternBytes(3 * kCluster + 777, 5);
  const uint64_t at = kOld - kCluster - 100;
  want.replace(at, data.size(), data);
  want.replace(kNew - 512, 512, std::string(512, '\x7f'));
  {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(at, data).ok());
    ASSERT_TRUE((*chain)->Write(kNew - 512, std::string(512, '\x7f')).ok());
    ASSERT_TRUE((*chain)->Flush().ok());
  }
  EXPECT_TRUE(ReadDisk(top_, kNew) == want);
  ExpectSnapshotsUnchanged();
  ExpectCheckClean();
}

TEST_F(ResizeTest, LiveStyleSnapshotAfterTheGrowHasTheNewSize) {
  ASSERT_TRUE(Grow().ok());
  std::string want = Grown();
  {
    auto chain = Chain::Open(top_);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(kOld + 4096, PatternBytes(8192, 6)).ok());
    want.replace(kOld + 4096, 8192, PatternBytes(8192, 6));
    ASSERT_TRUE((*chain)->PrepareSnapshot("s3").ok());
    ASSERT_TRUE((*chain)->SwitchSnapshot("s3").ok());
    ASSERT_TRUE((*chain)->Write(kNew - 4096, std::string(4096, 'x')).ok());
    ASSERT_TRUE((*chain)->CompleteSnapshot().ok());
  }
  EXPECT_TRUE(ReadDisk(SnapshotPath(top_, "s3"), kNew) == want);
  want.replace(kNew - 4096, 4096, std::string(4096, 'x'));
  EXPECT_TRUE(ReadDisk(top_, kNew) == want);
  auto s3 = ReadLayerHeader(Env::Default(), SnapshotPath(top_, "s3"));
  ASSERT_TRUE(s3.ok()) << s3.status();
  EXPECT_EQ(s3->virtual_size, kNew);
  EXPECT_EQ(s3->parent_size, kOld);  // s3 is the grown layer, on s2
  ExpectCheckClean();
}

// Merging the grown top into the smaller s2 grows s2 in the merge's fence (commit.h).
TEST_F(ResizeTest, DeletingTheSnapshotBelowTheGrownTopGrowsItInTheMerge) {
  ASSERT_TRUE(Grow().ok());
  auto done = DeleteSnapshot(Env::Default(), top_, "s2");
  ASSERT_TRUE(done.ok()) << done.status();
  EXPECT_TRUE(ReadDisk(top_, kNew) == Grown());
  EXPECT_EQ(ReadDisk(SnapshotPath(top_, "s1"), kOld), s1_);
  auto top = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_EQ(top->virtual_size, kNew);
  EXPECT_EQ(top->parent_size, kOld);
  ExpectCheckClean();
}

// The grown top's merged-into parent keeps its own smaller parent: s1 into s2 is same-size.
TEST_F(ResizeTest, CommitsOfEveryLayerAfterTheGrow) {
  ASSERT_TRUE(Grow().ok());
  ASSERT_TRUE(DeleteSnapshot(Env::Default(), top_, "s1").ok());
  ASSERT_TRUE(CommitLayer(Env::Default(), top_).ok());
  EXPECT_TRUE(ReadDisk(top_, kNew) == Grown());
  auto top = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_EQ(top->parent_format, ParentFormat::kRaw);
  EXPECT_EQ(top->virtual_size, kNew);
  ExpectCheckClean();
}

// Online deletion of s2 streams the smaller s2 up into the grown top: the top keeps its size
// and links to s1.
TEST_F(ResizeTest, StreamingTheSmallerSnapshotIntoTheGrownTop) {
  ASSERT_TRUE(Grow().ok());
  {
    auto chain = Chain::Open(top_, {.serve_streams = true});
    ASSERT_TRUE(chain.ok()) << chain.status();
    auto plan = PlanStream(Env::Default(), **chain, "s2", 0);
    ASSERT_TRUE(plan.ok()) << plan.status();
    ASSERT_TRUE(BeginStream(Env::Default(), *plan).ok());
    auto r = RunStream(Env::Default(), chain->get(), StreamJournalPath(plan->layer_path), {});
    ASSERT_TRUE(r.ok()) << r.status();
    std::string read(kNew, '\0');
    ASSERT_TRUE((*chain)->Read(0, absl::MakeSpan(read)).ok());
    EXPECT_TRUE(read == Grown());
  }
  EXPECT_TRUE(ReadDisk(top_, kNew) == Grown());
  EXPECT_FALSE(Env::Default()->Exists(SnapshotPath(top_, "s2")));
  ExpectCheckClean();
}

TEST_F(ResizeTest, RevertGoesBackToTheSnapshotsSize) {
  ASSERT_TRUE(Grow().ok());
  ASSERT_TRUE(Revert(Env::Default(), top_).ok());
  EXPECT_EQ(ReadDisk(top_, kOld), s2_);
  auto top = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(top.ok()) << top.status();
  EXPECT_EQ(top->virtual_size, kOld);
  ASSERT_TRUE(Grow().ok());
  ASSERT_TRUE(Revert(Env::Default(), top_, "s1").ok());
  EXPECT_EQ(ReadDisk(top_, kOld), s1_);
  ExpectCheckClean();
}

TEST_F(ResizeTest, GrowsTwiceAndToAnAbsoluteSize) {
  ASSERT_TRUE(Grow(1 << 20).ok());
  auto result = ResizeDisk(Env::Default(), top_, {.bytes = kNew});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->old_size, kOld + (1 << 20));
  EXPECT_TRUE(ReadDisk(top_, kNew) == Grown());
}

TEST_F(ResizeTest, RoundsUpToASectorAsCreateDoes) {
  auto result = Grow(1000);
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->new_size, kOld + 1024);
}

TEST_F(ResizeTest, ShrinkingIsRefusedAndChangesNothing) {
  auto result = ResizeDisk(Env::Default(), top_, {.bytes = kOld - 4096});
  EXPECT_TRUE(absl::IsInvalidArgument(result.status())) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "shrinking")) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "not supported")) << result.status();
  EXPECT_EQ(ReadDisk(top_, kOld), before_);
}

TEST_F(ResizeTest, TheSameSizeIsANoOp) {
  auto header = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(header.ok());
  auto result = ResizeDisk(Env::Default(), top_, {.bytes = kOld});
  ASSERT_TRUE(result.ok()) << result.status();
  EXPECT_EQ(result->new_size, kOld);
  auto after = ReadLayerHeader(Env::Default(), top_);
  ASSERT_TRUE(after.ok());
  EXPECT_EQ(after->sequence, header->sequence);  // nothing written
}

TEST_F(ResizeTest, AServedDiskIsRefused) {
  auto served = Chain::Open(top_);
  ASSERT_TRUE(served.ok()) << served.status();
  auto result = Grow();
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status())) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "stop the server")) << result.status();
  EXPECT_EQ((*served)->size(), kOld);
}

TEST_F(ResizeTest, AFrozenLayerIsRefused) {
  auto result = ResizeDisk(Env::Default(), SnapshotPath(top_, "s2"), {.bytes = kNew});
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status())) << result.status();
  EXPECT_EQ(ReadDisk(SnapshotPath(top_, "s2"), kOld), s2_);
}

TEST_F(ResizeTest, BeyondTheClusterLimitIsRefused) {
  auto result = ResizeDisk(Env::Default(), top_, {.bytes = kMaxClustersPerLayer * kCluster});
  EXPECT_TRUE(absl::IsInvalidArgument(result.status())) << result.status();
}

// A disk whose end is inside a sub-block cannot grow: the sub-block would mix old bytes and
// new zeros, and the layers below would answer past their end.
TEST(ResizeUnalignedTest, AnEndInsideASubBlockIsRefused) {
  TempDir dir;
  const std::string top = dir.File("odd.strata");
  ASSERT_TRUE(CreateLayer(top, {.size = kOld + 512}).ok());
  auto result = ResizeDisk(Env::Default(), top, {.bytes = kNew});
  EXPECT_TRUE(absl::IsFailedPrecondition(result.status())) << result.status();
  EXPECT_TRUE(absl::StrContains(result.status().message(), "sub-block")) << result.status();
}

// A frozen layer answers nothing past its end even where its index holds sub-blocks there
// (its end inside a cluster, the entry of that cluster covering all of it: crafted here by
// cutting a snapshot's size): the flat view resolves by cluster, and the chain clamps.
TEST(ResizeClampTest, AFrozenLayerAnswersNothingPastItsEnd) {
  TempDir dir;
  const std::string top = dir.File("disk.strata");
  ASSERT_TRUE(CreateLayer(top, {.size = 4 * kCluster}).ok());
  {
    auto chain = Chain::Open(top);
    ASSERT_TRUE(chain.ok()) << chain.status();
    ASSERT_TRUE((*chain)->Write(0, PatternBytes(4 * kCluster, 7)).ok());
    ASSERT_TRUE((*chain)->Snapshot("s").ok());
  }
  const uint64_t end = 3 * kCluster + 8192;
  ASSERT_TRUE(EditLayerHeader(Env::Default(), SnapshotPath(top, "s"),
                              [&](LayerHeader* h) { h->virtual_size = end; }).ok());
  ASSERT_TRUE(EditLayerHeader(Env::Default(), top,
                              [&](LayerHeader* h) { h->parent_size = end; }).ok());
  std::string want = PatternBytes(4 * kCluster, 7);
  want.replace(end, 4 * kCluster - end, std::string(4 * kCluster - end, '\0'));
  EXPECT_TRUE(ReadDisk(top, 4 * kCluster) == want);
  auto chain = Chain::Open(top, {.writable = false});
  ASSERT_TRUE(chain.ok()) << chain.status();
  std::vector<Extent> extents;
  ASSERT_TRUE((*chain)->Extents(end, 4 * kCluster - end, &extents).ok());
  ASSERT_EQ(extents.size(), 1u);
  EXPECT_EQ(extents[0].layer, -1);
}

// The size rule when a chain opens: a parent larger than its child, or smaller and ending
// inside a sub-block, or of another size than the child recorded, is refused by name.
TEST_F(ResizeTest, ChainOpenChecksTheSizeRule) {
  ASSERT_TRUE(Grow().ok());
  const std::string s2 = SnapshotPath(top_, "s2");
  auto edit = [&](uint64_t parent_size, uint64_t top_size) {
    ASSERT_TRUE(EditLayerHeader(Env::Default(), top_, [&](LayerHeader* h) {
                  h->parent_size = parent_size;
                  h->virtual_size = top_size;
                }).ok());
  };
  edit(kOld - 4096, kNew);  // not the size the parent is
  auto chain = Chain::Open(top_, {.writable = false});
  EXPECT_TRUE(absl::StrContains(chain.status().message(), "when the layer was created"))
      << chain.status();
  edit(kOld, kOld - 4096);  // a child smaller than its parent
  chain = Chain::Open(top_, {.writable = false});
  EXPECT_TRUE(absl::StrContains(chain.status().message(), "never smaller")) << chain.status();
  edit(kOld, kNew);
  EXPECT_TRUE(Chain::Open(top_, {.writable = false}).ok());
  // A smaller parent whose end is inside a sub-block.
  ASSERT_TRUE(EditLayerHeader(Env::Default(), s2, [&](LayerHeader* h) {
                h->virtual_size = kOld - 512;
              }).ok());
  edit(kOld - 512, kNew);
  chain = Chain::Open(top_, {.writable = false});
  EXPECT_TRUE(absl::StrContains(chain.status().message(), "sub-block boundary"))
      << chain.status();
}

}  // namespace
}  // namespace strata
