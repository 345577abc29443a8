#include "server/engine/buffer_pool.h"

#include <algorithm>
#include <cstdlib>
#include <new>

namespace strata {
namespace {
constexpr size_t kMinClass = 4096;

int ClassOf(size_t size) {
  int c = 0;
  size_t cap = kMinClass;
  while (cap < size) {
    cap <<= 1;
    ++c;
  }
  return c;
}
}  // namespace

BufferPool::~BufferPool() {
  for (auto& list : free_) {
    for (char* b : list) free(b);
  }
}

size_t BufferPool::CapacityFor(size_t size) { return kMinClass << ClassOf(size); }

char* BufferPool::Acquire(size_t size, size_t* capacity) {
  int c = ClassOf(size);
  size_t cap = kMinClass << c;
  *capacity = cap;
  if (c < kClasses && !free_[c].empty()) {
    char* b = free_[c].back();
    free_[c].pop_back();
    idle_ -= cap;
    return b;
  }
  void* p = aligned_alloc(kMinClass, cap);
  if (p == nullptr) throw std::bad_alloc();
  return static_cast<char*>(p);
}

void BufferPool::Release(char* buffer, size_t capacity) {
  if (buffer == nullptr) return;
  int c = ClassOf(capacity);
  if (c < kClasses && idle_ + capacity <= max_idle_) {
    free_[c].push_back(buffer);
    idle_ += capacity;
    return;
  }
  free(buffer);
}

bool BufferBudget::TryTake(uint64_t held, uint64_t n, BudgetWaiter* waiter) {
  const uint64_t more = BeyondFloor(held + n) - BeyondFloor(held);
  if (more == 0) return true;
  MutexLock lock(&mu_);
  if (used_ + more <= pool_) {
    used_ += more;
    return true;
  }
  // Remembered under the same lock that saw no room: a Give after this calls it.
  if (std::find(waiters_.begin(), waiters_.end(), waiter) == waiters_.end()) {
    waiters_.push_back(waiter);
  }
  return false;
}

void BufferBudget::Take(uint64_t held, uint64_t n) {
  const uint64_t more = BeyondFloor(held + n) - BeyondFloor(held);
  if (more == 0) return;
  MutexLock lock(&mu_);
  used_ += more;
}

void BufferBudget::Give(uint64_t held, uint64_t n) {
  const uint64_t less = BeyondFloor(held) - BeyondFloor(held - n);
  if (less == 0) return;
  std::vector<BudgetWaiter*> wake;
  {
    MutexLock lock(&mu_);
    used_ -= less;
    wake.swap(waiters_);
  }
  for (BudgetWaiter* w : wake) w->BudgetFreed();
}

void BufferBudget::Forget(BudgetWaiter* waiter) {
  MutexLock lock(&mu_);
  waiters_.erase(std::remove(waiters_.begin(), waiters_.end(), waiter), waiters_.end());
}

uint64_t BufferBudget::pool_used() const {
  MutexLock lock(&mu_);
  return used_;
}

}  // namespace strata
