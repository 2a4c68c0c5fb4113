// File: tests/pool/page_pool_race_test.cc
//
// The destroy/return race (seed 002): four threads return, recycle (ring), re-reference and
// double-give-back pages while the pool is destroyed and the device unbound, repeated
// POOL_RACE_ITERATIONS times (default 1000) over XARRAY and SCAN and the three IOMMU modes. Each
// time every mapping must be torn down exactly once (checker: no double/unknown unmap, nothing
// after unbind, nothing live), inflight must reach 0, every frame must be free, and the domain must
// be back to empty (one table page after Quiesce, no IOVA allocated).
//
// And a SCAN destroy whose own unmaps free more emptied page tables than dma/ lets wait for
// call_rcu (so the destroying thread waits for a grace period inside the destroy) while another
// thread keeps returning pages of the pool: it must complete (a watchdog fails it otherwise).
#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <future>
#include <random>
#include <thread>
#include <vector>

#include "dma/device.h"
#include "dma/iommu_domain.h"
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
    const DestroyStrategy strategy =
        it % 2 == 0 ? DestroyStrategy::kXarray : DestroyStrategy::kScan;
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

// Runs fn on a thread of its own and waits up to `limit` for it; on timeout the process ends with
// a failure message (a deadlocked thread can neither be joined nor detached safely).
template <typename Fn>
void RunWithWatchdog(const char* what, std::chrono::seconds limit, Fn fn) {
  std::packaged_task<void()> task(std::move(fn));
  std::future<void> done = task.get_future();
  std::thread t(std::move(task));
  if (done.wait_for(limit) != std::future_status::ready) {
    std::fprintf(stderr, "%s: no progress after %lld s: deadlock\n", what,
                 static_cast<long long>(limit.count()));
    std::fflush(stderr);
    std::_Exit(1);
  }
  t.join();
}

TEST(PagePoolRaceTest, ScanDestroyCompletesUnderTableFreeBackPressureWithReturns) {
  // Order-8 pages (1 MiB) in a strict domain that frees emptied tables: each pool page shares its
  // 2 MiB leaf table with a 1 MiB filler mapping, and the fillers are unmapped before the destroy,
  // so every pool page is the last entry of its table and every unmap of one frees a table. The
  // destroy's own unmaps then free more than IoPageTable's high-water mark (4096 pending tables),
  // and dma/ makes the unmapping thread wait for a grace period itself.
  constexpr int kPages = 5000;
  constexpr int kReturned = 1000;  // returned by the racing thread, slowly, during the destroy
  absl::StatusOr<std::shared_ptr<PhysMemory>> memory =
      testing::MakeSharedMemory(uint64_t{5200} * kMiB);
  ASSERT_TRUE(memory.ok()) << memory.status();
  pool::NicConfig config = testing::MakeNicConfig("eth0", dma::IommuMode::kStrict);
  config.device.free_empty_tables = true;
  absl::StatusOr<std::unique_ptr<Nic>> nic = Nic::Create(*memory, config);
  ASSERT_TRUE(nic.ok()) << nic.status();
  PagePoolParams params;
  params.order = 8;
  params.strategy = DestroyStrategy::kScan;
  absl::StatusOr<std::shared_ptr<PagePool>> created = (*nic)->CreatePool(params);
  ASSERT_TRUE(created.ok()) << created.status();
  PagePool& pool = **created;
  dma::Device& device = (*nic)->device();

  std::vector<PoolPage> pages;
  std::vector<dma::DmaAddr> fillers;
  for (int i = 0; i < kPages; ++i) {
    absl::StatusOr<PoolPage> p = pool.Allocate();
    ASSERT_TRUE(p.ok()) << p.status();
    pages.push_back(*p);
    absl::StatusOr<dma::DmaAddr> f =
        device.MapPage(dma::PhysAddr{1} << 20, 1 * kMiB, dma::DmaDirection::kFromDevice);
    ASSERT_TRUE(f.ok()) << f.status();
    fillers.push_back(*f);
  }
  for (dma::DmaAddr f : fillers) {
    ASSERT_TRUE(device.UnmapPage(f, 1 * kMiB, dma::DmaDirection::kFromDevice).ok());
  }
  // The setup did what it says: one leaf table per pool page is still linked.
  ASSERT_GE(device.domain()->stats().table_pages, uint64_t{kPages});

  std::atomic<bool> stop{false};
  std::thread returner([&] {
    while (!pool.destroyed()) std::this_thread::yield();
    for (int i = 0; i < kReturned && !stop.load(); ++i) {
      EXPECT_TRUE(pool.Return(pages[i].handle).ok());
      std::this_thread::sleep_for(std::chrono::microseconds(20));
    }
  });
  absl::StatusOr<DestroyResult> d;
  RunWithWatchdog("scan destroy", std::chrono::seconds(60), [&] { d = pool.Destroy(); });
  stop.store(true);
  returner.join();
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_GT(d->pages_unmapped, uint64_t{kPages - kReturned - 1});
  for (int i = 0; i < kPages; ++i) (void)pool.Return(pages[i].handle);
  EXPECT_EQ(pool.inflight(), 0);
  ASSERT_TRUE((*nic)->Unbind().ok());
  const dma::CheckerCounters v = device.violations();
  EXPECT_EQ(v.Total(), 0u) << testing::ViolationSummary(v);
  EXPECT_EQ((*memory)->frames_free(), (*memory)->frames() - 1);
}

}  // namespace
}  // namespace pagepool::pool
