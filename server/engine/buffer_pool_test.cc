#include "server/engine/buffer_pool.h"

#include <cstdint>
#include <cstring>
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
  BufferPool pool;
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

}  // namespace
}  // namespace strata
