// Copy-on-write correctness through the real server: deterministic edge cases where a layered
// disk goes wrong (partial writes into zeroed/trimmed sub-blocks or into data that lives in a
// lower layer, concurrent first writes into one fresh cluster), and a randomized model check:
// random writes/zeroes/trims/FUA/flushes on two connections, compared with an in-memory
// reference disk after every round, with clean restarts, kill -9 after FLUSH and offline
// snapshots between rounds. Run with the page cache and with O_DIRECT (--cache=none: unaligned
// writes then need read-modify-write in the server), with 1 and several workers.
#include <algorithm>
#include <cstring>
#include <random>
#include <sstream>
#include <thread>
#include <vector>

#include "server_fixture.h"

namespace strata_test {
namespace {

struct ServeVariant {
  const char* cache;
  int workers;
};

// Keeps ctest names readable (gtest would print the struct's bytes).
void PrintTo(const ServeVariant& v, std::ostream* os) {
  *os << "--cache=" << v.cache << " --workers " << v.workers;
}

std::string VariantName(const ::testing::TestParamInfo<ServeVariant>& info) {
  return std::string(info.param.cache) + "_workers" + std::to_string(info.param.workers);
}

// Each test serves its chain with the variant (ServeChain()) and connects as it needs.
class CowTest : public ServerTest, public ::testing::WithParamInterface<ServeVariant> {
 protected:
  CowTest() : ServerTest({.up_to = Stage::kNone}) {}
  void SetUp() override {
    if (SelectedServer() == ServerKind::kNbdkit && std::string(GetParam().cache) == "none") {
      GTEST_SKIP() << "nbdkit variant not mapped";
    }
    ServerTest::SetUp();
  }
  ServeOptions Serve() {
    ServeOptions o;
    o.cache = GetParam().cache;
    if (SelectedServer() == ServerKind::kStrata) o.workers = GetParam().workers;
    return o;
  }
  // `chain` served with the variant.
  bool ServeChain(const ChainOptions& chain = {}) {
    return SetUpServer({.up_to = Stage::kServing, .chain = chain, .serve = Serve()});
  }
  bool Restart() { return server_.Stop() && server_.Start(Serve()); }
  bool SnapshotAndRestart(const std::string& name) {
    return server_.Stop() && server_.Snapshot(name) && server_.Start(Serve());
  }
};

// A 512-byte write into a sub-block that was zeroed over base data: the rest of the sub-block
// must stay zero, not come back from the base (the layer below the zero mark).
TEST_P(CowTest, PartialWriteIntoZeroedSubBlockKeepsZeros) {
  ASSERT_TRUE(ServeChain());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  const uint64_t c = 1 * kMiB;
  ASSERT_EQ(nbd_zero(h.get(), 64 * kKiB, c, 0), 0) << nbd_get_error();
  ASSERT_TRUE(WritePattern(h.get(), c + 4096 + 1024, 512, 1));
  EXPECT_TRUE(ReadsZero(h.get(), c, 4096 + 1024));
  EXPECT_TRUE(ReadsPattern(h.get(), c + 4096 + 1024, 512, 1));
  EXPECT_TRUE(ReadsZero(h.get(), c + 4096 + 1536, 64 * kKiB - 4096 - 1536));
  // The same after a restart (the zero mark and the partial data both persisted).
  h.reset();
  ASSERT_TRUE(Restart());
  h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsZero(h.get(), c, 4096 + 1024));
  EXPECT_TRUE(ReadsPattern(h.get(), c + 4096 + 1024, 512, 1));
  EXPECT_TRUE(ReadsZero(h.get(), c + 4096 + 1536, 4096 - 1536));
}

// The same into a trimmed sub-block.
TEST_P(CowTest, PartialWriteIntoTrimmedSubBlockKeepsZeros) {
  ASSERT_TRUE(ServeChain());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  const uint64_t c = 2 * kMiB;
  ASSERT_TRUE(WritePattern(h.get(), c, 64 * kKiB, 2));
  ASSERT_EQ(nbd_trim(h.get(), 64 * kKiB, c, 0), 0) << nbd_get_error();
  ASSERT_TRUE(WritePattern(h.get(), c + 8192 + 512, 1024, 3));
  EXPECT_TRUE(ReadsZero(h.get(), c, 8192 + 512));
  EXPECT_TRUE(ReadsPattern(h.get(), c + 8192 + 512, 1024, 3));
  EXPECT_TRUE(ReadsZero(h.get(), c + 8192 + 1536, 64 * kKiB - 8192 - 1536));
}

// A cluster split over three layers: sub-blocks 0-3 written before snapshot s1 (they live in
// s1), sub-block 2 rewritten in part and sub-block 8 zeroed after it, the rest from the base.
// One read of the whole cluster must assemble all of that, and a partial write into a
// sub-block held by s1 must merge with s1's data, not the base's.
TEST_P(CowTest, ClusterSplitAcrossThreeLayersReadsEachPartFromItsLayer) {
  if (!server_.SupportsLayers()) GTEST_SKIP() << "needs offline snapshots";
  ASSERT_TRUE(ServeChain());
  const uint64_t c = 3 * kMiB;
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    ASSERT_TRUE(WritePattern(h.get(), c, 16 * kKiB, 4));
    ASSERT_EQ(nbd_flush(h.get(), 0), 0);
  }
  ASSERT_TRUE(SnapshotAndRestart("s1"));
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  ASSERT_TRUE(WritePattern(h.get(), c + 2 * 4096 + 512, 512, 5));
  ASSERT_EQ(nbd_zero(h.get(), 4096, c + 8 * 4096, 0), 0);
  std::vector<uint8_t> want(64 * kKiB);
  FillBase(want.data(), c, want.size());
  FillPattern(want.data(), c, 16 * kKiB, 4);
  FillPattern(want.data() + 2 * 4096 + 512, c + 2 * 4096 + 512, 512, 5);
  memset(want.data() + 8 * 4096, 0, 4096);
  std::vector<uint8_t> got(want.size());
  for (int pass = 0; pass < 2; pass++) {
    SCOPED_TRACE(pass == 0 ? "before restart" : "after restart");
    ASSERT_EQ(nbd_pread(h.get(), got.data(), got.size(), c, 0), 0) << nbd_get_error();
    int64_t bad = FirstMismatch(got.data(), want.data(), want.size());
    EXPECT_EQ(bad, -1) << "cluster byte " << bad << " (sub-block " << bad / 4096 << ")";
    h.reset();
    ASSERT_TRUE(Restart());
    h = server_.Connect();
    ASSERT_TRUE(h);
  }
}

// Concurrent first writes into the same fresh clusters: 4 connections on 4 threads, each
// writing every 4th 4 KiB sub-block of 32 clusters over base data, so the cluster allocation
// and sub-block bitmap updates race. Every sub-block must hold its writer's data.
TEST_P(CowTest, ConcurrentFirstWritesIntoSameClustersAllLand) {
  ASSERT_TRUE(ServeChain());
  constexpr int kConns = 4, kClusters = 32;
  const uint64_t start = 8 * kMiB;
  std::vector<NbdHandle> hs;
  for (int i = 0; i < kConns; i++) {
    hs.push_back(server_.Connect());
    ASSERT_TRUE(hs.back());
  }
  std::vector<int> failures(kConns, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kConns; t++) {
    threads.emplace_back([&, t] {
      for (int cl = 0; cl < kClusters; cl++) {
        for (int sb = t; sb < 16; sb += kConns) {
          uint64_t off = start + cl * 64 * kKiB + sb * 4096;
          auto data = Pattern(off, 4096, 6);
          if (nbd_pwrite(hs[t].get(), data.data(), 4096, off, 0) != 0) failures[t]++;
        }
      }
    });
  }
  for (auto& th : threads) th.join();
  for (int t = 0; t < kConns; t++) EXPECT_EQ(failures[t], 0);
  EXPECT_TRUE(ReadsPattern(hs[0].get(), start, kClusters * 64 * kKiB, 6));
  ASSERT_EQ(nbd_flush(hs[1].get(), 0), 0);
  hs.clear();
  ASSERT_TRUE(Restart());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  EXPECT_TRUE(ReadsPattern(h.get(), start, kClusters * 64 * kKiB, 6));
}

// The same race on one connection: all 16 sub-blocks of 64 fresh clusters in flight at once
// (1024 requests, 512-byte writes in half of them), which a server processing requests
// concurrently turns into racing allocations.
TEST_P(CowTest, InFlightWritesIntoSameClusterOnOneConnection) {
  ASSERT_TRUE(ServeChain());
  NbdHandle h = server_.Connect();
  ASSERT_TRUE(h);
  const uint64_t start = 16 * kMiB;
  std::vector<std::vector<uint8_t>> bufs;
  std::vector<uint64_t> offs;
  for (int cl = 0; cl < 64; cl++) {
    for (int sb = 0; sb < 16; sb++) {
      uint64_t off = start + cl * 64 * kKiB + sb * 4096;
      // Odd sub-blocks get one 512-byte sector in the middle: the rest must stay base data.
      size_t len = (sb % 2) ? 512 : 4096;
      if (sb % 2) off += 1536;
      offs.push_back(off);
      bufs.push_back(Pattern(off, len, 7));
    }
  }
  std::vector<int64_t> cookies;
  for (size_t i = 0; i < bufs.size(); i++) {
    int64_t ck = nbd_aio_pwrite(h.get(), bufs[i].data(), bufs[i].size(), offs[i],
                                NBD_NULL_COMPLETION, 0);
    ASSERT_NE(ck, -1) << nbd_get_error();
    cookies.push_back(ck);
  }
  ASSERT_TRUE(DrainAio(h.get(), 60));
  for (int64_t ck : cookies) ASSERT_EQ(nbd_aio_command_completed(h.get(), ck), 1);
  std::vector<uint8_t> want(64 * 64 * kKiB);
  FillBase(want.data(), start, want.size());
  for (size_t i = 0; i < bufs.size(); i++) {
    memcpy(want.data() + (offs[i] - start), bufs[i].data(), bufs[i].size());
  }
  std::vector<uint8_t> got(want.size());
  ASSERT_EQ(nbd_pread(h.get(), got.data(), got.size(), start, 0), 0);
  int64_t bad = FirstMismatch(got.data(), want.data(), want.size());
  EXPECT_EQ(bad, -1) << "wrong byte at disk offset " << start + bad;
}

// The randomized model check. Seeds are fixed (a failure reproduces); the seed and round are
// in the failure message.
TEST_P(CowTest, RandomOpsMatchReferenceAcrossRestartsAndSnapshots) {
  const ChainOptions chain{.disk_size = 16 * kMiB, .base_data = 12 * kMiB, .with_base = true};
  ASSERT_TRUE(ServeChain(chain));
  std::vector<uint8_t> model(chain.disk_size, 0);
  FillBase(model.data(), 0, chain.base_data);
  // TRIM leaves content undefined by the NBD spec; strata zeroes whole trimmed sub-blocks and
  // may leave the unaligned edges alone. So a trimmed byte may read as its old value or 0
  // (never anything else) until it is written or zeroed again.
  std::vector<bool> trimmed(chain.disk_size, false);
  auto mismatch = [&](const uint8_t* got, uint64_t off, uint64_t len) -> int64_t {
    if (memcmp(got, model.data() + off, len) == 0) return -1;
    for (uint64_t i = 0; i < len; i++) {
      if (got[i] != model[off + i] && !(trimmed[off + i] && got[i] == 0)) return i;
    }
    return -1;
  };
  auto describe = [&](const uint8_t* got, uint64_t off, int64_t i) {
    std::ostringstream os;
    os << "disk offset " << off + i << ": got 0x" << std::hex << int{got[i]} << " want 0x"
       << int{model[off + i]} << (trimmed[off + i] ? " (trimmed: or 0)" : "") << std::dec;
    return os.str();
  };
  std::vector<std::string> history;  // the ops of the current round, printed on failure
  auto history_text = [&] {
    std::string t;
    for (const auto& line : history) t += line + "\n";
    return t;
  };
  const uint32_t seed = 20240 + GetParam().workers + (GetParam().cache[0] == 'n' ? 100 : 0);
  std::mt19937_64 rng(seed);
  const uint64_t sectors = chain.disk_size / 512;
  int64_t min_block = 512;
  constexpr int kRounds = 5, kOps = 200;
  for (int round = 0; round < kRounds; round++) {
    SCOPED_TRACE("seed " + std::to_string(seed) + " round " + std::to_string(round));
    NbdHandle hs[2] = {server_.Connect(), server_.Connect()};
    ASSERT_TRUE(hs[0] && hs[1]);
    if (nbd_get_block_size(hs[0].get(), LIBNBD_SIZE_MINIMUM) == 1) min_block = 1;
    for (int op = 0; op < kOps; op++) {
      nbd_handle* h = hs[rng() % 2].get();
      // Mostly small ranges near cluster edges, sometimes large ones.
      uint64_t len_sectors = (rng() % 8 == 0) ? 1 + rng() % 512 : 1 + rng() % 24;
      uint64_t off = (rng() % (sectors - len_sectors)) * 512;
      uint64_t len = len_sectors * 512;
      if (min_block == 1 && rng() % 6 == 0) {  // byte-granular now and then
        off += rng() % 512;
        len = std::min<uint64_t>(len - rng() % 512, chain.disk_size - off);
        if (len == 0) len = 1;
      }
      uint32_t pattern_seed = static_cast<uint32_t>(round * kOps + op + 1000);
      switch (rng() % 10) {
        case 0: case 1: case 2: case 3: {
          uint32_t flags = (rng() % 5 == 0) ? LIBNBD_CMD_FLAG_FUA : 0;
          history.push_back("write " + std::to_string(off) + "+" + std::to_string(len));
          ASSERT_TRUE(WritePattern(h, off, len, pattern_seed, flags)) << "op " << op;
          FillPattern(model.data() + off, off, len, pattern_seed);
          std::fill(trimmed.begin() + off, trimmed.begin() + off + len, false);
          break;
        }
        case 4: case 5: {
          uint32_t flags = (rng() % 3 == 0) ? LIBNBD_CMD_FLAG_NO_HOLE : 0;
          history.push_back("zero " + std::to_string(off) + "+" + std::to_string(len));
          ASSERT_EQ(nbd_zero(h, len, off, flags), 0) << "op " << op << ": " << nbd_get_error();
          memset(model.data() + off, 0, len);
          std::fill(trimmed.begin() + off, trimmed.begin() + off + len, false);
          break;
        }
        case 6: {
          history.push_back("trim " + std::to_string(off) + "+" + std::to_string(len));
          ASSERT_EQ(nbd_trim(h, len, off, 0), 0) << "op " << op << ": " << nbd_get_error();
          std::fill(trimmed.begin() + off, trimmed.begin() + off + len, true);
          break;
        }
        case 7:
          history.push_back("flush");
          ASSERT_EQ(nbd_flush(h, 0), 0) << nbd_get_error();
          break;
        default: {
          history.push_back("read " + std::to_string(off) + "+" + std::to_string(len));
          std::vector<uint8_t> got(len);
          ASSERT_EQ(nbd_pread(h, got.data(), len, off, 0), 0) << nbd_get_error();
          int64_t bad = mismatch(got.data(), off, len);
          ASSERT_EQ(bad, -1) << "op " << op << ": read @" << off << "+" << len << " wrong at "
                             << describe(got.data(), off, bad) << "\nops:\n" << history_text();
        }
      }
    }
    ASSERT_EQ(nbd_flush(hs[0].get(), 0), 0);
    // Full comparison through the other connection.
    std::vector<uint8_t> got(chain.disk_size);
    ASSERT_EQ(nbd_pread(hs[1].get(), got.data(), got.size(), 0, 0), 0) << nbd_get_error();
    int64_t bad = mismatch(got.data(), 0, got.size());
    ASSERT_EQ(bad, -1) << "disk differs from the model at " << describe(got.data(), 0, bad)
                       << "\nops:\n" << history_text();
    // ZERO in base:allocation must be true.
    for (const auto& e : BlockStatus(hs[1].get(), "base:allocation", 0, chain.disk_size)) {
      if (e.flags & LIBNBD_STATE_ZERO) {
        ASSERT_TRUE(AllZero(got.data() + e.offset, e.length))
            << "extent @" << e.offset << "+" << e.length << " says ZERO but holds data";
      }
    }
    // What the server returned for trimmed bytes is now what it must keep returning.
    for (uint64_t i = 0; i < chain.disk_size; i++) {
      if (trimmed[i]) model[i] = got[i];
    }
    std::fill(trimmed.begin(), trimmed.end(), false);
    history.clear();
    hs[0].reset();
    hs[1].reset();
    // Between rounds: clean restart, kill -9 after the flush, an offline snapshot.
    switch (round % 3) {
      case 0: ASSERT_TRUE(Restart()); break;
      case 1:
        server_.Kill9();
        ASSERT_TRUE(server_.Start(Serve()));
        break;
      case 2:
        if (server_.SupportsLayers()) {
          ASSERT_TRUE(SnapshotAndRestart("r" + std::to_string(round)));
        } else {
          ASSERT_TRUE(Restart());
        }
        break;
    }
  }
  // After all rounds: the final disk, check, and the offline export agree with the model.
  {
    NbdHandle h = server_.Connect();
    ASSERT_TRUE(h);
    std::vector<uint8_t> got(chain.disk_size);
    ASSERT_EQ(nbd_pread(h.get(), got.data(), got.size(), 0, 0), 0);
    int64_t bad = mismatch(got.data(), 0, got.size());
    ASSERT_EQ(bad, -1) << "final disk differs from the model at " << describe(got.data(), 0, bad);
  }
  ASSERT_TRUE(server_.Stop());
  std::string out;
  EXPECT_TRUE(server_.Check(&out)) << out;
}

INSTANTIATE_TEST_SUITE_P(Serve, CowTest,
                         ::testing::Values(ServeVariant{"writeback", 1},
                                           ServeVariant{"writeback", 4},
                                           ServeVariant{"none", 2}),
                         VariantName);

}  // namespace
}  // namespace strata_test
