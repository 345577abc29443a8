// End-to-end tests of the io_uring engine: a Server with a real chain (one active layer, no
// base) in a temp dir, clients on a socketpair (libnbd via nbd_connect_socket, or raw bytes for
// malformed input).
#include <fcntl.h>
#include <pthread.h>
#include <libnbd.h>
#include <sys/socket.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/match.h"
#include "blockstore/fail_env.h"
#include "blockstore/file.h"
#include "blockstore/mutex.h"
#include "gtest/gtest.h"
#include "server/engine/blocking_pool.h"
#include "server/engine/chain_storage.h"
#include "server/engine/fake_storage.h"
#include "server/engine/storage.h"
#include "server/engine/test_chain_server.h"
#include "server/engine/worker.h"
#include "server/nbd/protocol.h"
#include "server/server.h"

namespace strata {
namespace {

constexpr uint64_t kDiskSize = 8 << 20;

// Compares without printing megabytes on failure.
::testing::AssertionResult SameBytes(const std::string& got, const std::string& want) {
  if (got.size() != want.size()) {
    return ::testing::AssertionFailure() << "size " << got.size() << " != " << want.size();
  }
  for (size_t i = 0; i < got.size(); ++i) {
    if (got[i] != want[i]) {
      return ::testing::AssertionFailure()
             << "first difference at byte " << i << ": " << int(got[i]) << " != " << int(want[i]);
    }
  }
  return ::testing::AssertionSuccess();
}

class EngineTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!t_.Start(kDiskSize, "disk")) return;
  }
  int Connect() { return t_.Connect(); }

  nbd_handle* Open(bool structured = true) {
    nbd_handle* h = nbd_create();
    EXPECT_NE(h, nullptr);
    nbd_set_export_name(h, "disk");
    nbd_set_request_structured_replies(h, structured);
    if (structured) {
      nbd_add_meta_context(h, "base:allocation");
      nbd_add_meta_context(h, "strata:layer");
    }
    EXPECT_EQ(nbd_connect_socket(h, Connect()), 0) << nbd_get_error();
    return h;
  }

  // Every connection's counters, summed.
  IoCounters TotalIo() {
    IoCounters io;
    auto stats = server_->CollectStats();
    EXPECT_TRUE(stats.ok()) << stats.status();
    if (!stats.ok()) return io;
    for (const WorkerStats& w : *stats) {
      for (const ConnectionStats& c : w.connections) io.Merge(c.io);
    }
    return io;
  }

  TestChainServer t_;
  const std::string& path_ = t_.path;
  std::unique_ptr<ChainStorage>& storage_ = t_.storage;
  ExportTable& exports_ = t_.exports;
  std::unique_ptr<Server>& server_ = t_.server;
};

TEST_F(EngineTest, SimpleRepliesWriteAndReadBack) {
  nbd_handle* h = Open(false);
  EXPECT_EQ(nbd_get_structured_replies_negotiated(h), 0);
  EXPECT_EQ(nbd_get_size(h), static_cast<int64_t>(kDiskSize));
  std::string data(65536, 'x');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 7);
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 4096, 0), 0) << nbd_get_error();
  std::string back(data.size(), '\0');
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 4096, 0), 0) << nbd_get_error();
  EXPECT_TRUE(SameBytes(back, data));
  EXPECT_EQ(nbd_flush(h, 0), 0);
  nbd_shutdown(h, 0);
  nbd_close(h);
}

// Every request's time is split into the stages `stats` shows: parse to disk I/O, the disk I/O,
// and the reply's way out. The first two add up to the request's latency exactly (one clock
// reading is their boundary), and every reply sent counts once in the third.
TEST_F(EngineTest, StagesSplitEachRequestsLatency) {
  nbd_handle* h = Open();
  std::string data(8192, 's');
  constexpr int kRequests = 20;
  for (int i = 0; i < kRequests / 2; ++i) {
    ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), i * 65536, 0), 0) << nbd_get_error();
    ASSERT_EQ(nbd_pread(h, data.data(), data.size(), i * 65536 + 512, 0), 0) << nbd_get_error();
  }
  // The last reply reached the client before its send completion was reaped: wait for it.
  IoCounters io;
  for (int i = 0; i < 500; ++i) {
    io = TotalIo();
    if (io.send.count == kRequests) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(io.latency.count, kRequests);
  EXPECT_EQ(io.before_disk.count, kRequests);
  EXPECT_EQ(io.disk.count, kRequests);
  EXPECT_EQ(io.send.count, kRequests);
  EXPECT_EQ(io.before_disk.sum_ns + io.disk.sum_ns, io.latency.sum_ns);
  EXPECT_GT(io.disk.sum_ns, 0u);
  EXPECT_GT(io.send.sum_ns, 0u);
  nbd_shutdown(h, 0);
  nbd_close(h);
}

// Names of this process's threads.
std::vector<std::string> ThreadNames() {
  std::vector<std::string> names;
  for (const auto& task : std::filesystem::directory_iterator("/proc/self/task")) {
    std::ifstream comm(task.path() / "comm");
    std::string name;
    if (std::getline(comm, name)) names.push_back(name);
  }
  return names;
}

// Page-cache writes are copied on the ring thread: io_uring would hand every buffered write on
// ext4 to an io-wq worker thread ("iou-wrk-N"), three or four context switches each. The
// workers of a ring live on for seconds after their last job, so any would still be there.
TEST_F(EngineTest, PageCacheWritesStartNoIoUringWorkers) {
  ASSERT_FALSE(storage_->direct_io());
  nbd_handle* h = Open();
  std::string data(4096, 'w');
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), (i * 7919 % 2048) * 4096, 0), 0)
        << nbd_get_error();
  }
  for (const std::string& name : ThreadNames()) {
    EXPECT_FALSE(absl::StartsWith(name, "iou-wrk")) << name << " serves this server's writes";
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
}

// A 1 MiB read of clusters that each hold two scattered 4 KiB writes above a snapshot: the
// bytes are the writes' where written and the snapshot's around them (never the bytes the top
// layer's slots hold there), and each layer's runs go out in few reads: at most one per slot
// of each layer, where each run took its own read before (65 here).
TEST_F(EngineTest, ScatteredSubBlocksReadInOneSpanPerSlot) {
  nbd_handle* h = Open();
  constexpr uint64_t kCluster = 65536, kSubBlock = 4096, kLength = 1 << 20;
  std::string want(kLength, 0);
  for (size_t i = 0; i < want.size(); ++i) want[i] = static_cast<char>('A' + i / kSubBlock % 26);
  ASSERT_EQ(nbd_pwrite(h, want.data(), want.size(), 0, 0), 0) << nbd_get_error();
  ASSERT_TRUE(server_->RunPaused([&] { return storage_->chain()->Snapshot("s1").status(); }).ok());
  const std::string top(kSubBlock, 'z');
  for (uint64_t c = 0; c < kLength / kCluster; ++c) {
    for (uint64_t sb : {2, 9}) {
      const uint64_t off = c * kCluster + sb * kSubBlock;
      ASSERT_EQ(nbd_pwrite(h, top.data(), top.size(), off, 0), 0) << nbd_get_error();
      want.replace(off, kSubBlock, top);
    }
  }
  const uint64_t reads_before = TotalIo().file_reads;
  std::string got(kLength, '?');
  ASSERT_EQ(nbd_pread(h, got.data(), got.size(), 0, 0), 0) << nbd_get_error();
  EXPECT_TRUE(SameBytes(got, want));
  const uint64_t reads = TotalIo().file_reads - reads_before;
  EXPECT_GE(reads, 2u);
  EXPECT_LE(reads, 2 * kLength / kCluster) << "runs of one slot were read one by one";
  // A read inside one run stays one read of its own bytes.
  ASSERT_EQ(nbd_pread(h, got.data(), kSubBlock, 5 * kCluster + 9 * kSubBlock, 0), 0);
  EXPECT_TRUE(SameBytes(got.substr(0, kSubBlock), top));
  EXPECT_EQ(TotalIo().file_reads - reads_before - reads, 1u);
  nbd_shutdown(h, 0);
  nbd_close(h);
}

TEST_F(EngineTest, UnalignedWritesAreReadModifyWrite) {
  nbd_handle* h = Open();
  std::string a(100, 'a'), b(5000, 'b');
  ASSERT_EQ(nbd_pwrite(h, a.data(), a.size(), 10, 0), 0) << nbd_get_error();
  ASSERT_EQ(nbd_pwrite(h, b.data(), b.size(), 4000, LIBNBD_CMD_FLAG_FUA), 0) << nbd_get_error();
  std::string back(10000, '?');
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 0, 0), 0);
  EXPECT_TRUE(SameBytes(back.substr(0, 10), std::string(10, '\0')));
  EXPECT_TRUE(SameBytes(back.substr(10, 100), a));
  EXPECT_TRUE(SameBytes(back.substr(110, 3890), std::string(3890, '\0')));
  EXPECT_TRUE(SameBytes(back.substr(4000, 5000), b));
  EXPECT_TRUE(SameBytes(back.substr(9000), std::string(1000, '\0')));
  nbd_close(h);
}

TEST_F(EngineTest, ManyConcurrentUnalignedWritesToOneSubBlock) {
  // Every write widens to the same 4 KiB sub-block: all but one at a time are parked.
  nbd_handle* h = Open();
  std::vector<std::string> bufs;
  for (int i = 0; i < 64; ++i) bufs.push_back(std::string(60, static_cast<char>('A' + i % 26)));
  std::vector<int64_t> cookies;
  for (int i = 0; i < 64; ++i) {
    int64_t c = nbd_aio_pwrite(h, bufs[i].data(), 60, 8192 + i * 64, NBD_NULL_COMPLETION, 0);
    ASSERT_GE(c, 0) << nbd_get_error();
    cookies.push_back(c);
  }
  while (nbd_aio_in_flight(h) > 0) ASSERT_GE(nbd_poll(h, -1), 0);
  for (int64_t c : cookies) EXPECT_EQ(nbd_aio_command_completed(h, c), 1);
  std::string back(4096, '?');
  ASSERT_EQ(nbd_pread(h, back.data(), 4096, 8192, 0), 0);
  for (int i = 0; i < 64; ++i) EXPECT_EQ(back.substr(i * 64, 60), bufs[i]) << i;
  nbd_close(h);
}

// A budget far below what the clients ask for at once: requests wait for it (their connections
// stop being read) and are woken when other connections' buffers come back, on either worker;
// every request completes with the right data, and the pool is empty again at the end.
TEST(EngineBudgetTest, RequestsPastTheBudgetWaitAndAllComplete) {
  constexpr uint64_t kMiB = 1 << 20;
  constexpr int kConnections = 3, kDepth = 8;
  TestChainServer t;
  t.options.max_buffer_memory = 4 * kMiB;
  t.options.buffer_floor_per_connection = 256 << 10;
  if (!t.Start(32 * kMiB, "disk")) return;
  auto client = [&t](int c) {
    nbd_handle* h = nbd_create();
    nbd_set_export_name(h, "disk");
    ASSERT_EQ(nbd_connect_socket(h, t.Connect()), 0) << nbd_get_error();
    std::vector<std::string> data, back(kDepth, std::string(kMiB, '?'));
    for (int i = 0; i < kDepth; ++i) {
      data.push_back(std::string(kMiB, static_cast<char>('a' + c * kDepth + i)));
    }
    auto offset = [c](int i) { return (c * kDepth + i) * kMiB; };
    auto wait_all = [h] {
      while (nbd_aio_in_flight(h) > 0) {
        // A request never woken would hang here: 30 s is ample for 8 MiB.
        ASSERT_GT(nbd_poll(h, 30000), 0) << "requests still waiting for the budget after 30 s";
      }
    };
    for (int i = 0; i < kDepth; ++i) {
      ASSERT_GE(nbd_aio_pwrite(h, data[i].data(), kMiB, offset(i), NBD_NULL_COMPLETION, 0), 0);
    }
    wait_all();
    for (int i = 0; i < kDepth; ++i) {
      ASSERT_GE(nbd_aio_pread(h, back[i].data(), kMiB, offset(i), NBD_NULL_COMPLETION, 0), 0);
    }
    wait_all();
    for (int i = 0; i < kDepth; ++i) EXPECT_TRUE(SameBytes(back[i], data[i])) << c << " " << i;
    nbd_close(h);
  };
  std::vector<std::thread> threads;
  for (int c = 0; c < kConnections; ++c) threads.emplace_back(client, c);
  for (auto& th : threads) th.join();
  // Buffers go back once their reply is sent, a moment after the client has it.
  for (int i = 0; i < 500 && t.server->budget().pool_used() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(t.server->budget().pool_used(), 0u);
}

struct ExtentLog {
  std::vector<std::pair<uint32_t, uint32_t>> base, layer;
};

int CollectExtents(void* user, const char* context, uint64_t, uint32_t* entries,
                   size_t n, int*) {
  auto* log = static_cast<ExtentLog*>(user);
  auto& out = strcmp(context, "base:allocation") == 0 ? log->base : log->layer;
  for (size_t i = 0; i + 1 < n; i += 2) out.push_back({entries[i], entries[i + 1]});
  return 0;
}

TEST_F(EngineTest, ZeroTrimAndBlockStatus) {
  nbd_handle* h = Open();
  ASSERT_EQ(nbd_can_meta_context(h, "base:allocation"), 1);
  ASSERT_EQ(nbd_can_meta_context(h, "strata:layer"), 1);
  std::string data(1 << 20, 'z');
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 0, 0), 0);
  ASSERT_EQ(nbd_zero(h, 65536 + 100, 65536, LIBNBD_CMD_FLAG_FAST_ZERO), 0) << nbd_get_error();
  ASSERT_EQ(nbd_trim(h, 262144, 262144, 0), 0);
  // NO_HOLE with FAST_ZERO is honoured too: zero marks that keep the space.
  ASSERT_EQ(nbd_zero(h, 70000, 600000, LIBNBD_CMD_FLAG_FAST_ZERO | LIBNBD_CMD_FLAG_NO_HOLE), 0)
      << nbd_get_error();
  ASSERT_EQ(nbd_zero(h, 8192, 524288, LIBNBD_CMD_FLAG_NO_HOLE), 0) << nbd_get_error();
  std::string back(1 << 20, '?');
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 0, 0), 0);
  EXPECT_TRUE(SameBytes(back.substr(0, 65536), std::string(65536, 'z')));
  EXPECT_TRUE(SameBytes(back.substr(65536, 65636), std::string(65636, '\0')));
  EXPECT_TRUE(SameBytes(back.substr(131172, 1000), std::string(1000, 'z')));
  EXPECT_TRUE(SameBytes(back.substr(524288, 8192), std::string(8192, '\0')));
  EXPECT_TRUE(SameBytes(back.substr(600000, 70000), std::string(70000, '\0')));
  EXPECT_TRUE(SameBytes(back.substr(670000, 1000), std::string(1000, 'z')));
  ExtentLog log;
  ASSERT_EQ(nbd_block_status(h, 1 << 20, 0, (nbd_extent_callback){CollectExtents, &log, nullptr},
                             0),
            0)
      << nbd_get_error();
  ASSERT_FALSE(log.base.empty());
  EXPECT_EQ(log.base[0].first, 65536u);
  EXPECT_EQ(log.base[0].second, 0u);
  EXPECT_EQ(log.base[1].second, LIBNBD_STATE_HOLE | LIBNBD_STATE_ZERO);
  ASSERT_FALSE(log.layer.empty());
  EXPECT_EQ(log.layer[0].second, 1u);  // the active layer is depth 1
  ExtentLog one;
  ASSERT_EQ(nbd_block_status(h, 1 << 20, 0, (nbd_extent_callback){CollectExtents, &one, nullptr},
                             LIBNBD_CMD_FLAG_REQ_ONE),
            0);
  EXPECT_EQ(one.base.size(), 1u);
  nbd_close(h);
}

TEST_F(EngineTest, StructuredReadOfAHoleAndDf) {
  nbd_handle* h = Open();
  ASSERT_EQ(nbd_can_df(h), 1);
  std::string back(1 << 20, '?');
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 2 << 20, 0), 0);
  EXPECT_TRUE(SameBytes(back, std::string(1 << 20, '\0')));
  std::string mixed(8192, 'm');
  ASSERT_EQ(nbd_pwrite(h, mixed.data(), mixed.size(), (3 << 20) + 4096, 0), 0);
  back.assign(65536, '?');
  int chunks = 0;
  auto count = [](void* user, const void*, size_t, uint64_t, unsigned, int*) {
    ++*static_cast<int*>(user);
    return 0;
  };
  ASSERT_EQ(nbd_pread_structured(h, back.data(), back.size(), 3 << 20,
                                 (nbd_chunk_callback){count, &chunks, nullptr},
                                 LIBNBD_CMD_FLAG_DF),
            0)
      << nbd_get_error();
  EXPECT_EQ(chunks, 1);  // DF: one content chunk, holes sent as zero bytes
  EXPECT_TRUE(SameBytes(back.substr(4096, 8192), mixed));
  EXPECT_TRUE(SameBytes(back.substr(0, 4096), std::string(4096, '\0')));
  nbd_close(h);
}

TEST_F(EngineTest, OutOfRangeErrorsAndTheConnectionLives) {
  nbd_handle* h = Open();
  nbd_set_strict_mode(h, 0);  // let the bad requests reach the server
  char buf[512];
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), kDiskSize, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EINVAL);
  EXPECT_EQ(nbd_pwrite(h, buf, sizeof(buf), kDiskSize - 256, 0), -1);
  EXPECT_EQ(nbd_get_errno(), ENOSPC);
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
  nbd_close(h);
}

TEST_F(EngineTest, MultiConnFlushAndRunPaused) {
  std::atomic<bool> stop{false};
  std::thread writer([&] {
    nbd_handle* h = Open();
    std::string data(4096, 'w');
    uint64_t off = 0;
    while (!stop) {
      ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), off, 0), 0);
      off = (off + 4096) % kDiskSize;
    }
    nbd_close(h);
  });
  for (int i = 0; i < 20; ++i) {
    absl::Duration pause;
    bool ran = false;
    absl::Status st = server_->RunPaused(
        [&] {
          ran = true;
          return storage_->Flush();
        },
        &pause);
    EXPECT_TRUE(st.ok()) << st;
    EXPECT_TRUE(ran);
  }
  stop = true;
  writer.join();
}

// --- Raw-socket clients for malformed input ---

bool WriteAll(int fd, const std::string& s) {
  return write(fd, s.data(), s.size()) == static_cast<ssize_t>(s.size());
}
std::string ReadN(int fd, size_t n) {
  std::string s(n, '\0');
  size_t got = 0;
  while (got < n) {
    ssize_t r = read(fd, s.data() + got, n - got);
    if (r <= 0) break;
    got += r;
  }
  s.resize(got);
  return s;
}

// Handshake by hand up to transmission (EXPORT_NAME, no zeroes).
int RawTransmission(EngineTest* t, int fd) {
  (void)t;
  EXPECT_EQ(ReadN(fd, 18).size(), 18u);
  std::string in;
  nbd::Append32(&in, nbd::kClientFlagFixedNewstyle | nbd::kClientFlagNoZeroes);
  nbd::Append64(&in, nbd::kIHaveOpt);
  nbd::Append32(&in, 1);
  nbd::Append32(&in, 4);
  in += "disk";
  EXPECT_TRUE(WriteAll(fd, in));
  EXPECT_EQ(ReadN(fd, 10).size(), 10u);
  return fd;
}

std::string RequestBytes(nbd::Command cmd, uint64_t handle, uint64_t offset, uint32_t length) {
  nbd::RequestHeader h;
  h.magic = nbd::kRequestMagic;
  h.type = static_cast<uint16_t>(cmd);
  h.handle = handle;
  h.offset = offset;
  h.length = length;
  std::string s(nbd::kRequestHeaderSize, '\0');
  h.EncodeTo(s.data());
  return s;
}

TEST_F(EngineTest, InvalidWriteConsumesItsPayload) {
  int fd = RawTransmission(this, Connect());
  std::string req = RequestBytes(nbd::Command::kWrite, 1, kDiskSize, 4096) +
                    std::string(4096, 'p') +
                    RequestBytes(nbd::Command::kWrite, 3, UINT64_MAX - 10, 70000) +
                    std::string(70000, 'q') + RequestBytes(nbd::Command::kRead, 2, 0, 16);
  ASSERT_TRUE(WriteAll(fd, req));
  std::string r1 = ReadN(fd, 16);
  ASSERT_EQ(r1.size(), 16u);
  EXPECT_EQ(nbd::Get32(r1.data() + 4), 28u);  // ENOSPC
  EXPECT_EQ(nbd::Get64(r1.data() + 8), 1u);
  std::string r3 = ReadN(fd, 16);
  ASSERT_EQ(r3.size(), 16u);
  EXPECT_EQ(nbd::Get32(r3.data() + 4), 28u);  // out of range for a write: ENOSPC
  EXPECT_EQ(nbd::Get64(r3.data() + 8), 3u);
  std::string r2 = ReadN(fd, 32);
  ASSERT_EQ(r2.size(), 32u);
  EXPECT_EQ(nbd::Get32(r2.data() + 4), 0u);
  EXPECT_EQ(nbd::Get64(r2.data() + 8), 2u);
  close(fd);
}

TEST_F(EngineTest, BadMagicEndsOnlyThatConnection) {
  int fd = RawTransmission(this, Connect());
  std::string req = RequestBytes(nbd::Command::kRead, 1, 0, 16);
  req[0] = 0;
  ASSERT_TRUE(WriteAll(fd, req));
  EXPECT_EQ(ReadN(fd, 1).size(), 0u);  // closed
  close(fd);
  // Garbage during the handshake, and a disconnect in the middle of a payload.
  int g = Connect();
  ReadN(g, 18);
  WriteAll(g, std::string(64, '\xff'));
  EXPECT_EQ(ReadN(g, 1).size(), 0u);
  close(g);
  int m = RawTransmission(this, Connect());
  WriteAll(m, RequestBytes(nbd::Command::kWrite, 1, 0, 65536) + std::string(100, 'x'));
  close(m);
  nbd_handle* h = Open();
  char buf[16];
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), 0, 0), 0);
  nbd_close(h);
}

// The fio hang: a client pipelines requests and goes away without reading the replies. The
// server's send then fails (EPIPE) while requests are still running; those finish afterwards and
// are released straight away (there is nobody to send to). The last of them must close the
// connection, or it stays open, idle and draining, forever, and Shutdown never joins the worker.
TEST_F(EngineTest, ClientGoneWithRepliesQueuedClosesAndShutdownReturns) {
  int fd = RawTransmission(this, Connect());
  // Large reads of holes (no file I/O, replies at once) fill the socket, so a send is pending
  // or fails as soon as we close; unaligned writes to one sub-block run one at a time (the
  // others are parked), so many of them finish after the send has failed. 8 + 240 requests
  // stay under the per-connection limit of 256, so the server reads all of them.
  std::string req;
  for (int i = 0; i < 8; ++i) {
    req += RequestBytes(nbd::Command::kRead, 1000 + i, (i % 2) * (4 << 20), 4 << 20);
  }
  for (int i = 0; i < 240; ++i) {
    req += RequestBytes(nbd::Command::kWrite, i, 8192 + (i % 64) * 64, 60) +
           std::string(60, static_cast<char>('a' + i % 26));
  }
  ASSERT_TRUE(WriteAll(fd, req));
  close(fd);

  // The connection closes by itself, without a shutdown.
  size_t open = 1;
  for (int i = 0; i < 500 && open > 0; ++i) {
    auto stats = server_->CollectStats();
    ASSERT_TRUE(stats.ok()) << stats.status();
    open = 0;
    for (const WorkerStats& w : *stats) open += w.connections.size();
    if (open > 0) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_EQ(open, 0u) << "a connection whose client is gone stayed open";

  // And Shutdown returns. If it hangs, the worker can never be joined: fail the whole binary
  // rather than hang ctest.
  std::atomic<bool> done{false};
  std::thread stopper([&] {
    server_->Shutdown();
    done = true;
  });
  for (int i = 0; i < 1000 && !done; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  if (!done) {
    fprintf(stderr, "FAILED: Server::Shutdown did not return within 10 s (worker still busy)\n");
    std::_Exit(1);
  }
  stopper.join();
}


// Issue 16 item 5: Worker::Shutdown used to fire a pause's drained callback at once, so a
// RunPaused in progress ran its function (a live snapshot's switch) while requests were still
// active. The callback fires only once no request is active, shutdown or not.
TEST_F(EngineTest, ShutdownDuringAPauseDoesNotReleaseItEarly) {
  // A worker of our own, so the test drives Pause/Shutdown/Resume itself.
  BlockingPool pool(1);
  NoSpaceState no_space;
  BufferBudget budget(256 << 20, 256 << 10);
  Worker worker(9, &exports_, &pool, &no_space, &budget);
  ASSERT_TRUE(worker.Init().ok());
  worker.Start();
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  worker.AddConnection(sv[0], "socketpair");
  // Large reads of holes whose replies the client never reads: the socket fills, the replies
  // stay unsent, so the requests stay active and the worker cannot drain.
  int fd = RawTransmission(this, sv[1]);
  std::string req;
  for (int i = 0; i < 8; ++i) req += RequestBytes(nbd::Command::kRead, i, 0, 4 << 20);
  ASSERT_TRUE(WriteAll(fd, req));
  std::this_thread::sleep_for(std::chrono::milliseconds(100));

  std::atomic<bool> drained{false};
  worker.Pause([&] { drained = true; });
  worker.Shutdown();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(drained) << "the pause was released while requests were active";

  // The client goes away: the sends fail, the requests end, and only now the pause drains.
  close(fd);
  for (int i = 0; i < 500 && !drained; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  EXPECT_TRUE(drained);
  worker.Resume();
  EXPECT_TRUE(worker.WaitStopped(absl::Now() + absl::Seconds(10)));
  worker.Join();
}

// Reads the ring completes with EIO: /proc/self/mem at an unmapped address does that.
class EioStorage : public FakeStorage {
 public:
  EioStorage() : FakeStorage(1 << 20, /*writable=*/false) {}
  ~EioStorage() override { close(fd_); }
  absl::Status MapRead(uint64_t, uint64_t length, std::vector<Segment>* out,
                       ReadPin*) const override {
    out->push_back({Segment::Kind::kData, length, fd_, 0});
    return absl::OkStatus();
  }

 private:
  const int fd_ = open("/proc/self/mem", O_RDONLY | O_CLOEXEC);
};

// A disk whose Zero finds no space while `full` is set. Chain::Zero allocates nothing (zero
// marks; the unaligned edges go the write path, which waits in kReplenishing), but a Storage
// may: under --on-full=pause its ENOSPC must wait as a write's does (42bec97), not fail.
class FullZeroStorage : public FakeStorage {
 public:
  FullZeroStorage() : FakeStorage(1 << 20) {}
  absl::Status Zero(uint64_t, uint64_t, bool,
                    std::vector<std::pair<uint64_t, uint64_t>>*) override {
    ++calls;
    if (full) return absl::ResourceExhaustedError("zero: No space left on device");
    return absl::OkStatus();
  }
  std::atomic<bool> full{true};
  std::atomic<int> calls{0};
};

TEST(EngineFullVolumeTest, AWriteZeroesWithoutSpaceWaitsUnderPauseThenCompletes) {
  FullZeroStorage storage;
  ExportTable exports;
  exports.Add(NewExport("", &storage));
  ServerOptions options;
  options.full_volume.mode = FullVolumePolicy::Mode::kPause;
  options.full_volume.max_wait_ns = 30'000'000'000;  // bounds the test if space never came
  Server server(&exports, options);
  if (!server.Start().ok()) GTEST_SKIP() << "io_uring unavailable";
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  server.AddConnection(sv[0], "socketpair");
  nbd_handle* h = nbd_create();
  ASSERT_EQ(nbd_connect_socket(h, sv[1]), 0) << nbd_get_error();
  for (uint32_t flags : {0u, static_cast<uint32_t>(LIBNBD_CMD_FLAG_NO_HOLE)}) {
    storage.full = true;
    const int calls_before = storage.calls;
    std::atomic<int> result{1}, err{0};  // 1: not answered yet
    std::thread client([&] {
      const int rc = nbd_zero(h, 65536, 0, flags);
      err = nbd_get_errno();
      result = rc;
    });
    for (int i = 0; i < 250 && server.no_space().waiting() == 0 && result == 1; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    const bool waited = server.no_space().waiting() == 1;
    EXPECT_TRUE(waited) << "flags " << flags << ": not waiting for space; reply " << result
                        << " errno " << err;
    if (waited) {
      std::this_thread::sleep_for(std::chrono::milliseconds(1500));
      EXPECT_EQ(result.load(), 1) << "answered while the volume was full";
      EXPECT_GE(storage.calls - calls_before, 2) << "not retried while waiting";
      storage.full = false;  // space returns: the next retry (once a second) succeeds
    }
    client.join();
    EXPECT_EQ(result.load(), 0) << "flags " << flags << ": errno " << err;
    EXPECT_EQ(server.no_space().waiting(), 0);
  }
  nbd_shutdown(h, 0);
  nbd_close(h);
  server.Shutdown();
}

// The ring-thread contract (storage.h): no fallocate on a ring thread, and a write that finds
// no ready slot waits for ReplenishSlots on the blocking pool, not on its ring. Here the volume
// stalls every allocation off the ring (a gate) until reads on every worker have been served:
// a ring thread blocked in an allocation (or on the refill's lock) would hold them.
TEST(EngineRingTest, AWriteWaitingForSpaceHoldsNoRing) {
  std::atomic<int> on_ring{0}, stalled{0};
  Mutex gate_mu;
  bool gate_open = false;  // guarded by gate_mu
  auto open_gate = [&] {
    MutexLock lock(&gate_mu);
    gate_open = true;
  };
  testing::FailEnv env([](absl::string_view, const std::string&) { return false; });
  env.set_allocate_hook([&](const std::string&, uint64_t, uint64_t) {
    char name[16] = {};
    pthread_getname_np(pthread_self(), name, sizeof(name));
    if (absl::StartsWith(name, kRingThreadPrefix)) {
      ++on_ring;
    } else if (absl::StartsWith(name, "strata-pool")) {
      ++stalled;
      gate_mu.LockWhenWithTimeout(absl::Condition(&gate_open), absl::Seconds(10));
      gate_mu.Unlock();
    }
    return absl::OkStatus();
  });
  TestChainServer t;
  t.env = &env;
  constexpr uint64_t kSize = 256 << 20;
  if (!t.Start(kSize, "disk")) return;
  auto open = [&]() {
    nbd_handle* h = nbd_create();
    nbd_set_export_name(h, "disk");
    EXPECT_EQ(nbd_connect_socket(h, t.Connect()), 0) << nbd_get_error();
    return h;
  };
  nbd_handle* writer = open();                  // worker 0
  nbd_handle* readers[2] = {open(), open()};    // workers 1 and 0
  std::atomic<uint64_t> written{0};
  std::thread write_thread([&] {
    std::string data(65536, 'w');
    for (uint64_t off = 0; off < kSize; off += data.size()) {
      if (nbd_pwrite(writer, data.data(), data.size(), off, 0) != 0) return;
      written = off + data.size();
    }
  });
  // Wait until the writer has used up the ready slots and stands still (bounded).
  uint64_t last = ~0ull;
  for (int i = 0; i < 100 && (stalled == 0 || written != last); ++i) {
    last = written;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  ASSERT_GT(stalled.load(), 0) << "no allocation reached the blocking pool";
  ASSERT_LT(written.load(), kSize) << "the writer never had to wait for space";
  Notification reads_done;
  std::atomic<bool> watchdog_opened{false};
  std::thread watchdog([&] {  // ends the test if a ring is held after all
    if (reads_done.WaitForNotificationWithTimeout(absl::Seconds(3))) return;
    watchdog_opened = true;
    open_gate();
  });
  char block[4096];
  for (nbd_handle* r : readers) EXPECT_EQ(nbd_pread(r, block, sizeof(block), kSize - 4096, 0), 0);
  reads_done.Notify();
  EXPECT_FALSE(watchdog_opened.load()) << "a read waited for the allocation: a ring was held";
  open_gate();
  watchdog.join();
  write_thread.join();
  EXPECT_EQ(written.load(), kSize) << nbd_get_error();
  for (nbd_handle* h : {writer, readers[0], readers[1]}) {
    nbd_shutdown(h, 0);
    nbd_close(h);
  }
  EXPECT_EQ(on_ring.load(), 0) << "fallocate ran on a ring thread";
}

// Issue 16 item 6: an EIO from the disk was logged as "conn 1: UNKNOWN: NBD_CMD_READ ..."
// (absl has no code for EIO; ToString() prints the code). The log line is the message, and
// the status is kDataLoss, so the client still gets EIO.
TEST(EngineEioTest, AnIoErrorIsLoggedByItsMessageAndRepliedEio) {
  EXPECT_EQ(StatusFromErrno(EIO, "read").code(), absl::StatusCode::kDataLoss);
  EioStorage storage;
  ExportTable exports;
  auto e = NewExport("", &storage);
  e->read_only = true;
  exports.Add(e);
  Server server(&exports, ServerOptions{});
  if (!server.Start().ok()) GTEST_SKIP() << "io_uring unavailable";
  // The log goes to stderr: into a pipe for the length of the request.
  int pipe_fds[2];
  ASSERT_EQ(pipe2(pipe_fds, O_CLOEXEC | O_NONBLOCK), 0);
  const int saved_stderr = dup(STDERR_FILENO);
  dup2(pipe_fds[1], STDERR_FILENO);
  int sv[2];
  ASSERT_EQ(socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv), 0);
  server.AddConnection(sv[0], "socketpair");
  nbd_handle* h = nbd_create();
  ASSERT_EQ(nbd_connect_socket(h, sv[1]), 0) << nbd_get_error();
  char buf[4096];
  EXPECT_EQ(nbd_pread(h, buf, sizeof(buf), 0, 0), -1);
  EXPECT_EQ(nbd_get_errno(), EIO);
  nbd_close(h);
  server.Shutdown();
  dup2(saved_stderr, STDERR_FILENO);
  close(saved_stderr);
  std::string log(1 << 16, '\0');
  log.resize(static_cast<size_t>(std::max<ssize_t>(0, read(pipe_fds[0], log.data(), log.size()))));
  close(pipe_fds[0]);
  close(pipe_fds[1]);
  EXPECT_NE(log.find("NBD_CMD_READ"), std::string::npos) << log;
  EXPECT_NE(log.find("Input/output error -> EIO"), std::string::npos) << log;
  EXPECT_EQ(log.find("UNKNOWN"), std::string::npos) << log;
  EXPECT_EQ(log.find("DATA_LOSS"), std::string::npos) << log;
}

// TLS through the engine: the handshake and every record ride the connection's ring recv and
// send. A 3 MiB read reply is larger than one encryption step (1 MiB), so replies are cut
// across steps; a plain client is refused under --tls=require.
TEST(EngineTlsTest, PskSessionCarriesLargeWritesAndReads) {
  std::string psk_dir = (std::filesystem::temp_directory_path() / "strata-tls-XXXXXX").string();
  ASSERT_NE(mkdtemp(psk_dir.data()), nullptr);
  const std::string psk = psk_dir + "/keys.psk";
  FILE* f = fopen(psk.c_str(), "w");
  ASSERT_NE(f, nullptr);
  fputs("alice:00112233445566778899aabbccddeeff\n", f);
  fclose(f);
  auto credentials = TlsCredentials::LoadPsk(psk);
  ASSERT_TRUE(credentials.ok()) << credentials.status();
  TestChainServer t;
  t.options.tls = {TlsMode::kRequire, credentials->get()};
  if (!t.Start(kDiskSize, "disk")) return;

  nbd_handle* plain = nbd_create();
  nbd_set_export_name(plain, "disk");
  EXPECT_EQ(nbd_connect_socket(plain, t.Connect()), -1);
  EXPECT_TRUE(absl::StrContains(nbd_get_error(), "TLS")) << nbd_get_error();
  nbd_close(plain);

  nbd_handle* h = nbd_create();
  nbd_set_export_name(h, "disk");
  ASSERT_EQ(nbd_set_tls(h, LIBNBD_TLS_REQUIRE), 0) << nbd_get_error();
  ASSERT_EQ(nbd_set_tls_psk_file(h, psk.c_str()), 0) << nbd_get_error();
  ASSERT_EQ(nbd_set_tls_username(h, "alice"), 0) << nbd_get_error();
  ASSERT_EQ(nbd_connect_socket(h, t.Connect()), 0) << nbd_get_error();
  EXPECT_EQ(nbd_get_tls_negotiated(h), 1);
  std::string data(3 << 20, '\0');
  for (size_t i = 0; i < data.size(); ++i) data[i] = static_cast<char>(i * 13 + i / 4096);
  ASSERT_EQ(nbd_pwrite(h, data.data(), data.size(), 12345, 0), 0) << nbd_get_error();
  std::string back(data.size(), '\0');
  ASSERT_EQ(nbd_pread(h, back.data(), back.size(), 12345, 0), 0) << nbd_get_error();
  EXPECT_TRUE(SameBytes(back, data));
  EXPECT_EQ(nbd_flush(h, 0), 0) << nbd_get_error();
  nbd_shutdown(h, 0);
  nbd_close(h);
  std::filesystem::remove_all(psk_dir);
}

}  // namespace
}  // namespace strata
