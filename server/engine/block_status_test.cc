#include "server/engine/block_status.h"

#include "gtest/gtest.h"
#include "server/nbd/request.h"

namespace strata {
namespace {

TEST(DescriptorTest, ExtentsMergeClipAndMapToFlags) {
  std::vector<Extent> extents = {
      {0, 4096, 2, false, true},      // data in the active layer (top = 2)
      {4096, 4096, 2, false, true},   // same flags: merges for base:allocation
      {8192, 8192, 1, true, false},   // zero marker in layer 1
      {16384, 8192, -1, true, false}, // nobody
      {24576, 4096, 0, false, true},  // raw base
  };
  auto base = ToDescriptors(extents, 1024, 27648, 100, BaseAllocationFlags);
  ASSERT_EQ(base.size(), 3u);
  EXPECT_EQ(base[0].length, 8192u - 1024);
  EXPECT_EQ(base[0].flags, 0u);
  EXPECT_EQ(base[1].length, 16384u);
  EXPECT_EQ(base[1].flags, nbd::kStateHole | nbd::kStateZero);
  EXPECT_EQ(base[2].length, 4096u);
  auto depth = ToDescriptors(extents, 0, 28672, 100,
                             [](const Extent& e) { return StrataLayerDepth(e, 2); });
  ASSERT_EQ(depth.size(), 4u);
  EXPECT_EQ(depth[0].flags, 1u);  // active layer
  EXPECT_EQ(depth[1].flags, 2u);  // its parent
  EXPECT_EQ(depth[2].flags, 0u);  // unallocated everywhere
  EXPECT_EQ(depth[3].flags, 3u);  // the raw base below layer 1
  auto one = ToDescriptors(extents, 0, 28672, 1, BaseAllocationFlags);
  ASSERT_EQ(one.size(), 1u);
  EXPECT_EQ(one[0].length, 8192u);
}

}  // namespace
}  // namespace strata
