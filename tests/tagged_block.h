// Tagged 4 KiB blocks for the live tests' writers: a header naming the write (magic, connection,
// sequence, block), then bytes derived from it, so that a read tells exactly which write it
// holds (or that it holds none); and the clock the writers time their requests with.
#ifndef STRATA_TESTS_TAGGED_BLOCK_H_
#define STRATA_TESTS_TAGGED_BLOCK_H_

#include <time.h>

#include <algorithm>
#include <cstdint>
#include <cstring>

namespace strata::testing {

inline constexpr uint64_t kTaggedBlock = 4096;

// The bytes of write (conn, seq) to block `block`, tagged with `magic`.
inline void FillTaggedBlock(uint8_t* buf, uint64_t magic, uint32_t conn, uint32_t seq,
                            uint32_t block) {
  std::memcpy(buf, &magic, 8);
  std::memcpy(buf + 8, &conn, 4);
  std::memcpy(buf + 12, &seq, 4);
  std::memcpy(buf + 16, &block, 4);
  uint64_t x = (uint64_t{conn} << 40) ^ (uint64_t{seq} << 8) ^ block ^ 0x9E3779B97F4A7C15ull;
  for (size_t i = 20; i < kTaggedBlock; i += 8) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    std::memcpy(buf + i, &x, std::min<size_t>(8, kTaggedBlock - i));
  }
}

// CLOCK_MONOTONIC in nanoseconds.
inline int64_t NowNs() {
  timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return int64_t{ts.tv_sec} * 1'000'000'000 + ts.tv_nsec;
}

}  // namespace strata::testing

#endif  // STRATA_TESTS_TAGGED_BLOCK_H_
