// File: tests/pool/page_pool_coherence_test.cc
//
// dma_dev_need_sync() per device, as the page pools of a device see it: the device's DmaCoherence
// (dma::DeviceConfig::coherence, set through NicConfig) decides whether the pools created on it
// sync for the device and whether their XARRAY destroy waits a grace period (synchronize_net) to
// stop those syncs. Coherent: no sync is made and the destroy waits only for returns still in
// their unmap; non-coherent and swiotlb: both. (The Device's own side, syncs skipped and not
// counted, is tests/dma/device_test.cc's.)
#include <memory>
#include <string>
#include <vector>

#include "dma/types.h"
#include "gtest/gtest.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "tests/support/pool_fixtures.h"

namespace pagepool::pool {
namespace {

using dma::DmaCoherence;
using ::pagepool::testing::kMiB;

constexpr DmaCoherence kAll[] = {DmaCoherence::kCoherent, DmaCoherence::kNonCoherent,
                                 DmaCoherence::kSwiotlb};

// A pool with PP_FLAG_DMA_SYNC_DEV on each kind of device: page_pool_dma_map syncs max_len of each
// new page and page_pool_put_page syncs on recycle only where the device needs it, and
// page_pool_scrub's synchronize_net() happens only there.
TEST(PagePoolCoherenceTest, PoolsOfADeviceSyncAndWaitToStopSyncsOnlyIfTheDeviceNeedsIt) {
  for (DmaCoherence c : kAll) {
    SCOPED_TRACE(std::string(dma::DmaCoherenceName(c)));
    const bool need = c != DmaCoherence::kCoherent;
    absl::StatusOr<std::shared_ptr<PhysMemory>> memory = testing::MakeSharedMemory(16 * kMiB);
    ASSERT_TRUE(memory.ok());
    NicConfig config = testing::MakeNicConfig("eth0", dma::IommuMode::kStrict);
    config.device.coherence = c;
    config.ifindex = 2;
    absl::StatusOr<std::unique_ptr<Nic>> nic = Nic::Create(*memory, config);
    ASSERT_TRUE(nic.ok()) << nic.status();
    PagePoolParams params;
    params.flags = kPpFlagDmaMap | kPpFlagDmaSyncDev;
    params.max_len = 1500;
    absl::StatusOr<std::shared_ptr<NicPool>> p = (*nic)->CreateNicPool(params);
    ASSERT_TRUE(p.ok()) << p.status();
    PagePool& pool = (*p)->pool();
    std::vector<PoolPage> pages;
    {
      base::MutexLock napi(&(*p)->napi_mu());
      ASSERT_TRUE(pool.AllocateBulk(3, &pages).ok());
      ASSERT_TRUE(pool.Recycle(pages[0].handle, /*napi_local=*/true).ok());
    }
    ASSERT_TRUE(pool.Recycle(pages[1].handle, /*napi_local=*/false, /*dma_sync_size=*/100).ok());
    const dma::Device& dev = (*nic)->device();
    // 64 new pages synced at max_len, then one full-page put (max_len) and one of 100 bytes.
    EXPECT_EQ(dev.sync_calls(), need ? 66u : 0u);
    EXPECT_EQ(pool.info().dma_synced_bytes, need ? 65u * 1500 + 100 : 0u);

    absl::StatusOr<PoolDestroyed> d = (*nic)->DestroyPool(**p);
    ASSERT_TRUE(d.ok()) << d.status();
    EXPECT_TRUE(d->destroyed());
    EXPECT_EQ(d->result.inflight_at_destroy, 1);
    EXPECT_EQ(d->result.pages_unmapped, 2u);  // the held page and the one parked in the ring
    // synchronize_net() to stop the syncs, then the wait for returns still inside their unmap.
    EXPECT_EQ(d->result.grace_periods, need ? 2u : 1u);
    ASSERT_TRUE(pool.Return(pages[2].handle).ok());
    EXPECT_EQ(dev.sync_calls(), need ? 66u : 0u);  // the destroy synced nothing
    EXPECT_EQ(dev.violations().Total(), 0u) << testing::ViolationSummary(dev.violations());
    EXPECT_EQ(dev.live_mappings(), 0u);
  }
}

}  // namespace
}  // namespace pagepool::pool
