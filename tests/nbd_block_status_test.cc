// BLOCK_STATUS for base:allocation and the layer-depth context (strata:layer: 1 = the active
// layer answers, 2 = the layer below it, ..., the raw base deepest; 0 = no layer holds it). These
// answers drive qemu-img convert / nbdcopy sparseness and backup tools: a wrong "zero" loses data,
// a wrong depth makes incremental backups miss changes.
//
// The chain used by most cases, built offline before serving:
//   base.raw: BaseByte() pattern in [0, 32M), a hole in [32M, 64M)
//   disk@s1 : kBeforeSnap written                       (depth 2 once s1 is frozen)
//   disk    : kAfterSnap written, kZeroed zeroed, kTrimmed trimmed   (depth 1)
//   untouched base data, e.g. kBaseOnly                 (depth 3: the raw base)
#include <cerrno>
#include <cstring>
#include <random>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

constexpr uint64_t kBeforeSnap = 1 * kMiB;   // 256 KiB written before the snapshot
constexpr uint64_t kAfterSnap = 2 * kMiB;    // 256 KiB written after it
constexpr uint64_t kZeroed = 3 * kMiB;       // 256 KiB of base data zeroed after it
constexpr uint64_t kTrimmed = 4 * kMiB;      // 256 KiB written, then trimmed after it
constexpr uint64_t kBaseOnly = 8 * kMiB;     // never written
constexpr uint64_t kBaseHole = 40 * kMiB;    // inside the base's sparse tail
constexpr uint64_t kLen = 256 * kKiB;

// Each test builds the chain it reads.
class BlockStatusTest : public ServerTest {
 protected:
  BlockStatusTest() : ServerTest({.up_to = Stage::kNone}) {}

  ConnectOptions WithContexts() {
    ConnectOptions o;
    o.meta_contexts = {"base:allocation"};
    if (server_.SupportsLayers()) o.meta_contexts.push_back(server_.LayerContext());
    return o;
  }

  // Builds the chain described at the top of the file and connects.
  void BuildThreeLevelChain() {
    ASSERT_TRUE(SetUpServer({.up_to = Stage::kServing}));
    {
      NbdHandle h = server_.Connect();
      ASSERT_TRUE(h);
      ASSERT_TRUE(WritePattern(h.get(), kBeforeSnap, kLen, 1));
      ASSERT_TRUE(WritePattern(h.get(), kTrimmed, kLen, 2));
      ASSERT_EQ(nbd_flush(h.get(), 0), 0);
    }
    ASSERT_TRUE(server_.Stop());
    ASSERT_TRUE(server_.Snapshot("s1"));
    ASSERT_TRUE(server_.Start());
    h_ = server_.Connect(WithContexts());
    ASSERT_TRUE(h_);
    ASSERT_TRUE(WritePattern(h_.get(), kAfterSnap, kLen, 3));
    ASSERT_EQ(nbd_zero(h_.get(), kLen, kZeroed, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_trim(h_.get(), kLen, kTrimmed, 0), 0) << nbd_get_error();
  }

  int64_t Alloc(uint64_t off, uint64_t len) {
    return UniformStatus(h_.get(), "base:allocation", off, len);
  }
  int64_t Depth(uint64_t off, uint64_t len) {
    return UniformStatus(h_.get(), server_.LayerContext(), off, len);
  }
};

// Written data is allocated and not known-zero.
TEST_F(BlockStatusTest, WrittenRangesAreDataInBaseAllocation) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  BuildThreeLevelChain();
  EXPECT_EQ(Alloc(kAfterSnap, kLen), 0) << "written in the active layer";
  EXPECT_EQ(Alloc(kBeforeSnap, kLen), 0) << "written in the frozen layer s1";
}

// Zeroed ranges say ZERO (strata zeroes in the index, issue 3), and read as zeros.
TEST_F(BlockStatusTest, ZeroedRangeIsReportedZero) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  BuildThreeLevelChain();
  int64_t s = Alloc(kZeroed, kLen);
  ASSERT_GE(s, 0) << "zeroed range reported with mixed status";
  EXPECT_TRUE(s & LIBNBD_STATE_ZERO) << "status " << s;
  EXPECT_TRUE(ReadsZero(h_.get(), kZeroed, kLen));
}

// Trimmed ranges read as zeros and say so (trim over data in a lower layer must not re-expose
// it).
TEST_F(BlockStatusTest, TrimmedRangeIsReportedZero) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  BuildThreeLevelChain();
  int64_t s = Alloc(kTrimmed, kLen);
  ASSERT_GE(s, 0) << "trimmed range reported with mixed status";
  EXPECT_TRUE(s & LIBNBD_STATE_ZERO) << "status " << s;
  EXPECT_TRUE(ReadsZero(h_.get(), kTrimmed, kLen));
}

// The layer context names who answers each range: the active layer (1) for everything changed
// since the snapshot (written, zeroed, trimmed), the frozen snapshot (2) for what was written
// before it, and the raw base (3) for what nobody overwrote.
TEST_F(BlockStatusTest, LayerDepthNamesTheAnsweringLayer) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "no layer context on this server";
  BuildThreeLevelChain();
  EXPECT_EQ(Depth(kAfterSnap, kLen), 1);
  EXPECT_EQ(Depth(kZeroed, kLen), 1);
  EXPECT_EQ(Depth(kTrimmed, kLen), 1);
  EXPECT_EQ(Depth(kBeforeSnap, kLen), 2);
  EXPECT_EQ(Depth(kBaseOnly, kLen), 3);
  // Boundaries are exact: 4 KiB either side of a written range belongs to the base.
  EXPECT_EQ(Depth(kAfterSnap - 4096, 4096), 3);
  EXPECT_EQ(Depth(kAfterSnap + kLen, 4096), 3);
}

// Base-only data: allocated and not zero in base:allocation (it holds data); the base's sparse
// tail reads as zeros and must not be reported as data that is not zero.
TEST_F(BlockStatusTest, BaseOnlyRangesFollowTheBase) {
  ASSERT_TRUE(SetUpServer({.connect = WithContexts()}));
  int64_t s = Alloc(kBaseOnly, kLen);
  ASSERT_GE(s, 0);
  EXPECT_FALSE(s & LIBNBD_STATE_ZERO) << "base data reported as zeros";
  EXPECT_TRUE(ReadsZero(h_.get(), kBaseHole, kLen));
  if (server_.SupportsLayers()) {
    EXPECT_EQ(Depth(kBaseOnly, kLen), 2);
  }
}

// A disk without a base (`strata create --size`): every untouched range is a hole that reads as
// zeros, at depth 0; a write makes exactly its range data at depth 1.
TEST_F(BlockStatusTest, DiskWithoutBaseIsUnallocatedUntilWritten) {
  ASSERT_TRUE(SetUpServer({.chain = {.with_base = false}, .connect = WithContexts()}));
  EXPECT_EQ(Alloc(0, server_.disk_size()), LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  if (server_.SupportsLayers()) {
    EXPECT_EQ(Depth(0, server_.disk_size()), 0);
  }
  ASSERT_TRUE(WritePattern(h_.get(), 1 * kMiB, 128 * kKiB, 4));
  EXPECT_EQ(Alloc(1 * kMiB, 128 * kKiB), 0);
  EXPECT_EQ(Alloc(0, 1 * kMiB), LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  EXPECT_EQ(Alloc(1 * kMiB + 128 * kKiB, 1 * kMiB), LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  if (server_.SupportsLayers()) {
    EXPECT_EQ(Depth(1 * kMiB, 128 * kKiB), 1);
    EXPECT_EQ(Depth(2 * kMiB, 128 * kKiB), 0);
  }
}

// REQ_ONE: at most one extent per context, starting at the requested offset, not longer than
// the request.
TEST_F(BlockStatusTest, ReqOneReturnsOneExtentPerContext) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  BuildThreeLevelChain();
  int err = 0;
  auto got = BlockStatusOnce(h_.get(), kAfterSnap - 64 * kKiB, 8 * kMiB, LIBNBD_CMD_FLAG_REQ_ONE,
                             &err);
  ASSERT_EQ(err, 0) << nbd_get_error();
  ASSERT_EQ(got.count("base:allocation"), 1u);
  for (const auto& [ctx, extents] : got) {
    SCOPED_TRACE(ctx);
    ASSERT_EQ(extents.size(), 1u);
    EXPECT_EQ(extents[0].offset, kAfterSnap - 64 * kKiB);
    EXPECT_GT(extents[0].length, 0u);
    EXPECT_LE(extents[0].length, 8 * kMiB);
  }
}

// Without REQ_ONE the descriptors are consecutive from the offset and never extend past the
// request; the request's tail end may be answered in a later call.
TEST_F(BlockStatusTest, ExtentsAreConsecutiveAndInsideTheRequest) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  BuildThreeLevelChain();
  const uint64_t off = kBeforeSnap - 12 * kKiB, len = 6 * kMiB + 4096;
  int err = 0;
  auto got = BlockStatusOnce(h_.get(), off, len, 0, &err);
  ASSERT_EQ(err, 0) << nbd_get_error();
  for (const auto& [ctx, extents] : got) {
    SCOPED_TRACE(ctx);
    ASSERT_FALSE(extents.empty());
    uint64_t pos = off;
    for (const auto& e : extents) {
      EXPECT_EQ(e.offset, pos);
      EXPECT_GT(e.length, 0u);
      pos += e.length;
    }
    // libnbd tolerates the server's last extent running past the request; the spec does not.
    EXPECT_LE(pos, off + len) << "extents run past the end of the request";
  }
}

// The property every consumer relies on: whatever says ZERO reads as zeros. Checked over the
// whole disk after a random mix of writes, zeroes and trims.
TEST_F(BlockStatusTest, EveryZeroExtentReadsAsZeros) {
  ASSERT_TRUE(SetUpServer({.connect = WithContexts()}));
  std::mt19937_64 rng(42);  // fixed seed: a failure reproduces
  for (int i = 0; i < 200; i++) {
    uint64_t off = (rng() % (server_.disk_size() / 512 - 256)) * 512;
    uint64_t len = (1 + rng() % 256) * 512;
    switch (rng() % 3) {
      case 0: ASSERT_TRUE(WritePattern(h_.get(), off, len, i)); break;
      case 1: ASSERT_EQ(nbd_zero(h_.get(), len, off, 0), 0) << nbd_get_error(); break;
      case 2: ASSERT_EQ(nbd_trim(h_.get(), len, off, 0), 0) << nbd_get_error(); break;
    }
  }
  auto extents = BlockStatus(h_.get(), "base:allocation", 0, server_.disk_size());
  uint64_t covered = 0;
  std::vector<uint8_t> buf;
  for (const auto& e : extents) {
    covered += e.length;
    if (!(e.flags & LIBNBD_STATE_ZERO)) continue;
    buf.resize(e.length);
    ASSERT_EQ(nbd_pread(h_.get(), buf.data(), e.length, e.offset, 0), 0) << nbd_get_error();
    ASSERT_TRUE(AllZero(buf.data(), e.length))
        << "extent @" << e.offset << "+" << e.length << " says ZERO but holds data";
  }
  EXPECT_EQ(covered, server_.disk_size());
}

// BLOCK_STATUS is refused (EINVAL) past the end of the disk, and the connection goes on.
TEST_F(BlockStatusTest, PastEndIsEinval) {
  ConnectOptions past_end = WithContexts();
  past_end.strict = false;
  ASSERT_TRUE(SetUpServer({.connect = past_end}));
  int err = 0;
  BlockStatusOnce(h_.get(), server_.disk_size(), 4096, 0, &err);
  EXPECT_EQ(err, EINVAL) << nbd_get_error();
  EXPECT_EQ(Alloc(0, 4096), 0);
}

}  // namespace
}  // namespace strata_test
