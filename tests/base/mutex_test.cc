// Tests of base/mutex.h: mutual exclusion under contention (the spinning and the sleeping paths),
// TryLock, and a holder that sleeps long enough that waiters must park on the futex.
#include "base/mutex.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "gtest/gtest.h"

namespace pagepool::base {
namespace {

TEST(Mutex, CountsExactlyUnderContention) {
  Mutex mu;
  uint64_t counter = 0;  // a plain field: TSan reports any increment the lock does not order
  constexpr int kThreads = 4;
  constexpr int kIters = 200'000;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&] {
      for (int i = 0; i < kIters; ++i) {
        MutexLock l(&mu);
        ++counter;
      }
    });
  }
  for (auto& t : threads) t.join();
  EXPECT_EQ(counter, uint64_t{kThreads} * kIters);
}

TEST(Mutex, TryLockFailsWhileHeldAndSucceedsAfter) {
  Mutex mu;
  mu.Lock();
  bool other = true;
  std::thread([&] {
    if (mu.TryLock()) {
      mu.Unlock();
    } else {
      other = false;
    }
  }).join();
  EXPECT_FALSE(other);
  mu.Unlock();
  if (mu.TryLock()) {
    mu.Unlock();
  } else {
    ADD_FAILURE() << "TryLock failed on an unlocked mutex";
  }
}

TEST(Mutex, WaitersBehindALongHolderSleepAndAllGetIn) {
  Mutex mu;
  std::atomic<int> entered{0};
  int inside = 0;  // guarded by mu; must never exceed 1
  int max_inside = 0;
  mu.Lock();
  std::vector<std::thread> waiters;
  for (int t = 0; t < 3; ++t) {
    waiters.emplace_back([&] {
      MutexLock l(&mu);
      ++inside;
      max_inside = std::max(max_inside, inside);
      std::this_thread::sleep_for(std::chrono::milliseconds(2));
      --inside;
      entered.fetch_add(1);
    });
  }
  // Long past the spin phase: the waiters are asleep on the futex by now.
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(entered.load(), 0);
  mu.Unlock();
  for (auto& t : waiters) t.join();
  EXPECT_EQ(entered.load(), 3);
  EXPECT_EQ(max_inside, 1);
}

}  // namespace
}  // namespace pagepool::base
