#include "blockstore/flat_view.h"

#include <memory>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

// Who should answer one sub-block: `layer` (0: the base or nobody), with data in `slot`, or a
// zero mark.
struct Want {
  uint16_t layer = 0;
  uint32_t slot = 0;
  bool zero = false;
};
constexpr Want kNobody{};
Want Data(uint16_t layer, uint32_t slot) { return {layer, slot, false}; }
Want Zero(uint16_t layer) { return {layer, 0, true}; }

// Expects sub-blocks 0, 1, ... of `cluster` to resolve as `want` says.
void ExpectCluster(const FlatView& view, uint64_t cluster, const std::vector<Want>& want) {
  for (uint32_t sb = 0; sb < want.size(); ++sb) {
    const Source s = view.Resolve(cluster, sb);
    EXPECT_EQ(s.layer, want[sb].layer) << "cluster " << cluster << " sub-block " << sb;
    EXPECT_EQ(s.slot, want[sb].slot) << "cluster " << cluster << " sub-block " << sb;
    EXPECT_EQ(s.zero != 0, want[sb].zero) << "cluster " << cluster << " sub-block " << sb;
  }
}

ClusterEntry Entry(uint32_t slot, uint32_t present, uint32_t zero = 0) {
  return {.slot = slot, .present = present, .zero = zero};
}

TEST(FlatViewTest, EmptyViewHasNobodyAnswering) {
  FlatView view(16);
  ExpectCluster(view, 0, {kNobody});
  ExpectCluster(view, 123456789, std::vector<Want>(16, kNobody));  // far past anything set
  EXPECT_EQ(view.clusters(), 0u);
  EXPECT_EQ(view.split_clusters(), 0u);
}

TEST(FlatViewTest, OneLayerAnswersItsPresentAndZeroSubBlocksOnly) {
  FlatView view(4);
  view.Overlay(1, 5, Entry(9, 0b0101, 0b0010));
  // Sub-block 3 is absent in the layer: the base answers. Other clusters are untouched.
  ExpectCluster(view, 5, {Data(1, 9), Zero(1), Data(1, 9), kNobody});
  ExpectCluster(view, 4, {kNobody});
  ExpectCluster(view, 6, {kNobody});
  EXPECT_EQ(view.clusters(), 1u);
  EXPECT_EQ(view.split_clusters(), 0u);
}

TEST(FlatViewTest, SlotReservedButNeverWrittenAnswersNothing) {
  FlatView view(4);
  view.Overlay(1, 3, Entry(7, 0));
  ExpectCluster(view, 3, {kNobody});
  EXPECT_EQ(view.clusters(), 0u);
}

TEST(FlatViewTest, UpperLayerCoveringEverythingBelowReplacesIt) {
  FlatView view(4);
  view.Overlay(1, 0, Entry(1, 0b0011));
  view.Overlay(2, 0, Entry(2, 0b0111));
  ExpectCluster(view, 0, {Data(2, 2), Data(2, 2), Data(2, 2), kNobody});
  EXPECT_EQ(view.split_clusters(), 0u);
}

TEST(FlatViewTest, ZeroMarkAboveHidesDataBelow) {
  FlatView view(4);
  view.Overlay(1, 0, Entry(1, 0b0001));
  view.Overlay(2, 0, Entry(0, 0, 0b0001));
  ExpectCluster(view, 0, {Zero(2)});
  EXPECT_EQ(view.split_clusters(), 0u);
}

TEST(FlatViewTest, PartialOverlapSplitsTheClusterPerSubBlock) {
  FlatView view(4);
  view.Overlay(1, 2, Entry(1, 0b0011));
  view.Overlay(2, 2, Entry(2, 0b0010, 0b0100));
  // Sub-block 0 only layer 1 wrote; sub-block 1 both did, and the upper one wins.
  ExpectCluster(view, 2, {Data(1, 1), Data(2, 2), Zero(2), kNobody});
  EXPECT_EQ(view.clusters(), 1u);
  EXPECT_EQ(view.split_clusters(), 1u);
}

// A view of 4 sub-blocks per cluster whose cluster 2 is split: sub-block 0 from layer 1
// (slot 1), sub-block 1 from layer 2 (slot 2).
std::unique_ptr<FlatView> SplitCluster2() {
  auto view = std::make_unique<FlatView>(4);
  view->Overlay(1, 2, Entry(1, 0b0001));
  view->Overlay(2, 2, Entry(2, 0b0010));
  return view;
}

TEST(FlatViewTest, FurtherLayersOnASplitClusterChangeOnlyTheirSubBlocks) {
  auto view = SplitCluster2();
  view->Overlay(3, 2, Entry(3, 0b1000));
  ExpectCluster(*view, 2, {Data(1, 1), Data(2, 2), kNobody, Data(3, 3)});
  EXPECT_EQ(view->split_clusters(), 1u);  // still the one split, updated in place
}

TEST(FlatViewTest, LayerCoveringASplitClusterWhollyAnswersAlone) {
  auto view = SplitCluster2();
  view->Overlay(3, 2, Entry(3, 0b1101, 0b0010));
  ExpectCluster(*view, 2, {Data(3, 3), Zero(3), Data(3, 3), Data(3, 3)});
  // The replaced split's Sources stay in the side table until the view is rebuilt.
  EXPECT_EQ(view->split_clusters(), 1u);
}

TEST(FlatViewTest, ASplitClusterNotWhollyCoveredStaysSplit) {
  auto view = SplitCluster2();
  // Covers every sub-block the layers below hold, but not all four: a split entry counts as
  // holding every sub-block, so it stays split (correct, if not minimal).
  view->Overlay(3, 2, Entry(3, 0b0011));
  ExpectCluster(*view, 2, {Data(3, 3), Data(3, 3), kNobody, kNobody});
}

TEST(FlatViewTest, ThirtyTwoSubBlocksUseTheWholeMask) {
  FlatView view(32);
  view.Overlay(1, 0, Entry(1, 0xffffffffu));
  view.Overlay(2, 0, Entry(2, 0x80000000u));
  std::vector<Want> want(32, Data(1, 1));
  want[31] = Data(2, 2);
  ExpectCluster(view, 0, want);
  EXPECT_EQ(view.split_clusters(), 1u);
  view.Overlay(3, 0, Entry(0, 0, 0xffffffffu));
  ExpectCluster(view, 0, std::vector<Want>(32, Zero(3)));
}

TEST(FlatViewTest, SplitsOfSeveralClustersKeepTheirOwnSources) {
  FlatView view(2);
  for (uint32_t c = 0; c < 3; ++c) {
    view.Overlay(1, c * 1000, Entry(10 + c, 0b01));
    view.Overlay(2, c * 1000, Entry(20 + c, 0b10));
  }
  EXPECT_EQ(view.clusters(), 3u);
  EXPECT_EQ(view.split_clusters(), 3u);
  for (uint32_t c = 0; c < 3; ++c) {
    ExpectCluster(view, c * 1000, {Data(1, 10 + c), Data(2, 20 + c)});
  }
}

TEST(FlatViewTest, MemoryGrowsWithClustersAndSplits) {
  FlatView view(16);
  const size_t empty = view.MemoryBytes();
  view.Overlay(1, 1 << 20, Entry(1, 1));
  const size_t one = view.MemoryBytes();
  EXPECT_GT(one, empty);
  view.Overlay(2, 1 << 20, Entry(2, 2));
  EXPECT_GE(view.MemoryBytes(), one + 16 * sizeof(Source));
}

}  // namespace
}  // namespace strata
