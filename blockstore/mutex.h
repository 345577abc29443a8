// Mutex: absl::Mutex that ThreadSanitizer can see. Debian's Abseil is not built with TSan,
// so the happens-before edges of its Lock and Unlock (made with atomics and futexes inside the
// shared library) are invisible to it, and every access under a lock reads as a race. In a
// TSan build this wrapper reports each lock and unlock through TSan's mutex annotations (what
// an instrumented Abseil does itself); otherwise it is absl::Mutex, inlined, at no cost.
// Clang's thread-safety analysis sees it as absl::Mutex.
#ifndef STRATA_BLOCKSTORE_MUTEX_H_
#define STRATA_BLOCKSTORE_MUTEX_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"

#if defined(__SANITIZE_THREAD__)
#include <sanitizer/tsan_interface.h>
#define STRATA_TSAN_MUTEX(call) call
#else
#define STRATA_TSAN_MUTEX(call)
#endif

namespace strata {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() { STRATA_TSAN_MUTEX(__tsan_mutex_create(this, 0)); }
  ~Mutex() { STRATA_TSAN_MUTEX(__tsan_mutex_destroy(this, 0)); }
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_lock(this, 0));
    mu_.Lock();
    STRATA_TSAN_MUTEX(__tsan_mutex_post_lock(this, 0, 0));
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_unlock(this, 0));
    mu_.Unlock();
    STRATA_TSAN_MUTEX(__tsan_mutex_post_unlock(this, 0));
  }
  void ReaderLock() ABSL_SHARED_LOCK_FUNCTION() {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_lock(this, __tsan_mutex_read_lock));
    mu_.ReaderLock();
    STRATA_TSAN_MUTEX(__tsan_mutex_post_lock(this, __tsan_mutex_read_lock, 0));
  }
  void ReaderUnlock() ABSL_UNLOCK_FUNCTION() {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_unlock(this, __tsan_mutex_read_lock));
    mu_.ReaderUnlock();
    STRATA_TSAN_MUTEX(__tsan_mutex_post_unlock(this, __tsan_mutex_read_lock));
  }

 private:
  absl::Mutex mu_;
};

class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

class ABSL_SCOPED_LOCKABLE ReaderMutexLock {
 public:
  explicit ReaderMutexLock(Mutex* mu) ABSL_SHARED_LOCK_FUNCTION(mu) : mu_(mu) {
    mu_->ReaderLock();
  }
  ~ReaderMutexLock() ABSL_UNLOCK_FUNCTION() { mu_->ReaderUnlock(); }
  ReaderMutexLock(const ReaderMutexLock&) = delete;
  ReaderMutexLock& operator=(const ReaderMutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_MUTEX_H_
