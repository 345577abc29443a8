// BufferPool: aligned I/O buffers recycled per worker thread. Large reads and writes would
// otherwise go through malloc's mmap path and fault in fresh pages on every request. Buffers
// are 4 KiB aligned (O_DIRECT) and come in power-of-two size classes from 4 KiB to 64 MiB.
// Not thread-safe: one pool per worker.
#ifndef STRATA_SERVER_ENGINE_BUFFER_POOL_H_
#define STRATA_SERVER_ENGINE_BUFFER_POOL_H_

#include <cstddef>
#include <cstdint>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "blockstore/mutex.h"

namespace strata {

class BufferPool {
 public:
  // Keep at most this many idle bytes (the rest is freed on Release). They are outside the
  // BufferBudget: with the default at most 4 workers, 128 MiB above it (README).
  explicit BufferPool(size_t max_idle_bytes = 32 << 20) : max_idle_(max_idle_bytes) {}
  ~BufferPool();
  BufferPool(const BufferPool&) = delete;
  BufferPool& operator=(const BufferPool&) = delete;

  // A buffer of at least `size` bytes (its capacity goes into *capacity). Never null: aborts
  // on out-of-memory like new.
  char* Acquire(size_t size, size_t* capacity);
  // The capacity Acquire(size) returns: what a buffer of `size` bytes costs.
  static size_t CapacityFor(size_t size);
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

// Told when budget is given back, so a holder that found none can try again.
class BudgetWaiter {
 public:
  // Runs on the thread that gave the bytes back, with no lock held: post, do not work here.
  virtual void BudgetFreed() = 0;

 protected:
  ~BudgetWaiter() = default;
};

// BufferBudget: one limit (--max-buffer-memory) on the request and reply buffers of every
// connection on every worker. Each holder (a connection) may always hold `floor` bytes, enough
// for one modest request, so a well-behaved client is served while stalled ones have taken
// everything else; what it holds beyond its floor comes from the shared pool of `pool` bytes.
// A holder refused by TryTake stops asking (it stops reading its socket) and its waiter is
// remembered: the next Give of pool bytes calls every remembered waiter's BudgetFreed() once.
// Buffers therefore stay under pool + floor for each holder. Thread-safe.
class BufferBudget {
 public:
  BufferBudget(uint64_t pool, uint64_t floor) : pool_(pool), floor_(floor) {}
  BufferBudget(const BufferBudget&) = delete;
  BufferBudget& operator=(const BufferBudget&) = delete;

  // A holder of `held` bytes takes `n` more. False when they go past its floor and the pool
  // has no room; `waiter` is then called when pool bytes are given back.
  bool TryTake(uint64_t held, uint64_t n, BudgetWaiter* waiter);
  // Takes even past the pool: a request already admitted that needs a little more.
  void Take(uint64_t held, uint64_t n);
  // A holder of `held` bytes gives `n` of them back.
  void Give(uint64_t held, uint64_t n);
  // A waiter going away: Gives that start after this do not call it.
  void Forget(BudgetWaiter* waiter);

  uint64_t pool() const { return pool_; }
  uint64_t floor() const { return floor_; }
  // Bytes taken from the pool, by every holder together.
  uint64_t pool_used() const;

 private:
  // Pool bytes a holder of `held` bytes uses.
  uint64_t BeyondFloor(uint64_t held) const { return held > floor_ ? held - floor_ : 0; }

  const uint64_t pool_;
  const uint64_t floor_;
  mutable Mutex mu_;
  uint64_t used_ ABSL_GUARDED_BY(mu_) = 0;
  std::vector<BudgetWaiter*> waiters_ ABSL_GUARDED_BY(mu_);
};

}  // namespace strata

#endif  // STRATA_SERVER_ENGINE_BUFFER_POOL_H_
