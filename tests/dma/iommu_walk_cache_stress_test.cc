// Concurrency test of the walk caches (issue 11): mappers/unmappers on neighbouring pages (tables
// emptied and freed all the time), device translations through the IOTLB and paging-structure
// caches, and a dirty sweeper, with freeing on: no walk may ever go through a released table.
#include <atomic>
#include <cstdint>
#include <memory>
#include <random>
#include <thread>
#include <vector>

#include "dma/iommu_domain.h"
#include "dma/iotlb_gather.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"

namespace pagepool::dma {
namespace {

constexpr uint64_t kBase = uint64_t{1} << 40;
constexpr uint64_t kPhys = uint64_t{1} << 34;
constexpr uint64_t kRegions = 8;  // 2 MiB regions shared by the mappers

void RunStress(IommuMode mode) {
  DomainConfig c;
  c.mode = mode;
  c.model_iotlb = true;
  c.debug_check_released_tables = true;
  auto d = std::move(IommuDomain::Create(c)).value();
  const uint64_t rounds = ScaledCount("PAGEPOOL_WALK_STRESS_ROUNDS", 20000, 4000, 1500);
  std::atomic<bool> stop{false};
  std::vector<std::thread> threads;
  // Mappers: thread t owns page (2 * i + t) of every region, so neighbours share leaf tables.
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(t);
      for (uint64_t r = 0; r < rounds; ++r) {
        const uint64_t region = rng() % kRegions;
        const uint64_t page = 2 * (rng() % 4) + t;
        const uint64_t iova = kBase + region * k2M + page * k4K;
        ASSERT_TRUE(d->Map(iova, kPhys + page * k4K, k4K, kRW).ok());
        if (r % 3 == 0) {
          IotlbGather g;
          ASSERT_TRUE(d->UnmapPages(iova, k4K, 1, &g).ok());
          d->IotlbSync(&g);
        } else if (r % 3 == 1) {
          ASSERT_TRUE(d->UnmapReadDirty(iova, k4K, [](DmaAddr, uint64_t) {}).ok());
        } else {
          ASSERT_TRUE(d->Unmap(iova, k4K).ok());
        }
      }
    });
  }
  // Walkers: the device translating (reads and writes) anywhere in the regions.
  for (int t = 0; t < 2; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 rng(100 + t);
      while (!stop.load(std::memory_order_relaxed)) {
        const uint64_t iova = kBase + (rng() % (kRegions * 512)) * k4K;
        (void)d->Translate(iova, (rng() & 1) != 0);
      }
    });
  }
  // Sweeper: dirty reads and clears, dumps of the table and of the walk caches.
  threads.emplace_back([&] {
    std::vector<uint64_t> bm;
    while (!stop.load(std::memory_order_relaxed)) {
      (void)d->SweepDirty(kBase, kBase + kRegions * k2M, [](DmaAddr, uint64_t) {});
      (void)d->ReadAndClearDirty(kBase, kRegions * k2M, k4K, IommuDomain::kDirtyNoClear, &bm);
      d->ForEachPresent(kBase, kBase + kRegions * k2M, [](const PresentEntry&) { return true; });
      d->ForEachWalkCacheEntry([](const WalkCacheEntry&) {});
    }
  });
  threads[0].join();
  threads[1].join();
  stop.store(true);
  for (size_t i = 2; i < threads.size(); ++i) threads[i].join();
  d->FlushQueues();
  d->Quiesce();
  const DomainStats s = d->stats();
  EXPECT_EQ(s.walk_cache_stale_walks, 0u);
  EXPECT_EQ(s.released_tables_not_zero, 0u);
  EXPECT_EQ(s.mapped_pages, 0u);
  EXPECT_GT(s.tables_freed, 0u);
  EXPECT_GT(s.walk_cache_hits, 0u);
  EXPECT_EQ(s.pending_free_pages, 0u);
}

TEST(IommuWalkCacheStressTest, StrictFreeingWalkersAndSweeperNoStaleWalks) {
  RunStress(IommuMode::kStrict);
}

TEST(IommuWalkCacheStressTest, LazyFreeingWalkersAndSweeperNoStaleWalks) {
  RunStress(IommuMode::kLazy);
}

}  // namespace
}  // namespace pagepool::dma
