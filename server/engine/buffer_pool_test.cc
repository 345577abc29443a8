#include "server/engine/buffer_pool.h"

#include <atomic>
#include <cstdint>
#include <cstring>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace strata {
namespace {

constexpr size_t kKiB = 1024;
constexpr size_t kMiB = 1024 * kKiB;

bool Aligned4K(const char* p) { return reinterpret_cast<uintptr_t>(p) % 4096 == 0; }

// The capacity Acquire hands out for a request of `size` (the buffer is released again).
size_t CapacityFor(BufferPool& pool, size_t size) {
  size_t capacity = 0;
  char* b = pool.Acquire(size, &capacity);
  pool.Release(b, capacity);
  return capacity;
}

// Power-of-two classes from 4 KiB: a request gets the smallest class that holds it.
TEST(BufferPoolTest, SizesRoundUpToPowerOfTwoClassesFrom4KiB) {
  BufferPool pool;
  EXPECT_EQ(CapacityFor(pool, 0), 4 * kKiB);
  EXPECT_EQ(CapacityFor(pool, 1), 4 * kKiB);
  EXPECT_EQ(CapacityFor(pool, 4 * kKiB), 4 * kKiB);
  EXPECT_EQ(CapacityFor(pool, 4 * kKiB + 1), 8 * kKiB);
  EXPECT_EQ(CapacityFor(pool, 512 * kKiB - 512), 512 * kKiB);
  EXPECT_EQ(CapacityFor(pool, 3 * kMiB), 4 * kMiB);
  EXPECT_EQ(CapacityFor(pool, 32 * kMiB), 32 * kMiB);  // the largest NBD payload
}

// O_DIRECT needs 4 KiB alignment of every buffer, pooled or fresh, and the whole capacity is
// usable (ASan builds check the writes).
TEST(BufferPoolTest, EveryBufferIs4KiBAlignedAndUsableToItsCapacity) {
  BufferPool pool;
  std::vector<std::pair<char*, size_t>> held;
  for (size_t size : {size_t{1}, 4 * kKiB, size_t{5000}, 64 * kKiB + 1, 1 * kMiB}) {
    size_t capacity = 0;
    char* b = pool.Acquire(size, &capacity);
    ASSERT_NE(b, nullptr);
    EXPECT_TRUE(Aligned4K(b)) << "size " << size << ": " << static_cast<void*>(b);
    EXPECT_GE(capacity, size);
    std::memset(b, 0xab, capacity);
    held.emplace_back(b, capacity);
  }
  for (auto [b, capacity] : held) pool.Release(b, capacity);
  size_t capacity = 0;
  char* reused = pool.Acquire(4 * kKiB, &capacity);
  EXPECT_TRUE(Aligned4K(reused));
  pool.Release(reused, capacity);
}

// A released buffer serves the next request of its class, and only of its class.
TEST(BufferPoolTest, ReleasedBufferIsReusedForItsClass) {
  BufferPool pool;
  size_t capacity = 0;
  char* first = pool.Acquire(5000, &capacity);
  ASSERT_EQ(capacity, 8 * kKiB);
  pool.Release(first, capacity);
  EXPECT_EQ(pool.idle_bytes(), 8 * kKiB);

  size_t other_capacity = 0;
  char* other = pool.Acquire(100, &other_capacity);  // the 4 KiB class: nothing idle there
  EXPECT_NE(other, first);
  EXPECT_EQ(pool.idle_bytes(), 8 * kKiB);

  char* again = pool.Acquire(8 * kKiB, &capacity);
  EXPECT_EQ(again, first);
  EXPECT_EQ(capacity, 8 * kKiB);
  EXPECT_EQ(pool.idle_bytes(), 0u);
  pool.Release(again, capacity);
  pool.Release(other, other_capacity);
  EXPECT_EQ(pool.idle_bytes(), 12 * kKiB);
}

// Idle buffers are kept only up to the cap; a release that would pass it frees the buffer
// (ASan's leak check sees one that is neither kept nor freed).
TEST(BufferPoolTest, IdleCapFreesWhatItCannotKeep) {
  BufferPool pool(64 * kKiB);
  size_t c32 = 0, c64 = 0, c32b = 0;
  char* a = pool.Acquire(32 * kKiB, &c32);
  char* big = pool.Acquire(64 * kKiB, &c64);
  char* b = pool.Acquire(32 * kKiB, &c32b);
  pool.Release(a, c32);
  EXPECT_EQ(pool.idle_bytes(), 32 * kKiB);
  pool.Release(big, c64);  // 32 + 64 KiB would pass the cap: freed
  EXPECT_EQ(pool.idle_bytes(), 32 * kKiB);
  pool.Release(b, c32b);  // exactly at the cap: kept
  EXPECT_EQ(pool.idle_bytes(), 64 * kKiB);

  size_t capacity = 0;
  char* next = pool.Acquire(32 * kKiB, &capacity);
  EXPECT_TRUE(next == a || next == b) << "a kept buffer was not reused";
  pool.Release(next, capacity);

  BufferPool keeps_nothing(0);
  char* c = keeps_nothing.Acquire(4 * kKiB, &capacity);
  keeps_nothing.Release(c, capacity);
  EXPECT_EQ(keeps_nothing.idle_bytes(), 0u);
}

// 64 MiB is the top class: pooled like the others (with the default 64 MiB cap).
TEST(BufferPoolTest, SixtyFourMiBIsTheTopPooledClass) {
  BufferPool pool(64 * kMiB);
  size_t capacity = 0;
  char* top = pool.Acquire(32 * kMiB + 1, &capacity);
  ASSERT_EQ(capacity, 64 * kMiB);
  EXPECT_TRUE(Aligned4K(top));
  top[0] = 1;
  top[capacity - 1] = 1;
  pool.Release(top, capacity);
  EXPECT_EQ(pool.idle_bytes(), 64 * kMiB);
  char* again = pool.Acquire(64 * kMiB, &capacity);
  EXPECT_EQ(again, top);
  EXPECT_EQ(capacity, 64 * kMiB);
  pool.Release(again, capacity);
}

// A request above 64 MiB still gets a buffer that holds it (rounded to a power of two and
// aligned) but it is never pooled, however large the idle cap.
TEST(BufferPoolTest, SizeAboveTheTopClassIsServedButNeverKept) {
  BufferPool pool(size_t{1} << 30);
  size_t capacity = 0;
  char* huge = pool.Acquire(64 * kMiB + 1, &capacity);
  ASSERT_NE(huge, nullptr);
  EXPECT_EQ(capacity, 128 * kMiB);
  EXPECT_TRUE(Aligned4K(huge));
  huge[0] = 1;
  huge[capacity - 1] = 1;
  pool.Release(huge, capacity);
  EXPECT_EQ(pool.idle_bytes(), 0u);
}

// The budget's cost of a request is what the pool hands out for it.
TEST(BufferPoolTest, CapacityForIsWhatAcquireHandsOut) {
  BufferPool pool;
  for (size_t size : {size_t{0}, size_t{1}, 4 * kKiB, 4 * kKiB + 1, 3 * kMiB, 32 * kMiB + 1}) {
    EXPECT_EQ(BufferPool::CapacityFor(size), CapacityFor(pool, size)) << size;
  }
}

struct CountingWaiter final : BudgetWaiter {
  void BudgetFreed() override { ++calls; }
  std::atomic<int> calls{0};
};

// A holder's first `floor` bytes never touch the pool, so a full pool still lets every
// connection hold one modest request.
TEST(BufferBudgetTest, TheFloorIsAlwaysGrantedAndCostsThePoolNothing) {
  BufferBudget budget(1 * kMiB, 256 * kKiB);
  CountingWaiter w;
  ASSERT_TRUE(budget.TryTake(0, 1 * kMiB + 256 * kKiB, &w));  // floor + the whole pool
  EXPECT_EQ(budget.pool_used(), 1 * kMiB);
  // Another holder, pool exhausted: its floor still comes.
  EXPECT_TRUE(budget.TryTake(0, 128 * kKiB, &w));
  EXPECT_TRUE(budget.TryTake(128 * kKiB, 128 * kKiB, &w));
  EXPECT_EQ(budget.pool_used(), 1 * kMiB);
  // One byte past that floor is refused.
  EXPECT_FALSE(budget.TryTake(256 * kKiB, 1, &w));
  EXPECT_EQ(budget.pool_used(), 1 * kMiB);
}

// Only the part of a take beyond the holder's floor is charged, and a give returns exactly
// what its take charged, so the pool drains back to zero.
TEST(BufferBudgetTest, OnlyBytesBeyondTheFloorAreChargedAndGivenBack) {
  BufferBudget budget(64 * kMiB, 1 * kMiB);
  CountingWaiter w;
  ASSERT_TRUE(budget.TryTake(0, 512 * kKiB, &w));
  EXPECT_EQ(budget.pool_used(), 0u);
  ASSERT_TRUE(budget.TryTake(512 * kKiB, 4 * kMiB, &w));  // crosses the floor
  EXPECT_EQ(budget.pool_used(), 3 * kMiB + 512 * kKiB);
  budget.Give(4 * kMiB + 512 * kKiB, 512 * kKiB);  // the first buffer goes
  EXPECT_EQ(budget.pool_used(), 3 * kMiB);
  budget.Give(4 * kMiB, 4 * kMiB);
  EXPECT_EQ(budget.pool_used(), 0u);
}

// A refused holder's waiter is called once when pool bytes come back (not for each give, not
// when a give stays within a floor), and waiters can be forgotten.
TEST(BufferBudgetTest, ARefusedWaiterIsCalledOnceWhenPoolBytesAreGivenBack) {
  BufferBudget budget(8 * kMiB, 1 * kMiB);
  CountingWaiter a, b, gone;
  ASSERT_TRUE(budget.TryTake(0, 9 * kMiB, &a));
  EXPECT_FALSE(budget.TryTake(0, 2 * kMiB, &b));
  EXPECT_FALSE(budget.TryTake(0, 2 * kMiB, &b));  // remembered once
  EXPECT_FALSE(budget.TryTake(0, 2 * kMiB, &gone));
  budget.Forget(&gone);
  // A second holder's floor-only buffer coming back frees no pool bytes: nobody is called.
  ASSERT_TRUE(budget.TryTake(0, 1 * kMiB, &a));
  budget.Give(1 * kMiB, 1 * kMiB);
  EXPECT_EQ(b.calls, 0);
  budget.Give(9 * kMiB, 4 * kMiB);
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(gone.calls, 0);
  budget.Give(5 * kMiB, 4 * kMiB);
  EXPECT_EQ(b.calls, 1);  // it has to be refused again to be called again
  EXPECT_TRUE(budget.TryTake(0, 2 * kMiB, &b));
}

// A waiter that must not be called once its holder is gone: BudgetFreed after Forget would be
// a call into freed memory (the holder deletes it right after Forget).
struct GoneWaiter final : BudgetWaiter {
  void BudgetFreed() override { ++(forgotten ? calls_after_forget : calls); }
  bool forgotten = false;
  std::atomic<int> calls{0};
  std::atomic<int> calls_after_forget{0};
};

// A holder refused budget goes away while it waits (its client disconnected): Forget takes it
// off the wait list, so the Give that follows calls nothing of it, and what the others hold
// is all the pool still counts.
TEST(BufferBudgetTest, ForgetWhileWaitingTakesTheWaiterOffTheList) {
  BufferBudget budget(8 * kMiB, 1 * kMiB);
  CountingWaiter holder;
  GoneWaiter waiting;
  ASSERT_TRUE(budget.TryTake(0, 9 * kMiB, &holder));  // floor + the whole pool
  ASSERT_FALSE(budget.TryTake(0, 4 * kMiB, &waiting));
  budget.Forget(&waiting);
  waiting.forgotten = true;
  budget.Give(9 * kMiB, 9 * kMiB);
  EXPECT_EQ(waiting.calls_after_forget, 0);
  EXPECT_EQ(waiting.calls, 0);
  EXPECT_EQ(budget.pool_used(), 0u);
  // Forgetting one that is not waiting (or twice) is harmless.
  budget.Forget(&waiting);
  budget.Forget(&holder);
}

// The forgotten holder gives back what it held after Forget (a connection's teardown: Forget,
// then its buffers go): the pool drops by exactly that, and the holders still waiting are
// woken by it.
TEST(BufferBudgetTest, GiveAfterForgetReturnsTheBytesAndWakesTheOthers) {
  BufferBudget budget(8 * kMiB, 1 * kMiB);
  GoneWaiter leaving;
  CountingWaiter other, next;
  ASSERT_TRUE(budget.TryTake(0, 5 * kMiB, &leaving));  // 4 MiB of the pool
  ASSERT_TRUE(budget.TryTake(0, 5 * kMiB, &other));    // the other 4 MiB
  EXPECT_EQ(budget.pool_used(), 8 * kMiB);
  ASSERT_FALSE(budget.TryTake(5 * kMiB, 1 * kMiB, &leaving));  // it waits too
  ASSERT_FALSE(budget.TryTake(0, 2 * kMiB, &next));
  budget.Forget(&leaving);
  leaving.forgotten = true;
  budget.Give(5 * kMiB, 5 * kMiB);
  EXPECT_EQ(budget.pool_used(), 4 * kMiB);  // what `other` holds
  EXPECT_EQ(next.calls, 1);
  EXPECT_EQ(leaving.calls_after_forget, 0);
  EXPECT_TRUE(budget.TryTake(0, 2 * kMiB, &next));
  EXPECT_EQ(budget.pool_used(), 5 * kMiB);
}

// Of several waiters one is forgotten: every other one is still woken by the next Give, once,
// and a forgotten waiter that is refused again waits again.
TEST(BufferBudgetTest, SeveralWaitersOneForgottenTheRestAreWoken) {
  BufferBudget budget(4 * kMiB, 0);
  CountingWaiter holder, a, c;
  GoneWaiter b;
  ASSERT_TRUE(budget.TryTake(0, 4 * kMiB, &holder));
  for (BudgetWaiter* w : std::vector<BudgetWaiter*>{&a, &b, &c}) {
    ASSERT_FALSE(budget.TryTake(0, 1 * kMiB, w));
  }
  budget.Forget(&b);
  b.forgotten = true;
  budget.Give(4 * kMiB, 1 * kMiB);
  EXPECT_EQ(a.calls, 1);
  EXPECT_EQ(c.calls, 1);
  EXPECT_EQ(b.calls_after_forget, 0);
  EXPECT_EQ(b.calls, 0);
  b.forgotten = false;  // back (a new holder at the same address)
  ASSERT_TRUE(budget.TryTake(0, 1 * kMiB, &a));
  ASSERT_FALSE(budget.TryTake(0, 1 * kMiB, &b));
  budget.Give(1 * kMiB, 1 * kMiB);
  EXPECT_EQ(b.calls, 1);
  EXPECT_EQ(a.calls, 1);  // not refused again: not called again
  budget.Give(3 * kMiB, 3 * kMiB);
  EXPECT_EQ(budget.pool_used(), 0u);
}

// Take never refuses (an admitted request's buffer growing must not wait), even past the pool.
TEST(BufferBudgetTest, TakeGoesPastThePool) {
  BufferBudget budget(1 * kMiB, 0);
  CountingWaiter w;
  budget.Take(0, 3 * kMiB);
  EXPECT_EQ(budget.pool_used(), 3 * kMiB);
  EXPECT_FALSE(budget.TryTake(0, 4 * kKiB, &w));
  budget.Give(3 * kMiB, 3 * kMiB);
  EXPECT_EQ(budget.pool_used(), 0u);
  EXPECT_EQ(w.calls, 1);
}

// Workers take and give from their own threads: the pool never goes past its size and ends
// where it started.
TEST(BufferBudgetTest, ConcurrentHoldersNeverExceedThePool) {
  constexpr uint64_t kPool = 16 * kMiB;
  BufferBudget budget(kPool, 64 * kKiB);
  std::atomic<bool> over{false};
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&] {
      CountingWaiter w;
      for (int i = 0; i < 2000; ++i) {
        const uint64_t n = (i % 7 + 1) * kMiB;
        if (!budget.TryTake(0, n, &w)) continue;
        if (budget.pool_used() > kPool) over = true;
        budget.Give(n, n);
      }
      budget.Forget(&w);
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_FALSE(over);
  EXPECT_EQ(budget.pool_used(), 0u);
}

}  // namespace
}  // namespace strata
