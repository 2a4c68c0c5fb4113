// File: tests/pool/page_pool_test.cc
//
// Single-threaded tests of PagePool: every allocation and recycle path, each stat moving when (and
// only when) the kernel's would, handles, DMA sync, ID-space exhaustion, and the Nic.
#include "pool/page_pool.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "dma/device.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "tests/support/pool_fixtures.h"
#include "tests/support/test_env.h"

namespace pagepool::pool {
namespace {

using ::pagepool::testing::kMiB;

class PagePoolTest : public ::testing::Test, public testing::NicFixture {
 protected:
  void SetUpNic(uint64_t memory_bytes = 64 * kMiB, unsigned numa_nodes = 1,
                dma::IommuMode mode = dma::IommuMode::kStrict, uint32_t ifindex = 3) {
    const absl::Status s = CreateNic(memory_bytes, numa_nodes, mode, ifindex);
    ASSERT_TRUE(s.ok()) << s;
  }
  void SetUp() override { SetUpNic(); }

  std::shared_ptr<PagePool> MakePool(PagePoolParams params = {}) {
    absl::StatusOr<std::shared_ptr<PagePool>> pool = nic_->CreatePool(params);
    EXPECT_TRUE(pool.ok()) << pool.status();
    return pool.ok() ? *pool : nullptr;
  }
};

TEST_F(PagePoolTest, SlowThenFastPath) {
  auto pool = MakePool();
  ASSERT_TRUE(pool);
  EXPECT_EQ(pool->info().ifindex, 3u);
  absl::StatusOr<PoolPage> first = pool->Allocate();
  ASSERT_TRUE(first.ok()) << first.status();
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.alloc_empty, 1u);  // refill found the ring empty
  EXPECT_EQ(s.alloc_slow, 1u);
  EXPECT_EQ(s.alloc_fast, 0u);
  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.hold_cnt, 64u);  // a bulk of 64 entered the pool
  EXPECT_EQ(info.inflight, 64);
  EXPECT_EQ(info.inflight_mem, 64 * 4096u);
  EXPECT_EQ(info.dma_mapped, 64u);
  EXPECT_EQ(info.alloc_cache_count, 63u);
  EXPECT_EQ(info.index.entries, 64u);
  EXPECT_EQ(nic_->device().map_calls(), 64u);
  EXPECT_NE(first->dma_addr, 0u);
  EXPECT_EQ(first->handle.generation % 2, 1u);
  for (int i = 0; i < 63; ++i) ASSERT_TRUE(pool->Allocate().ok());
  s = pool->stats();
  EXPECT_EQ(s.alloc_fast, 63u);
  EXPECT_EQ(s.alloc_slow, 1u);
  ASSERT_TRUE(pool->Allocate().ok());
  s = pool->stats();
  EXPECT_EQ(s.alloc_empty, 2u);
  EXPECT_EQ(s.alloc_slow, 2u);
  EXPECT_EQ(s.alloc_refill, 0u);
  EXPECT_EQ(pool->info().hold_cnt, 128u);
  // No recycle stat moved.
  EXPECT_EQ(s.recycle_cached + s.recycle_ring + s.recycle_cache_full + s.recycle_ring_full +
                s.recycle_released_refcnt,
            0u);
}

TEST_F(PagePoolTest, DirectRecycleGoesToCacheAndFastPath) {
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  absl::StatusOr<RecycleResult> r = pool->Recycle(p->handle, /*napi_local=*/true);
  ASSERT_TRUE(r.ok()) << r.status();
  EXPECT_EQ(*r, RecycleResult::kCached);
  EXPECT_EQ(pool->stats().recycle_cached, 1u);
  EXPECT_EQ(pool->info().alloc_cache_count, 64u);
  absl::StatusOr<PoolPage> again = pool->Allocate();
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->handle.frame, p->handle.frame);  // LIFO cache
  EXPECT_EQ(again->handle.generation, p->handle.generation + 2);
  EXPECT_EQ(pool->stats().alloc_fast, 1u);
  EXPECT_EQ(nic_->device().map_calls(), 64u);  // recycling never remaps
  EXPECT_EQ(nic_->device().unmap_calls(), 0u);
}

TEST_F(PagePoolTest, RingRecycleRefillsTheCache) {
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(64, &pages).ok());
  EXPECT_EQ(pool->info().alloc_cache_count, 0u);
  for (const PoolPage& p : pages) {
    absl::StatusOr<RecycleResult> r = pool->Recycle(p.handle, /*napi_local=*/false);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, RecycleResult::kRing);
  }
  EXPECT_EQ(pool->stats().recycle_ring, 64u);
  EXPECT_EQ(pool->info().ring_count, 64u);
  ASSERT_TRUE(pool->Allocate().ok());
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.alloc_refill, 1u);
  EXPECT_EQ(s.alloc_empty, 1u);  // only the very first allocation
  EXPECT_EQ(s.alloc_slow, 1u);
  EXPECT_EQ(pool->info().alloc_cache_count, 63u);
  EXPECT_EQ(pool->info().ring_count, 0u);
  EXPECT_EQ(pool->info().hold_cnt, 64u);
}

TEST_F(PagePoolTest, CacheFullFallsBackToRing) {
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(129, &pages).ok());  // cache: 64*3 - 129 = 63 left
  EXPECT_EQ(pool->info().alloc_cache_count, 63u);
  size_t cached = 0, ring = 0;
  for (const PoolPage& p : pages) {
    absl::StatusOr<RecycleResult> r = pool->Recycle(p.handle, true);
    ASSERT_TRUE(r.ok());
    (*r == RecycleResult::kCached ? cached : ring)++;
  }
  EXPECT_EQ(cached, 65u);  // 63 + 65 = 128
  EXPECT_EQ(ring, 64u);
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.recycle_cached, 65u);
  EXPECT_EQ(s.recycle_cache_full, 64u);
  EXPECT_EQ(s.recycle_ring, 64u);
  EXPECT_EQ(s.recycle_ring_full, 0u);
}

TEST_F(PagePoolTest, RingFullReleasesThePage) {
  PagePoolParams params;
  params.pool_size = 4;
  auto pool = MakePool(params);
  EXPECT_EQ(pool->info().ring_size, 4u);
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(6, &pages).ok());
  const uint64_t free_before = memory_->frames_free();
  for (int i = 0; i < 6; ++i) {
    absl::StatusOr<RecycleResult> r = pool->Recycle(pages[i].handle, false);
    ASSERT_TRUE(r.ok());
    EXPECT_EQ(*r, i < 4 ? RecycleResult::kRing : RecycleResult::kReleased);
  }
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.recycle_ring, 4u);
  EXPECT_EQ(s.recycle_ring_full, 2u);
  EXPECT_EQ(memory_->frames_free(), free_before + 2);
  EXPECT_EQ(nic_->device().unmap_calls(), 2u);
  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.release_cnt, 2u);
  EXPECT_EQ(info.inflight, 62);
  EXPECT_EQ(info.dma_mapped, 62u);
  EXPECT_EQ(info.index.entries, 62u);
}

TEST_F(PagePoolTest, ExtraPageReferenceReleasesOnRecycle) {
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(pool->GetPage(p->handle).ok());
  const uint64_t free_before = memory_->frames_free();
  absl::StatusOr<RecycleResult> r = pool->Recycle(p->handle, true);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, RecycleResult::kReleased);
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.recycle_released_refcnt, 1u);
  EXPECT_EQ(s.recycle_cached, 0u);
  EXPECT_EQ(nic_->device().unmap_calls(), 1u);
  EXPECT_EQ(pool->info().inflight, 63);
  // The other holder still has the frame.
  EXPECT_EQ(memory_->frames_free(), free_before);
  EXPECT_TRUE(memory_->PutPage(p->handle.frame));
  EXPECT_EQ(memory_->frames_free(), free_before + 1);
}

TEST_F(PagePoolTest, NumaMismatchWaivesAtRefill) {
  SetUpNic(8 * kMiB, /*numa_nodes=*/2);
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(64, &pages).ok());
  for (int i = 0; i < 2; ++i) ASSERT_TRUE(pool->Recycle(pages[i].handle, false).ok());
  pool->SetNid(1);  // page_pool_nid_changed: ring pages (node 0) no longer match
  const uint64_t unmaps = nic_->device().unmap_calls();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok()) << p.status();
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.alloc_waive, 1u);
  EXPECT_EQ(s.alloc_refill, 0u);
  EXPECT_EQ(s.alloc_slow, 2u);
  EXPECT_EQ(nic_->device().unmap_calls(), unmaps + 1);
  EXPECT_EQ(pool->info().ring_count, 1u);
}

TEST_F(PagePoolTest, HighOrderAllocatesOnePageAtATime) {
  PagePoolParams params;
  params.order = 2;
  auto pool = MakePool(params);
  for (int i = 0; i < 3; ++i) {
    absl::StatusOr<PoolPage> p = pool->Allocate();
    ASSERT_TRUE(p.ok());
    EXPECT_EQ(p->handle.frame % 4, 0u);
  }
  PagePoolStats s = pool->stats();
  EXPECT_EQ(s.alloc_slow_high_order, 3u);
  EXPECT_EQ(s.alloc_slow, 0u);
  EXPECT_EQ(s.alloc_empty, 3u);
  EXPECT_EQ(pool->info().inflight_mem, 3 * 16384u);
  EXPECT_EQ(nic_->device().map_calls(), 3u);
}

TEST_F(PagePoolTest, DmaSyncForDeviceOnMapAndRecycle) {
  PagePoolParams params;
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
  params.max_len = 1500;
  params.offset = 256;
  auto pool = MakePool(params);
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(nic_->device().sync_calls(), 64u);  // every newly mapped page
  ASSERT_TRUE(pool->Recycle(p->handle, true).ok());
  EXPECT_EQ(nic_->device().sync_calls(), 65u);
  absl::StatusOr<PoolPage> q = pool->Allocate();
  ASSERT_TRUE(q.ok());
  ASSERT_TRUE(pool->Return(q->handle).ok());  // release: no sync
  EXPECT_EQ(nic_->device().sync_calls(), 65u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(PagePoolTest, NoDmaMapPoolNeverCallsTheDevice) {
  PagePoolParams params;
  params.flags = 0;
  auto pool = MakePool(params);
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  EXPECT_EQ(p->dma_addr, 0u);
  ASSERT_TRUE(pool->Return(p->handle).ok());
  EXPECT_EQ(nic_->device().map_calls(), 0u);
  EXPECT_EQ(pool->index(), nullptr);
}

TEST_F(PagePoolTest, HandlesRefuseStaleDoubleAndForeignGiveBacks) {
  auto pool = MakePool();
  auto other = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  // Wrong pool.
  absl::StatusOr<bool> wrong = other->Return(p->handle);
  EXPECT_EQ(wrong.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(wrong.status().message().find("belongs to pool"), std::string::npos);
  // Never handed out (even generation), beyond memory.
  EXPECT_EQ(pool->Return({p->handle.frame, p->handle.generation + 1}).status().code(),
            absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->Return({memory_->frames(), 1}).status().code(),
            absl::StatusCode::kInvalidArgument);
  // Recycle, then the old handle is a double give-back.
  ASSERT_TRUE(pool->Recycle(p->handle, true).ok());
  absl::StatusOr<RecycleResult> twice = pool->Recycle(p->handle, true);
  EXPECT_EQ(twice.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(twice.status().message().find("double return"), std::string::npos);
  // Handed out again: the old handle is stale.
  absl::StatusOr<PoolPage> again = pool->Allocate();
  ASSERT_TRUE(again.ok());
  ASSERT_EQ(again->handle.frame, p->handle.frame);
  absl::StatusOr<bool> stale = pool->Return(p->handle);
  EXPECT_EQ(stale.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(stale.status().message().find("stale"), std::string::npos);
  // Returned to memory: not in flight.
  absl::StatusOr<bool> ret = pool->Return(again->handle);
  ASSERT_TRUE(ret.ok());
  EXPECT_TRUE(*ret);
  absl::StatusOr<bool> gone = pool->Return(again->handle);
  EXPECT_EQ(gone.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(pool->GetPage(again->handle).code(), absl::StatusCode::kFailedPrecondition);
  // None of the refused calls moved a stat or touched the DMA API wrongly.
  EXPECT_EQ(pool->stats().recycle_cached, 1u);
  EXPECT_EQ(pool->info().release_cnt, 1u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(PagePoolTest, GenerationWrapsWithoutTouchingTheOwner) {
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(pool->Recycle(p->handle, true).ok());
  // The page sits in the cache (even generation); move its generation to the edge of u32.
  PageRecord& rec = memory_->record(p->handle.frame);
  rec.owner_gen.store(PageRecord::MakeOwnerGen(uint32_t(pool->id()), 0xfffffffeu));
  absl::StatusOr<PoolPage> q = pool->Allocate();
  ASSERT_TRUE(q.ok());
  ASSERT_EQ(q->handle.frame, p->handle.frame);
  EXPECT_EQ(q->handle.generation, 0xffffffffu);
  ASSERT_TRUE(pool->Recycle(q->handle, true).ok());  // 0xffffffff -> 0
  EXPECT_EQ(PageRecord::OwnerOf(rec.owner_gen.load()), pool->id());
  EXPECT_EQ(PageRecord::GenerationOf(rec.owner_gen.load()), 0u);
  EXPECT_EQ(pool->Recycle(q->handle, true).status().code(), absl::StatusCode::kFailedPrecondition);
  absl::StatusOr<PoolPage> r = pool->Allocate();
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->handle.generation, 1u);
  EXPECT_TRUE(pool->Return(r->handle).ok());
}

TEST_F(PagePoolTest, ReturnUnmapsAndFrees) {
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  const uint64_t free_before = memory_->frames_free();
  absl::StatusOr<bool> r = pool->Return(p->handle);
  ASSERT_TRUE(r.ok());
  EXPECT_TRUE(*r);
  EXPECT_EQ(memory_->frames_free(), free_before + 1);
  EXPECT_EQ(pool->info().inflight, 63);
  EXPECT_EQ(pool->info().dma_mapped, 63u);
  EXPECT_EQ(nic_->device().live_mappings(), 63u);
  EXPECT_EQ(memory_->record(p->handle.frame).pp_magic.load(), 0u);
}

TEST_F(PagePoolTest, IndexExhaustionUnmapsAndFails) {
  PagePoolParams params;
  params.dma_index_limit = 10;
  auto pool = MakePool(params);
  const uint64_t free0 = memory_->frames_free();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(10, &pages).ok());
  PagePoolInfo info = pool->info();
  EXPECT_EQ(info.index_exhausted, 54u);
  EXPECT_EQ(info.hold_cnt, 10u);
  EXPECT_EQ(info.dma_mapped, 10u);
  EXPECT_EQ(memory_->frames_free(), free0 - 10);
  absl::StatusOr<PoolPage> more = pool->Allocate();
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(more.status().message().find("ID space"), std::string::npos);
  EXPECT_EQ(nic_->device().live_mappings(), 10u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  // Give one back: its id is reused.
  ASSERT_TRUE(pool->Return(pages[3].handle).ok());
  ASSERT_TRUE(pool->Allocate().ok());
  EXPECT_EQ(pool->info().index.entries, 10u);
}

TEST_F(PagePoolTest, HighOrderIndexExhaustion) {
  PagePoolParams params;
  params.order = 1;
  params.dma_index_limit = 2;
  auto pool = MakePool(params);
  const uint64_t free0 = memory_->frames_free();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(2, &pages).ok());
  absl::StatusOr<PoolPage> more = pool->Allocate();
  EXPECT_EQ(more.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_EQ(pool->info().index_exhausted, 1u);
  EXPECT_EQ(pool->stats().alloc_slow_high_order, 2u);
  EXPECT_EQ(memory_->frames_free(), free0 - 4);
  EXPECT_EQ(nic_->device().live_mappings(), 2u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(PagePoolTest, OutOfMemoryIsResourceExhaustedAndBulkIsAllOrNothing) {
  SetUpNic(4 * kMiB);  // 1023 usable frames
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  absl::Status s = pool->AllocateBulk(2000, &pages);
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_NE(s.message().find("memory"), std::string::npos);
  EXPECT_TRUE(pages.empty());
  ASSERT_TRUE(pool->AllocateBulk(1000, &pages).ok());
  EXPECT_EQ(pages.size(), 1000u);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(PagePoolTest, CreateValidatesParams) {
  PagePoolParams params;
  params.order = 11;
  EXPECT_EQ(nic_->CreatePool(params).status().code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.flags = kPpFlagDmaSyncDev;
  EXPECT_EQ(nic_->CreatePool(params).status().code(), absl::StatusCode::kInvalidArgument);
  params = {};
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
  params.offset = 4000;
  params.max_len = 200;
  EXPECT_EQ(nic_->CreatePool(params).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(PagePool::Create(memory_, nullptr, PagePoolParams{}).status().code(),
            absl::StatusCode::kInvalidArgument);
  params = {};
  params.pool_size = 100000;
  auto pool = MakePool(params);
  EXPECT_EQ(pool->info().ring_size, kPpMaxRingSize);
}

TEST_F(PagePoolTest, ForEachInflightListsTrackedPages) {
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(3, &pages).ok());
  uint64_t n = 0;
  uint32_t last = 0;
  pool->ForEachInflight([&](uint32_t id, PageHandle, dma::DmaAddr dma) {
    EXPECT_GT(id, last);
    EXPECT_NE(dma, 0u);
    last = id;
    ++n;
    return true;
  });
  EXPECT_EQ(n, 64u);  // the 61 in the cache are mapped and tracked too
  bool found = false;
  pool->ForEachInflight([&](uint32_t, PageHandle h, dma::DmaAddr dma) {
    if (h == pages[0].handle) found = dma == pages[0].dma_addr;
    return true;
  });
  EXPECT_TRUE(found);
}

TEST_F(PagePoolTest, ForEachInflightFromWalksInPiecesAndPoolsWithoutIndexListNothing) {
  auto pool = MakePool();
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(200, &pages).ok());
  std::vector<uint32_t> whole;
  pool->ForEachInflight([&](uint32_t id, PageHandle, dma::DmaAddr) {
    whole.push_back(id);
    return true;
  });
  std::vector<uint32_t> pieces;
  uint32_t next = 1;
  do {
    size_t n = 0;
    next = pool->ForEachInflightFrom(next, 50, [&](uint32_t id, PageHandle, dma::DmaAddr dma) {
      EXPECT_NE(dma, 0u);
      pieces.push_back(id);
      ++n;
      return true;
    });
    EXPECT_LE(n, 50u);
  } while (next != 0);
  EXPECT_EQ(pieces, whole);
  EXPECT_GE(pieces.size(), 200u);

  for (DestroyStrategy s : {DestroyStrategy::kScan, DestroyStrategy::kNone}) {
    PagePoolParams params;
    params.strategy = s;
    auto untracked = MakePool(params);
    std::vector<PoolPage> held;
    ASSERT_TRUE(untracked->AllocateBulk(10, &held).ok());
    size_t calls = 0;
    EXPECT_EQ(untracked->ForEachInflightFrom(1, 0,
                                             [&](uint32_t, PageHandle, dma::DmaAddr) {
                                               ++calls;
                                               return true;
                                             }),
              0u);
    EXPECT_EQ(calls, 0u) << DestroyStrategyName(s);
    for (const PoolPage& p : held) ASSERT_TRUE(untracked->Return(p.handle).ok());
  }
  for (const PoolPage& p : pages) ASSERT_TRUE(pool->Return(p.handle).ok());
}

// A device whose DMA mask leaves 255 pages of IOVA (pfns 1..255 below 2^20): the pool maps exactly
// those, then Allocate answers RESOURCE_EXHAUSTED naming the IOVA space and the mask, hands out
// nothing and keeps no frame; pages given back make room again.
TEST_F(PagePoolTest, IovaSpaceBelowTheDmaMaskRunsOutThenRecovers) {
  dma::DeviceConfig dc;
  dc.name = "dev20";
  dc.dma_mask_bits = 20;
  absl::StatusOr<std::unique_ptr<dma::Device>> created = dma::Device::Create(dc);
  ASSERT_TRUE(created.ok()) << created.status();
  std::shared_ptr<dma::Device> dev = std::move(*created);
  const uint64_t frames_free = memory_->frames_free();
  absl::StatusOr<std::shared_ptr<PagePool>> made = PagePool::Create(memory_, dev, {});
  ASSERT_TRUE(made.ok()) << made.status();
  std::shared_ptr<PagePool> pool = *made;
  std::vector<PoolPage> held;
  absl::Status refused;
  while (refused.ok()) {
    absl::StatusOr<PoolPage> p = pool->Allocate();
    if (!p.ok()) {
      refused = p.status();
      break;
    }
    ASSERT_LT(p->dma_addr, uint64_t{1} << 20);
    held.push_back(*p);
  }
  EXPECT_EQ(refused.code(), absl::StatusCode::kResourceExhausted) << refused;
  EXPECT_NE(
      refused.message().find("IOVA space exhausted below the 20-bit DMA mask of device dev20"),
      std::string::npos)
      << refused;
  EXPECT_EQ(held.size(), 255u);
  EXPECT_EQ(dev->live_mappings(), 255u);
  EXPECT_EQ(memory_->frames_free(), frames_free - 255);  // the frames that could not be mapped
  std::vector<PoolPage> more;
  EXPECT_EQ(pool->AllocateBulk(5, &more).code(), absl::StatusCode::kResourceExhausted);
  EXPECT_TRUE(more.empty());
  EXPECT_EQ(memory_->frames_free(), frames_free - 255);

  for (size_t i = 0; i < 10; ++i) ASSERT_TRUE(*pool->Return(held[i].handle));
  held.erase(held.begin(), held.begin() + 10);
  ASSERT_TRUE(pool->AllocateBulk(10, &held).ok());
  EXPECT_EQ(pool->Allocate().status().code(), absl::StatusCode::kResourceExhausted);
  for (const PoolPage& p : held) ASSERT_TRUE(pool->Return(p.handle).ok());
  ASSERT_TRUE(pool->Destroy().ok());
  EXPECT_EQ(dev->live_mappings(), 0u);
  EXPECT_EQ(dev->violations().Total(), 0u);
  EXPECT_EQ(memory_->frames_free(), frames_free);
}

TEST_F(PagePoolTest, DestroyedPoolRefusesAllocationAndReleasesRecycles) {
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
  ASSERT_TRUE(d.ok());
  EXPECT_EQ(d->inflight_at_destroy, 1);
  EXPECT_EQ(d->pages_unmapped, 1u);
  EXPECT_FALSE(d->released);
  EXPECT_EQ(nic_->DestroyPool(pool->id()).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nic_->DestroyPool(999999).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(pool->Allocate().status().code(), absl::StatusCode::kFailedPrecondition);
  PagePoolInfo info = pool->info();
  EXPECT_TRUE(info.destroyed);
  EXPECT_EQ(info.detach_time_ns, clock_.NowNanos());
  EXPECT_GT(info.detach_time, 0);
  EXPECT_EQ(info.unmapped_at_destroy, 1u);
  EXPECT_EQ(nic_->FindPool(pool->id()), pool);
  const uint64_t maps = nic_->device().map_calls(), unmaps = nic_->device().unmap_calls();
  absl::StatusOr<RecycleResult> r = pool->Recycle(p->handle, true);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(*r, RecycleResult::kReleased);
  EXPECT_EQ(pool->stats().recycle_cached, 0u);
  EXPECT_EQ(nic_->device().map_calls(), maps);
  EXPECT_EQ(nic_->device().unmap_calls(), unmaps);
  EXPECT_TRUE(pool->info().released);
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_EQ(nic_->FindPool(pool->id()), nullptr);
  EXPECT_EQ(memory_->frames_free(), memory_->frames() - 1);
}

TEST_F(PagePoolTest, ReleaseRetryWarnsEverySixtySeconds) {
  // A pool not linked to a netdev: the only kind page_pool_release_retry warns about.
  SetUpNic(64 * kMiB, 1, dma::IommuMode::kStrict, /*ifindex=*/0);
  PagePoolParams params;
  params.strategy = DestroyStrategy::kNone;
  auto pool = MakePool(params);
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(2, &pages).ok());
  ASSERT_TRUE(nic_->DestroyPool(pool->id()).ok());
  for (int sec = 1; sec <= 130; ++sec) {
    clock_.Advance(kDeferTimeNs);
    EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 1u);
  }
  ASSERT_EQ(warnings_.size(), 2u);
  EXPECT_NE(warnings_[0].find(
                absl::StrCat("stalled pool shutdown: id ", pool->id(), ", 2 inflight 60 sec")),
            std::string::npos)
      << warnings_[0];
  EXPECT_NE(warnings_[1].find("inflight 120 sec"), std::string::npos) << warnings_[1];
  for (const PoolPage& p : pages) ASSERT_TRUE(pool->Return(p.handle).ok());
  EXPECT_FALSE(pool->ReleaseRetry(clock_.NowNanos()));
  EXPECT_EQ(nic_->ReleaseRetry(clock_.NowNanos()), 0u);
  EXPECT_TRUE(nic_->Pools().empty());
  EXPECT_EQ(nic_->device().violations().Total(), 0u);  // device still bound: no violation
}

TEST_F(PagePoolTest, ReleaseRetryNeverWarnsForAPoolLinkedToANetdev) {
  // page_pool_release_retry: "Periodic warning for page pools the user can't see" (netdev NULL or
  // NET_PTR_POISON); a pool of a netdev is listed over netlink instead.
  PagePoolParams params;
  params.strategy = DestroyStrategy::kNone;
  auto pool = MakePool(params);
  ASSERT_EQ(pool->params().ifindex, 3u);
  std::vector<PoolPage> pages;
  ASSERT_TRUE(pool->AllocateBulk(2, &pages).ok());
  ASSERT_TRUE(nic_->DestroyPool(pool->id()).ok());
  for (int sec = 1; sec <= 130; ++sec) {
    clock_.Advance(kDeferTimeNs);
    EXPECT_TRUE(pool->ReleaseRetry(clock_.NowNanos()));
  }
  EXPECT_TRUE(warnings_.empty()) << warnings_[0];
  for (const PoolPage& p : pages) ASSERT_TRUE(pool->Return(p.handle).ok());
  EXPECT_FALSE(pool->ReleaseRetry(clock_.NowNanos()));
}

TEST_F(PagePoolTest, CreateRefusesWhatPagePoolInitRefuses) {
  PagePoolParams params;
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;  // DMA_SYNC_DEV without max_len
  EXPECT_EQ(nic_->CreatePool(params).status().code(), absl::StatusCode::kInvalidArgument);
  params.max_len = 1500;
  EXPECT_TRUE(nic_->CreatePool(params).ok());
  params = {};
  params.dma_dir = dma::DmaDirection::kToDevice;  // DMA_MAP: FROM_DEVICE or BIDIRECTIONAL only
  EXPECT_EQ(nic_->CreatePool(params).status().code(), absl::StatusCode::kInvalidArgument);
  params.dma_dir = dma::DmaDirection::kBidirectional;
  EXPECT_TRUE(nic_->CreatePool(params).ok());
  params = {};
  params.flags = 0;  // no DMA_MAP: the direction is not used
  params.dma_dir = dma::DmaDirection::kToDevice;
  EXPECT_TRUE(nic_->CreatePool(params).ok());
}

TEST_F(PagePoolTest, PutPageSyncsTheSmallerOfDmaSyncSizeAndMaxLen) {
  PagePoolParams params;
  params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
  params.max_len = 1500;
  auto pool = MakePool(params);
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  const uint64_t at_alloc = pool->info().dma_synced_bytes;
  EXPECT_EQ(at_alloc, 64u * 1500);  // page_pool_dma_map syncs max_len of every new page
  ASSERT_TRUE(pool->Recycle(p->handle, true, /*dma_sync_size=*/100).ok());
  EXPECT_EQ(pool->info().dma_synced_bytes, at_alloc + 100);
  p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(pool->Recycle(p->handle, false, /*dma_sync_size=*/9000).ok());
  EXPECT_EQ(pool->info().dma_synced_bytes, at_alloc + 100 + 1500);
  p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(pool->Recycle(p->handle, true).ok());  // page_pool_put_full_page: max_len
  EXPECT_EQ(pool->info().dma_synced_bytes, at_alloc + 100 + 1500 + 1500);
  EXPECT_EQ(nic_->device().sync_calls(), 64u + 3);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

TEST_F(PagePoolTest, CoherentDeviceNeverSyncsNorWaitsToStopSyncs) {
  for (const bool need_sync : {true, false}) {
    SCOPED_TRACE(need_sync ? "non-coherent" : "coherent");
    SetUpNic();
    PagePoolParams params;
    params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
    params.max_len = 1500;
    params.dma_need_sync = need_sync;
    auto pool = MakePool(params);
    std::vector<PoolPage> pages;
    ASSERT_TRUE(pool->AllocateBulk(2, &pages).ok());
    ASSERT_TRUE(pool->Recycle(pages[0].handle, true).ok());
    EXPECT_EQ(nic_->device().sync_calls(), need_sync ? 65u : 0u);
    EXPECT_EQ(pool->info().dma_synced_bytes, need_sync ? 65u * 1500 : 0u);
    // page_pool_scrub: synchronize_net() only if dma_dev_need_sync(); the other grace period is
    // this model's wait for returns still inside their unmap.
    absl::StatusOr<DestroyResult> d = nic_->DestroyPool(pool->id());
    ASSERT_TRUE(d.ok());
    EXPECT_EQ(d->grace_periods, need_sync ? 2u : 1u);
    ASSERT_TRUE(pool->Return(pages[1].handle).ok());
    EXPECT_EQ(nic_->device().violations().Total(), 0u);
  }
}

TEST_F(PagePoolTest, SetNidFlushesTheAllocCacheWhenTheNodeChanges) {
  SetUpNic(8 * kMiB, /*numa_nodes=*/2);
  auto pool = MakePool();
  absl::StatusOr<PoolPage> p = pool->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_EQ(pool->info().alloc_cache_count, 63u);
  const uint64_t free_before = memory_->frames_free();
  const uint64_t unmaps = nic_->device().unmap_calls();
  pool->SetNid(0);  // same node: nothing happens
  EXPECT_EQ(pool->info().alloc_cache_count, 63u);
  pool->SetNid(1);  // page_pool_update_nid: the cache's pages are released
  EXPECT_EQ(pool->info().alloc_cache_count, 0u);
  EXPECT_EQ(memory_->frames_free(), free_before + 63);
  EXPECT_EQ(nic_->device().unmap_calls(), unmaps + 63);
  EXPECT_EQ(pool->inflight(), 1);
  ASSERT_TRUE(pool->Return(p->handle).ok());
}

TEST_F(PagePoolTest, UnbindDestroysPoolsAndRefusesNewOnes) {
  auto a = MakePool();
  auto b = MakePool();
  absl::StatusOr<PoolPage> p = a->Allocate();
  ASSERT_TRUE(p.ok());
  ASSERT_TRUE(b->Allocate().ok());
  ASSERT_TRUE(b->Recycle(b->Allocate()->handle, true).ok());
  absl::StatusOr<UnbindResult> u = nic_->Unbind();
  ASSERT_TRUE(u.ok()) << u.status();
  EXPECT_EQ(u->pools_destroyed, 2u);
  EXPECT_EQ(u->inflight_at_destroy, 2);
  EXPECT_EQ(u->pages_unmapped, 2u);
  EXPECT_FALSE(nic_->bound());
  EXPECT_EQ(nic_->Unbind().status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nic_->CreatePool({}).status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
  EXPECT_EQ(nic_->device().live_mappings(), 0u);
  absl::StatusOr<bool> r = a->Return(p->handle);
  ASSERT_TRUE(r.ok());
  EXPECT_FALSE(*r);  // already unmapped by the destroy path
  EXPECT_EQ(nic_->device().violations().Total(), 0u);
}

}  // namespace
}  // namespace pagepool::pool
