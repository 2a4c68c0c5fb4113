// File: tests/pool/page_pool_frag_test.cc
//
// Single-threaded tests of PagePool fragments (page_pool_alloc_frag and pp_ref_count): carving a
// page, the drain when the next fragment does not fit, the last reference recycling or releasing
// the page, extra references, puts beyond a page's references refused and counted, and destroy
// while fragments of one page are split between holders, under each destroy strategy.
#include <string>
#include <vector>

#include "dma/device.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/pool/frag_fixture.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;

PoolFrag Alloc(PagePool& pool, uint32_t size) {
  absl::StatusOr<PoolFrag> f = pool.AllocFrag(size);
  EXPECT_TRUE(f.ok()) << f.status();
  return f.ok() ? *f : PoolFrag{};
}

class PagePoolFragTest : public ::testing::Test, public testing::NicFixture {
 protected:
  void SetUp() override {
    const absl::Status s = CreateNic(64 * kMiB, 1, dma::IommuMode::kStrict, 3);
    ASSERT_TRUE(s.ok()) << s;
  }

  std::shared_ptr<PagePool> MakePool(PagePoolParams params = {}) {
    absl::StatusOr<std::shared_ptr<PagePool>> pool = nic_->CreatePool(params);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? *pool : nullptr;
  }
};

TEST_F(PagePoolFragTest, FragmentsOfSeveralSizesFillAPage) {
  auto pool = MakePool();
  // Sizes round up to 64 bytes: 128 + 64 + 1024 + 2048 + 832 = 4096.
  const uint32_t sizes[] = {100, 64, 1000, 2048, 800};
  const uint32_t aligned[] = {128, 64, 1024, 2048, 832};
  std::vector<PoolFrag> frags;
  uint32_t offset = 0;
  for (int i = 0; i < 5; ++i) {
    frags.push_back(Alloc(*pool, sizes[i]));
    EXPECT_EQ(frags[i].handle.offset, offset);
    EXPECT_EQ(frags[i].handle.size, aligned[i]);
    EXPECT_EQ(frags[i].handle.page, frags[0].handle.page);
    EXPECT_EQ(frags[i].dma_addr, frags[0].dma_addr + offset);
    EXPECT_EQ(frags[i].phys, frags[0].phys + offset);
    offset += aligned[i];
  }
  EXPECT_EQ(offset, 4096u);
  EXPECT_NE(frags[0].dma_addr, 0u);
  EXPECT_EQ(frags[0].handle.page.generation % 2, 1u);
  EXPECT_EQ(frags[0].handle.offset, 0u);

  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.frag_pages, 1u);
  EXPECT_EQ(info.frag_refs, 5u);
  EXPECT_EQ(info.inflight, 64);  // the slow path's bulk; the frag page is one of them
  EXPECT_EQ(info.alloc_cache_count, 63u);
  EXPECT_EQ(info.stats.alloc_fast, 4u);  // every fragment after the first (as the kernel counts)
  EXPECT_EQ(info.stats.alloc_slow, 1u);
  PpRefInfo refs = pool->PpRefCount(frags[0].handle.page.frame);
  EXPECT_TRUE(refs.frag_page);
  EXPECT_TRUE(refs.current);
  EXPECT_EQ(refs.pp_ref_count, kPpFragBias);
  EXPECT_EQ(refs.user_refs, 5);

  // A page of another kind answers as such.
  absl::StatusOr<PoolPage> whole = pool->Allocate();
  ASSERT_TRUE(whole.ok());
  refs = pool->PpRefCount(whole->handle.frame);
  EXPECT_FALSE(refs.frag_page);
  EXPECT_EQ(refs.pp_ref_count, 1u);
  EXPECT_EQ(refs.user_refs, 0);
  ASSERT_TRUE(pool->Recycle(whole->handle, true).ok());

  // Puts drop one reference each; the bias keeps the page with the pool's frag allocator.
  for (int i = 0; i < 5; ++i) {
    absl::StatusOr<FragPutResult> r = pool->PutFrag(frags[i].handle, true);
    ASSERT_TRUE(r.ok()) << r.status();
    EXPECT_EQ(r->refs_left, uint32_t(kPpFragBias - 1 - i));
  }
  info = pool->info();
  EXPECT_EQ(info.frag_refs, 0u);
  EXPECT_EQ(info.frag_pages, 1u);
  EXPECT_EQ(info.stats.recycle_cached, 1u);  // only the whole page
  EXPECT_EQ(pool->PpRefCount(frags[0].handle.page.frame).user_refs, 0);
}

TEST_F(PagePoolFragTest, DrainReusesAPageWhoseFragmentsAreAllBack) {
  auto pool = MakePool();
  const PoolFrag a = Alloc(*pool, 2048);
  const PoolFrag b = Alloc(*pool, 2048);
  ASSERT_TRUE(pool->PutFrag(a.handle, false).ok());
  ASSERT_TRUE(pool->PutFrag(b.handle, false).ok());
  const PagePoolStats before = pool->stats();
  const uint64_t syncs = pool->info().dma_synced_bytes;
  // page_pool_drain_frag: the bias left is the last reference, so the page is reused at once.
  const PoolFrag c = Alloc(*pool, 64);
  EXPECT_EQ(c.handle.page.frame, a.handle.page.frame);
  EXPECT_EQ(c.handle.page.generation, a.handle.page.generation + 2);
  EXPECT_EQ(c.handle.offset, 0u);
  const PagePoolStats after = pool->stats();
  EXPECT_EQ(after.alloc_fast, before.alloc_fast + 1);
  EXPECT_EQ(after.alloc_slow, before.alloc_slow);
  EXPECT_EQ(after.recycle_ring + after.recycle_cached, 0u);
  EXPECT_EQ(pool->info().dma_synced_bytes, syncs);  // no PP_FLAG_DMA_SYNC_DEV: no sync
  EXPECT_EQ(pool->info().frag_pages, 1u);

  // The old fragments' handles are stale now.
  absl::StatusOr<FragPutResult> stale = pool->PutFrag(a.handle, false);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->info().frag_put_refused, 1u);
}

TEST_F(PagePoolFragTest, DrainWithFragmentsHeldTakesANewPage) {
  PagePoolParams params;
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
  params.max_len = 1024;
  auto pool = MakePool(params);
  const PoolFrag a = Alloc(*pool, 3000);
  const PoolFrag b = Alloc(*pool, 1000);  // 3008 + 1024 = 4032: fits
  EXPECT_EQ(b.handle.offset, 3008u);
  ASSERT_TRUE(pool->PutFrag(a.handle, true).ok());
  const PoolFrag c = Alloc(*pool, 128);  // 4032 + 128 > 4096: drain, b still held
  EXPECT_NE(c.handle.page.frame, a.handle.page.frame);
  EXPECT_EQ(c.handle.offset, 0u);
  PpRefInfo old_page = pool->PpRefCount(a.handle.page.frame);
  EXPECT_TRUE(old_page.frag_page);
  EXPECT_FALSE(old_page.current);
  EXPECT_EQ(old_page.pp_ref_count, 1u);
  EXPECT_EQ(old_page.user_refs, 1);
  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.frag_pages, 2u);
  EXPECT_EQ(info.frag_refs, 2u);

  // b's put is the last reference of the old page: page_pool_put_page, synced and recycled.
  const uint64_t synced = info.dma_synced_bytes;
  absl::StatusOr<FragPutResult> r = pool->PutFrag(b.handle, true, 512);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 0u);
  EXPECT_EQ(r->result, RecycleResult::kCached);
  info = pool->info();
  EXPECT_EQ(info.dma_synced_bytes, synced + 512);
  EXPECT_EQ(info.stats.recycle_cached, 1u);
  EXPECT_EQ(info.frag_pages, 1u);
  EXPECT_EQ(info.frag_refs, 1u);
  old_page = pool->PpRefCount(a.handle.page.frame);
  EXPECT_FALSE(old_page.frag_page);
  EXPECT_EQ(old_page.pp_ref_count, 1u);
  // Back in the pool: handed out again as a whole page.
  EXPECT_EQ(pool->Allocate()->handle.frame, a.handle.page.frame);
}

TEST_F(PagePoolFragTest, LastReferenceRecyclesIntoRingOrReleases) {
  auto pool = MakePool();
  const PoolFrag a = Alloc(*pool, 4096);
  const PoolFrag b = Alloc(*pool, 4096);  // drain: a held, new page
  const PoolFrag c = Alloc(*pool, 4096);  // drain: b held, new page
  ASSERT_NE(a.handle.page.frame, b.handle.page.frame);
  absl::StatusOr<FragPutResult> r = pool->PutFrag(a.handle, /*napi_local=*/false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 0u);
  EXPECT_EQ(r->result, RecycleResult::kRing);
  EXPECT_EQ(pool->info().ring_count, 1u);

  const uint64_t unmaps = nic_->device().unmap_calls();
  const int64_t inflight = pool->inflight();
  r = pool->ReturnFrag(b.handle);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 0u);
  EXPECT_EQ(r->result, RecycleResult::kReleased);
  EXPECT_TRUE(r->unmapped);  // this call unmapped the page
  EXPECT_EQ(nic_->device().unmap_calls(), unmaps + 1);
  EXPECT_EQ(pool->inflight(), inflight - 1);
  EXPECT_EQ(pool->info().frag_pages, 1u);
  // Returning the current frag page's only fragment leaves it with the pool's bias.
  r = pool->ReturnFrag(c.handle);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->refs_left, uint32_t(kPpFragBias - 1));
  EXPECT_EQ(nic_->device().unmap_calls(), unmaps + 1);
}

TEST_F(PagePoolFragTest, ExtraReferenceKeepsThePageUntilDropped) {
  auto pool = MakePool();
  const PoolFrag a = Alloc(*pool, 4096);
  // The stack takes a reference of its own (page_pool_ref_netmem, as an skb clone).
  ASSERT_TRUE(pool->RefFrag(a.handle).ok());
  EXPECT_EQ(pool->info().frag_refs, 2u);
  EXPECT_EQ(pool->PpRefCount(a.handle.page.frame).user_refs, 2);
  Alloc(*pool, 64);  // drain: bias - 1 dropped, 2 references stay
  EXPECT_EQ(pool->PpRefCount(a.handle.page.frame).pp_ref_count, 2u);
  absl::StatusOr<FragPutResult> r = pool->PutFrag(a.handle, false);  // the driver's
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->refs_left, 1u);
  EXPECT_EQ(pool->info().ring_count, 0u);
  r = pool->PutFrag(a.handle, false);  // the stack's: the last
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->refs_left, 0u);
  EXPECT_EQ(r->result, RecycleResult::kRing);
  // A third put has no reference left: refused and counted, nothing moves.
  r = pool->PutFrag(a.handle, false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->RefFrag(a.handle).code(), absl::StatusCode::kFailedPrecondition);
  const PagePoolInfo info = pool->info();
  EXPECT_EQ(info.frag_put_refused, 2u);
  EXPECT_EQ(info.ring_count, 1u);
  EXPECT_EQ(info.frag_refs, 1u);  // the 64-byte fragment
}

TEST_F(PagePoolFragTest, PutBeyondReferencesIsRefusedNotACrash) {
  auto pool = MakePool();
  const PoolFrag a = Alloc(*pool, 2048);
  const PoolFrag b = Alloc(*pool, 2048);
  Alloc(*pool, 64);  // drain: 2 references left on the first page
  ASSERT_TRUE(pool->PutFrag(a.handle, false).ok());
  // a again: the count is per page, so this takes b's reference and is the last.
  absl::StatusOr<FragPutResult> r = pool->PutFrag(a.handle, false);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->refs_left, 0u);
  // b then finds no reference left (the page is the pool's again): refused.
  for (int i = 0; i < 3; ++i) {
    EXPECT_EQ(pool->PutFrag(b.handle, false).status().code(),
              absl::StatusCode::kFailedPrecondition);
    EXPECT_EQ(pool->ReturnFrag(a.handle).status().code(), absl::StatusCode::kFailedPrecondition);
  }
  EXPECT_EQ(pool->info().frag_put_refused, 6u);
  EXPECT_EQ(pool->info().ring_count, 1u);

  // Over-puts on the current frag page eat into the pool's bias; the drain absorbs them.
  const PoolFrag c = Alloc(*pool, 64);
  for (int i = 0; i < 3; ++i) ASSERT_TRUE(pool->PutFrag(c.handle, false).ok());
  Alloc(*pool, 4096);  // drain
  const PagePoolInfo info = pool->info();
  EXPECT_EQ(info.frag_pages, 1u);
  EXPECT_EQ(info.frag_refs, 1u);
}

TEST_F(PagePoolFragTest, BadArgumentsAndWholePageCallsAreRefused) {
  auto pool = MakePool();
  EXPECT_EQ(pool->AllocFrag(0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->AllocFrag(4097).status().code(), absl::StatusCode::kInvalidArgument);
  const PoolFrag a = Alloc(*pool, 4096);
  // A frag page is not a whole page: Recycle, Return and GetPage of its PageHandle are refused.
  EXPECT_EQ(pool->Recycle(a.handle.page, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Return(a.handle.page).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->GetPage(a.handle.page).code(), absl::StatusCode::kFailedPrecondition);
  // And a whole page is not a fragment.
  absl::StatusOr<PoolPage> whole = pool->Allocate();
  ASSERT_TRUE(whole.ok());
  EXPECT_EQ(pool->PutFrag(FragHandle{whole->handle, 0, 64}, false).status().code(),
            absl::StatusCode::kFailedPrecondition);
  FragHandle outside = a.handle;
  outside.offset = 4096;
  EXPECT_EQ(pool->PutFrag(outside, false).status().code(), absl::StatusCode::kInvalidArgument);
  FragHandle beyond = a.handle;
  beyond.page.frame = memory_->frames();
  EXPECT_EQ(pool->PutFrag(beyond, false).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(pool->PutFrag(a.handle, false)->refs_left, uint32_t(kPpFragBias - 1));
  ASSERT_TRUE(pool->Recycle(whole->handle, false).ok());

  // Order 1: 8 KiB fragments.
  PagePoolParams params;
  params.order = 1;
  auto big = MakePool(params);
  const PoolFrag f = Alloc(*big, 8192);
  EXPECT_EQ(f.handle.size, 8192u);
  EXPECT_EQ(big->AllocFrag(8193).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(PagePoolFragTest, NonMappingPoolCarvesFragmentsToo) {
  PagePoolParams params;
  params.flags = 0;
  auto pool = MakePool(params);
  const PoolFrag a = Alloc(*pool, 1500);
  const PoolFrag b = Alloc(*pool, 1500);
  EXPECT_EQ(a.dma_addr, 0u);
  EXPECT_EQ(b.handle.offset, 1536u);
  EXPECT_EQ(b.phys, a.phys + 1536);
  ASSERT_TRUE(pool->PutFrag(a.handle, false).ok());
  ASSERT_TRUE(pool->ReturnFrag(b.handle).ok());
  ASSERT_TRUE(pool->Destroy().ok());
  EXPECT_EQ(pool->inflight(), 0);  // page_pool_free_frag released the frag page
}

// Destroy while fragments of one page are split between holders.
class PagePoolFragDestroyTest : public testing::FragPoolTest {
 protected:
  void ExpectEmptyDomain() {
    const testing::DomainResidue r = testing::DrainDomain(nic_->device());
    EXPECT_EQ(r.live_mappings, 0u);
    if (!r.has_domain) return;
    EXPECT_EQ(r.mapped_pages, 0u);
    EXPECT_EQ(r.table_pages, 1u);
    EXPECT_EQ(r.pending_free_pages, 0u);
    if (r.has_iova) {
      EXPECT_EQ(r.iova_allocated_pages, 0u);
    }
  }
};

TEST_P(PagePoolFragDestroyTest, FragmentsHeldAcrossDestroyAndUnbind) {
  const DestroyStrategy strategy = GetParam();
  auto pool = MakePool();
  // Page A: two fragments, the first shared with the stack (an extra reference); drained.
  const PoolFrag a1 = Alloc(*pool, 2048);
  const PoolFrag a2 = Alloc(*pool, 2048);
  ASSERT_TRUE(pool->RefFrag(a1.handle).ok());
  // Page B, the pool's frag page at destroy: one fragment held, one back.
  const PoolFrag b1 = Alloc(*pool, 1024);
  const PoolFrag b2 = Alloc(*pool, 1024);
  ASSERT_NE(a1.handle.page.frame, b1.handle.page.frame);
  ASSERT_TRUE(pool->PutFrag(b2.handle, true).ok());
  ASSERT_TRUE(pool->PutFrag(a2.handle, false).ok());  // A: 2 references left (a1 twice)
  const uint64_t maps = nic_->device().map_calls();

  absl::StatusOr<UnbindResult> u = nic_->Unbind();
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->inflight_at_destroy, 2);  // A and B; page_pool_free_frag dropped B's bias
  EXPECT_EQ(u->pages_unmapped, strategy == DestroyStrategy::kNone ? 0u : 2u);
  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.frag_pages, 2u);
  EXPECT_EQ(info.frag_refs, 3u);
  EXPECT_EQ(pool->PpRefCount(b1.handle.page.frame).pp_ref_count, 1u);
  EXPECT_FALSE(pool->PpRefCount(b1.handle.page.frame).current);

  // The holders let go, late. Each page is freed by its last reference, never unmapped again.
  const uint64_t unmaps = nic_->device().unmap_calls();
  clock_.Advance(5 * kDeferTimeNs);
  absl::StatusOr<FragPutResult> r = pool->PutFrag(a1.handle, false);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 1u);
  EXPECT_EQ(pool->inflight(), 2);
  r = pool->ReturnFrag(b1.handle);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 0u);
  // Unmapped at the destroy already; kNone's late unmap is tried (and refused: unbound).
  EXPECT_EQ(r->unmapped, strategy == DestroyStrategy::kNone);
  EXPECT_EQ(pool->inflight(), 1);
  r = pool->PutFrag(a1.handle, true);  // the stack's reference: the last of A
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(r->refs_left, 0u);
  EXPECT_EQ(r->result, RecycleResult::kReleased);
  EXPECT_EQ(pool->PutFrag(a1.handle, false).status().code(), absl::StatusCode::kFailedPrecondition);
  info = pool->info();
  EXPECT_EQ(info.inflight, 0);
  EXPECT_EQ(info.frag_pages, 0u);
  EXPECT_EQ(info.frag_refs, 0u);
  EXPECT_EQ(info.frag_put_refused, 1u);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);

  const dma::CheckerCounters v = nic_->device().violations();
  if (strategy == DestroyStrategy::kNone) {
    // The two late unmaps hit the unbound device, which refuses and counts them.
    EXPECT_EQ(v.live_at_unbind, 2u);
    EXPECT_GE(v.call_after_unbind, 2u);
  } else {
    EXPECT_EQ(nic_->device().unmap_calls(), unmaps);  // unmapped at destroy, exactly once
    EXPECT_EQ(nic_->device().unmap_calls(), nic_->device().map_calls());
    EXPECT_EQ(nic_->device().map_calls(), maps);
    EXPECT_EQ(v.Total(), 0u) << testing::ViolationSummary(v);
    EXPECT_EQ(info.dma_mapped, 0u);
    ExpectEmptyDomain();
  }
}

TEST_P(PagePoolFragDestroyTest, FreeFragReleasesAFragPageWithEverythingBack) {
  auto pool = MakePool();
  const PoolFrag a = Alloc(*pool, 512);
  const PoolFrag b = Alloc(*pool, 512);
  ASSERT_TRUE(pool->PutFrag(a.handle, true).ok());
  ASSERT_TRUE(pool->ReturnFrag(b.handle).ok());
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->inflight_at_destroy, 0);
  EXPECT_TRUE(d->released);
  EXPECT_EQ(pool->info().frag_pages, 0u);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  ASSERT_TRUE(nic_->Unbind().ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  ExpectEmptyDomain();
}

TEST_P(PagePoolFragDestroyTest, DestroyThenLateFragmentReturnsBeforeUnbind) {
  const DestroyStrategy strategy = GetParam();
  auto pool = MakePool();
  std::vector<PoolFrag> frags;
  for (int i = 0; i < 8; ++i) frags.push_back(Alloc(*pool, 1024));  // two pages
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok()) << d.status();
  EXPECT_EQ(d->inflight_at_destroy, 2);
  EXPECT_EQ(d->pages_unmapped, strategy == DestroyStrategy::kNone ? 0u : 2u);
  EXPECT_EQ(pool->AllocFrag(64).status().code(), absl::StatusCode::kFailedPrecondition);
  const uint64_t unmaps = nic_->device().unmap_calls();
  for (const PoolFrag& f : frags) ASSERT_TRUE(pool->PutFrag(f.handle, false).ok());
  EXPECT_EQ(pool->inflight(), 0);
  // Only kNone still unmaps after the destroy (the device is bound yet: no violation).
  EXPECT_EQ(nic_->device().unmap_calls() - unmaps, strategy == DestroyStrategy::kNone ? 2u : 0u);
  ASSERT_TRUE(nic_->Unbind().ok());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
  ExpectEmptyDomain();
}

INSTANTIATE_TEST_SUITE_P(Strategies, PagePoolFragDestroyTest,
                         ::testing::Values(DestroyStrategy::kXarray, DestroyStrategy::kScan,
                                           DestroyStrategy::kNone),
                         [](const ::testing::TestParamInfo<DestroyStrategy>& info) {
                           return std::string(DestroyStrategyName(info.param));
                         });

}  // namespace
}  // namespace pagepool::pool
