// Edges of the request space: out-of-range requests get the errno the NBD spec names (and the
// connection goes on), 32 MiB requests (the maximum payload QEMU and the kernel use) work, and
// many requests in flight on one connection complete with the right data even though the
// server may process and reply to them out of order.
#include <poll.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

class LimitsTest : public ServerTest {
 protected:
  // Out-of-range requests reach the server instead of libnbd refusing them itself.
  LimitsTest() : ServerTest({.connect = {.strict = false}}) {}

  // The connection still works after an error.
  void ExpectStillServing() {
    EXPECT_TRUE(ReadsBase(h_.get(), 0, 4096));
    EXPECT_TRUE(server_.Alive());
  }

  const uint64_t size_ = ChainOptions{}.disk_size;  // the disk the fixture serves
};

// Spec, "Error values": a read past the end is invalid (EINVAL); a write past the end SHOULD
// be ENOSPC. Both for a request straddling the end and one starting at it.
TEST_F(LimitsTest, ReadPastEndIsEinval) {
  std::vector<uint8_t> buf(8192);
  EXPECT_EQ(nbd_pread(h_.get(), buf.data(), 8192, size_ - 4096, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << nbd_get_error();
  EXPECT_EQ(nbd_pread(h_.get(), buf.data(), 4096, size_, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << nbd_get_error();
  ExpectStillServing();
}

TEST_F(LimitsTest, WritePastEndIsEnospcAndWritesNothing) {
  std::vector<uint8_t> buf = Pattern(size_ - 4096, 8192, 1);
  EXPECT_EQ(nbd_pwrite(h_.get(), buf.data(), 8192, size_ - 4096, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC) << nbd_get_error();
  EXPECT_EQ(nbd_pwrite(h_.get(), buf.data(), 4096, size_, LIBNBD_CMD_FLAG_FUA), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC) << nbd_get_error();
  // The straddling write was refused as a whole: the last block in range is untouched (zero,
  // from the base's sparse tail).
  EXPECT_TRUE(ReadsZero(h_.get(), size_ - 4096, 4096));
  ExpectStillServing();
}

// WRITE_ZEROES and TRIM past the end modify the disk too: ENOSPC (as a write) or EINVAL are the
// answers a client can act on; either way nothing in range changes.
TEST_F(LimitsTest, ZeroAndTrimPastEndFail) {
  ASSERT_TRUE(WritePattern(h_.get(), size_ - 4096, 4096, 2));
  EXPECT_EQ(nbd_zero(h_.get(), 8192, size_ - 4096, 0), -1);
  EXPECT_TRUE(nbd_get_errno() == ENOSPC || nbd_get_errno() == EINVAL) << nbd_get_error();
  EXPECT_EQ(nbd_trim(h_.get(), 8192, size_ - 4096, 0), -1);
  EXPECT_TRUE(nbd_get_errno() == ENOSPC || nbd_get_errno() == EINVAL) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(h_.get(), size_ - 4096, 4096, 2));
  ExpectStillServing();
}

// offset + length overflowing 64 bits must not wrap around to a valid range.
TEST_F(LimitsTest, OffsetPlusLengthOverflowIsRefused) {
  std::vector<uint8_t> buf(4096);
  EXPECT_EQ(nbd_pread(h_.get(), buf.data(), 4096, UINT64_MAX - 1024, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL) << nbd_get_error();
  EXPECT_EQ(nbd_pwrite(h_.get(), buf.data(), 4096, UINT64_MAX - 1024, 0), -1);
  EXPECT_TRUE(nbd_get_errno() == ENOSPC || nbd_get_errno() == EINVAL) << nbd_get_error();
  ExpectStillServing();
}

// The last byte of the disk is reachable (off-by-one at the end of the index).
TEST_F(LimitsTest, LastBlockOfTheDiskIsUsable) {
  ASSERT_TRUE(WritePattern(h_.get(), size_ - 512, 512, 3));
  EXPECT_TRUE(ReadsPattern(h_.get(), size_ - 512, 512, 3));
  ASSERT_EQ(nbd_zero(h_.get(), 4096, size_ - 4096, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), size_ - 4096, 4096));
}

// 32 MiB is the maximum payload: a read and a write of exactly that size work, at the start
// (over base data) and ending exactly at the end of the disk.
TEST_F(LimitsTest, MaxSizeRequestsWork) {
  const size_t kMax = 32 * kMiB;
  EXPECT_TRUE(ReadsBase(h_.get(), 0, kMax));
  ASSERT_TRUE(WritePattern(h_.get(), 0, kMax, 4));
  EXPECT_TRUE(ReadsPattern(h_.get(), 0, kMax, 4));
  ASSERT_TRUE(WritePattern(h_.get(), size_ - kMax, kMax, 5));
  EXPECT_TRUE(ReadsPattern(h_.get(), size_ - kMax, kMax, 5));
  // Zero and trim of the whole disk in one request (no payload, so no 32 MiB limit applies).
  ASSERT_EQ(nbd_zero(h_.get(), size_, 0, 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsZero(h_.get(), 0, kMax));
}

// 128 writes then 128 reads in flight at once on one connection (QEMU runs up to 16 per
// connection, fio and the kernel many more), each verified: catches replies matched to the wrong
// handle, torn payloads, and writes of one request interleaved with another's reply.
TEST_F(LimitsTest, ManyRequestsInFlightCompleteWithRightData) {
  constexpr int kN = 128;
  constexpr size_t kBlock = 64 * kKiB;
  std::vector<std::vector<uint8_t>> out(kN), in(kN);
  std::vector<int64_t> cookies;
  std::mt19937 rng(7);
  std::vector<uint64_t> offsets;
  for (int i = 0; i < kN; i++) offsets.push_back(static_cast<uint64_t>(i) * 2 * kBlock);
  std::shuffle(offsets.begin(), offsets.end(), rng);
  for (int i = 0; i < kN; i++) {
    // Mixed sizes so replies of different lengths interleave.
    size_t len = (i % 3 == 0) ? kBlock : (i % 3 == 1) ? 4096 : 12288;
    out[i] = Pattern(offsets[i], len, 100 + i);
    int64_t c = nbd_aio_pwrite(h_.get(), out[i].data(), len, offsets[i], NBD_NULL_COMPLETION,
                               (i % 8 == 0) ? LIBNBD_CMD_FLAG_FUA : 0);
    ASSERT_NE(c, -1) << nbd_get_error();
    cookies.push_back(c);
  }
  EXPECT_GE(nbd_aio_in_flight(h_.get()), 64);
  ASSERT_TRUE(DrainAio(h_.get(), 60));
  for (int64_t c : cookies) {
    EXPECT_EQ(nbd_aio_command_completed(h_.get(), c), 1) << "write " << c << ": "
                                                         << nbd_get_error();
  }
  cookies.clear();
  for (int i = 0; i < kN; i++) {
    // Reads cover each write plus 4 KiB of the base after it.
    in[i].assign(out[i].size() + 4096, 0xee);
    int64_t c = nbd_aio_pread(h_.get(), in[i].data(), in[i].size(), offsets[i],
                              NBD_NULL_COMPLETION, 0);
    ASSERT_NE(c, -1) << nbd_get_error();
    cookies.push_back(c);
  }
  EXPECT_GE(nbd_aio_in_flight(h_.get()), 64);
  ASSERT_TRUE(DrainAio(h_.get(), 60));
  for (int i = 0; i < kN; i++) {
    ASSERT_EQ(nbd_aio_command_completed(h_.get(), cookies[i]), 1) << nbd_get_error();
    std::vector<uint8_t> want = out[i];
    want.resize(out[i].size() + 4096);
    FillBase(want.data() + out[i].size(), offsets[i] + out[i].size(), 4096);
    int64_t bad = FirstMismatch(in[i].data(), want.data(), want.size());
    ASSERT_EQ(bad, -1) << "read " << i << " @" << offsets[i] << " wrong at +" << bad;
  }
}

// Overlapping writes in flight together, each followed by a FLUSH in the same batch: the final
// content must be one of the writes (never a mix within one 4 KiB block), and every request
// must succeed. Ordering between overlapping in-flight writes is the client's problem, but
// tearing inside one request's block is the server's.
TEST_F(LimitsTest, OverlappingWritesInFlightNeverTearBlocks) {
  constexpr int kN = 64;
  std::vector<std::vector<uint8_t>> out(kN);
  std::vector<int64_t> cookies;
  const uint64_t base = 20 * kMiB;
  for (int i = 0; i < kN; i++) {
    out[i].assign(64 * kKiB, static_cast<uint8_t>(i + 1));
    int64_t c = nbd_aio_pwrite(h_.get(), out[i].data(), out[i].size(), base,
                               NBD_NULL_COMPLETION, 0);
    ASSERT_NE(c, -1) << nbd_get_error();
    cookies.push_back(c);
    if (i % 16 == 15) {
      c = nbd_aio_flush(h_.get(), NBD_NULL_COMPLETION, 0);
      ASSERT_NE(c, -1);
      cookies.push_back(c);
    }
  }
  ASSERT_TRUE(DrainAio(h_.get(), 60));
  for (int64_t c : cookies) EXPECT_EQ(nbd_aio_command_completed(h_.get(), c), 1);
  std::vector<uint8_t> buf(64 * kKiB);
  ASSERT_EQ(nbd_pread(h_.get(), buf.data(), buf.size(), base, 0), 0) << nbd_get_error();
  for (size_t blk = 0; blk < buf.size(); blk += 4096) {
    uint8_t v = buf[blk];
    EXPECT_TRUE(v >= 1 && v <= kN) << "block +" << blk << " holds 0x" << std::hex << int{v};
    for (size_t j = 0; j < 4096; j++) {
      ASSERT_EQ(buf[blk + j], v) << "torn 4 KiB block at +" << blk + j;
    }
  }
}

}  // namespace
}  // namespace strata_test
