// Multi-connection coherence: the promise behind NBD_FLAG_CAN_MULTI_CONN that QEMU and nbdcopy
// rely on when they open several connections: a write completed on one connection and covered
// by a FLUSH on any connection is visible (and durable) through every connection.
#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

// Served; each test opens its own connections.
class MultiConnTest : public ServerTest {
 protected:
  MultiConnTest() : ServerTest({.up_to = Stage::kServing}) {}
};

// Every connection is told CAN_MULTI_CONN (a client only fans out when all of them say so).
TEST_F(MultiConnTest, CanMultiConnIsAdvertisedOnEveryConnection) {
  for (int i = 0; i < 4; i++) {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    EXPECT_EQ(nbd_can_multi_conn(h.get()), 1) << "connection " << i;
  }
}

// Write on A, flush on B, read on C (all three open at once): C sees A's data.
TEST_F(MultiConnTest, WriteOnAFlushOnBReadOnC) {
  NbdHandle a = server_.Connect(), b = server_.Connect(), c = server_.Connect();
  ASSERT_TRUE(a && b && c);
  // C reads the range first, so a per-connection cache would hold the old base data.
  EXPECT_TRUE(ReadsBase(c.get(), 1 * kMiB, 256 * kKiB));
  ASSERT_TRUE(WritePattern(a.get(), 1 * kMiB, 256 * kKiB, 1));
  ASSERT_EQ(nbd_flush(b.get(), 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsPattern(c.get(), 1 * kMiB, 256 * kKiB, 1));
  // Zeroes and trims are writes too.
  ASSERT_EQ(nbd_zero(a.get(), 64 * kKiB, 1 * kMiB, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_trim(b.get(), 64 * kKiB, 1 * kMiB + 64 * kKiB, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_flush(c.get(), 0), 0) << nbd_get_error();
  EXPECT_TRUE(ReadsZero(c.get(), 1 * kMiB, 128 * kKiB));
  EXPECT_TRUE(ReadsPattern(a.get(), 1 * kMiB + 128 * kKiB, 128 * kKiB, 1));
}

// The flush on B makes A's completed writes durable: kill -9 the server after B's flush, and
// the data is there after restart.
TEST_F(MultiConnTest, FlushOnOtherConnectionMakesWritesDurable) {
  {
    NbdHandle a = server_.Connect(), b = server_.Connect();
    ASSERT_TRUE(a && b);
    ASSERT_TRUE(WritePattern(a.get(), 2 * kMiB, 512 * kKiB, 2));
    ASSERT_EQ(nbd_flush(b.get(), 0), 0) << nbd_get_error();
    server_.Kill9();
  }
  ASSERT_TRUE(server_.Start());
  NbdHandle c = server_.Connect();
  ASSERT_TRUE(c);
  EXPECT_TRUE(ReadsPattern(c.get(), 2 * kMiB, 512 * kKiB, 2));
  c.reset();
  ASSERT_TRUE(server_.Stop());
  std::string out;
  EXPECT_TRUE(server_.Check(&out)) << out;
}

// Four connections writing disjoint stripes concurrently from four threads (what nbdcopy
// --connections=4 does), then each stripe read back through a different connection.
TEST_F(MultiConnTest, ConcurrentWritersOnFourConnectionsAreCoherent) {
  constexpr int kConns = 4;
  constexpr uint64_t kStripe = 4 * kMiB;
  std::vector<NbdHandle> hs;
  for (int i = 0; i < kConns; i++) {
    hs.push_back(server_.Connect());
    ASSERT_TRUE(hs.back());
  }
  std::vector<std::thread> threads;
  std::vector<int> failures(kConns, 0);
  for (int i = 0; i < kConns; i++) {
    threads.emplace_back([&, i] {
      // 64 KiB writes interleaved across stripes so connections touch neighbouring clusters.
      for (uint64_t off = 0; off < kStripe; off += 64 * kKiB) {
        uint64_t pos = (off / (64 * kKiB)) * kConns * 64 * kKiB + i * 64 * kKiB;
        auto data = Pattern(pos, 64 * kKiB, 10);
        if (nbd_pwrite(hs[i].get(), data.data(), data.size(), pos, 0) != 0) failures[i]++;
      }
    });
  }
  for (auto& t : threads) t.join();
  for (int i = 0; i < kConns; i++) EXPECT_EQ(failures[i], 0) << "connection " << i;
  ASSERT_EQ(nbd_flush(hs[0].get(), 0), 0);
  for (int i = 0; i < kConns; i++) {
    EXPECT_TRUE(ReadsPattern(hs[(i + 1) % kConns].get(), i * kStripe, kStripe, 10));
  }
}

// Many clients connecting and leaving while one keeps working: connection churn must not
// disturb an established session (a shared ring or a worker hand-off bug shows here).
TEST_F(MultiConnTest, ConnectionChurnDoesNotDisturbOtherSessions) {
  NbdHandle steady = server_.Connect();
  ASSERT_TRUE(steady);
  std::atomic<bool> stop{false};
  std::atomic<int> churned{0};
  std::thread churn([&] {
    auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (!stop && std::chrono::steady_clock::now() < deadline) {
      NbdHandle h = server_.Connect();
      if (!h) break;
      std::vector<uint8_t> buf(4096);
      nbd_pread(h.get(), buf.data(), buf.size(), 0, 0);
      if (churned % 2 == 0) nbd_shutdown(h.get(), 0);  // clean NBD_CMD_DISC vs abrupt close
      churned++;
    }
  });
  for (int i = 0; i < 64; i++) {
    ASSERT_TRUE(WritePattern(steady.get(), 8 * kMiB + i * 64 * kKiB, 64 * kKiB, 20 + i));
    ASSERT_TRUE(ReadsPattern(steady.get(), 8 * kMiB + i * 64 * kKiB, 64 * kKiB, 20 + i));
  }
  stop = true;
  churn.join();
  EXPECT_GT(churned.load(), 0);
  EXPECT_TRUE(server_.Alive());
}

}  // namespace
}  // namespace strata_test
