#include "server/engine/storage.h"

#include <fcntl.h>
#include <stdlib.h>
#include <unistd.h>

#include <atomic>
#include <filesystem>
#include <chrono>
#include <thread>
#include <vector>

#include "blockstore/fail_env.h"
#include "gtest/gtest.h"
#include "server/engine/chain_storage.h"
#include "server/engine/fake_storage.h"

namespace strata {
namespace {

// Counts flushes, each taking a while, and records when each one started.
class SlowFlushStorage : public FakeStorage {
 public:
  SlowFlushStorage() : FakeStorage(1 << 20) {}
  absl::Status Flush() override {
    starts.fetch_add(1);
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    flushes.fetch_add(1);
    return absl::OkStatus();
  }
  std::atomic<int> starts{0};
  std::atomic<int> flushes{0};
};

TEST(GroupFlushTest, ConcurrentCallersShareFlushesButEachWaitsForANewOne) {
  SlowFlushStorage s;
  std::vector<std::thread> threads;
  std::atomic<int> violations{0};
  for (int i = 0; i < 16; ++i) {
    threads.emplace_back([&] {
      for (int j = 0; j < 5; ++j) {
        // A flush that completes for us must have started after we arrived.
        int started_before = s.starts.load();
        ASSERT_TRUE(s.GroupFlush().ok());
        if (s.flushes.load() <= started_before) violations.fetch_add(1);
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(violations.load(), 0);
  EXPECT_LT(s.flushes.load(), 16 * 5);  // shared
  EXPECT_GE(s.flushes.load(), 5);
}

TEST(GroupFlushTest, ErrorsReachTheCallersOfThatFlush) {
  class Failing : public FakeStorage {
   public:
    Failing() : FakeStorage(4096) {}
    absl::Status Flush() override { return absl::DataLossError("fdatasync: injected"); }
  } s;
  EXPECT_EQ(s.GroupFlush().code(), absl::StatusCode::kDataLoss);
}

// ChainStorage on a fresh chain (no base, one active layer) in a temp dir.
class ChainStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/strata-storage-XXXXXX";
    ASSERT_NE(mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
    path_ = dir_ + "/disk.strata";
    CreateOptions create;
    create.size = 1 << 20;
    auto h = CreateLayer(path_, create);
    ASSERT_TRUE(h.ok()) << h.status();
    auto s = OpenChainStorage(path_, true, false);
    ASSERT_TRUE(s.ok()) << s.status();
    storage_ = std::move(*s);
  }
  void TearDown() override {
    storage_.reset();
    std::filesystem::remove_all(dir_);
  }
  std::string dir_;
  std::string path_;
  std::unique_ptr<ChainStorage> storage_;
};

TEST_F(ChainStorageTest, UnalignedWriteIsWidenedAndConflictsWait) {
  auto plan = storage_->PrepareWrite(4100, 100);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->start, 4096u);
  EXPECT_EQ(plan->end, 8192u);
  EXPECT_TRUE(plan->widened());
  // A second write into the same sub-block must wait.
  EXPECT_EQ(storage_->PrepareWrite(5000, 10).status().code(), absl::StatusCode::kUnavailable);
  storage_->FinishWrite(*plan, true);
  auto again = storage_->PrepareWrite(5000, 10);
  EXPECT_TRUE(again.ok());
  storage_->FinishWrite(*again, true);
}

TEST_F(ChainStorageTest, ZeroReturnsUnalignedEdgesAsDataRanges) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ASSERT_TRUE(storage_->Zero(100, 10000, true, &ranges).ok());
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0], std::make_pair(uint64_t{100}, uint64_t{3996}));
  EXPECT_EQ(ranges[1], std::make_pair(uint64_t{8192}, uint64_t{1908}));
}

TEST_F(ChainStorageTest, OutOfRangeIsKOutOfRange) {
  std::vector<Segment> segs;
  ReadPin pin;
  EXPECT_EQ(storage_->MapRead(1 << 20, 1, &segs, &pin).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(storage_->PrepareWrite((1 << 20) - 1, 2).status().code(),
            absl::StatusCode::kOutOfRange);
}

// ChainStorage asks the Chain, so a snapshot shows at once: no refresh after the pause.
TEST_F(ChainStorageTest, TopPositionFollowsSnapshots) {
  EXPECT_EQ(storage_->top_position(), 1);
  // The export description nbdinfo shows ("1 layers" was issue 12's problem 10).
  EXPECT_EQ(storage_->Describe(), "strata chain " + path_ + " (1 layer above the base)");
  ASSERT_TRUE(storage_->chain()->Snapshot("s1").ok());
  EXPECT_EQ(storage_->top_position(), 2);
  EXPECT_EQ(storage_->Describe(), "strata chain " + path_ + " (2 layers above the base)");
}

TEST_F(ChainStorageTest, FactsComeFromTheChain) {
  EXPECT_EQ(storage_->size(), storage_->chain()->size());
  EXPECT_EQ(storage_->sub_block_size(), storage_->chain()->sub_block_size());
  EXPECT_TRUE(storage_->writable());
  EXPECT_FALSE(storage_->direct_io());
  std::shared_ptr<Export> e = NewExport("disk", storage_.get());
  EXPECT_FALSE(e->read_only);
  EXPECT_EQ(storage_->DescribeLayer(1), "layer 1 (" + path_ + ")");
}

TEST_F(ChainStorageTest, AReadOnlyChainMakesAReadOnlyExport) {
  storage_.reset();  // its exclusive lock would refuse even a shared one
  auto ro = OpenChainStorage(path_, /*writable=*/false, /*direct_io=*/false);
  ASSERT_TRUE(ro.ok()) << ro.status();
  EXPECT_FALSE((*ro)->writable());
  EXPECT_TRUE(NewExport("disk", ro->get())->read_only);
  EXPECT_EQ((*ro)->Revert("").code(), absl::StatusCode::kFailedPrecondition);
}

TEST_F(ChainStorageTest, RevertServesTheSnapshotContents) {
  ASSERT_TRUE(storage_->chain()->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(storage_->chain()->Snapshot("s1").ok());
  ASSERT_TRUE(storage_->chain()->Write(0, std::string(4096, 'b')).ok());
  ASSERT_TRUE(storage_->Revert("s1").ok());
  std::string back(4096, '?');
  ASSERT_TRUE(storage_->chain()->Read(0, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, std::string(4096, 'a'));
  // A snapshot that is not in the chain: refused, and the disk is still served.
  EXPECT_EQ(storage_->Revert("nope").code(), absl::StatusCode::kNotFound);
  ASSERT_NE(storage_->chain(), nullptr);
  EXPECT_TRUE(storage_->chain()->Write(0, std::string(4096, 'c')).ok());
}

// Issue 12: a revert that failed used to leave the server with no chain (EIO for every read
// until a restart). It now keeps serving the chain it had, through the same storage.
TEST_F(ChainStorageTest, ARevertThatFailsKeepsServingTheChainItHad) {
  storage_.reset();  // its lock
  bool fail = false;  // the commit point's rename over the top, once set
  testing::FailEnv env([&](absl::string_view op, const std::string& path) {
    return fail && op == "rename" && path == path_;
  });
  auto chain = Chain::Open(path_, {.env = &env});
  ASSERT_TRUE(chain.ok()) << chain.status();
  ChainStorage storage(std::move(*chain));
  ASSERT_TRUE(storage.chain()->Write(0, std::string(4096, 'a')).ok());
  ASSERT_TRUE(storage.chain()->Snapshot("s1").ok());
  ASSERT_TRUE(storage.chain()->Write(0, std::string(4096, 'b')).ok());
  const Chain* served = storage.chain();
  fail = true;
  absl::Status st = storage.Revert("s1");
  EXPECT_FALSE(st.ok());
  EXPECT_NE(st.message().find("the disk is unchanged"), absl::string_view::npos) << st;
  EXPECT_EQ(storage.chain(), served);
  std::vector<Segment> segs;
  ReadPin pin;
  EXPECT_TRUE(storage.MapRead(0, 4096, &segs, &pin).ok());
  pin.Release();
  std::string back(4096, '?');
  ASSERT_TRUE(storage.chain()->Read(0, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, std::string(4096, 'b'));
  EXPECT_TRUE(storage.Flush().ok());
  // And once the cause is gone, the same storage reverts.
  fail = false;
  ASSERT_TRUE(storage.Revert("s1").ok());
  EXPECT_NE(storage.chain(), served);
  ASSERT_TRUE(storage.chain()->Read(0, absl::MakeSpan(back)).ok());
  EXPECT_EQ(back, std::string(4096, 'a'));
  EXPECT_TRUE(storage.Flush().ok());
}

}  // namespace
}  // namespace strata
