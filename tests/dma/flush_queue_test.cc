// Tests of the lazy-mode flush queue's timer (dma/internal/flush_queue.h): destruction wakes and
// joins the timer wherever it is (asleep unarmed, asleep in its timeout, flushing), and domains
// destroyed with lazy flushes pending never hang.
#include "dma/internal/flush_queue.h"

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <thread>
#include <vector>

#include "base/clock.h"
#include "dma/iommu_domain.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"

namespace pagepool::dma {
namespace {

using internal::FlushQueue;
using internal::FqEntry;

constexpr uint64_t kBase = uint64_t{1} << 40;
constexpr uint64_t kPhys = uint64_t{1} << 34;

// A timer armed with a 1 h timeout is asleep in it when the queue is destroyed: the destructor
// must wake it, not wait for the timeout.
TEST(FlushQueueTest, DestructorWakesATimerAsleepInItsTimeout) {
  std::atomic<int> flushes{0};
  const auto t0 = std::chrono::steady_clock::now();
  {
    FlushQueue fq(
        base::Clock::Coarse(), 256, uint64_t{3600} * 1'000'000'000,
        [&](std::vector<FqEntry>&) { flushes.fetch_add(1); }, [] {});
    fq.Add(FqEntry{kBase, k4K, 0, {}});  // arms the timer
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
    fq.FlushAll();
  }
  EXPECT_LT(std::chrono::steady_clock::now() - t0, std::chrono::seconds(30));
  EXPECT_EQ(flushes.load(), 1);  // FlushAll's; the timer never reached its deadline
}

// Never armed: the timer sleeps until armed or stopped.
TEST(FlushQueueTest, DestructorWakesAnUnarmedTimer) {
  for (int i = 0; i < 100; ++i) {
    FlushQueue fq(
        base::Clock::Coarse(), 256, 10'000'000, [](std::vector<FqEntry>&) {}, [] {});
  }
}

// The timer flushes a lone entry once its timeout has passed by the queue's clock (real time here).
TEST(FlushQueueTest, TimerFlushesALoneEntry) {
  std::atomic<int> flushed{0};
  FlushQueue fq(
      base::Clock::Real(), 256, 1'000'000,
      [&](std::vector<FqEntry>& e) { flushed.fetch_add(static_cast<int>(e.size())); }, [] {});
  fq.Add(FqEntry{kBase, k4K, 0, {}});
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (flushed.load() == 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(flushed.load(), 1);
  fq.FlushAll();
}

// 1000 lazy domains destroyed with unmaps still queued, the timer caught at every point of its
// cycle: asleep in a 10 ms timeout, or flushing with a timeout of a few microseconds, sometimes
// while the destroying thread's own FlushAll runs.
TEST(FlushQueueTest, DomainsDestroyedWithPendingLazyFlushes) {
  constexpr int kRounds = 1000;
  int pending_at_destroy = 0;
  for (int round = 0; round < kRounds; ++round) {
    DomainConfig c;
    c.mode = IommuMode::kLazy;
    c.fq_timeout_ns = (round % 2 == 0) ? 10'000'000 : 2'000 + 1'000 * (round % 7);
    c.clock = base::Clock::Real();
    auto d = std::move(IommuDomain::Create(c)).value();
    for (uint64_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(d->Map(kBase + i * k4K, kPhys + i * k4K, k4K, kRW).ok());
    }
    for (uint64_t i = 0; i < 4; ++i) ASSERT_TRUE(d->Unmap(kBase + i * k4K, k4K).ok());
    if (d->stats().fq_pending != 0) ++pending_at_destroy;
    if (round % 3 == 1) std::this_thread::sleep_for(std::chrono::microseconds(round % 50));
    d.reset();  // FlushAll, then the timer is stopped and joined
  }
  // The 10 ms rounds are destroyed well within their timeout: their unmaps were still queued.
  EXPECT_GE(pending_at_destroy, kRounds / 4);
}

}  // namespace
}  // namespace pagepool::dma
