// client/format: the text ppctl prints for each answer (devices, pools, pages, domains, ...), the
// JSON with the .proto's field names, and the FRAME:GEN handle syntax. No daemon.
#include "client/format.h"

#include <algorithm>

#include "gmock/gmock.h"
#include "gtest/gtest.h"

namespace pagepool::client {
namespace {

namespace v1 = ::pagepool::v1;
using ::testing::EndsWith;
using ::testing::HasSubstr;
using ::testing::Not;
using ::testing::StartsWith;

v1::Device Eth0() {
  v1::Device d;
  d.set_id(1);
  d.set_name("eth0");
  d.set_ifindex(1);
  d.set_state(v1::DEVICE_STATE_BOUND);
  d.set_iommu_mode(v1::IOMMU_MODE_STRICT);
  d.set_address_width(48);
  d.mutable_domain()->set_table_pages(1);
  return d;
}

v1::Pool Pool1() {
  v1::Pool p;
  p.set_id(1);
  p.set_device_id(1);
  p.set_ifindex(1);
  p.set_napi_id(3);
  p.set_strategy(v1::STRATEGY_XARRAY);
  p.set_inflight(64);
  p.set_inflight_mem(262144);
  p.set_dma_mapped(64);
  p.mutable_stats()->set_alloc_slow(1);
  p.mutable_stats()->set_recycle_ring(5);
  p.set_users(1);
  p.set_dma_synced_bytes(96000);
  return p;
}

void AddPage(v1::AllocateResponse* r, uint64_t frame, uint32_t gen, uint64_t dma_addr) {
  v1::Page* p = r->add_pages();
  p->mutable_handle()->set_frame(frame);
  p->mutable_handle()->set_generation(gen);
  p->set_dma_addr(dma_addr);
}

// Every fragment is in ToJson(message).
void ExpectJsonHas(const google::protobuf::Message& message,
                   std::initializer_list<const char*> fragments) {
  const std::string json = ToJson(message);
  for (const char* f : fragments) EXPECT_THAT(json, HasSubstr(f));
}

TEST(FormatTest, HandlesRoundTrip) {
  v1::PageHandle h;
  ASSERT_TRUE(ParseHandle("123:7", &h));
  EXPECT_EQ(h.frame(), 123u);
  EXPECT_EQ(h.generation(), 7u);
  EXPECT_EQ(FormatHandle(h), "123:7");
  EXPECT_FALSE(ParseHandle("123", &h));
  EXPECT_FALSE(ParseHandle("x:1", &h));
  EXPECT_FALSE(ParseHandle("1:-1", &h));
}

TEST(FormatTest, JsonKeepsProtoFieldNames) {
  v1::Pool p;
  p.set_napi_id(3);
  p.set_inflight_mem(4096);
  p.mutable_stats()->set_recycle_released_refcnt(1);
  std::string json = ToJson(p);
  EXPECT_THAT(json, HasSubstr("\"napi_id\": 3"));
  EXPECT_THAT(json, HasSubstr("\"inflight_mem\": \"4096\""));
  EXPECT_THAT(json, HasSubstr("\"recycle_released_refcnt\""));
  EXPECT_THAT(json, HasSubstr("\"detach_time\""));  // zero fields are printed too
}

TEST(FormatTest, EnumLabelDropsPrefixAndLowers) {
  EXPECT_EQ(EnumLabel("IOMMU_MODE_PASSTHROUGH", "IOMMU_MODE_"), "passthrough");
  EXPECT_EQ(EnumLabel("EVENT_TYPE_POOL_DETACH", "EVENT_TYPE_"), "pool_detach");
  EXPECT_EQ(EnumLabel("OTHER", "STRATEGY_"), "other");
}

TEST(FormatTest, DevicesText) {
  v1::CreateDeviceResponse created;
  *created.mutable_device() = Eth0();
  // The README's example line.
  EXPECT_EQ(FormatResponse(created),
            "device 1 \"eth0\" (ifindex 1): bound, iommu strict, 48-bit, pools [], mapped 0 "
            "pages, page tables 1, violations 0\n");
  // A device created with model_iotlb says so after its address width.
  v1::Device modelled = Eth0();
  modelled.mutable_domain()->set_model_iotlb(true);
  EXPECT_EQ(FormatDevice(modelled),
            "device 1 \"eth0\" (ifindex 1): bound, iommu strict, 48-bit, iotlb modelled, pools [], "
            "mapped 0 pages, page tables 1, violations 0\n");

  v1::ListDevicesResponse list;
  EXPECT_EQ(FormatResponse(list), "no devices\n");
  *list.add_devices() = Eth0();
  v1::Device& d2 = *list.add_devices();
  d2 = Eth0();
  d2.set_id(2);
  d2.set_name("eth1");
  d2.set_state(v1::DEVICE_STATE_UNBOUND);
  d2.add_pool_ids(4);
  d2.add_pool_ids(5);
  EXPECT_EQ(FormatResponse(list),
            FormatDevice(list.devices(0)) +
                "device 2 \"eth1\" (ifindex 1): unbound, iommu strict, 48-bit, pools [4 5], "
                "mapped 0 pages, page tables 1, violations 0\n");

  v1::GetDeviceResponse got;
  *got.mutable_device() = Eth0();
  EXPECT_EQ(FormatResponse(got), FormatDevice(Eth0()) + FormatDomain(Eth0().domain()));

  v1::UnbindDeviceResponse unbound;
  unbound.set_pools_destroyed(2);
  unbound.set_inflight_at_destroy(128);
  unbound.set_pages_unmapped(128);
  *unbound.mutable_device() = Eth0();
  EXPECT_EQ(
      FormatResponse(unbound),
      "unbound: 2 pools destroyed, 128 pages in flight, 128 unmapped\n" + FormatDevice(Eth0()));
}

TEST(FormatTest, DevicesJson) {
  v1::ListDevicesResponse list;
  *list.add_devices() = Eth0();
  list.mutable_devices(0)->add_pool_ids(4);
  ExpectJsonHas(list,
                {"\"devices\": [", "\"id\": \"1\"" /* uint64 as a string (proto3 JSON) */,
                 "\"name\": \"eth0\"", "\"iommu_mode\": \"IOMMU_MODE_STRICT\"",
                 "\"state\": \"DEVICE_STATE_BOUND\"", "\"pool_ids\": [", "\"address_width\": 48"});
}

TEST(FormatTest, PoolsText) {
  v1::GetPoolResponse got;
  *got.mutable_pool() = Pool1();
  EXPECT_EQ(FormatResponse(got),
            "pool 1 on device 1 (ifindex 1, napi 3): order 0, xarray, inflight 64 (262144 bytes), "
            "dma_mapped 64, detach_time 0\n"
            "  alloc:   fast 0, slow 1, slow_high_order 0, empty 0, refill 0, waive 0\n"
            "  recycle: cached 0, cache_full 0, ring 5, ring_full 0, released_refcnt 0\n"
            "  users 1, dma synced 96000 bytes\n");
  v1::CreatePoolResponse created;
  *created.mutable_pool() = Pool1();
  EXPECT_EQ(FormatResponse(created), FormatResponse(got));

  v1::ListPoolsResponse list;
  EXPECT_EQ(FormatResponse(list), "no pools\n");
  *list.add_pools() = Pool1();
  v1::Pool& gone = *list.add_pools();
  gone = Pool1();
  gone.set_id(2);
  gone.set_strategy(v1::STRATEGY_NONE);
  gone.set_destroyed(true);
  const std::string text = FormatResponse(list);
  EXPECT_THAT(text, StartsWith(FormatPool(Pool1())));
  EXPECT_THAT(text, HasSubstr("pool 2 on device 1 (ifindex 1, napi 3): order 0, none, destroyed, "
                              "inflight 64"));

  v1::DestroyPoolResponse destroyed;
  destroyed.set_pool_id(7);
  destroyed.set_strategy(v1::STRATEGY_SCAN);
  destroyed.set_inflight_at_destroy(64);
  destroyed.set_pages_unmapped(64);
  destroyed.set_duration_ns(1500000);
  EXPECT_EQ(FormatResponse(destroyed),
            "pool 7 destroyed (scan): 64 pages in flight, 64 unmapped, 1.500 ms\n");
}

TEST(FormatTest, PoolsJson) {
  v1::ListPoolsResponse list;
  *list.add_pools() = Pool1();
  ExpectJsonHas(list, {"\"pools\": [", "\"strategy\": \"STRATEGY_XARRAY\"", "\"inflight\": \"64\"",
                       "\"alloc_slow\": \"1\"", "\"destroyed\": false"});
}

TEST(FormatTest, PagesText) {
  v1::AllocateResponse allocated;
  EXPECT_EQ(FormatResponse(allocated), "");
  AddPage(&allocated, 64, 1, 0xfffffffc0000);
  AddPage(&allocated, 63, 1, 0xfffffffc1000);
  // The README's example.
  EXPECT_EQ(FormatResponse(allocated),
            "64:1 dma_addr 0xfffffffc0000\n63:1 dma_addr 0xfffffffc1000\n");

  v1::ListInflightResponse inflight;
  v1::InflightPage* p = inflight.add_pages();
  p->set_index_id(5);
  p->mutable_handle()->set_frame(64);
  p->mutable_handle()->set_generation(2);
  p->set_dma_addr(0x1000);
  EXPECT_EQ(FormatResponse(inflight), "id 5 64:2 dma_addr 0x1000\n1 pages tracked\n");
  EXPECT_EQ(FormatResponse(v1::ListInflightResponse()), "0 pages tracked\n");

  v1::RecycleResponse recycled;
  recycled.set_cached(3);
  recycled.set_ring(2);
  recycled.set_released(1);
  EXPECT_EQ(FormatResponse(recycled), "recycled: 3 cached, 2 ring, 1 released\n");
  v1::ReturnResponse returned;
  returned.set_returned(2);
  returned.set_unmapped(2);
  EXPECT_EQ(FormatResponse(returned), "returned: 2 pages, 2 unmapped by this call\n");
}

TEST(FormatTest, FragmentsText) {
  v1::FragHandle f;
  ASSERT_TRUE(ParseFrag("62:1@1536/1536", &f));
  EXPECT_EQ(f.page().frame(), 62u);
  EXPECT_EQ(f.page().generation(), 1u);
  EXPECT_EQ(f.offset(), 1536u);
  EXPECT_EQ(f.size(), 1536u);
  EXPECT_EQ(FormatFrag(f), "62:1@1536/1536");
  for (const char* bad : {"62:1", "62:1@1536", "62:1@x/64", "62:1@0/", "62@0/64", "62:1@0/64x"}) {
    EXPECT_FALSE(ParseFrag(bad, &f)) << bad;
  }

  v1::AllocateResponse allocated;
  v1::Page* page = allocated.add_pages();
  page->mutable_handle()->set_frame(62);
  page->mutable_handle()->set_generation(1);
  page->set_dma_addr(0xfffffffc2600);
  ASSERT_TRUE(ParseFrag("62:1@1536/1536", page->mutable_frag()));
  EXPECT_EQ(FormatResponse(allocated), "62:1@1536/1536 dma_addr 0xfffffffc2600\n");

  v1::ListInflightResponse inflight;
  v1::InflightPage* p = inflight.add_pages();
  p->set_index_id(3);
  p->mutable_handle()->set_frame(61);
  p->mutable_handle()->set_generation(1);
  p->set_dma_addr(0x3000);
  p->set_fragmented(true);
  p->set_pp_ref_count(32767);
  p->set_frag_refs(1);
  EXPECT_EQ(FormatResponse(inflight),
            "id 3 61:1 dma_addr 0x3000 fragmented, pp_ref_count 32767, frag_refs 1\n"
            "1 pages tracked\n");

  v1::RecycleResponse recycled;
  recycled.set_cached(1);
  recycled.set_frags(4);
  recycled.set_pages_from_frags(1);
  EXPECT_EQ(FormatResponse(recycled),
            "recycled: 1 cached, 0 ring, 0 released, 4 fragments (1 pages by their last "
            "fragment)\n");

  v1::Pool pool;
  pool.set_frag_pages(2);
  pool.set_frag_refs(3);
  pool.set_frag_put_refused(1);
  EXPECT_THAT(FormatPool(pool), HasSubstr("\n  frags:   pages 2, refs 3, put_refused 1\n"));
  EXPECT_THAT(FormatPool(v1::Pool()), Not(HasSubstr("frags:")));
}

TEST(FormatTest, PagesJson) {
  v1::AllocateResponse allocated;
  AddPage(&allocated, 64, 1, 0xfffffffc0000);
  ExpectJsonHas(allocated, {"\"pages\": [", "\"frame\": \"64\"", "\"generation\": 1",
                            "\"dma_addr\": \"281474976448512\""});
}

TEST(FormatTest, DomainsText) {
  v1::GetDomainResponse r;
  v1::DomainInfo& d = *r.mutable_domain();
  d.set_device_id(2);
  d.set_iommu_mode(v1::IOMMU_MODE_LAZY);
  d.set_address_width(48);
  d.set_levels(4);
  d.set_free_empty_tables(true);
  d.set_table_pages(3);
  d.set_table_bytes(12288);
  d.set_mapped_pages(64);
  d.mutable_violations()->set_total(3);
  d.mutable_violations()->set_double_unmap(1);
  d.mutable_violations()->set_call_after_unbind(2);
  const std::string text = FormatResponse(r);
  EXPECT_EQ(text, FormatDomain(d));
  EXPECT_THAT(text, StartsWith("domain of device 2: lazy, 48-bit (4 levels), free_empty_tables on\n"
                               "  page tables: 3 pages (12288 bytes), peak 0,"));
  EXPECT_THAT(text, HasSubstr("  mappings:    64 pages mapped, 0 live (checker),"));
  EXPECT_THAT(text, HasSubstr("  violations:  3 (double_unmap 1, unknown_unmap 0, size_mismatch 0, "
                              "direction_mismatch 0, live_at_unbind 0, call_after_unbind 2, "
                              "sync_unknown 0)\n"));
  EXPECT_THAT(text, HasSubstr("  invalidate:  leaf 0, nonleaf 0, domain-wide 0 (0 pages); "
                              "dirty tracking off\n"));
  EXPECT_EQ(std::count(text.begin(), text.end(), '\n'), 7);  // no iotlb model line

  d.set_model_iotlb(true);
  d.set_iotlb_hits(16);
  d.set_walk_cache_entries(3);
  d.set_walk_cache_hits(5);
  d.set_iotlb_inv_nonleaf(2);
  d.set_iommu_pages(4);
  d.set_dirty_tracking(true);
  const std::string modelled = FormatDomain(d);
  EXPECT_THAT(modelled, HasSubstr("  invalidate:  leaf 0, nonleaf 2, domain-wide 0 (0 pages); "
                                  "dirty tracking on\n"
                                  "  tables:      iommu pages 4, cached 0;"));
  EXPECT_THAT(modelled,
              EndsWith("  iotlb model: 16 hits; walk cache 3 entries, 5 hits, 0 stale walks\n"));
}

TEST(FormatTest, DomainsJson) {
  v1::GetDomainResponse r;
  r.mutable_domain()->set_table_bytes(12288);
  r.mutable_domain()->mutable_violations()->set_live_at_unbind(4);
  ExpectJsonHas(r, {"\"domain\": {", "\"table_bytes\": \"12288\"", "\"free_empty_tables\": false",
                    "\"live_at_unbind\": \"4\""});
}

TEST(FormatTest, PageTableAndEvents) {
  v1::DumpPageTableResponse dump;
  v1::PageTableEntry* e = dump.add_entries();
  e->set_iova(0xfffffffc0000);
  e->set_phys(0x40000);
  e->set_size(4096);
  e->set_prot(3);
  e->set_dirty(true);
  EXPECT_EQ(FormatResponse(dump),
            "iova 0xfffffffc0000 -> phys 0x000000040000 size 4096 prot 3 dirty\n1 entries\n");

  v1::Event ev;
  ev.set_seq(9);
  ev.set_type(v1::EVENT_TYPE_POOL_DETACH);
  ev.mutable_pool()->set_id(2);
  ev.mutable_pool()->set_device_id(1);
  ev.mutable_pool()->set_inflight(7);
  EXPECT_EQ(FormatEvent(ev), "#9 pool_detach pool 2 (device 1) inflight 7 detach_time 0\n");
}

}  // namespace
}  // namespace pagepool::client
