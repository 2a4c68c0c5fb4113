// Tests of the device's walk caches and the invalidation model (issue 11): widening to the freed
// span, leaf-only vs non-leaf commands, the domain-wide threshold, gathers, caching mode, the
// iommufd dirty API, the table-protocol hooks, accounting and the lazy flush timer.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <memory>
#include <thread>
#include <vector>

#include "dma/internal/io_pgtable.h"
#include "dma/internal/iotlb.h"
#include "dma/iommu_domain.h"
#include "dma/iotlb_gather.h"
#include "gtest/gtest.h"
#include "tests/dma/dma_test_util.h"
#include "tests/support/fake_clock.h"

namespace pagepool::dma {
namespace {

constexpr uint64_t kBase = uint64_t{1} << 40;
constexpr uint64_t kPhys = uint64_t{1} << 34;

std::unique_ptr<IommuDomain> MakeDomain(DomainConfig c) {
  c.model_iotlb = true;
  c.debug_check_released_tables = true;
  return std::move(IommuDomain::Create(c)).value();
}

// A device walks X, X is unmapped (freeing its tables), the tables are released, the device walks
// X again. Returns the walks through freed tables counted.
uint64_t StaleWalksAfterFreeingUnmap(bool widen) {
  DomainConfig c;
  c.skip_free_widening_for_test = !widen;
  auto d = MakeDomain(c);
  EXPECT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  EXPECT_TRUE(d->Translate(kBase, false).ok());  // fills the walk caches
  EXPECT_TRUE(d->Unmap(kBase, k4K).ok());        // frees the leaf table and those above
  EXPECT_GE(d->stats().tables_freed, 1u);
  d->Quiesce();  // ...and they are released
  EXPECT_FALSE(d->Translate(kBase, false).ok());
  const DomainStats s = d->stats();
  EXPECT_EQ(s.released_tables_not_zero, 0u);
  // The cascade freed up to the 512 GiB table: its span is above the limit, so domain-wide.
  if (widen) {
    EXPECT_GE(s.iotlb_inv_nonleaf + s.iotlb_inv_domain, 1u);
  }
  return s.walk_cache_stale_walks;
}

TEST(IommuInvalidationTest, FreeingUnmapWithoutWideningWalksFreedTable) {
  EXPECT_GT(StaleWalksAfterFreeingUnmap(/*widen=*/false), 0u);  // the bug, shown and counted
}

TEST(IommuInvalidationTest, FreeingUnmapWithWideningNeverWalksFreedTable) {
  EXPECT_EQ(StaleWalksAfterFreeingUnmap(/*widen=*/true), 0u);
}

TEST(IommuInvalidationTest, WalkCacheIsFilledAndDumped) {
  auto d = MakeDomain(DomainConfig());
  ASSERT_TRUE(d->Map(kBase, kPhys, 2 * k4K, kRW).ok());
  ASSERT_TRUE(d->Translate(kBase, false).ok());
  ASSERT_TRUE(d->Translate(kBase + k4K, false).ok());
  EXPECT_GE(d->stats().walk_cache_hits, 1u);
  int entries = 0;
  d->ForEachWalkCacheEntry([&](const WalkCacheEntry& e) {
    ++entries;
    EXPECT_FALSE(e.stale);
    EXPECT_LE(e.iova, kBase);
    EXPECT_GT(e.iova + e.span, kBase);
  });
  EXPECT_EQ(entries, 3);  // levels 1..3 of a 4-level table
}

TEST(IommuInvalidationTest, LeafOnlyWithoutFreeingNonLeafWithAndDomainWideAboveThreshold) {
  DomainConfig c;
  c.inv_cmd_cost_ns = 100;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(kBase + k1G - k4K, kPhys, k4K, kRW).ok());  // keeps the upper tables
  ASSERT_TRUE(d->Map(kBase, kPhys, 2 * k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());  // the table keeps one entry: leaf-only
  DomainStats s = d->stats();
  EXPECT_EQ(s.iotlb_inv_leaf, 1u);
  EXPECT_EQ(s.iotlb_inv_nonleaf, 0u);
  EXPECT_EQ(s.iotlb_inv_pages, 1u);
  ASSERT_TRUE(d->Unmap(kBase + k4K, k4K).ok());  // frees tables: non-leaf over their span
  s = d->stats();
  EXPECT_EQ(s.iotlb_inv_nonleaf, 1u);  // the 4 KiB-leaf table only: its 2 MiB span
  EXPECT_EQ(s.iotlb_inv_pages, 1u + 512u);
  ASSERT_TRUE(d->Unmap(kBase + k1G - k4K, k4K).ok());
  // 2 GiB in 1 GiB leaves: 2^19 pages, above the 2^18 limit: one domain-wide command.
  ASSERT_TRUE(d->Map(kBase, kPhys, 2 * k1G, kRW).ok());
  ASSERT_TRUE(d->Unmap(kBase, 2 * k1G).ok());
  s = d->stats();
  EXPECT_GE(s.iotlb_inv_domain, 1u);
  EXPECT_EQ(s.iotlb_inv_cost_ns,
            (s.iotlb_inv_leaf + s.iotlb_inv_nonleaf + s.iotlb_inv_domain) * 100);
}

TEST(IommuInvalidationTest, GatherSyncsOnceAndFlushesDisjointRangesApart) {
  auto d = MakeDomain(DomainConfig());
  const uint64_t far = kBase + 64 * k4K;
  ASSERT_TRUE(d->Map(kBase, kPhys, 3 * k4K, kRW).ok());  // kBase + 2 pages stays: no freeing
  ASSERT_TRUE(d->Map(far, kPhys, 2 * k4K, kRW).ok());    // far + 1 page stays
  IotlbGather g;
  ASSERT_TRUE(d->UnmapPages(kBase, k4K, 1, &g).ok());
  ASSERT_TRUE(d->UnmapPages(kBase + k4K, k4K, 1, &g).ok());  // adjoins: merged
  EXPECT_TRUE(g.IsDisjoint(far, k4K));
  ASSERT_TRUE(d->UnmapPages(far, k4K, 1, &g).ok());
  EXPECT_EQ(g.range_count(), 2u);
  EXPECT_EQ(g.range_start(0), kBase);
  EXPECT_EQ(g.range_end(0), kBase + 2 * k4K);
  EXPECT_EQ(d->stats().iotlb_inv_leaf, 0u);  // nothing invalidated before the sync
  d->IotlbSync(&g);
  EXPECT_TRUE(g.empty());
  const DomainStats s = d->stats();
  EXPECT_EQ(s.gather_syncs, 1u);
  EXPECT_EQ(s.iotlb_inv_leaf, 2u);  // one command per disjoint range, never one over the hole
  EXPECT_EQ(s.iotlb_inv_pages, 2u + 1u);
  EXPECT_FALSE(d->Translate(kBase, false).ok());
  EXPECT_TRUE(d->Translate(kBase + 2 * k4K, false).ok());
}

TEST(IommuInvalidationTest, GatherWithFreedTablesIssuesNonLeafBeforeRelease) {
  auto d = MakeDomain(DomainConfig());
  ASSERT_TRUE(d->Map(kBase + k1G - k4K, kPhys, k4K, kRW).ok());  // keeps the upper tables
  ASSERT_TRUE(d->MapPages(kBase, kPhys, k4K, 4, kRW).ok());
  ASSERT_TRUE(d->Translate(kBase, false).ok());
  IotlbGather g;
  ASSERT_TRUE(d->UnmapPages(kBase, k4K, 4, &g).ok());
  EXPECT_GE(g.freed_tables(), 1u);
  d->IotlbSync(&g);
  d->Quiesce();
  EXPECT_FALSE(d->Translate(kBase, false).ok());
  EXPECT_EQ(d->stats().walk_cache_stale_walks, 0u);
  EXPECT_EQ(d->stats().iotlb_inv_nonleaf, 1u);
}

TEST(IommuInvalidationTest, MapPagesUsesLeavesNoLargerThanPgsize) {
  auto d = MakeDomain(DomainConfig());
  uint64_t mapped = 0;
  ASSERT_TRUE(d->MapPages(kBase, kPhys, k4K, 512, kRW, &mapped).ok());  // 2 MiB aligned, 4K pages
  EXPECT_EQ(mapped, k2M);
  int leaves = 0;
  d->ForEachPresent(kBase, kBase + k2M, [&](const PresentEntry& e) {
    EXPECT_EQ(e.size, k4K);
    ++leaves;
    return true;
  });
  EXPECT_EQ(leaves, 512);
  EXPECT_FALSE(d->MapPages(kBase + k4K, kPhys, k2M, 1, kRW).ok());  // not aligned to pgsize
}

uint64_t TranslateAfterMapInCachingMode(bool sync_map) {
  DomainConfig c;
  c.caching_mode = true;
  c.skip_sync_map_for_test = !sync_map;
  auto d = MakeDomain(c);
  EXPECT_FALSE(d->Translate(kBase, false).ok());  // a not-present entry is cached
  EXPECT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  return d->Translate(kBase, false).ok() ? 1 : 0;
}

TEST(IommuInvalidationTest, CachingModeNeedsIotlbSyncMap) {
  EXPECT_EQ(TranslateAfterMapInCachingMode(/*sync_map=*/false), 0u);
  EXPECT_EQ(TranslateAfterMapInCachingMode(/*sync_map=*/true), 1u);
}

TEST(IommuDirtyTest, ReadAndClearWithAndWithoutNoClearAndGranularity) {
  auto d = MakeDomain(DomainConfig());
  ASSERT_TRUE(d->Map(kBase, kPhys, k2M, kRW).ok());  // one 2 MiB leaf
  ASSERT_TRUE(d->Map(kBase + k2M, kPhys + k2M + k4K, 2 * k4K, kRW).ok());
  ASSERT_TRUE(d->Translate(kBase + 5 * k4K, true).ok());
  ASSERT_TRUE(d->Translate(kBase + k2M + k4K, true).ok());
  std::vector<uint64_t> bm;
  ASSERT_TRUE(d->ReadAndClearDirty(kBase, 2 * k2M, k2M, IommuDomain::kDirtyNoClear, &bm).ok());
  ASSERT_EQ(bm.size(), 1u);
  EXPECT_EQ(bm[0], 0b11u);  // 2 MiB granularity: one bit per 2 MiB
  ASSERT_TRUE(d->ReadAndClearDirty(kBase, 2 * k2M, k4K, 0, &bm).ok());  // NO_CLEAR kept them
  ASSERT_EQ(bm.size(), 16u);
  for (int w = 0; w < 8; ++w) EXPECT_EQ(bm[w], ~uint64_t{0});  // the 2 MiB leaf: 512 bits
  EXPECT_EQ(bm[8], 0b10u);
  ASSERT_TRUE(d->ReadAndClearDirty(kBase, 2 * k2M, k4K, 0, &bm).ok());
  for (uint64_t w : bm) EXPECT_EQ(w, 0u);  // cleared
  EXPECT_FALSE(d->ReadAndClearDirty(kBase + k4K, k2M, k2M, 0, &bm).ok());
}

// A write is cached with its dirty bit known; after clearing D, only the IOTLB flush makes the
// next write walk (and set D) again.
bool SecondWriteSeen(bool flush) {
  DomainConfig c;
  c.skip_dirty_flush_for_test = !flush;
  auto d = MakeDomain(c);
  EXPECT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  EXPECT_TRUE(d->Translate(kBase, true).ok());
  std::vector<uint64_t> bm;
  EXPECT_TRUE(d->ReadAndClearDirty(kBase, k4K, k4K, 0, &bm).ok());
  EXPECT_EQ(bm[0], 1u);
  EXPECT_TRUE(d->Translate(kBase, true).ok());
  EXPECT_TRUE(d->ReadAndClearDirty(kBase, k4K, k4K, 0, &bm).ok());
  return bm[0] == 1u;
}

TEST(IommuDirtyTest, FlushAfterClearKeepsTheNextWrite) {
  EXPECT_FALSE(SecondWriteSeen(/*flush=*/false));  // a lost dirty bit
  EXPECT_TRUE(SecondWriteSeen(/*flush=*/true));
}

TEST(IommuDirtyTest, TrackingSwitchAndUnmapReadDirty) {
  DomainConfig c;
  c.dirty_tracking = false;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(kBase, kPhys, 4 * k4K, kRW).ok());
  ASSERT_TRUE(d->Translate(kBase, true).ok());
  std::vector<uint64_t> bm;
  ASSERT_TRUE(d->ReadAndClearDirty(kBase, 4 * k4K, k4K, 0, &bm).ok());
  EXPECT_EQ(bm[0], 0u);
  ASSERT_TRUE(d->SetDirtyTracking(true).ok());
  EXPECT_TRUE(d->dirty_tracking());
  ASSERT_TRUE(d->Translate(kBase + 2 * k4K, true).ok());
  std::vector<DmaAddr> seen;
  absl::StatusOr<uint64_t> n =
      d->UnmapReadDirty(kBase, 4 * k4K, [&](DmaAddr a, uint64_t) { seen.push_back(a); });
  ASSERT_TRUE(n.ok());
  EXPECT_EQ(*n, 4 * k4K);
  ASSERT_EQ(seen.size(), 1u);
  EXPECT_EQ(seen[0], kBase + 2 * k4K);
}

// An unmap that covers whole leaf tables clears them as blocks (ClearSubtree), with or without a
// dirty-bit reader: the reader still gets every written page, and without one every leaf is gone.
TEST(IommuDirtyTest, BlockUnmapOfLeafTablesReadsDirtyBitsOrClearsFast) {
  constexpr uint64_t k2M = uint64_t{2} << 20;
  constexpr uint64_t base = kBase;  // 2 MiB aligned
  static_assert(base % k2M == 0);
  for (bool reader : {true, false}) {
    DomainConfig c;
    c.dirty_tracking = true;
    auto d = MakeDomain(c);
    // 4 MiB of 4 KiB pages (phys not 2 MiB aligned): two leaf tables under 2 MiB entries.
    ASSERT_TRUE(d->Map(base, kPhys + k4K, 2 * k2M, kRW).ok());
    for (uint64_t page : {0, 7, 511, 512, 1023}) {
      ASSERT_TRUE(d->Translate(base + page * k4K, true).ok());
    }
    if (reader) {
      std::vector<DmaAddr> seen;
      absl::StatusOr<uint64_t> n =
          d->UnmapReadDirty(base, 2 * k2M, [&](DmaAddr a, uint64_t) { seen.push_back(a); });
      ASSERT_TRUE(n.ok()) << n.status();
      EXPECT_EQ(*n, 2 * k2M);
      std::sort(seen.begin(), seen.end());
      EXPECT_EQ(seen, (std::vector<DmaAddr>{base, base + 7 * k4K, base + 511 * k4K,
                                            base + 512 * k4K, base + 1023 * k4K}));
    } else {
      ASSERT_TRUE(d->Unmap(base, 2 * k2M).ok());
    }
    for (uint64_t page : {0, 1, 511, 512, 1023}) {
      EXPECT_FALSE(d->Translate(base + page * k4K, false).ok()) << page;
    }
    EXPECT_EQ(d->stats().mapped_pages, 0u);
  }
}

TEST(IommuDirtyTest, LazyUnmapLeavesAStaleWritableTranslationUntilTheFlush) {
  DomainConfig c;
  c.mode = IommuMode::kLazy;
  c.fq_timer = false;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  ASSERT_TRUE(d->Translate(kBase, true).ok());
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
  EXPECT_TRUE(d->Translate(kBase, true).ok());  // stale writable IOTLB entry: a DMA write lands
  d->FlushQueues();
  EXPECT_FALSE(d->Translate(kBase, true).ok());
}

TEST(IommuWalkTest, DumpsAndSweepsDropTheReadLockEveryBatch) {
  auto d = MakeDomain(DomainConfig());
  const uint64_t pages = 3 * internal::IoPageTable::kWalkBatch;
  ASSERT_TRUE(d->MapPages(kBase, kPhys, k4K, pages, kRW).ok());
  const uint64_t before = d->stats().walk_rcu_sections;
  uint64_t n = 0;
  uint64_t last = 0;
  d->ForEachPresent(kBase, kBase + pages * k4K, [&](const PresentEntry& e) {
    EXPECT_TRUE(n == 0 || e.iova == last + k4K);
    last = e.iova;
    ++n;
    return true;
  });
  EXPECT_EQ(n, pages);
  EXPECT_GE(d->stats().walk_rcu_sections - before, 3u);
  for (uint64_t i = 0; i < pages; i += 7) ASSERT_TRUE(d->Translate(kBase + i * k4K, true).ok());
  EXPECT_EQ(d->SweepDirty(kBase, kBase + pages * k4K, [](DmaAddr, uint64_t) {}), (pages + 6) / 7);
}

// ---- the death protocol's interleavings ---------------------------------------------------------

TEST(IommuProtocolTest, ReservationBetweenCountDropAndDeathCasKeepsTheTable) {
  auto d = MakeDomain(DomainConfig());
  internal::IoPageTable* pt = internal::IommuDomainTestPeer::PageTable(*d);
  ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  internal::IoPageTable::TestHooks hooks;
  int calls = 0;
  hooks.after_count_drop = [&](internal::PtTable*) {
    if (calls++ == 0) {
      EXPECT_TRUE(d->Map(kBase + k4K, kPhys + k4K, k4K, kRW).ok());  // reserves in the table
    }
  };
  pt->set_hooks_for_test(&hooks);
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
  pt->set_hooks_for_test(nullptr);
  const DomainStats s = d->stats();
  EXPECT_EQ(s.death_races_lost, 1u);
  EXPECT_EQ(s.tables_freed, 0u);
  EXPECT_EQ(*d->Translate(kBase + k4K, false), kPhys + k4K);
}

// The debug check sees a released table that still holds an entry: one is planted (a stray
// non-present value, as a lost store would leave) in the leaf table between its death and its
// unlink, and counted when the table is released. Without the check nothing is counted.
TEST(IommuProtocolTest, DebugCheckCountsAReleasedTableThatIsNotZero) {
  for (const bool check : {true, false}) {
    DomainConfig c;
    c.model_iotlb = true;
    c.debug_check_released_tables = check;
    auto d = std::move(IommuDomain::Create(c)).value();
    internal::IoPageTable* pt = internal::IommuDomainTestPeer::PageTable(*d);
    ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
    internal::IoPageTable::TestHooks hooks;
    int calls = 0;
    hooks.after_death_cas = [&](internal::PtTable* t) {
      if (calls++ == 0) t->pte[7].store(uint64_t{1} << 40, std::memory_order_relaxed);
    };
    pt->set_hooks_for_test(&hooks);
    ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
    pt->set_hooks_for_test(nullptr);
    d->Quiesce();
    EXPECT_EQ(d->stats().released_tables_not_zero, check ? 1u : 0u) << "check=" << check;
    d->ReleaseCaches();  // the planted table is freed, never reused
  }
}

TEST(IommuProtocolTest, ReserverMeetingDyingTableRestartsAfterParentCleared) {
  auto d = MakeDomain(DomainConfig());
  internal::IoPageTable* pt = internal::IommuDomainTestPeer::PageTable(*d);
  ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  internal::IoPageTable::TestHooks hooks;
  std::thread mapper;
  std::atomic<bool> mapped{false};
  int calls = 0;
  hooks.after_death_cas = [&](internal::PtTable*) {
    if (calls++ != 0) return;
    mapper = std::thread([&] {
      EXPECT_TRUE(d->Map(kBase + k4K, kPhys + k4K, k4K, kRW).ok());
      mapped.store(true);
    });
    // The mapper must meet the dying table (a failed reserve) before the parent entry is cleared.
    const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(20);
    while (d->stats().failed_reserves == 0 && std::chrono::steady_clock::now() < deadline) {
      std::this_thread::yield();
    }
    EXPECT_FALSE(mapped.load());
  };
  pt->set_hooks_for_test(&hooks);
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
  mapper.join();
  pt->set_hooks_for_test(nullptr);
  const DomainStats s = d->stats();
  EXPECT_GE(s.failed_reserves, 1u);
  EXPECT_GE(s.walk_restarts, 1u);
  EXPECT_EQ(*d->Translate(kBase + k4K, false), kPhys + k4K);
  d->Quiesce();
  EXPECT_EQ(d->stats().released_tables_not_zero, 0u);
}

// ---- accounting -----------------------------------------------------------------------------

TEST(IommuAccountingTest, TableMemoryCountedUntilReleasedAndCacheTrimmed) {
  auto d = MakeDomain(DomainConfig());
  const DomainStats s0 = d->stats();
  ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  const DomainStats s1 = d->stats();
  EXPECT_EQ(s1.iommu_pages, s0.iommu_pages + 3);  // levels 2, 1, 0 below the root
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
  const DomainStats s2 = d->stats();
  EXPECT_EQ(s2.table_pages, s0.table_pages);                              // unlinked...
  EXPECT_EQ(s2.iommu_pages + 0, s2.table_pages + s2.pending_free_pages);  // ...still counted
  d->Quiesce();
  EXPECT_EQ(d->stats().iommu_pages, s0.iommu_pages);  // released: no longer counted
  // A burst of tables comes back into the cache, bounded; TrimTables gives the excess back.
  for (uint64_t i = 0; i < 600; ++i) {
    ASSERT_TRUE(d->Map(kBase + i * k2M, kPhys, k4K, kRW).ok());
  }
  for (uint64_t i = 0; i < 600; ++i) ASSERT_TRUE(d->Unmap(kBase + i * k2M, k4K).ok());
  d->FlushQueues();
  base::rcu::Barrier();
  const DomainStats s3 = d->stats();
  EXPECT_LE(s3.cached_table_pages, internal::IoPageTable::kCacheBurstMax);
  d->TrimTables();
  const DomainStats s4 = d->stats();
  EXPECT_LE(s4.cached_table_pages, internal::IoPageTable::kCacheMax);
  EXPECT_EQ(s4.cached_table_bytes, s4.cached_table_pages * k4K);
  EXPECT_EQ(s4.released_tables_not_zero, 0u);
}

TEST(IommuLazyTest, TimeoutFlushesALoneEntryWithoutAnotherAdd) {
  testing::FakeClock clock;
  DomainConfig c;
  c.mode = IommuMode::kLazy;
  c.clock = &clock;
  auto d = MakeDomain(c);
  ASSERT_TRUE(d->Map(kBase, kPhys, k4K, kRW).ok());
  ASSERT_TRUE(d->Unmap(kBase, k4K).ok());
  EXPECT_EQ(d->stats().fq_pending, 1u);
  std::this_thread::sleep_for(std::chrono::milliseconds(30));
  EXPECT_EQ(d->stats().fq_pending, 1u);  // not expired by the domain's clock yet
  clock.Advance(11'000'000);
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (d->stats().fq_pending != 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  EXPECT_EQ(d->stats().fq_pending, 0u);  // the timer flushed it; no other unmap came
}

// A ranged leaf invalidation drops the IOTLB entries of exactly the pages in its range, wherever
// the range's slots start in a bitmap word and when they wrap past the last slot: pages 500..539
// fill slots 500..511 and 0..27; invalidating 505..529 keeps 500..504 and 530..539.
TEST(IotlbInvalidation, RangedLeafInvalidationDropsExactlyItsPages) {
  internal::Iotlb tlb;
  constexpr uint64_t kBase = uint64_t{1} << 40;  // slot of page p: p % 512, kBase's is 0
  static_assert(internal::Iotlb::kEntries == 512);
  auto iova = [](uint64_t page) { return kBase + page * 4096; };
  for (uint64_t p = 500; p < 540; ++p) {
    tlb.Fill(iova(p), p * 4096, true, true, true, tlb.generation(iova(p)));
  }
  internal::Iotlb::LeafHit hit;
  for (uint64_t p = 500; p < 540; ++p) ASSERT_TRUE(tlb.Lookup(iova(p), false, &hit)) << p;
  tlb.InvalidateRange(iova(505), iova(530), /*leaf_only=*/true);
  for (uint64_t p = 500; p < 540; ++p) {
    EXPECT_EQ(tlb.Lookup(iova(p), false, &hit), p < 505 || p >= 530) << p;
  }
  // A range whose slots hold other pages' entries leaves those (same slot, another page).
  tlb.InvalidateRange(iova(500 + 512), iova(505 + 512), true);
  for (uint64_t p = 500; p < 505; ++p) EXPECT_TRUE(tlb.Lookup(iova(p), false, &hit)) << p;
  // One page, then a whole word's worth starting mid-word.
  tlb.InvalidateRange(iova(530), iova(531), true);
  EXPECT_FALSE(tlb.Lookup(iova(530), false, &hit));
  EXPECT_TRUE(tlb.Lookup(iova(531), false, &hit));
  tlb.InvalidateRange(iova(470), iova(534), true);
  for (uint64_t p = 500; p < 534; ++p) EXPECT_FALSE(tlb.Lookup(iova(p), false, &hit)) << p;
  for (uint64_t p = 534; p < 540; ++p) EXPECT_TRUE(tlb.Lookup(iova(p), false, &hit)) << p;
}

// An invalidation reads the valid bits of its slots first and clears only when one is set: at a
// word's last slot, across a word boundary, and next to a valid neighbour.
TEST(IotlbInvalidation, ValidBitFilterMissesNoEntry) {
  internal::Iotlb tlb;
  constexpr uint64_t kBase = uint64_t{1} << 40;
  auto iova = [](uint64_t page) { return kBase + page * 4096; };
  auto fill = [&](uint64_t p) {
    tlb.Fill(iova(p), p * 4096, true, true, true, tlb.generation(iova(p)));
  };
  internal::Iotlb::LeafHit hit;
  for (uint64_t p : {62, 63, 64, 66, 130}) fill(p);
  tlb.InvalidateRange(iova(61), iova(62), true);  // an empty slot beside valid ones
  for (uint64_t p : {62, 63, 64, 66, 130}) EXPECT_TRUE(tlb.Lookup(iova(p), false, &hit)) << p;
  tlb.InvalidateRange(iova(63), iova(64), true);  // a word's last slot
  EXPECT_FALSE(tlb.Lookup(iova(63), false, &hit));
  EXPECT_TRUE(tlb.Lookup(iova(62), false, &hit));
  EXPECT_TRUE(tlb.Lookup(iova(64), false, &hit));
  tlb.InvalidateRange(iova(60), iova(68), true);  // across the boundary of words 0 and 1
  for (uint64_t p : {62, 64, 66}) EXPECT_FALSE(tlb.Lookup(iova(p), false, &hit)) << p;
  EXPECT_TRUE(tlb.Lookup(iova(130), false, &hit));  // outside the range, in another word
  tlb.InvalidateRange(iova(129), iova(131), true);
  EXPECT_FALSE(tlb.Lookup(iova(130), false, &hit));
  // Nothing valid any more: a domain-sized range finds every bit clear and changes nothing.
  tlb.InvalidateRange(iova(0), iova(1 << 20), false);
  fill(7);
  EXPECT_TRUE(tlb.Lookup(iova(7), false, &hit));
}

}  // namespace
}  // namespace pagepool::dma
