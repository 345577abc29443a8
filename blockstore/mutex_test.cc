#include "blockstore/mutex.h"

#include <thread>

#include "absl/time/time.h"
#include "gtest/gtest.h"

namespace strata {
namespace {

TEST(MutexTest, AwaitWakesWhenTheConditionHolds) {
  Mutex mu;
  bool ready = false;
  int seen = 0;
  std::thread waiter([&] {
    MutexLock lock(&mu);
    mu.Await(absl::Condition(&ready));
    seen = 1;
  });
  {
    MutexLock lock(&mu);
    ready = true;
  }
  waiter.join();
  EXPECT_EQ(seen, 1);
}

TEST(MutexTest, AwaitWithTimeoutExpiresAndHoldsTheLockAgain) {
  Mutex mu;
  bool never = false;
  MutexLock lock(&mu);
  EXPECT_FALSE(mu.AwaitWithTimeout(absl::Condition(&never), absl::Milliseconds(20)));
  EXPECT_FALSE(mu.AwaitWithDeadline(absl::Condition(&never),
                                    absl::Now() + absl::Milliseconds(20)));
  never = true;  // still under the lock: the next wait returns at once
  EXPECT_TRUE(mu.AwaitWithTimeout(absl::Condition(&never), absl::Seconds(10)));
}

TEST(MutexTest, LockWhenWithTimeoutLocksEitherWay) {
  Mutex mu;
  bool open = false;
  EXPECT_FALSE(mu.LockWhenWithTimeout(absl::Condition(&open), absl::Milliseconds(20)));
  open = true;
  mu.Unlock();
  EXPECT_TRUE(mu.LockWhenWithTimeout(absl::Condition(&open), absl::Seconds(10)));
  mu.Unlock();
}

// Under TSan this is the check: `payload` is written with no lock by one thread and read
// by another after the wait, so only the Notification's edge makes it race-free.
TEST(NotificationTest, OrdersAWriteBeforeNotifyBeforeTheWaitersRead) {
  for (int round = 0; round < 50; ++round) {
    Notification done;
    int payload = 0;
    std::thread writer([&] {
      payload = round + 1;
      done.Notify();
    });
    done.WaitForNotification();
    EXPECT_EQ(payload, round + 1);
    EXPECT_TRUE(done.HasBeenNotified());
    writer.join();
  }
}

TEST(NotificationTest, WaitWithTimeoutExpiresUnnotified) {
  Notification never;
  EXPECT_FALSE(never.WaitForNotificationWithTimeout(absl::Milliseconds(20)));
  EXPECT_FALSE(never.WaitForNotificationWithDeadline(absl::Now() + absl::Milliseconds(20)));
  EXPECT_FALSE(never.HasBeenNotified());
  never.Notify();
  EXPECT_TRUE(never.WaitForNotificationWithTimeout(absl::Seconds(10)));
}

}  // namespace
}  // namespace strata
