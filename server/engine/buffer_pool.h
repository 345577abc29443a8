// BufferPool: aligned I/O buffers recycled per worker thread. Large reads and writes would
// otherwise go through malloc's mmap path and fault in fresh pages on every request. Buffers
// are 4 KiB aligned (O_DIRECT) and come in power-of-two size classes from 4 KiB to 64 MiB.
// Not thread-safe: one pool per worker.
#ifndef STRATA_SERVER_ENGINE_BUFFER_POOL_H_
#define STRATA_SERVER_ENGINE_BUFFER_POOL_H_

#include <cstddef>
#include <vector>

namespace strata {

class BufferPool {
 public:
  // Keep at most this many idle bytes (the rest is freed on Release).
  explicit BufferPool(size_t max_idle_bytes = 64 << 20) : max_idle_(max_idle_bytes) {}
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of at least `size` bytes (its capacity goes into *capacity). Never null: aborts
  // on out-of-memory like new.
  char* Acquire(size_t size, size_t* capacity);
  void Release(char* buffer, size_t capacity);
  // Bytes Release kept for reuse, at most max_idle_bytes: what the pool holds beyond the
  // buffers in use.
  size_t idle_bytes() const { return idle_; }

 private:
  static constexpr int kClasses = 15;  // 4 KiB << 0 .. 4 KiB << 14 (64 MiB)
  std::vector<char*> free_[kClasses];
  size_t idle_ = 0;
  const size_t max_idle_;
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_BUFFER_POOL_H_
