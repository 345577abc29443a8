#include "server/engine/stats.h"

#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(LatencyHistogramTest, PercentilesAreInterpolatedWithinTheirBucketAndCappedByMax) {
  LatencyHistogram h;
  EXPECT_EQ(h.PercentileNs(0.5), 0u);
  for (int i = 0; i < 90; ++i) h.Add(1000);     // bucket [512, 1024)
  for (int i = 0; i < 10; ++i) h.Add(100000);   // bucket [65536, 131072)
  EXPECT_EQ(h.count, 100u);
  EXPECT_EQ(h.PercentileNs(0.5), 796u);      // 512 + 50/90 of the bucket's 512
  EXPECT_EQ(h.PercentileNs(0.9), 1024u);     // the bucket's last sample: its end
  EXPECT_EQ(h.PercentileNs(0.99), 96554u);   // 65536 + 9/10 of the way to the max
  EXPECT_EQ(h.PercentileNs(1.0), 100000u);   // the max, not 131071
  EXPECT_EQ(h.max_ns, 100000u);
  LatencyHistogram other;
  other.Add(0);
  h.Merge(other);
  EXPECT_EQ(h.count, 101u);
  EXPECT_EQ(h.PercentileNs(0.0), 2u);        // all of bucket [0, 2)
}

TEST(LatencyHistogramTest, PercentilesOfEvenlySpreadSamplesAreCloseNotABucketEdge) {
  // 20 000 samples 20.000 .. 39.999 us: the true p50 is 30 us, p99 39.8 us. A bucket edge would
  // say 32.767 us and 65.535 us (capped to 39.999).
  LatencyHistogram h;
  for (uint64_t ns = 20000; ns < 40000; ++ns) h.Add(ns);
  EXPECT_NEAR(static_cast<double>(h.PercentileNs(0.5)), 30000, 1000);
  EXPECT_NEAR(static_cast<double>(h.PercentileNs(0.99)), 39800, 200);
  EXPECT_NE(h.PercentileNs(0.5), 32767u);
}

TEST(IoCountersTest, MergeAddsEverything) {
  IoCounters a, b;
  a.requests[0] = 2;
  b.requests[1] = 3;
  b.requests[kOtherCommand] = 1;
  b.errors = 1;
  b.bytes_written = 4096;
  a.Merge(b);
  EXPECT_EQ(a.total_requests(), 6u);
  EXPECT_EQ(a.errors, 1u);
  EXPECT_EQ(a.bytes_written, 4096u);
}

TEST(NoSpaceStateTest, EntersOnENOSPCAndLeavesOnlyAfterAQuietSecond) {
  NoSpaceState s;
  EXPECT_FALSE(s.full());
  s.OnWriteSucceeded();
  EXPECT_FALSE(s.full());
  s.OnNoSpace();
  s.OnNoSpace();
  EXPECT_TRUE(s.full());
  EXPECT_EQ(s.replies(), 2u);
  EXPECT_EQ(s.episodes(), 1u);
  EXPECT_GT(s.since_wall_ns(), 0);
  // A rewrite of allocated space right after an ENOSPC proves nothing about free space.
  s.OnWriteSucceeded();
  EXPECT_TRUE(s.full());
}

TEST(NoSpaceStateTest, WritesWaitOnlyInPauseModeAndOnlyUpToTheBound) {
  NoSpaceState error_mode;
  EXPECT_FALSE(error_mode.BeginWait());
  EXPECT_EQ(error_mode.waiting(), 0);

  NoSpaceState s(FullVolumePolicy{.mode = FullVolumePolicy::Mode::kPause, .max_waiting = 2});
  EXPECT_TRUE(s.BeginWait());
  EXPECT_TRUE(s.full());
  EXPECT_TRUE(s.BeginWait());
  EXPECT_FALSE(s.BeginWait()) << "a third write waited beyond max_waiting 2";
  EXPECT_EQ(s.waiting(), 2);
  s.EndWait();
  EXPECT_TRUE(s.BeginWait());
  s.EndWait();
  s.EndWait();
  EXPECT_EQ(s.waiting(), 0);
  EXPECT_EQ(s.waits(), 3u);
  EXPECT_EQ(s.replies(), 0u) << "waiting is not an ENOSPC reply";
}

TEST(NoSpaceStateTest, LowBelowMinFreeAndBackAbove) {
  NoSpaceState s(FullVolumePolicy{.min_free_bytes = 100});
  s.OnFreeSpace(500, 1000);
  EXPECT_FALSE(s.low());
  s.OnFreeSpace(99, 1000);
  EXPECT_TRUE(s.low());
  EXPECT_EQ(s.free_bytes(), 99u);
  EXPECT_EQ(s.total_bytes(), 1000u);
  s.OnFreeSpace(100, 1000);
  EXPECT_FALSE(s.low());
  NoSpaceState never(FullVolumePolicy{.min_free_bytes = 0});
  never.OnFreeSpace(0, 1000);
  EXPECT_FALSE(never.low());
}

}  // namespace
}  // namespace strata
