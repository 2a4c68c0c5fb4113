// File: server/runtime_metrics.cc
//
// Runtime::AppendMetrics: the Prometheus families of simulated memory and devices, of each pool
// (labels pool_id, ifindex, strategy) and of each device's IOMMU domain (labels device_id,
// iommu_mode). One function per group; each reads a snapshot taken under the runtime's mutex.
#include <string>
#include <utility>
#include <vector>

#include "server/metrics_text.h"
#include "server/runtime.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;
namespace {

void AppendMemoryAndDeviceMetrics(MetricsText& m, const pool::PhysMemory& mem,
                                  const std::vector<const internal::DeviceEntry*>& devs,
                                  uint64_t pools_created, uint64_t devices_deleted,
                                  uint64_t deleted_violations) {
  m.Family("memory_frames", "gauge", "Frames (4 KiB) of simulated physical memory.");
  m.Sample("memory_frames", {}, mem.frames());
  m.Family("memory_frames_free", "gauge", "Free frames of simulated physical memory.");
  m.Sample("memory_frames_free", {}, mem.frames_free());
  m.Family("devices", "gauge", "Devices by state.");
  uint64_t bound = 0;
  for (const internal::DeviceEntry* d : devs) bound += d->nic->bound() ? 1 : 0;
  m.Sample("devices", {{"state", "bound"}}, bound);
  m.Sample("devices", {{"state", "unbound"}}, uint64_t(devs.size() - bound));
  m.Family("devices_deleted_total", "counter", "Unbound devices deleted (DeleteDevice).");
  m.Sample("devices_deleted_total", {}, devices_deleted);
  m.Family("deleted_device_violations_total", "counter",
           "Mapping-checker violations of deleted devices (all kinds), counted before each went.");
  m.Sample("deleted_device_violations_total", {}, deleted_violations);
  m.Family("pools_created_total", "counter", "Pools ever created.");
  m.Sample("pools_created_total", {}, pools_created);
}

// One row per pool: its labels and figures.
struct PoolRow {
  std::string id, ifindex, strategy;
  pool::PagePoolInfo info;
};

// A per-pool family: HELP, TYPE and one sample per pool of get(info).
template <typename Get>
void PoolFamily(MetricsText& m, const std::vector<PoolRow>& rows, const char* name,
                const char* type, const char* help, Get get) {
  m.Family(name, type, help);
  for (const PoolRow& r : rows) {
    m.Sample(name, {{"pool_id", r.id}, {"ifindex", r.ifindex}, {"strategy", r.strategy}},
             uint64_t(get(r.info)));
  }
}

void AppendPoolMetrics(MetricsText& m, const std::vector<PoolRow>& rows) {
  using I = pool::PagePoolInfo;
  PoolFamily(m, rows, "pool_inflight", "gauge",
             "Pages of the pool in flight (hold_cnt - release_cnt).",
             [](const I& i) { return i.inflight > 0 ? i.inflight : 0; });
  PoolFamily(m, rows, "pool_inflight_mem_bytes", "gauge", "Bytes of the pool's pages in flight.",
             [](const I& i) { return i.inflight_mem; });
  PoolFamily(m, rows, "pool_dma_mapped", "gauge", "Pages of the pool DMA-mapped now.",
             [](const I& i) { return i.dma_mapped; });
  PoolFamily(m, rows, "pool_detached", "gauge",
             "1 when the pool was destroyed with pages still in flight.",
             [](const I& i) { return i.destroyed ? 1 : 0; });
  PoolFamily(
      m, rows, "pool_users", "gauge",
      "Users of the pool (user_cnt): the driver's while its queue runs, plus one per xdp_rxq "
      "registration.",
      [](const I& i) { return i.users; });
  PoolFamily(m, rows, "pool_dma_synced_bytes_total", "counter",
             "Bytes the pool synced for the device (0 on a device that needs no sync).",
             [](const I& i) { return i.dma_synced_bytes; });
  // The kernel's page_pool stats, as counters.
  using S = pool::PagePoolStats;
  const struct {
    const char* name;
    const char* help;
    uint64_t S::*field;
  } stats[] = {
      {"pool_alloc_fast_total", "Allocations from the alloc cache.", &S::alloc_fast},
      {"pool_alloc_slow_total", "Order-0 slow-path allocations.", &S::alloc_slow},
      {"pool_alloc_slow_high_order_total", "Higher-order slow-path allocations.",
       &S::alloc_slow_high_order},
      {"pool_alloc_empty_total", "Refills that found the ptr_ring empty.", &S::alloc_empty},
      {"pool_alloc_refill_total", "Alloc cache refills from the ptr_ring.", &S::alloc_refill},
      {"pool_alloc_waive_total", "Ring pages waived at refill (other NUMA node).", &S::alloc_waive},
      {"pool_recycle_cached_total", "Pages recycled into the alloc cache.", &S::recycle_cached},
      {"pool_recycle_cache_full_total", "Direct recycles that found the cache full.",
       &S::recycle_cache_full},
      {"pool_recycle_ring_total", "Pages recycled into the ptr_ring.", &S::recycle_ring},
      {"pool_recycle_ring_full_total", "Recycles that found the ptr_ring full.",
       &S::recycle_ring_full},
      {"pool_recycle_released_refcnt_total", "Pages released because their refcount was not 1.",
       &S::recycle_released_refcnt},
  };
  for (const auto& s : stats) {
    PoolFamily(m, rows, s.name, "counter", s.help, [&](const I& i) { return i.stats.*s.field; });
  }
  PoolFamily(m, rows, "pool_index_bytes", "gauge", "Bytes of the pool's in-flight index nodes.",
             [](const I& i) { return i.index.node_bytes; });
  // Fragments (page_pool_alloc_frag and pp_ref_count).
  PoolFamily(m, rows, "pool_frag_pages", "gauge",
             "Pages of the pool split into fragments and still in flight.",
             [](const I& i) { return i.frag_pages; });
  PoolFamily(m, rows, "pool_frag_refs", "gauge",
             "Fragment references held by clients (fragments not yet given back).",
             [](const I& i) { return i.frag_refs; });
  PoolFamily(m, rows, "pool_frag_put_refused_total", "counter",
             "Fragment give-backs refused (not in flight at that offset, double return).",
             [](const I& i) { return i.frag_put_refused; });
}

// One row per device: its labels and its domain's figures.
struct DeviceRow {
  std::string id, mode;
  dma::DomainStats s;
  dma::CheckerCounters v;
  uint64_t live = 0;
  uint64_t sync_calls = 0;
};

void AppendDomainMetrics(MetricsText& m, const std::vector<DeviceRow>& rows) {
  using S = dma::DomainStats;
  const struct {
    const char* name;
    const char* type;
    const char* help;
    uint64_t S::*field;  // nullptr: the checker's live mappings
  } families[] = {
      {"domain_table_pages", "gauge", "I/O page-table pages linked now.", &S::table_pages},
      {"domain_table_bytes", "gauge", "I/O page-table bytes linked now.", &S::table_bytes},
      {"domain_cached_table_pages", "gauge", "Zeroed page-table pages kept for reuse.",
       &S::cached_table_pages},
      {"domain_mapped_pages", "gauge", "4 KiB pages mapped now.", &S::mapped_pages},
      {"domain_live_mappings", "gauge", "DMA mappings live now (mapping checker).", nullptr},
      {"domain_tables_freed_total", "counter", "Page tables unlinked from the table.",
       &S::tables_freed},
      {"domain_maps_total", "counter", "Page-table map operations.", &S::maps},
      {"domain_unmaps_total", "counter", "Page-table unmap operations.", &S::unmaps},
      {"domain_iotlb_flushes_total", "counter", "IOTLB invalidations issued.", &S::iotlb_flushes},
      {"domain_iotlb_invalidated_pages_total", "counter",
       "4 KiB pages covered by ranged IOTLB invalidation commands.", &S::iotlb_inv_pages},
      {"domain_iommu_pages", "gauge",
       "Page-table pages allocated and not yet released (NR_IOMMU_PAGES), root included.",
       &S::iommu_pages},
      {"domain_iotlb_hits_total", "counter",
       "Device translations served by the modelled IOTLB (model_iotlb devices).", &S::iotlb_hits},
      {"domain_walk_cache_entries", "gauge",
       "Valid paging-structure (walk) cache entries (model_iotlb devices).",
       &S::walk_cache_entries},
      {"domain_walk_cache_hits_total", "counter",
       "Device walks started from a walk-cache entry (model_iotlb devices).", &S::walk_cache_hits},
      {"domain_walk_cache_stale_walks_total", "counter",
       "Violations: device walks through a table freed since its walk-cache entry was filled.",
       &S::walk_cache_stale_walks},
      {"domain_walk_restarts_total", "counter",
       "Map walks restarted from the root after meeting a table being freed.", &S::walk_restarts},
      {"domain_failed_reserves_total", "counter",
       "Table reservations refused because the table was being freed.", &S::failed_reserves},
      {"domain_death_races_lost_total", "counter",
       "Emptied tables kept alive by a reservation between the count drop and the death.",
       &S::death_races_lost},
      {"domain_released_tables_not_zero_total", "counter",
       "Violations (debug and sanitizer builds): released page tables that still held an entry.",
       &S::released_tables_not_zero},
  };
  for (const auto& f : families) {
    m.Family(f.name, f.type, f.help);
    for (const DeviceRow& r : rows) {
      m.Sample(f.name, {{"device_id", r.id}, {"iommu_mode", r.mode}},
               uint64_t(f.field == nullptr ? r.live : r.s.*f.field));
    }
  }
  m.Family("domain_sync_calls_total", "counter",
           "DMA syncs (for the device and for the CPU) the device made; a device that needs no "
           "sync (DMA_COHERENCE_COHERENT) makes none.");
  for (const DeviceRow& r : rows) {
    m.Sample("domain_sync_calls_total", {{"device_id", r.id}, {"iommu_mode", r.mode}},
             r.sync_calls);
  }
  m.Family("domain_iotlb_invalidations_total", "counter",
           "IOTLB invalidation commands, by kind: leaf (ranged, leaf-only), nonleaf (ranged, also "
           "the walk caches, over freed tables), domain (domain-wide).");
  for (const DeviceRow& r : rows) {
    const std::pair<const char*, uint64_t> kinds[] = {
        {"leaf", r.s.iotlb_inv_leaf},
        {"nonleaf", r.s.iotlb_inv_nonleaf},
        {"domain", r.s.iotlb_inv_domain},
    };
    for (const auto& [kind, v] : kinds) {
      m.Sample("domain_iotlb_invalidations_total", {{"device_id", r.id}, {"kind", kind}}, v);
    }
  }
  m.Family("domain_dirty_tracking", "gauge",
           "1 while device writes set the leaves' dirty bits (iommufd set_dirty_tracking).");
  for (const DeviceRow& r : rows) {
    m.Sample("domain_dirty_tracking", {{"device_id", r.id}, {"iommu_mode", r.mode}},
             uint64_t{r.s.dirty_tracking ? 1u : 0u});
  }
  m.Family("domain_violations_total", "counter", "Mapping-checker violations, by kind.");
  for (const DeviceRow& r : rows) {
    const std::pair<const char*, uint64_t> kinds[] = {
        {"double_unmap", r.v.double_unmap},     {"unknown_unmap", r.v.unknown_unmap},
        {"size_mismatch", r.v.size_mismatch},   {"direction_mismatch", r.v.direction_mismatch},
        {"live_at_unbind", r.v.live_at_unbind}, {"call_after_unbind", r.v.call_after_unbind},
        {"sync_unknown", r.v.sync_unknown},
    };
    for (const auto& [kind, v] : kinds) {
      m.Sample("domain_violations_total", {{"device_id", r.id}, {"kind", kind}}, v);
    }
  }
}

}  // namespace

void Runtime::AppendMetrics(std::string* out) {
  DeviceList devs;
  std::vector<internal::PoolRef> pools;
  uint64_t devices_deleted, deleted_violations;
  {
    base::MutexLock l(&mu_);
    devs = DevicesLocked();
    pools = PoolsLocked();
    devices_deleted = devices_deleted_;
    deleted_violations = deleted_violations_;
  }
  std::vector<const internal::DeviceEntry*> dev_ptrs;
  std::vector<DeviceRow> dev_rows;
  for (const auto& d : devs) {
    const dma::Device& dev = d->nic->device();
    dev_ptrs.push_back(d.get());
    dev_rows.push_back({std::to_string(d->spec.id), v1::IommuMode_Name(d->spec.mode),
                        dev.domain_stats(), dev.violations(), dev.live_mappings(),
                        dev.sync_calls()});
  }
  std::vector<PoolRow> pool_rows;
  for (const internal::PoolRef& p : pools) {
    const pool::PagePool& pp = p.pool->pool();
    pool_rows.push_back({std::to_string(pp.id()), std::to_string(p.device->spec.id),
                         std::string(pool::DestroyStrategyName(pp.strategy())), pp.info()});
    if (p.frags != nullptr) pool_rows.back().info.frag_put_refused += p.frags->refused();
  }
  MetricsText m(out);
  AppendMemoryAndDeviceMetrics(m, *memory_, dev_ptrs, pools_created_.load(), devices_deleted,
                               deleted_violations);
  AppendPoolMetrics(m, pool_rows);
  AppendDomainMetrics(m, dev_rows);
}

}  // namespace pagepool::server
