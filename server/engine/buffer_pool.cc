#include "server/engine/buffer_pool.h"

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

}  // namespace strata
