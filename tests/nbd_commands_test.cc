// Every NBD command and flag against a chain (raw base with a known pattern + an active layer):
// the copy-on-write cases are where a layered server goes wrong (a partial write must keep the
// rest of the block from the base; zeroing must hide the base; a split read must be reassembled).
#include <cerrno>
#include <cstring>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

// The default chain, served, h_ connected with structured replies and base:allocation.
class CommandsTest : public ServerTest {};

// Reads of untouched ranges come from the raw base, through the empty active layer, including
// one read crossing the end of the base's data into its sparse tail.
TEST_F(CommandsTest, UntouchedRangesReadFromTheBase) {
  EXPECT_TRUE(ReadsBase(h_.get(), 0, 1 * kMiB));
  EXPECT_TRUE(ReadsBase(h_.get(), 12345, 54321));
  uint64_t data_end = server_.chain().base_data;
  std::vector<uint8_t> buf(128 * kKiB);
  ASSERT_EQ(nbd_pread(h_.get(), buf.data(), buf.size(), data_end - 64 * kKiB, 0), 0)
      << nbd_get_error();
  std::vector<uint8_t> want(buf.size(), 0);
  FillBase(want.data(), data_end - 64 * kKiB, 64 * kKiB);
  EXPECT_EQ(FirstMismatch(buf.data(), want.data(), buf.size()), -1);
}

// Aligned writes read back and leave their neighbours (base data) alone.
TEST_F(CommandsTest, AlignedWriteReadsBackNeighboursUntouched) {
  ASSERT_TRUE(WritePattern(h_.get(), 128 * kKiB, 64 * kKiB, 1));
  EXPECT_TRUE(ReadsPattern(h_.get(), 128 * kKiB, 64 * kKiB, 1));
  EXPECT_TRUE(ReadsBase(h_.get(), 64 * kKiB, 64 * kKiB));
  EXPECT_TRUE(ReadsBase(h_.get(), 192 * kKiB, 64 * kKiB));
}

// A 512-byte write inside a 4 KiB sub-block over base data: the other 3.5 KiB of that block must
// still read from the base (a sub-block bitmap that marks the whole 4 KiB present without
// copying the rest would read garbage or zeros there).
TEST_F(CommandsTest, SectorWriteInsideSubBlockKeepsBaseAround) {
  const uint64_t off = 1 * kMiB + 4096 + 1024;  // cluster 16, sub-block 1, sector 2
  ASSERT_TRUE(WritePattern(h_.get(), off, 512, 2));
  EXPECT_TRUE(ReadsPattern(h_.get(), off, 512, 2));
  EXPECT_TRUE(ReadsBase(h_.get(), 1 * kMiB, 4096 + 1024));
  EXPECT_TRUE(ReadsBase(h_.get(), off + 512, 64 * kKiB - 4096 - 1024 - 512));
  // A second sector in the same sub-block keeps the first one.
  ASSERT_TRUE(WritePattern(h_.get(), off + 2048, 512, 3));
  EXPECT_TRUE(ReadsPattern(h_.get(), off, 512, 2));
  EXPECT_TRUE(ReadsPattern(h_.get(), off + 2048, 512, 3));
  EXPECT_TRUE(ReadsBase(h_.get(), off + 512, 1536));
}

// Byte-granular writes (if the server's minimum block size allows them) merge with the base.
TEST_F(CommandsTest, ByteUnalignedWriteMergesWithBase) {
  int64_t min = nbd_get_block_size(h_.get(), LIBNBD_SIZE_MINIMUM);
  if (min > 1) GTEST_SKIP() << "server's minimum block size is " << min;
  const uint64_t off = 3 * kMiB + 777;
  ASSERT_TRUE(WritePattern(h_.get(), off, 3001, 4));
  EXPECT_TRUE(ReadsPattern(h_.get(), off, 3001, 4));
  EXPECT_TRUE(ReadsBase(h_.get(), 3 * kMiB, 777));
  EXPECT_TRUE(ReadsBase(h_.get(), off + 3001, 8192));
}

// One write spanning several 64 KiB clusters, starting and ending mid-cluster.
TEST_F(CommandsTest, WriteSpanningClustersUnalignedToClusters) {
  const uint64_t off = 4 * kMiB + 60 * kKiB;
  ASSERT_TRUE(WritePattern(h_.get(), off, 200 * kKiB, 5));
  EXPECT_TRUE(ReadsBase(h_.get(), 4 * kMiB, 60 * kKiB));
  EXPECT_TRUE(ReadsPattern(h_.get(), off, 200 * kKiB, 5));
  EXPECT_TRUE(ReadsBase(h_.get(), off + 200 * kKiB, 64 * kKiB));
  // Overwrite the middle; ends stay.
  ASSERT_TRUE(WritePattern(h_.get(), off + 50 * kKiB, 100 * kKiB, 6));
  EXPECT_TRUE(ReadsPattern(h_.get(), off, 50 * kKiB, 5));
  EXPECT_TRUE(ReadsPattern(h_.get(), off + 50 * kKiB, 100 * kKiB, 6));
  EXPECT_TRUE(ReadsPattern(h_.get(), off + 150 * kKiB, 50 * kKiB, 5));
}

// FUA writes and FLUSH succeed and the data reads back (durability itself: nbd_restart_test).
TEST_F(CommandsTest, FuaWriteAndFlushSucceed) {
  ASSERT_TRUE(WritePattern(h_.get(), 5 * kMiB, 64 * kKiB, 7, LIBNBD_CMD_FLAG_FUA));
  ASSERT_EQ(nbd_flush(h_.get(), 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(h_.get(), 5 * kMiB, 64 * kKiB, 7));
}

// WRITE_ZEROES over base data hides the base (in the layer, not by writing zeros into the base);
// an unaligned zero keeps the base around it.
TEST_F(CommandsTest, WriteZeroesHidesBaseData) {
  ASSERT_EQ(nbd_zero(h_.get(), 256 * kKiB, 6 * kMiB, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), 6 * kMiB, 256 * kKiB));
  EXPECT_TRUE(ReadsBase(h_.get(), 6 * kMiB - 4096, 4096));
  EXPECT_TRUE(ReadsBase(h_.get(), 6 * kMiB + 256 * kKiB, 4096));
  ASSERT_EQ(nbd_zero(h_.get(), 1024, 7 * kMiB + 512, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsBase(h_.get(), 7 * kMiB, 512));
  EXPECT_TRUE(ReadsZero(h_.get(), 7 * kMiB + 512, 1024));
  EXPECT_TRUE(ReadsBase(h_.get(), 7 * kMiB + 1536, 4096 - 1536));
}

// NO_HOLE asks for allocated zeros; the content is the same, and written data gets zeroed too.
TEST_F(CommandsTest, WriteZeroesNoHoleZeroesWrittenData) {
  ASSERT_TRUE(WritePattern(h_.get(), 8 * kMiB, 128 * kKiB, 8));
  ASSERT_EQ(nbd_zero(h_.get(), 128 * kKiB, 8 * kMiB, LIBNBD_CMD_FLAG_NO_HOLE), 0)
      << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), 8 * kMiB, 128 * kKiB));
  ASSERT_EQ(nbd_zero(h_.get(), 64 * kKiB, 9 * kMiB, LIBNBD_CMD_FLAG_NO_HOLE | LIBNBD_CMD_FLAG_FUA),
            0)
      << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), 9 * kMiB, 64 * kKiB));
}

// FAST_ZERO: either zero quickly or fail at once with ENOTSUP and change nothing. (The spec lets
// the server refuse; it must never answer with a slow success it promised not to do, which a
// test cannot time reliably, so only the two allowed outcomes are checked.)
TEST_F(CommandsTest, FastZeroZeroesOrRefusesWithEnotsup) {
  if (nbd_can_fast_zero(h_.get()) != 1) GTEST_SKIP() << "server does not advertise FAST_ZERO";
  ASSERT_TRUE(WritePattern(h_.get(), 10 * kMiB, 64 * kKiB, 9));
  int r = nbd_zero(h_.get(), 64 * kKiB, 10 * kMiB, LIBNBD_CMD_FLAG_FAST_ZERO);
  if (r == 0) {
    EXPECT_TRUE(ReadsZero(h_.get(), 10 * kMiB, 64 * kKiB));
  } else {
    EXPECT_EQ(nbd_get_errno(), ENOTSUP) << nbd_get_error();
    EXPECT_TRUE(ReadsPattern(h_.get(), 10 * kMiB, 64 * kKiB, 9));
  }
  // Over base-only data (no allocation in the layer) the same holds.
  r = nbd_zero(h_.get(), 64 * kKiB, 11 * kMiB, LIBNBD_CMD_FLAG_FAST_ZERO);
  if (r == 0) {
    EXPECT_TRUE(ReadsZero(h_.get(), 11 * kMiB, 64 * kKiB));
  } else {
    EXPECT_EQ(nbd_get_errno(), ENOTSUP) << nbd_get_error();
    EXPECT_TRUE(ReadsBase(h_.get(), 11 * kMiB, 64 * kKiB));
  }
}

// TRIM succeeds, never disturbs data outside the range, and the trimmed range reads as zeros:
// strata makes trim first-class ("reads as zeros", issue 3), so a trim over base data must not
// re-expose the base. (The NBD spec alone would allow any content after TRIM.)
TEST_F(CommandsTest, TrimReadsZerosAndLeavesNeighbours) {
  ASSERT_TRUE(WritePattern(h_.get(), 12 * kMiB, 256 * kKiB, 10));
  ASSERT_EQ(nbd_trim(h_.get(), 128 * kKiB, 12 * kMiB + 64 * kKiB, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(h_.get(), 12 * kMiB, 64 * kKiB, 10));
  EXPECT_TRUE(ReadsPattern(h_.get(), 12 * kMiB + 192 * kKiB, 64 * kKiB, 10));
  EXPECT_TRUE(ReadsZero(h_.get(), 12 * kMiB + 64 * kKiB, 128 * kKiB));
  // Trim over base-only data, with FUA.
  ASSERT_EQ(nbd_trim(h_.get(), 64 * kKiB, 13 * kMiB, LIBNBD_CMD_FLAG_FUA), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), 13 * kMiB, 64 * kKiB));
  EXPECT_TRUE(ReadsBase(h_.get(), 13 * kMiB + 64 * kKiB, 4096));
  // Writing after a trim works as on fresh space.
  ASSERT_TRUE(WritePattern(h_.get(), 12 * kMiB + 96 * kKiB, 4096, 11));
  EXPECT_TRUE(ReadsPattern(h_.get(), 12 * kMiB + 96 * kKiB, 4096, 11));
  EXPECT_TRUE(ReadsZero(h_.get(), 12 * kMiB + 100 * kKiB, 4096));
}

// CACHE is a hint: it succeeds (also on base-only data and with a large range) and changes
// nothing.
TEST_F(CommandsTest, CacheSucceedsAndChangesNothing) {
  if (nbd_can_cache(h_.get()) != 1) GTEST_SKIP() << "server does not advertise CACHE";
  ASSERT_TRUE(WritePattern(h_.get(), 14 * kMiB, 64 * kKiB, 12));
  ASSERT_EQ(nbd_cache(h_.get(), 1 * kMiB, 14 * kMiB, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_cache(h_.get(), 16 * kMiB, 0, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(h_.get(), 14 * kMiB, 64 * kKiB, 12));
  EXPECT_TRUE(ReadsBase(h_.get(), 14 * kMiB + 64 * kKiB, 64 * kKiB));
}

struct Chunk {
  uint64_t offset;
  size_t count;
  unsigned status;
  bool zero;
};

std::vector<Chunk> ReadChunks(nbd_handle* h, std::vector<uint8_t>* buf, uint64_t off,
                              uint32_t flags, int* rc) {
  std::vector<Chunk> chunks;
  nbd_chunk_callback cb = {
      .callback = [](void* user, const void* subbuf, size_t count, uint64_t offset,
                     unsigned status, int*) -> int {
        static_cast<std::vector<Chunk>*>(user)->push_back(
            {offset, count, status, AllZero(static_cast<const uint8_t*>(subbuf), count)});
        return 0;
      },
      .user_data = &chunks,
      .free = nullptr,
  };
  *rc = nbd_pread_structured(h, buf->data(), buf->size(), off, cb, flags);
  return chunks;
}

// A structured read over data + zeroed + base ranges: chunks lie inside the request, do not
// overlap, cover it all, and hole chunks read as zeros (libnbd reassembles; this checks what
// the server sent).
TEST_F(CommandsTest, StructuredReadChunksCoverRequestWithoutOverlap) {
  if (nbd_get_structured_replies_negotiated(h_.get()) != 1) GTEST_SKIP();
  ASSERT_TRUE(WritePattern(h_.get(), 16 * kMiB, 64 * kKiB, 13));
  ASSERT_EQ(nbd_zero(h_.get(), 128 * kKiB, 16 * kMiB + 64 * kKiB, 0), 0) << nbd_get_error();
  std::vector<uint8_t> buf(512 * kKiB);
  int rc;
  auto chunks = ReadChunks(h_.get(), &buf, 16 * kMiB, 0, &rc);
  ASSERT_EQ(rc, 0) << nbd_get_error();
  std::vector<int> covered(buf.size(), 0);
  for (const auto& c : chunks) {
    ASSERT_GE(c.offset, 16 * kMiB);
    ASSERT_LE(c.offset + c.count, 16 * kMiB + buf.size());
    for (size_t i = 0; i < c.count; i++) covered[c.offset - 16 * kMiB + i]++;
    if (c.status == LIBNBD_READ_HOLE) {
      EXPECT_TRUE(c.zero) << "hole chunk @" << c.offset;
    }
  }
  for (size_t i = 0; i < covered.size(); i++) {
    ASSERT_EQ(covered[i], 1) << "byte " << 16 * kMiB + i << " covered " << covered[i] << " times";
  }
  std::vector<uint8_t> want(buf.size(), 0);
  FillPattern(want.data(), 16 * kMiB, 64 * kKiB, 13);
  FillBase(want.data() + 192 * kKiB, 16 * kMiB + 192 * kKiB, 320 * kKiB);
  EXPECT_EQ(FirstMismatch(buf.data(), want.data(), buf.size()), -1);
}

// DF ("don't fragment"): at most one content chunk, even over data + hole, and it holds the
// right bytes (zeros explicitly present). The spec requires DF reads up to 64 KiB to work; a
// larger one may fail with EOVERFLOW only.
TEST_F(CommandsTest, DontFragmentReadReturnsOneChunk) {
  if (nbd_can_df(h_.get()) != 1) GTEST_SKIP() << "server does not advertise DF";
  ASSERT_TRUE(WritePattern(h_.get(), 17 * kMiB, 16 * kKiB, 14));
  ASSERT_EQ(nbd_zero(h_.get(), 32 * kKiB, 17 * kMiB + 16 * kKiB, 0), 0) << nbd_get_error();
  for (size_t len : {size_t{64 * kKiB}, size_t{1 * kMiB}}) {
    SCOPED_TRACE("DF read of " + std::to_string(len));
    std::vector<uint8_t> buf(len);
    int rc;
    auto chunks = ReadChunks(h_.get(), &buf, 17 * kMiB, LIBNBD_CMD_FLAG_DF, &rc);
    if (rc != 0) {
      ASSERT_GT(len, 64 * kKiB) << "a DF read of <= 64 KiB must succeed: " << nbd_get_error();
      EXPECT_EQ(nbd_get_errno(), EOVERFLOW) << nbd_get_error();
      continue;
    }
    ASSERT_EQ(chunks.size(), 1u) << "DF read came back in " << chunks.size() << " chunks";
    EXPECT_EQ(chunks[0].status, static_cast<unsigned>(LIBNBD_READ_DATA));
    EXPECT_EQ(chunks[0].count, len);
    std::vector<uint8_t> want(len, 0);
    FillPattern(want.data(), 17 * kMiB, 16 * kKiB, 14);
    FillBase(want.data() + 48 * kKiB, 17 * kMiB + 48 * kKiB, len - 48 * kKiB);
    EXPECT_EQ(FirstMismatch(buf.data(), want.data(), len), -1);
  }
}

// FUA on commands that do not write (the spec says existing clients send it) is accepted.
TEST_F(CommandsTest, FuaOnReadIsAccepted) {
  uint32_t strict = nbd_get_strict_mode(h_.get());
  nbd_set_strict_mode(h_.get(), strict & ~LIBNBD_STRICT_FLAGS);
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(nbd_pread(h_.get(), buf.data(), buf.size(), 0, LIBNBD_CMD_FLAG_FUA), 0)
      << nbd_get_error();
  std::vector<uint8_t> want(4096);
  FillBase(want.data(), 0, 4096);
  EXPECT_EQ(FirstMismatch(buf.data(), want.data(), 4096), -1);
}

}  // namespace
}  // namespace strata_test
