#include "blockstore/slot_allocator.h"

#include <memory>
#include <string>
#include <vector>

#include "blockstore/fail_env.h"
#include "blockstore/test_util.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr uint32_t kCluster = 64 << 10;
constexpr uint64_t kTarget = (16 << 20) / kCluster;  // the 16 MiB minimum extent

// A real file through a FailEnv that counts (and may fail) every Allocate.
class SlotAllocatorTest : public ::testing::Test {
 protected:
  void SetUp() override {
    env_.set_allocate_hook([this](const std::string& path, uint64_t, uint64_t) {
      ++allocations_;
      return full_ ? absl::ResourceExhaustedError(path + ": host volume full")
                   : absl::OkStatus();
    });
    auto file = env_.Open(dir_.File("layer"), {.writable = true, .create = true});
    ASSERT_TRUE(file.ok()) << file.status();
    file_ = std::move(*file);
  }
  // A file of `end` slots, the ones below `high_water` in use or in `free_slots`.
  void Reset(uint64_t high_water, uint64_t end, std::vector<uint32_t> free_slots = {}) {
    ASSERT_TRUE(file_->Truncate(end * kCluster).ok());
    slots_.Reset(file_.get(), kCluster, high_water, end, std::move(free_slots));
  }

  testing::TempDir dir_;
  testing::FailEnv env_{[](absl::string_view, const std::string&) { return false; }};
  std::unique_ptr<File> file_;
  SlotAllocator slots_;
  int allocations_ = 0;
  bool full_ = false;
};

TEST_F(SlotAllocatorTest, TakeHandsOutTheReadyTailWithoutIo) {
  Reset(10, 13);
  EXPECT_EQ(slots_.ready(), 3u);
  EXPECT_EQ(slots_.Take(), 10u);
  EXPECT_EQ(slots_.Take(), 11u);
  EXPECT_EQ(slots_.Take(), 12u);
  EXPECT_EQ(slots_.Take(), std::nullopt);
  EXPECT_EQ(allocations_, 0);
  EXPECT_EQ(slots_.high_water(), 13u);
}

TEST_F(SlotAllocatorTest, FreeSlotsAreNotReadyUntilRefilled) {
  Reset(10, 10, {8, 5});  // highest first
  EXPECT_EQ(slots_.ready(), 0u);
  EXPECT_EQ(slots_.Take(), std::nullopt) << "a free slot's space was punched";
  ASSERT_TRUE(slots_.Replenish().ok());
  EXPECT_EQ(slots_.ready(), 2 + kTarget);
  // Free slots first, lowest first, then the new extent.
  EXPECT_EQ(slots_.Take(), 5u);
  EXPECT_EQ(slots_.Take(), 8u);
  EXPECT_EQ(slots_.Take(), 10u);
  EXPECT_EQ(slots_.end_slot(), 10 + kTarget);
}

TEST_F(SlotAllocatorTest, RefillStopsAtTheTarget) {
  Reset(10, 10 + kTarget);
  SlotAllocator::Refill refill = slots_.PlanRefill();
  EXPECT_TRUE(refill.slots.empty());
  EXPECT_EQ(refill.grow_slots, 0u);
  EXPECT_FALSE(slots_.low());
  for (uint64_t i = 0; i < kTarget * 3 / 4 + 1; ++i) ASSERT_TRUE(slots_.Take().has_value());
  EXPECT_TRUE(slots_.low());
}

// The ring threads take ready slots while a refill fills, without the lock: all of them gone
// by the time it publishes is not a full volume. The next refill grows the file.
TEST_F(SlotAllocatorTest, SlotsTakenDuringARefillAreNoError) {
  Reset(10, 10 + kTarget);
  SlotAllocator::Refill refill = slots_.PlanRefill();
  ASSERT_EQ(refill.grow_slots, 0u) << "the reserve was full when it was planned";
  while (slots_.Take().has_value()) {
  }
  slots_.Fill(&refill);
  absl::Status s = slots_.Publish(refill);
  EXPECT_TRUE(s.ok()) << s;
  ASSERT_TRUE(slots_.Replenish().ok());
  EXPECT_EQ(slots_.ready(), kTarget);
}

TEST_F(SlotAllocatorTest, ConsecutiveFreeSlotsAreAllocatedInOneCall) {
  Reset(20, 20, {12, 11, 10, 5});
  SlotAllocator::Refill refill = slots_.PlanRefill();
  EXPECT_EQ(refill.slots, (std::vector<uint32_t>{5, 10, 11, 12}));
  slots_.Fill(&refill);
  EXPECT_EQ(allocations_, 3);  // {5}, {10..12}, the extent
  ASSERT_TRUE(slots_.Publish(refill).ok());
}

TEST_F(SlotAllocatorTest, FullVolumeFailsTheRefillAndKeepsTheFreeSlots) {
  Reset(10, 10, {7});
  full_ = true;
  absl::Status s = slots_.Replenish();
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted) << s;
  EXPECT_NE(s.message().find(file_->path()), absl::string_view::npos) << s;
  EXPECT_EQ(slots_.ready(), 0u);
  full_ = false;
  ASSERT_TRUE(slots_.Replenish().ok());
  EXPECT_EQ(slots_.Take(), 7u);
}

TEST_F(SlotAllocatorTest, FullVolumeAfterSomeSlotsIsNoError) {
  Reset(10, 10, {7});
  SlotAllocator::Refill refill = slots_.PlanRefill();
  slots_.Fill(&refill);  // slot 7 and the extent
  EXPECT_TRUE(slots_.Publish(refill).ok());
  for (uint64_t i = 0; i < kTarget; ++i) ASSERT_TRUE(slots_.Take().has_value());
  full_ = true;
  EXPECT_TRUE(slots_.Replenish().ok()) << "one slot left is enough";
  ASSERT_TRUE(slots_.Take().has_value());
  EXPECT_EQ(slots_.Replenish().code(), absl::StatusCode::kResourceExhausted);
}

TEST_F(SlotAllocatorTest, GrowthByACheckpointDuringARefillKeepsTheLargerEnd) {
  Reset(10, 10);
  SlotAllocator::Refill refill = slots_.PlanRefill();
  ASSERT_EQ(refill.grow_at, 10u);
  // A checkpoint table takes a run meanwhile (under the owner's lock), growing from slot 10.
  auto run = slots_.TakeRun(4);
  ASSERT_TRUE(run.ok());
  EXPECT_EQ(*run, 10u);
  slots_.Fill(&refill);
  ASSERT_TRUE(slots_.Publish(refill).ok());
  EXPECT_EQ(slots_.end_slot(), 10 + kTarget);
  EXPECT_EQ(slots_.Take(), 14u);
}

TEST_F(SlotAllocatorTest, AllocateReusesFreeSlotsLowestFirst) {
  Reset(10, 10, {9, 4});
  EXPECT_EQ(slots_.Allocate().value(), 4u);
  EXPECT_EQ(slots_.Allocate().value(), 9u);
  EXPECT_EQ(allocations_, 2) << "each freed slot allocated again";
  EXPECT_EQ(slots_.Allocate().value(), 10u);  // grows an extent
  EXPECT_EQ(slots_.end_slot(), 10 + kTarget);
}

TEST_F(SlotAllocatorTest, FreedSlotsPassPendingAndQuarantineFirst) {
  Reset(10, 10);
  slots_.Free(6);
  EXPECT_EQ(slots_.TakePending(), std::vector<uint32_t>{6});
  slots_.Quarantine(/*tag=*/3, 6);
  EXPECT_EQ(slots_.QuarantinedEnd(), 7u);
  slots_.ReleaseQuarantined(3);  // a read pinned at 3 may still use it
  EXPECT_TRUE(slots_.has_quarantined());
  slots_.ReleaseQuarantined(4);
  EXPECT_FALSE(slots_.has_quarantined());
  EXPECT_EQ(slots_.Allocate().value(), 6u);
}

}  // namespace
}  // namespace strata
