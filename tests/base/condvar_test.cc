// Tests of base/condvar.h: a waiter wakes on a signal, every waiter on SignalAll, a timed wait
// returns on its own, and a ping-pong under contention loses no wake-up.
#include "base/condvar.h"

#include <chrono>
#include <cstdint>
#include <thread>
#include <vector>

#include "base/mutex.h"
#include "gtest/gtest.h"

namespace pagepool::base {
namespace {

TEST(CondVar, SignalWakesAWaiter) {
  Mutex mu;
  CondVar cv;
  bool ready = false;
  std::thread waiter([&] {
    MutexLock l(&mu);
    while (!ready) cv.Wait(&mu);
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(20));  // let it sleep
  {
    MutexLock l(&mu);
    ready = true;
  }
  cv.Signal();
  waiter.join();  // hangs (and the test times out) if the wake-up is lost
}

TEST(CondVar, SignalAllWakesEveryWaiter) {
  Mutex mu;
  CondVar cv;
  bool go = false;
  int woken = 0;
  std::vector<std::thread> waiters;
  for (int i = 0; i < 4; ++i) {
    waiters.emplace_back([&] {
      MutexLock l(&mu);
      while (!go) cv.Wait(&mu);
      ++woken;
    });
  }
  {
    MutexLock l(&mu);
    go = true;
  }
  cv.SignalAll();
  for (auto& t : waiters) t.join();
  EXPECT_EQ(woken, 4);
}

TEST(CondVar, WaitForReturnsAfterItsTimeout) {
  Mutex mu;
  CondVar cv;
  MutexLock l(&mu);
  const auto t0 = std::chrono::steady_clock::now();
  cv.WaitFor(&mu, 20'000'000);  // 20 ms, nobody signals
  const auto waited = std::chrono::steady_clock::now() - t0;
  // May return early only spuriously (a signal-less futex wait rarely does); never hang.
  EXPECT_LT(waited, std::chrono::seconds(5));
}

TEST(CondVar, PingPongLosesNoWakeUp) {
  Mutex mu;
  CondVar cv;
  uint64_t turn = 0;  // even: ping's turn, odd: pong's
  constexpr uint64_t kRounds = 20'000;
  auto player = [&](uint64_t parity) {
    for (uint64_t i = 0; i < kRounds; ++i) {
      MutexLock l(&mu);
      while (turn % 2 != parity) cv.Wait(&mu);
      ++turn;
      cv.Signal();
    }
  };
  std::thread ping(player, 0);
  std::thread pong(player, 1);
  ping.join();
  pong.join();
  EXPECT_EQ(turn, 2 * kRounds);
}

}  // namespace
}  // namespace pagepool::base
