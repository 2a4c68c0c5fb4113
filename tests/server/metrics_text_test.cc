// File: tests/server/metrics_text_test.cc
//
// The Prometheus text exposition (0.0.4) pagepoold serves: MetricsText's HELP/TYPE lines, samples
// with and without labels, label escaping, number formats; and the families Runtime and RpcStats
// append, each with its HELP and TYPE line.
#include "server/metrics_text.h"

#include <set>
#include <sstream>
#include <string>

#include "gmock/gmock.h"
#include "gtest/gtest.h"
#include "server/rpc_stats.h"
#include "server/runtime.h"
#include "tests/support/test_env.h"

namespace pagepool::server {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::HasSubstr;

TEST(MetricsTextTest, FamilyHeadAndSamples) {
  std::string out;
  MetricsText m(&out);
  m.Family("widgets", "gauge", "Widgets now.");
  m.Sample("widgets", {}, uint64_t{3});
  m.Sample("widgets", {{"kind", "a"}, {"zone", "b"}}, uint64_t{18446744073709551615u});
  m.Sample("widgets", {{"kind", "c"}}, 0.25);
  EXPECT_EQ(out,
            "# HELP pagepool_widgets Widgets now.\n"
            "# TYPE pagepool_widgets gauge\n"
            "pagepool_widgets 3\n"
            "pagepool_widgets{kind=\"a\",zone=\"b\"} 18446744073709551615\n"
            "pagepool_widgets{kind=\"c\"} 0.25\n");
}

TEST(MetricsTextTest, LabelValuesEscapeBackslashQuoteAndNewline) {
  std::string out;
  MetricsText m(&out);
  m.Sample("x", {{"name", "a\\b\"c\nd"}}, uint64_t{1});
  EXPECT_EQ(out, "pagepool_x{name=\"a\\\\b\\\"c\\nd\"} 1\n");
}

// Every family named in a "# TYPE" line has a "# HELP" line just before it, and every sample line
// belongs to a family declared above it.
void ExpectWellFormed(const std::string& text, std::set<std::string>* families) {
  std::istringstream in(text);
  std::string line, last_help;
  while (std::getline(in, line)) {
    if (line.rfind("# HELP ", 0) == 0) {
      last_help = line.substr(7, line.find(' ', 7) - 7);
    } else if (line.rfind("# TYPE ", 0) == 0) {
      std::string name = line.substr(7, line.find(' ', 7) - 7);
      EXPECT_EQ(name, last_help) << line;
      std::string type = line.substr(line.rfind(' ') + 1);
      EXPECT_TRUE(type == "gauge" || type == "counter") << line;
      families->insert(name);
    } else {
      std::string name = line.substr(0, line.find_first_of("{ "));
      EXPECT_TRUE(families->count(name)) << "sample before its family: " << line;
    }
  }
}

TEST(MetricsTextTest, RuntimeAndRpcFamiliesArePresentAndWellFormed) {
  auto rt = Runtime::Create(RuntimeOptions{uint64_t{32} << 20, 4, 4, 1000});
  ASSERT_TRUE(rt.ok()) << rt.status();
  v1::CreateDeviceRequest dreq;
  dreq.set_name("eth\"0");
  v1::Device dev;
  ASSERT_TRUE((*rt)->CreateDevice(dreq, &dev).ok());
  v1::CreatePoolRequest preq;
  preq.set_device_id(dev.id());
  v1::Pool pool;
  ASSERT_TRUE((*rt)->CreatePool(preq, &pool).ok());
  google::protobuf::RepeatedPtrField<v1::Page> pages;
  ASSERT_TRUE((*rt)->Allocate(pool.id(), 3, &pages).ok());
  RpcStats stats;
  stats.OnFinished(RpcMethod::kAllocate, absl::StatusCode::kOk);
  stats.OnFinished(RpcMethod::kGetPool, absl::StatusCode::kNotFound);
  stats.OnTrafficBatch(64, 1);

  std::string text;
  (*rt)->AppendMetrics(&text);
  stats.AppendMetrics(&text);
  std::set<std::string> families;
  ExpectWellFormed(text, &families);
  for (const char* f : {"memory_frames",
                        "memory_frames_free",
                        "devices",
                        "pools_created_total",
                        "pool_inflight",
                        "pool_inflight_mem_bytes",
                        "pool_dma_mapped",
                        "pool_detached",
                        "pool_alloc_fast_total",
                        "pool_alloc_slow_total",
                        "pool_alloc_slow_high_order_total",
                        "pool_alloc_empty_total",
                        "pool_alloc_refill_total",
                        "pool_alloc_waive_total",
                        "pool_recycle_cached_total",
                        "pool_recycle_cache_full_total",
                        "pool_recycle_ring_total",
                        "pool_recycle_ring_full_total",
                        "pool_recycle_released_refcnt_total",
                        "pool_index_bytes",
                        "pool_frag_pages",
                        "pool_frag_refs",
                        "pool_frag_put_refused_total",
                        "domain_table_pages",
                        "domain_table_bytes",
                        "domain_mapped_pages",
                        "domain_live_mappings",
                        "domain_tables_freed_total",
                        "domain_maps_total",
                        "domain_unmaps_total",
                        "domain_iotlb_flushes_total",
                        "domain_iotlb_invalidations_total",
                        "domain_iotlb_invalidated_pages_total",
                        "domain_iommu_pages",
                        "domain_iotlb_hits_total",
                        "domain_walk_cache_entries",
                        "domain_walk_cache_hits_total",
                        "domain_walk_cache_stale_walks_total",
                        "domain_walk_restarts_total",
                        "domain_failed_reserves_total",
                        "domain_death_races_lost_total",
                        "domain_released_tables_not_zero_total",
                        "domain_dirty_tracking",
                        "domain_violations_total",
                        "rpc_finished_total",
                        "traffic_batches_total",
                        "traffic_page_ops_total",
                        "traffic_errors_total"}) {
    EXPECT_TRUE(families.count(std::string("pagepool_") + f)) << f;
  }
  const std::string id = std::to_string(pool.id()), ifindex = std::to_string(dev.id());
  EXPECT_THAT(text, HasSubstr("# TYPE pagepool_pool_inflight gauge\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE pagepool_pool_alloc_slow_total counter\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_pool_alloc_slow_total{pool_id=\"" + id + "\",ifindex=\"" +
                              ifindex + "\",strategy=\"xarray\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("# TYPE pagepool_pool_frag_put_refused_total counter\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_pool_frag_pages{pool_id=\"" + id + "\",ifindex=\"" +
                              ifindex + "\",strategy=\"xarray\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_devices{state=\"bound\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_pools_created_total 1\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_domain_mapped_pages{device_id=\"" + ifindex +
                              "\",iommu_mode=\"IOMMU_MODE_STRICT\"} 64\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_domain_violations_total{device_id=\"" + ifindex +
                              "\",kind=\"double_unmap\"} 0\n"));
  // The invalidation and table figures are GetDomain's.
  v1::DomainInfo dom;
  ASSERT_TRUE((*rt)->GetDomain(dev.id(), &dom).ok());
  EXPECT_THAT(text, HasSubstr("pagepool_domain_iotlb_invalidations_total{device_id=\"" + ifindex +
                              "\",kind=\"leaf\"} " + std::to_string(dom.iotlb_inv_leaf()) + "\n"));
  EXPECT_THAT(text,
              HasSubstr("pagepool_domain_iotlb_invalidations_total{device_id=\"" + ifindex +
                        "\",kind=\"domain\"} " + std::to_string(dom.iotlb_inv_domain()) + "\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_domain_iommu_pages{device_id=\"" + ifindex +
                              "\",iommu_mode=\"IOMMU_MODE_STRICT\"} " +
                              std::to_string(dom.iommu_pages()) + "\n"));
  EXPECT_GT(dom.iommu_pages(), 0u);
  EXPECT_THAT(text, HasSubstr("pagepool_domain_dirty_tracking{device_id=\"" + ifindex +
                              "\",iommu_mode=\"IOMMU_MODE_STRICT\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_domain_walk_cache_stale_walks_total{device_id=\"" +
                              ifindex + "\",iommu_mode=\"IOMMU_MODE_STRICT\"} 0\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_rpc_finished_total{method=\"Allocate\",code=\"OK\"} 1\n"));
  EXPECT_THAT(text,
              HasSubstr("pagepool_rpc_finished_total{method=\"GetPool\",code=\"NOT_FOUND\"} 1\n"));
  EXPECT_THAT(text, HasSubstr("pagepool_traffic_page_ops_total 64\n"));
  (*rt)->Shutdown();
}

}  // namespace
}  // namespace pagepool::server
