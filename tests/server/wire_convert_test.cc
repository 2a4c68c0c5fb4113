// Tests of server/wire_convert: GetDomain's DomainInfo carries the domain's invalidation,
// walk-cache and table-protocol figures as the domain counts them, and the walk-cache entries go
// to the wire as the domain lists them. A dma::Device is driven directly here, since no RPC makes
// a device walk its page table (the walk caches fill only on device walks).
#include "server/wire_convert.h"

#include <cstdint>
#include <memory>
#include <vector>

#include "dma/device.h"
#include "dma/iommu_domain.h"
#include "gtest/gtest.h"
#include "pagepool/v1/pagepool.pb.h"

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;

constexpr uint64_t kPhys = uint64_t{1} << 30;

TEST(WireConvertTest, DomainInfoCarriesWalkCacheAndInvalidationFigures) {
  dma::DeviceConfig dc;
  dc.name = "wc0";
  dc.model_iotlb = true;
  auto dev = dma::Device::Create(dc);
  ASSERT_TRUE(dev.ok()) << dev.status();
  std::vector<dma::DmaAddr> addrs;
  for (uint64_t i = 0; i < 8; ++i) {
    auto a = (*dev)->MapPage(kPhys + i * dma::kPageSize, dma::kPageSize,
                             dma::DmaDirection::kBidirectional);
    ASSERT_TRUE(a.ok()) << a.status();
    addrs.push_back(*a);
  }
  dma::IommuDomain* dom = (*dev)->domain();
  ASSERT_NE(dom, nullptr);
  // Device walks: the first fills the walk caches, the next pages of the same 2 MiB start from
  // them.
  for (dma::DmaAddr a : addrs) ASSERT_TRUE(dom->Translate(a, /*write=*/true).ok());
  for (dma::DmaAddr a : addrs) ASSERT_TRUE(dom->Translate(a, /*write=*/false).ok());
  // Unmap half: leaf invalidations.
  for (size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(
        (*dev)->UnmapPage(addrs[i], dma::kPageSize, dma::DmaDirection::kBidirectional).ok());
  }

  DeviceSpec spec;
  spec.id = 3;
  spec.model_iotlb = true;
  v1::DomainInfo info;
  FillDomain(spec, **dev, &info);
  const dma::DomainStats s = (*dev)->domain_stats();
  EXPECT_TRUE(info.model_iotlb());
  EXPECT_GT(s.walk_cache_entries, 0u);
  EXPECT_GT(s.walk_cache_hits, 0u);
  EXPECT_GT(s.iotlb_inv_leaf, 0u);
  EXPECT_EQ(info.walk_cache_entries(), s.walk_cache_entries);
  EXPECT_EQ(info.walk_cache_hits(), s.walk_cache_hits);
  EXPECT_EQ(info.iotlb_hits(), s.iotlb_hits);
  EXPECT_EQ(info.iotlb_inv_leaf(), s.iotlb_inv_leaf);
  EXPECT_EQ(info.iotlb_inv_nonleaf(), s.iotlb_inv_nonleaf);
  EXPECT_EQ(info.iotlb_inv_domain(), s.iotlb_inv_domain);
  EXPECT_EQ(info.iotlb_inv_pages(), s.iotlb_inv_pages);
  EXPECT_EQ(info.walk_restarts(), s.walk_restarts);
  EXPECT_EQ(info.failed_reserves(), s.failed_reserves);
  EXPECT_EQ(info.death_races_lost(), s.death_races_lost);
  EXPECT_EQ(info.iommu_pages(), s.iommu_pages);
  EXPECT_GE(info.iommu_pages(), info.table_pages());
  EXPECT_TRUE(info.dirty_tracking());
  EXPECT_EQ(info.walk_cache_stale_walks(), 0u);
  EXPECT_EQ(info.released_tables_not_zero(), 0u);

  // The walk-cache entries on the wire are the domain's, one for one.
  std::vector<dma::WalkCacheEntry> listed;
  dom->ForEachWalkCacheEntry([&](const dma::WalkCacheEntry& e) { listed.push_back(e); });
  ASSERT_EQ(listed.size(), s.walk_cache_entries);
  for (const dma::WalkCacheEntry& e : listed) {
    v1::WalkCacheEntry w;
    FillWalkCacheEntry(e, &w);
    EXPECT_EQ(w.level(), e.level);
    EXPECT_EQ(w.iova(), e.iova);
    EXPECT_EQ(w.span(), e.span);
    EXPECT_FALSE(w.stale());
    EXPECT_EQ(w.iova() % w.span(), 0u);
  }
  for (size_t i = 4; i < addrs.size(); ++i) {
    ASSERT_TRUE(
        (*dev)->UnmapPage(addrs[i], dma::kPageSize, dma::DmaDirection::kBidirectional).ok());
  }
}

TEST(WireConvertTest, DeviceWithoutTheModelShowsNoCacheFigures) {
  dma::DeviceConfig dc;
  dc.name = "plain0";
  auto dev = dma::Device::Create(dc);
  ASSERT_TRUE(dev.ok()) << dev.status();
  auto a = (*dev)->MapPage(kPhys, dma::kPageSize, dma::DmaDirection::kToDevice);
  ASSERT_TRUE(a.ok());
  ASSERT_TRUE((*dev)->domain()->Translate(*a, false).ok());
  DeviceSpec spec;
  v1::DomainInfo info;
  FillDomain(spec, **dev, &info);
  EXPECT_FALSE(info.model_iotlb());
  EXPECT_EQ(info.walk_cache_entries(), 0u);
  EXPECT_EQ(info.walk_cache_hits(), 0u);
  EXPECT_EQ(info.iotlb_hits(), 0u);
  ASSERT_TRUE((*dev)->UnmapPage(*a, dma::kPageSize, dma::DmaDirection::kToDevice).ok());
}

}  // namespace
}  // namespace pagepool::server
