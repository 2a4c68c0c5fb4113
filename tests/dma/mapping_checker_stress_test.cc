// File: tests/dma/mapping_checker_stress_test.cc
//
// MappingChecker under many threads: correct use counts nothing, deliberate misuse is counted
// exactly, and live_mappings stays exact. Label: concurrency (run under TSan).
#include <atomic>
#include <cstdint>
#include <thread>
#include <vector>

#include "dma/mapping_checker.h"
#include "gtest/gtest.h"

namespace pagepool::dma {
namespace {

TEST(MappingCheckerConcurrencyTest, ManyThreadsExactCounts) {
  MappingChecker c;
  constexpr int kThreads = 8;
  constexpr int kIters = 20000;
  std::vector<std::thread> ts;
  for (int t = 0; t < kThreads; ++t) {
    ts.emplace_back([&c, t] {
      const DmaAddr base = (uint64_t(t) + 1) << 40;
      for (int i = 0; i < kIters; ++i) {
        const DmaAddr a = base + uint64_t(i % 512) * kPageSize;
        c.OnMap(a, a, kPageSize, DmaDirection::kFromDevice);
        EXPECT_TRUE(c.OnSync(a, 0, 64, DmaDirection::kFromDevice).ok());
        if (i % 100 == 0) {  // one misuse of each kind, each time
          EXPECT_FALSE(c.OnUnmap(a, 2 * kPageSize, DmaDirection::kFromDevice).ok());
          EXPECT_FALSE(c.OnUnmap(a, kPageSize, DmaDirection::kToDevice).ok());
        }
        EXPECT_TRUE(c.OnUnmap(a, kPageSize, DmaDirection::kFromDevice).ok());
        if (i % 100 == 50) {
          EXPECT_FALSE(c.OnUnmap(a, kPageSize, DmaDirection::kFromDevice).ok());  // double
          EXPECT_FALSE(c.OnSync(a, 0, 64, DmaDirection::kFromDevice).ok());       // unknown
        }
        if (i % 1000 == 0) c.live_mappings();
      }
      // Leave some live for an unbind.
      for (int i = 0; i < 10; ++i) {
        c.OnMap(base + i * kPageSize, 0, kPageSize, DmaDirection::kToDevice);
      }
    });
  }
  for (auto& th : ts) th.join();
  const uint64_t per_thread = kIters / 100;
  CheckerCounters k = c.counters();
  EXPECT_EQ(k.size_mismatch, kThreads * per_thread);
  EXPECT_EQ(k.direction_mismatch, kThreads * per_thread);
  EXPECT_EQ(k.sync_unknown, kThreads * per_thread);
  // Every second unmap is refused and counted once. The checker remembers an unmapped address for
  // the last 1024 unmaps of its shard: a thread preempted between its unmap and the repeat while
  // the others push more than that through the shard sees the repeat as unknown (the documented
  // bound), so the split between the two counters may shift, never the sum.
  EXPECT_EQ(k.double_unmap + k.unknown_unmap, kThreads * per_thread);
  EXPECT_LE(k.unknown_unmap, k.double_unmap);
  EXPECT_EQ(c.live_mappings(), kThreads * 10u);
  std::atomic<int> torn{0};
  c.OnUnbind([&](DmaAddr, uint64_t, DmaDirection) { torn.fetch_add(1); });
  EXPECT_EQ(torn.load(), kThreads * 10);
  EXPECT_EQ(c.counters().live_at_unbind, kThreads * 10u);
  EXPECT_EQ(c.live_mappings(), 0u);
}

}  // namespace
}  // namespace pagepool::dma
