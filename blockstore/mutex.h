// Mutex and Notification: absl::Mutex and absl::Notification that ThreadSanitizer can see.
// Debian's Abseil is not built with TSan, so the happens-before edges of its Lock and Unlock
// (made with atomics and futexes inside the shared library) are invisible to it, and every
// access under a lock reads as a race. In a TSan build this wrapper reports each lock and
// unlock through TSan's mutex annotations (what an instrumented Abseil does itself); otherwise
// it is absl::Mutex, inlined, at no cost. Clang's thread-safety analysis sees it as absl::Mutex.
//
// Await releases the lock inside Abseil, so TSan is told of an unlock before and a lock after;
// the condition runs inside Abseil's lock calls, where TSan ignores accesses (it is evaluated
// with the lock held, by the waiter or by whichever thread unlocks).
#ifndef STRATA_BLOCKSTORE_MUTEX_H_
#define STRATA_BLOCKSTORE_MUTEX_H_

#include "absl/base/thread_annotations.h"
#include "absl/synchronization/mutex.h"
#include "absl/time/time.h"

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

  // Waits, unlocked, until `cond` holds; the caller holds the lock exclusively.
  void Await(const absl::Condition& cond) {
    Released([&] { mu_.Await(cond); return true; });
  }
  // False when `timeout` passed first; the lock is held again either way.
  bool AwaitWithTimeout(const absl::Condition& cond, absl::Duration timeout) {
    return Released([&] { return mu_.AwaitWithTimeout(cond, timeout); });
  }
  bool AwaitWithDeadline(const absl::Condition& cond, absl::Time deadline) {
    return Released([&] { return mu_.AwaitWithDeadline(cond, deadline); });
  }
  // Lock once `cond` holds or `timeout` passed (false); the lock is held either way.
  bool LockWhenWithTimeout(const absl::Condition& cond, absl::Duration timeout)
      ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_lock(this, 0));
    const bool met = mu_.LockWhenWithTimeout(cond, timeout);
    STRATA_TSAN_MUTEX(__tsan_mutex_post_lock(this, 0, 0));
    return met;
  }

 private:
  // Runs `wait` (an absl Await*, which unlocks and relocks mu_) with TSan told the lock is
  // released for the wait and acquired again after it.
  template <typename Wait>
  bool Released(Wait wait) {
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_unlock(this, 0));
    STRATA_TSAN_MUTEX(__tsan_mutex_post_unlock(this, 0));
    STRATA_TSAN_MUTEX(__tsan_mutex_pre_lock(this, 0));
    const bool met = wait();
    STRATA_TSAN_MUTEX(__tsan_mutex_post_lock(this, 0, 0));
    return met;
  }

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

// Notification: absl::Notification on Mutex, so the notifier's writes before Notify()
// happen-before, for TSan too, whatever the waiter reads after its wait returns.
class Notification {
 public:
  Notification() = default;
  // Notify() may still be unlocking when a waiter returns and destroys this.
  ~Notification() { MutexLock lock(&mu_); }
  Notification(const Notification&) = delete;
  Notification& operator=(const Notification&) = delete;

  void Notify() {
    MutexLock lock(&mu_);
    notified_ = true;
  }
  bool HasBeenNotified() {
    MutexLock lock(&mu_);
    return notified_;
  }
  void WaitForNotification() {
    MutexLock lock(&mu_);
    mu_.Await(absl::Condition(&notified_));
  }
  // False when `timeout` passed before Notify().
  bool WaitForNotificationWithTimeout(absl::Duration timeout) {
    MutexLock lock(&mu_);
    return mu_.AwaitWithTimeout(absl::Condition(&notified_), timeout);
  }
  bool WaitForNotificationWithDeadline(absl::Time deadline) {
    MutexLock lock(&mu_);
    return mu_.AwaitWithDeadline(absl::Condition(&notified_), deadline);
  }

 private:
  Mutex mu_;
  bool notified_ ABSL_GUARDED_BY(mu_) = false;
};

}  // namespace strata

#endif  // STRATA_BLOCKSTORE_MUTEX_H_
