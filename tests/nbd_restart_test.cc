// Durability across server restarts (DESIGN.md: "every write acknowledged before a completed
// FLUSH (or with FUA) reads back" after a crash at any instant, and `strata check` passes).
// Clean stops (SIGTERM/SIGINT must finish in-flight requests and flush) and kill -9 both.
#include <signal.h>
#include <sys/wait.h>

#include <chrono>
#include <random>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

// Served; each test connects, stops and restarts as it needs.
class RestartTest : public ServerTest {
 protected:
  RestartTest() : ServerTest({.up_to = Stage::kServing}) {}

  void ExpectCheckPasses() {
    std::string out;
    EXPECT_TRUE(server_.Check(&out)) << "strata check after restart:\n" << out;
  }
};

// The basic promise: write, FLUSH, stop, start, read back. Then check passes.
TEST_F(RestartTest, FlushedDataSurvivesCleanRestart) {
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), 0, 4 * kMiB, 1));
    ASSERT_TRUE(WritePattern(h.get(), 10 * kMiB + 512, 3 * 512, 2));
    ASSERT_EQ(nbd_zero(h.get(), 1 * kMiB, 16 * kMiB, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_trim(h.get(), 64 * kKiB, 1 * kMiB, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_flush(h.get(), 0), 0) << nbd_get_error();
  }
  ASSERT_TRUE(server_.Stop());
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsPattern(h.get(), 0, 1 * kMiB, 1));
  EXPECT_TRUE(ReadsZero(h.get(), 1 * kMiB, 64 * kKiB));
  EXPECT_TRUE(ReadsPattern(h.get(), 1 * kMiB + 64 * kKiB, 3 * kMiB - 64 * kKiB, 1));
  EXPECT_TRUE(ReadsBase(h.get(), 10 * kMiB, 512));
  EXPECT_TRUE(ReadsPattern(h.get(), 10 * kMiB + 512, 3 * 512, 2));
  EXPECT_TRUE(ReadsBase(h.get(), 10 * kMiB + 2048, 2048));
  EXPECT_TRUE(ReadsZero(h.get(), 16 * kMiB, 1 * kMiB));
  EXPECT_TRUE(ReadsBase(h.get(), 17 * kMiB, 64 * kKiB));
}

// kill -9 right after FLUSH: no clean shutdown path runs, the flushed data must be on disk.
TEST_F(RestartTest, FlushedDataSurvivesKill9) {
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), 3 * kMiB, 2 * kMiB, 3));
    ASSERT_EQ(nbd_zero(h.get(), 64 * kKiB, 3 * kMiB, 0), 0);
    ASSERT_EQ(nbd_flush(h.get(), 0), 0) << nbd_get_error();
    server_.Kill9();
  }
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsZero(h.get(), 3 * kMiB, 64 * kKiB));
  EXPECT_TRUE(ReadsPattern(h.get(), 3 * kMiB + 64 * kKiB, 2 * kMiB - 64 * kKiB, 3));
}

// A FUA write is durable on its own, without a FLUSH.
TEST_F(RestartTest, FuaWriteSurvivesKill9) {
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), 6 * kMiB, 256 * kKiB, 4, LIBNBD_CMD_FLAG_FUA));
    ASSERT_TRUE(WritePattern(h.get(), 7 * kMiB + 4096, 4096, 5, LIBNBD_CMD_FLAG_FUA));
    server_.Kill9();
  }
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsPattern(h.get(), 6 * kMiB, 256 * kKiB, 4));
  EXPECT_TRUE(ReadsBase(h.get(), 7 * kMiB, 4096));
  EXPECT_TRUE(ReadsPattern(h.get(), 7 * kMiB + 4096, 4096, 5));
}

// Unflushed writes may be lost at kill -9, but the chain must still open and check clean, and
// every block must hold either the old or the new content (never garbage from a reused
// extent).
TEST_F(RestartTest, Kill9DuringUnflushedWritesLeavesOldOrNewContent) {
  constexpr int kN = 256;
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    std::vector<std::vector<uint8_t>> bufs(kN);
    for (int i = 0; i < kN; i++) {
      bufs[i] = Pattern(8 * kMiB + i * 64 * kKiB, 64 * kKiB, 6);
      ASSERT_NE(nbd_aio_pwrite(h.get(), bufs[i].data(), bufs[i].size(), 8 * kMiB + i * 64 * kKiB,
                               NBD_NULL_COMPLETION, 0),
                -1);
    }
    // Let some complete, then crash in the middle.
    for (int i = 0; i < 20 && nbd_aio_in_flight(h.get()) > kN / 2; i++) nbd_poll(h.get(), 50);
    server_.Kill9();
  }
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  std::vector<uint8_t> got(4096), base(4096), fresh(4096);
  for (uint64_t off = 8 * kMiB; off < 8 * kMiB + kN * 64 * kKiB; off += 4096) {
    ASSERT_EQ(nbd_pread(h.get(), got.data(), 4096, off, 0), 0) << nbd_get_error();
    FillBase(base.data(), off, 4096);
    FillPattern(fresh.data(), off, 4096, 6);
    bool ok = FirstMismatch(got.data(), base.data(), 4096) == -1 ||
              FirstMismatch(got.data(), fresh.data(), 4096) == -1;
    ASSERT_TRUE(ok) << "block @" << off << " is neither the base nor the written data";
  }
}

// SIGTERM: the server finishes what is in flight, flushes, and exits 0; everything it
// acknowledged is there after restart, without the client ever sending FLUSH.
TEST_F(RestartTest, SigtermFlushesAcknowledgedWritesAndExitsZero) {
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), 20 * kMiB, 4 * kMiB, 7));
    ASSERT_EQ(nbd_zero(h.get(), 128 * kKiB, 21 * kMiB, 0), 0);
    // The session is left open: shutdown must not wait for clients to leave.
    ASSERT_TRUE(server_.Stop());
  }
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsPattern(h.get(), 20 * kMiB, 1 * kMiB, 7));
  EXPECT_TRUE(ReadsZero(h.get(), 21 * kMiB, 128 * kKiB));
  EXPECT_TRUE(ReadsPattern(h.get(), 21 * kMiB + 128 * kKiB, 3 * kMiB - 128 * kKiB, 7));
}

// SIGTERM while requests are in flight: each one either completes successfully (and is then
// durable) or the connection closes; the server still exits 0 in bounded time.
TEST_F(RestartTest, SigtermWithRequestsInFlightExitsCleanly) {
  constexpr int kN = 128;
  std::vector<std::vector<uint8_t>> bufs(kN);
  std::vector<int64_t> cookies(kN);
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  for (int i = 0; i < kN; i++) {
    bufs[i] = Pattern(30 * kMiB + i * 64 * kKiB, 64 * kKiB, 8);
    cookies[i] = nbd_aio_pwrite(h.get(), bufs[i].data(), bufs[i].size(),
                                30 * kMiB + i * 64 * kKiB, NBD_NULL_COMPLETION, 0);
    ASSERT_NE(cookies[i], -1);
  }
  nbd_poll(h.get(), 0);  // push some of the requests out
  server_.Signal(SIGTERM);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
  while (nbd_aio_in_flight(h.get()) > 0 && std::chrono::steady_clock::now() < deadline) {
    if (nbd_poll(h.get(), 500) == -1) break;  // server closed the connection
  }
  int status = server_.WaitExit(20000);
  ASSERT_NE(status, -1) << "server did not exit within 20 s of SIGTERM\n" << server_.ServerLog();
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "wait status " << status << "\n"
                                                             << server_.ServerLog();
  std::vector<int> acked;
  for (int i = 0; i < kN; i++) {
    if (nbd_aio_command_completed(h.get(), cookies[i]) == 1) acked.push_back(i);
  }
  h.reset();
  ExpectCheckPasses();
  ASSERT_TRUE(server_.Start());
  NbdHandle h2 = server_.Connect();
  ASSERT_TRUE(h2);
  for (int i : acked) {
    EXPECT_TRUE(ReadsPattern(h2.get(), 30 * kMiB + i * 64 * kKiB, 64 * kKiB, 8))
        << "acknowledged write " << i << " lost across SIGTERM";
  }
}

// SIGINT behaves like SIGTERM (Ctrl-C on a foreground server).
TEST_F(RestartTest, SigintExitsZero) {
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  ASSERT_TRUE(WritePattern(h.get(), 40 * kMiB, 64 * kKiB, 9));
  server_.Signal(SIGINT);
  int status = server_.WaitExit(20000);
  ASSERT_NE(status, -1) << "server ignored SIGINT";
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << status;
  h.reset();
  ASSERT_TRUE(server_.Start());
  NbdHandle h2 = server_.Connect();
  ASSERT_TRUE(h2);
  EXPECT_TRUE(ReadsPattern(h2.get(), 40 * kMiB, 64 * kKiB, 9));
}

// Several restarts with a snapshot in between: data from every generation stays, check passes,
// and the offline export equals what the server served.
TEST_F(RestartTest, RestartsAndSnapshotKeepEveryGeneration) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  for (int gen = 0; gen < 3; gen++) {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), gen * 2 * kMiB, 1 * kMiB, 10 + gen));
    ASSERT_EQ(nbd_flush(h.get(), 0), 0);
    h.reset();
    ASSERT_TRUE(server_.Stop());
    if (gen == 1) {
      ASSERT_TRUE(server_.Snapshot("mid"));
    }
    ASSERT_TRUE(server_.Start());
  }
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  for (int gen = 0; gen < 3; gen++) {
    EXPECT_TRUE(ReadsPattern(h.get(), gen * 2 * kMiB, 1 * kMiB, 10 + gen));
    EXPECT_TRUE(ReadsBase(h.get(), gen * 2 * kMiB + 1 * kMiB, 1 * kMiB));
  }
  std::vector<uint8_t> served(server_.disk_size());
  for (uint64_t off = 0; off < served.size(); off += 32 * kMiB) {
    ASSERT_EQ(nbd_pread(h.get(), served.data() + off, 32 * kMiB, off, 0), 0);
  }
  h.reset();
  ASSERT_TRUE(server_.Stop());
  ExpectCheckPasses();
  std::string out_path = server_.dir() + "/export.raw";
  ASSERT_TRUE(server_.Export(out_path));
  FILE* f = fopen(out_path.c_str(), "rb");
  ASSERT_NE(f, nullptr);
  std::vector<uint8_t> exported(served.size() + 1);
  size_t n = fread(exported.data(), 1, exported.size(), f);
  fclose(f);
  ASSERT_EQ(n, served.size()) << "exported raw has the wrong size";
  EXPECT_EQ(FirstMismatch(exported.data(), served.data(), served.size()), -1);
}

}  // namespace
}  // namespace strata_test
