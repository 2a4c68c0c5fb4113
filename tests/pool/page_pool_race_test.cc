// File: tests/pool/page_pool_race_test.cc
//
// The destroy/return race (seed 002): four threads return, recycle (ring), re-reference and
// double-give-back pages while the pool is destroyed and the device unbound, repeated
// POOL_RACE_ITERATIONS times (default 1000) over XARRAY and SCAN and the three IOMMU modes. Each time
// every mapping must be torn down exactly once (checker: no double/unknown unmap, nothing after
// unbind, nothing live), inflight must reach 0, every frame must be free, and the domain must be
// back to empty (one table page after Quiesce, no IOVA allocated).
#include <atomic>
#include <random>
#include <thread>
#include <vector>

#include "dma/device.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;

constexpr int kThreads = 4;
constexpr int kPagesPerThread = 48;

struct Counts {
  std::atomic<uint64_t> returned{0}, recycled{0}, refused{0};
};

void Worker(PagePool* pool, PhysMemory* memory, std::vector<PoolPage> pages, uint32_t seed,
            std::atomic<int>* go, Counts* counts) {
  std::mt19937 rng(seed);
  while (go->load(std::memory_order_acquire) == 0) std::this_thread::yield();
  for (const PoolPage& p : pages) {
    switch (rng() % 4) {
      case 0:
      case 1: {
        absl::StatusOr<bool> r = pool->Return(p.handle);
        ASSERT_TRUE(r.ok()) << r.status();
        counts->returned.fetch_add(1);
        break;
      }
      case 2: {
        absl::StatusOr<RecycleResult> r = pool->Recycle(p.handle, /*napi_local=*/false);
        ASSERT_TRUE(r.ok()) << r.status();
        counts->recycled.fetch_add(1);
        break;
      }
      case 3: {
        // An skb clone holds the page: the recycle releases it, the clone frees it later.
        ASSERT_TRUE(pool->GetPage(p.handle).ok());
        absl::StatusOr<RecycleResult> r = pool->Recycle(p.handle, false);
        ASSERT_TRUE(r.ok()) << r.status();
        EXPECT_EQ(*r, RecycleResult::kReleased);
        memory->PutPage(p.handle.frame);
        counts->recycled.fetch_add(1);
        break;
      }
    }
    if (rng() % 8 == 0) std::this_thread::yield();
  }
  // Every handle is spent now: a second give-back must be refused, whatever happened since.
  for (const PoolPage& p : pages) {
    absl::StatusOr<bool> again = pool->Return(p.handle);
    EXPECT_EQ(again.status().code(), absl::StatusCode::kFailedPrecondition);
    counts->refused.fetch_add(1);
  }
}

TEST(PagePoolRaceTest, ReturnsRaceDestroyAndUnbind) {
  const long iterations = testing::EnvOr("POOL_RACE_ITERATIONS", 1000);
  std::shared_ptr<PhysMemory> memory = *testing::MakeSharedMemory(16 * kMiB);
  const dma::IommuMode modes[] = {dma::IommuMode::kStrict, dma::IommuMode::kLazy,
                                  dma::IommuMode::kPassthrough};
  uint64_t unmapped_by_destroy = 0, total_returned = 0;
  for (long it = 0; it < iterations; ++it) {
    SCOPED_TRACE(::testing::Message() << "iteration " << it);
    const DestroyStrategy strategy = it % 2 == 0 ? DestroyStrategy::kXarray : DestroyStrategy::kScan;
    absl::StatusOr<std::unique_ptr<Nic>> nic_or =
        Nic::Create(memory, testing::MakeNicConfig("race", modes[(it / 2) % 3]));
    ASSERT_TRUE(nic_or.ok()) << nic_or.status();
    std::unique_ptr<Nic> nic = std::move(*nic_or);
    PagePoolParams params;
    params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
    params.max_len = 1024;
    params.pool_size = 64;  // small ring: ring-full releases happen too
    params.strategy = strategy;
    std::shared_ptr<PagePool> pool = *nic->CreatePool(params);

    // NAPI context (this thread): allocate, recycle a few directly.
    std::vector<PoolPage> pages;
    ASSERT_TRUE(pool->AllocateBulk(kThreads * kPagesPerThread + 16, &pages).ok());
    for (int i = 0; i < 16; ++i) {
      ASSERT_TRUE(pool->Recycle(pages.back().handle, /*napi_local=*/true).ok());
      pages.pop_back();
    }
    std::atomic<int> go{0};
    Counts counts;
    std::vector<std::thread> threads;
    for (int t = 0; t < kThreads; ++t) {
      std::vector<PoolPage> mine(pages.begin() + t * kPagesPerThread,
                                 pages.begin() + (t + 1) * kPagesPerThread);
      threads.emplace_back(Worker, pool.get(), memory.get(), std::move(mine),
                           uint32_t(it * 131 + t), &go, &counts);
    }
    // A lock-free reader walks the index meanwhile.
    std::atomic<bool> stop_reader{false};
    std::thread reader([&] {
      while (!stop_reader.load(std::memory_order_acquire)) {
        pool->ForEachInflight([](uint32_t, PageHandle, dma::DmaAddr) { return true; });
        (void)pool->info();
        std::this_thread::yield();
      }
    });
    go.store(1, std::memory_order_release);
    std::mt19937 rng{uint32_t(it)};
    for (unsigned spin = rng() % 2000; spin > 0; --spin) {
      if (spin % 256 == 0) std::this_thread::yield();
    }
    // Driver unbind while the stack returns pages: destroy (NAPI is ours, and stopped), unbind.
    absl::StatusOr<UnbindResult> u = nic->Unbind();
    ASSERT_TRUE(u.ok()) << u.status();
    for (std::thread& t : threads) t.join();
    stop_reader.store(true, std::memory_order_release);
    reader.join();
    unmapped_by_destroy += u->pages_unmapped;
    total_returned += counts.returned.load() + counts.recycled.load();

    const dma::CheckerCounters v = nic->device().violations();
    ASSERT_EQ(v.Total(), 0u) << testing::ViolationSummary(v) << " strategy "
                             << DestroyStrategyName(strategy);
    ASSERT_EQ(nic->device().live_mappings(), 0u);
    ASSERT_EQ(pool->inflight(), 0);
    ASSERT_EQ(pool->info().dma_mapped, 0u);
    ASSERT_EQ(memory->frames_free(), memory->frames() - 1);
    ASSERT_EQ(counts.refused.load(), uint64_t(kThreads * kPagesPerThread));
    if (const testing::DomainResidue r = testing::DrainDomain(nic->device()); r.has_domain) {
      ASSERT_EQ(r.mapped_pages, 0u);
      ASSERT_EQ(r.table_pages, 1u);
      ASSERT_TRUE(r.has_iova);
      ASSERT_EQ(r.iova_allocated_pages, 0u);
    }
    ASSERT_EQ(nic->ReleaseRetry(0), 0u);
    ASSERT_TRUE(nic->Pools().empty());
  }
  // The race really raced: the destroy path unmapped some pages, the returns others.
  EXPECT_GT(unmapped_by_destroy, 0u);
  EXPECT_GT(total_returned, 0u);
  RecordProperty("unmapped_by_destroy", std::to_string(unmapped_by_destroy));
}

}  // namespace
}  // namespace pagepool::pool
