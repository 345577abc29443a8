#include "server/storage.h"

#include <fcntl.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <thread>
#include <vector>

#include "gtest/gtest.h"
#include "server/fake_storage.h"

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

class RawFileStorageTest : public ::testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/strata-raw-XXXXXX";
    int fd = mkstemp(tmpl);
    ASSERT_GE(fd, 0);
    ASSERT_EQ(ftruncate(fd, 1 << 20), 0);
    close(fd);
    path_ = tmpl;
    auto s = OpenRawFileStorage(path_, true, false);
    ASSERT_TRUE(s.ok()) << s.status();
    storage_ = std::move(*s);
  }
  void TearDown() override { unlink(path_.c_str()); }
  std::string path_;
  std::unique_ptr<Storage> storage_;
};

TEST_F(RawFileStorageTest, UnalignedWriteIsWidenedWithFills) {
  auto plan = storage_->PrepareWrite(4100, 100);
  ASSERT_TRUE(plan.ok()) << plan.status();
  EXPECT_EQ(plan->start, 4096u);
  EXPECT_EQ(plan->end, 8192u);
  ASSERT_EQ(plan->head_fill.size(), 1u);
  EXPECT_EQ(plan->head_fill[0].length, 4u);
  ASSERT_EQ(plan->tail_fill.size(), 1u);
  EXPECT_EQ(plan->tail_fill[0].file_offset, 4200u);
  EXPECT_TRUE(plan->widened());
  // A second write into the same sub-block must wait.
  EXPECT_EQ(storage_->PrepareWrite(5000, 10).status().code(), absl::StatusCode::kUnavailable);
  storage_->FinishWrite(*plan, true);
  auto again = storage_->PrepareWrite(5000, 10);
  EXPECT_TRUE(again.ok());
  storage_->FinishWrite(*again, true);
}

TEST_F(RawFileStorageTest, ZeroReturnsUnalignedEdgesAsDataRanges) {
  std::vector<std::pair<uint64_t, uint64_t>> ranges;
  ASSERT_TRUE(storage_->Zero(100, 10000, true, &ranges).ok());
  ASSERT_EQ(ranges.size(), 2u);
  EXPECT_EQ(ranges[0], std::make_pair(uint64_t{100}, uint64_t{3996}));
  EXPECT_EQ(ranges[1], std::make_pair(uint64_t{8192}, uint64_t{1908}));
  ranges.clear();
  ASSERT_TRUE(storage_->Zero(0, 8192, false, &ranges).ok());  // NO_HOLE: write zeros
  ASSERT_EQ(ranges.size(), 1u);
  EXPECT_EQ(ranges[0].second, 8192u);
}

TEST_F(RawFileStorageTest, OutOfRangeIsKOutOfRange) {
  std::vector<Segment> segs;
  EXPECT_EQ(storage_->MapRead(1 << 20, 1, &segs).code(), absl::StatusCode::kOutOfRange);
  EXPECT_EQ(storage_->PrepareWrite((1 << 20) - 1, 2).status().code(),
            absl::StatusCode::kOutOfRange);
}

}  // namespace
}  // namespace strata
