// File: tests/pool/page_pool_destroy_test.cc
//
// Seed 002's scenario under each destroy strategy and IOMMU mode: pages held by the "stack" across
// pool destroy and driver unbind, returned later. XARRAY and SCAN: zero violations, every mapping
// torn down exactly once, memory and the domain back to empty. NONE: the late unmaps hit the
// unbound device and are counted as violations (the crash the fix removes).
#include <algorithm>
#include <ctime>
#include <functional>
#include <string>
#include <tuple>
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

using Param = std::tuple<DestroyStrategy, dma::IommuMode>;

class PagePoolDestroyTest : public ::testing::TestWithParam<Param>, public testing::NicFixture {
 protected:
  void SetUp() override {
    const absl::Status s = CreateNic(64 * kMiB, 1, std::get<1>(GetParam()));
    ASSERT_TRUE(s.ok()) << s;
  }

  std::shared_ptr<PagePool> MakePool() {
    PagePoolParams params;
    params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
    params.max_len = 2048;
    params.strategy = std::get<0>(GetParam());
    return *nic_->CreatePool(params);
  }

  // The domain is back to empty: nothing mapped, no IOVA allocated, only the root table.
  void ExpectEmptyDomain() {
    const testing::DomainResidue r = testing::DrainDomain(nic_->device());
    EXPECT_EQ(r.live_mappings, 0u);
    if (!r.has_domain) return;  // passthrough
    EXPECT_EQ(r.mapped_pages, 0u);
    EXPECT_EQ(r.table_pages, 1u);
    EXPECT_EQ(r.pending_free_pages, 0u);
    if (r.has_iova) {
      EXPECT_EQ(r.iova_allocated_pages, 0u);
    }
  }
};

TEST_P(PagePoolDestroyTest, PagesHeldAcrossDestroyAndUnbind) {
  const DestroyStrategy strategy = std::get<0>(GetParam());
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(300, &pages).ok());
  // Some go back before the destroy: into the cache, the ring, and to the allocator.
  for (int i = 0; i < 30; ++i) ASSERT_TRUE(pool->Recycle(pages[i].handle, true).ok());
  for (int i = 30; i < 80; ++i) ASSERT_TRUE(pool->Recycle(pages[i].handle, false).ok());
  for (int i = 80; i < 100; ++i) ASSERT_TRUE(pool->Return(pages[i].handle).ok());
  const int64_t held = 200;

  absl::StatusOr<UnbindResult> u = nic_->Unbind();
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->pools_destroyed, 1u);
  EXPECT_EQ(u->inflight_at_destroy, held);
  const PagePoolInfo info = pool->info();
  EXPECT_TRUE(info.destroyed);
  EXPECT_EQ(info.inflight, held);
  EXPECT_EQ(info.ring_count, 0u);
  EXPECT_EQ(info.alloc_cache_count, 0u);

  // The stack lets go, long after: some recycled (ring and "direct"), most returned.
  clock_.Advance(30 * kDeferTimeNs);
  for (int i = 100; i < 300; ++i) {
    if (i % 3 == 0) {
      absl::StatusOr<RecycleResult> r = pool->Recycle(pages[i].handle, i % 2 == 0);
      ASSERT_TRUE(r.ok()) << r.status();
      EXPECT_EQ(*r, RecycleResult::kReleased);
    } else {
      ASSERT_TRUE(pool->Return(pages[i].handle).ok());
    }
  }
  EXPECT_EQ(pool->inflight(), 0);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_TRUE(nic_->Pools().empty());

  const dma::CheckerCounters v = nic_->device().violations();
  if (strategy == DestroyStrategy::kNone) {
    EXPECT_EQ(u->pages_unmapped, 0u);
    EXPECT_EQ(v.live_at_unbind, uint64_t(held));     // mappings outlived the driver
    EXPECT_GE(v.call_after_unbind, uint64_t(held));  // every late unmap (and sync) refused
    EXPECT_GT(v.Total(), 0u);
  } else {
    // XARRAY, as page_pool_scrub: the index walk also unmaps the 50 pages still in the ring,
    // which page_pool_empty_ring then frees without a DMA-API call. SCAN, as RFC v4's
    // page_pool_destroy: page_pool_release empties the ring (unmapping those pages as it frees
    // them) before page_pool_inflight_unmap scans, so the scan unmaps only the held pages.
    EXPECT_EQ(u->pages_unmapped, uint64_t(held) + (strategy == DestroyStrategy::kScan ? 0 : 50));
    EXPECT_EQ(v.Total(), 0u) << testing::ViolationSummary(v);
    EXPECT_EQ(pool->info().dma_mapped, 0u);
  }
  ExpectEmptyDomain();
}

// The destroy walks the index a piece at a time (claims, then unmaps, per piece): every page
// still tracked is unmapped exactly once however the holes fall, across many pieces, at their
// edges and over a whole empty leaf.
TEST_P(PagePoolDestroyTest, DestroyUnmapsEveryTrackedPageAcrossPieces) {
  const DestroyStrategy strategy = std::get<0>(GetParam());
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(1000, &pages).ok());
  int64_t held = 0;
  std::vector<PoolPage> kept;
  for (size_t i = 0; i < pages.size(); ++i) {
    // Gone before the destroy: every 7th page, the pages at a piece's edges, and a whole 64.
    if (i % 7 == 0 || i % 64 == 0 || i % 64 == 63 || (i >= 128 && i < 192)) {
      ASSERT_TRUE(pool->Return(pages[i].handle).ok());
    } else {
      kept.push_back(pages[i]);
      ++held;
    }
  }
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->inflight_at_destroy, held);
  if (strategy == DestroyStrategy::kNone) {
    EXPECT_EQ(d->pages_unmapped, 0u);
    EXPECT_EQ(nic_->device().live_mappings(), uint64_t(held));
  } else {
    EXPECT_EQ(d->pages_unmapped, uint64_t(held));
    EXPECT_EQ(nic_->device().live_mappings(), 0u);
  }
  // The late returns unmap nothing twice (the device is still bound, so NONE's unmap them now).
  for (const PoolPage& p : kept) ASSERT_TRUE(pool->Return(p.handle).ok());
  EXPECT_EQ(pool->inflight(), 0);
  EXPECT_EQ(nic_->device().live_mappings(), 0u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u)
      << testing::ViolationSummary(nic_->device().violations());
  ASSERT_TRUE(nic_->Unbind().ok());
  ExpectEmptyDomain();
}

TEST_P(PagePoolDestroyTest, DestroyThenLateReturnsThenUnbind) {
  const DestroyStrategy strategy = std::get<0>(GetParam());
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(100, &pages).ok());
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->strategy, strategy);
  EXPECT_EQ(d->inflight_at_destroy, 100);
  EXPECT_EQ(d->pages_unmapped, strategy == DestroyStrategy::kNone ? 0u : 100u);
  if (strategy == DestroyStrategy::kScan) {
    // RFC v4 stops once inflight == unmapped: at most every frame.
    EXPECT_GT(d->frames_scanned, 0u);
    EXPECT_LE(d->frames_scanned, memory_->frames());
  }
  const uint64_t unmaps = nic_->device().unmap_calls();
  for (int i = 0; i < 50; ++i) ASSERT_TRUE(pool->Return(pages[i].handle).ok());
  // Only kNone still unmaps after destroy (the device is bound yet: no violation).
  EXPECT_EQ(nic_->device().unmap_calls() - unmaps, strategy == DestroyStrategy::kNone ? 50u : 0u);
  ASSERT_TRUE(nic_->Unbind().ok());
  for (int i = 50; i < 100; ++i) ASSERT_TRUE(pool->Return(pages[i].handle).ok());
  const dma::CheckerCounters v = nic_->device().violations();
  if (strategy == DestroyStrategy::kNone) {
    EXPECT_EQ(v.live_at_unbind, 50u);
    EXPECT_EQ(v.call_after_unbind, 50u);
  } else {
    EXPECT_EQ(v.Total(), 0u);
  }
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  ExpectEmptyDomain();
}

TEST_P(PagePoolDestroyTest, DestroyWithNothingInFlightReleasesAtOnce) {
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(10, &pages).ok());
  for (const PoolPage& p : pages) ASSERT_TRUE(pool->Recycle(p.handle, true).ok());
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok());
  EXPECT_TRUE(d->released);
  EXPECT_EQ(d->inflight_at_destroy, 0);
  EXPECT_EQ(nic_->FindPool(pool->id()), nullptr);
  ASSERT_TRUE(nic_->Unbind().ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  ExpectEmptyDomain();
}

// A clock that runs a hook (once) the first time it is read after Arm(): a release-retry tick
// landing exactly where the destroy reads the time.
class HookClock final : public base::Clock {
 public:
  uint64_t NowNanos() const override {
    if (hook_) {
      std::function<void()> hook = std::move(hook_);
      hook_ = nullptr;
      hook();
    }
    return now_;
  }
  void Arm(std::function<void()> hook) { hook_ = std::move(hook); }
  void Advance(uint64_t ns) { now_ += ns; }

 private:
  mutable std::function<void()> hook_;
  uint64_t now_ = 1'000'000'000;
};

int64_t BoottimeSeconds() {
  timespec ts;
  clock_gettime(CLOCK_BOOTTIME, &ts);
  return int64_t(ts.tv_sec);
}

TEST_P(PagePoolDestroyTest, ReleaseRetryDuringDestroySeesNoHalfDestroyedPool) {
  // Pools not linked to a netdev warn: the tick must still not warn mid-destroy.
  ASSERT_TRUE(CreateNic(64 * kMiB, 1, std::get<1>(GetParam()), /*ifindex=*/0).ok());
  HookClock clock;
  PagePoolParams params;
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
  params.max_len = 2048;
  params.strategy = std::get<0>(GetParam());
  params.clock = &clock;
  for (const bool in_flight : {true, false}) {
    SCOPED_TRACE(in_flight ? "pages in flight" : "nothing in flight");
    warnings_.clear();
    std::shared_ptr<PagePool> pool = *nic_->CreatePool(params);
    std::vector<PoolPage> pages;
    ASSERT_TRUE(pool->AllocateBulk(3, &pages).ok());
    if (!in_flight) {
      for (const PoolPage& p : pages) ASSERT_TRUE(pool->Recycle(p.handle, true).ok());
    }
    bool ticked = false, waiting = false;
    PagePoolInfo during;
    clock.Arm([&] {
      ticked = true;
      waiting = pool->ReleaseRetry(clock.NowNanos());
      during = pool->info();
    });
    absl::StatusOr<DestroyResult> d = pool->Destroy();
    ASSERT_TRUE(d.ok()) << d.status();
    ASSERT_TRUE(ticked) << "the destroy never read its clock";
    // Mid-destroy: still waiting (the destroy decides), nothing printed, no detach published.
    EXPECT_TRUE(waiting);
    EXPECT_TRUE(warnings_.empty()) << warnings_[0];
    EXPECT_TRUE(during.destroyed);
    EXPECT_FALSE(during.released);
    EXPECT_EQ(during.detach_time, 0);
    EXPECT_EQ(during.detach_time_ns, 0u);
    if (!in_flight) {
      EXPECT_TRUE(d->released);
      EXPECT_FALSE(pool->ReleaseRetry(clock.NowNanos()));
      continue;
    }
    // After: the warning counts from the detach.
    clock.Advance(kDeferWarnIntervalNs);
    EXPECT_TRUE(pool->ReleaseRetry(clock.NowNanos()));
    ASSERT_EQ(warnings_.size(), 1u);
    EXPECT_NE(warnings_[0].find("3 inflight 60 sec"), std::string::npos) << warnings_[0];
    for (const PoolPage& p : pages) ASSERT_TRUE(pool->Return(p.handle).ok());
    EXPECT_FALSE(pool->ReleaseRetry(clock.NowNanos()));
  }
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_P(PagePoolDestroyTest, DetachTimeIsBootSecondsAndOnlyWithPagesInFlight) {
  // page_pool_detached (ktime_get_boottime_seconds) runs only when page_pool_release left pages
  // in flight.
  auto idle = MakePool();
  ASSERT_TRUE(nic_->DestroyPool(idle->id()).ok());
  EXPECT_EQ(idle->info().detach_time, 0);
  EXPECT_EQ(idle->info().detach_time_ns, 0u);
  EXPECT_FALSE(idle->detached());

  auto busy = MakePool();
  absl::StatusOr<PoolPage> p = busy->Allocate();
  ASSERT_TRUE(p.ok());
  const int64_t before = BoottimeSeconds();
  ASSERT_TRUE(nic_->DestroyPool(busy->id()).ok());
  const int64_t after = BoottimeSeconds();
  EXPECT_TRUE(busy->detached());
  EXPECT_GE(busy->info().detach_time, before);
  EXPECT_LE(busy->info().detach_time, after);
  EXPECT_EQ(busy->info().detach_time_ns, clock_.NowNanos());
  ASSERT_TRUE(busy->Return(p->handle).ok());
  EXPECT_TRUE(busy->detached());
}

TEST_P(PagePoolDestroyTest, WaitForDestroyReturnsAtOnceWithoutADestroyAndAfterOne) {
  auto pool = MakePool();
  pool->WaitForDestroy();  // none started
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(5, &pages).ok());
  ASSERT_TRUE(nic_->DestroyPool(pool->id()).ok());
  pool->WaitForDestroy();
  EXPECT_TRUE(pool->detached());
  for (const PoolPage& p : pages) ASSERT_TRUE(pool->Return(p.handle).ok());
}

TEST_P(PagePoolDestroyTest, ScanWalksOnlyWhilePagesAreInFlight) {
  if (std::get<0>(GetParam()) != DestroyStrategy::kScan) GTEST_SKIP() << "SCAN only";
  // Nothing in flight after the ring is emptied: no grace period, no walk (RFC v4 scans only
  // when page_pool_release found pages in flight).
  auto idle = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(idle->AllocateBulk(10, &pages).ok());
  for (const PoolPage& p : pages) ASSERT_TRUE(idle->Recycle(p.handle, false).ok());
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(idle->id());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->frames_scanned, 0u);
  EXPECT_EQ(d->pages_unmapped, 0u);
  EXPECT_EQ(d->grace_periods, 0u);
  EXPECT_TRUE(d->released);

  // Pages in flight sit at the low frames of a fresh memory: the walk stops at the last of them
  // (inflight == unmapped), far below the end of memory.
  auto busy = MakePool();
  pages.clear();
  ASSERT_TRUE(busy->AllocateBulk(100, &pages).ok());
  FrameNumber highest = 0;
  for (const PoolPage& p : pages) highest = std::max(highest, p.handle.frame);
  d = nic_->DestroyPool(busy->id());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->pages_unmapped, 100u);
  EXPECT_EQ(d->frames_scanned, highest + 1);
  EXPECT_LT(d->frames_scanned, memory_->frames());
  EXPECT_EQ(d->grace_periods, 1u);
  for (const PoolPage& p : pages) ASSERT_TRUE(busy->Return(p.handle).ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

INSTANTIATE_TEST_SUITE_P(
    Strategies, PagePoolDestroyTest,
    ::testing::Combine(::testing::Values(DestroyStrategy::kXarray, DestroyStrategy::kScan,
                                         DestroyStrategy::kNone),
                       ::testing::Values(dma::IommuMode::kStrict, dma::IommuMode::kLazy,
                                         dma::IommuMode::kPassthrough)),
    [](const ::testing::TestParamInfo<Param>& info) {
      return std::string(DestroyStrategyName(std::get<0>(info.param))) + "_" +
             std::string(dma::IommuModeName(std::get<1>(info.param)));
    });

}  // namespace
}  // namespace pagepool::pool
