// File: server/wire_convert.cc
#include "server/wire_convert.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;

dma::IommuMode ToDmaMode(v1::IommuMode mode) {
  switch (mode) {
    case v1::IOMMU_MODE_LAZY: return dma::IommuMode::kLazy;
    case v1::IOMMU_MODE_PASSTHROUGH: return dma::IommuMode::kPassthrough;
    default: return dma::IommuMode::kStrict;
  }
}

pool::DestroyStrategy ToPoolStrategy(v1::Strategy strategy) {
  switch (strategy) {
    case v1::STRATEGY_SCAN: return pool::DestroyStrategy::kScan;
    case v1::STRATEGY_NONE: return pool::DestroyStrategy::kNone;
    default: return pool::DestroyStrategy::kXarray;
  }
}

dma::DmaCoherence ToDmaCoherence(v1::DmaCoherence coherence) {
  switch (coherence) {
    case v1::DMA_COHERENCE_COHERENT: return dma::DmaCoherence::kCoherent;
    case v1::DMA_COHERENCE_SWIOTLB: return dma::DmaCoherence::kSwiotlb;
    default: return dma::DmaCoherence::kNonCoherent;
  }
}

v1::Strategy FromPoolStrategy(pool::DestroyStrategy strategy) {
  switch (strategy) {
    case pool::DestroyStrategy::kScan: return v1::STRATEGY_SCAN;
    case pool::DestroyStrategy::kNone: return v1::STRATEGY_NONE;
    default: return v1::STRATEGY_XARRAY;
  }
}

pool::NicConfig ToNicConfig(const DeviceSpec& spec) {
  pool::NicConfig nc;
  nc.device.name = spec.name;
  nc.device.mode = ToDmaMode(spec.mode);
  nc.device.free_empty_tables = spec.free_empty_tables;
  nc.device.address_width = spec.address_width;
  nc.device.dma_mask_bits = spec.dma_mask_bits;
  nc.device.coherence = ToDmaCoherence(spec.coherence);
  nc.device.model_iotlb = spec.model_iotlb;
  nc.device.fq_timer = false;  // the daemon's FlushQueueTick is every lazy domain's fq_timer
  nc.ifindex = static_cast<uint32_t>(spec.id);
  return nc;
}

pool::PagePoolParams ToPoolParams(const v1::CreatePoolRequest& req) {
  const v1::PoolFlags& f = req.flags();
  const bool dma_map = f.has_dma_map() ? f.dma_map() : true;
  pool::PagePoolParams pp;
  pp.flags = (dma_map ? pool::kPpFlagDmaMap : 0) | (f.dma_sync_dev() ? pool::kPpFlagDmaSyncDev : 0);
  pp.order = req.order();
  pp.pool_size = req.pool_size();
  pp.max_len = f.max_len();
  pp.offset = f.offset();
  pp.napi_id = req.napi_id();
  pp.strategy = ToPoolStrategy(req.strategy());
  if (req.dma_index_limit() != 0) pp.dma_index_limit = req.dma_index_limit();
  return pp;
}

void FillViolations(const dma::CheckerCounters& c, v1::Violations* out) {
  out->set_double_unmap(c.double_unmap);
  out->set_unknown_unmap(c.unknown_unmap);
  out->set_size_mismatch(c.size_mismatch);
  out->set_direction_mismatch(c.direction_mismatch);
  out->set_live_at_unbind(c.live_at_unbind);
  out->set_call_after_unbind(c.call_after_unbind);
  out->set_sync_unknown(c.sync_unknown);
  out->set_total(c.Total());
}

void FillDomain(const DeviceSpec& spec, const dma::Device& dev, v1::DomainInfo* out) {
  dma::DomainStats s = dev.domain_stats();
  out->set_device_id(spec.id);
  out->set_iommu_mode(spec.mode);
  out->set_free_empty_tables(spec.free_empty_tables);
  out->set_address_width(spec.address_width);
  if (dma::IommuDomain* dom = dev.domain()) {
    out->set_levels(dom->levels());
    out->set_faults(dom->faults());
  }
  out->set_table_pages(s.table_pages);
  out->set_table_bytes(s.table_bytes);
  out->set_peak_table_pages(s.peak_table_pages);
  out->set_peak_table_bytes(s.peak_table_bytes);
  out->set_pending_free_pages(s.pending_free_pages);
  out->set_cached_table_pages(s.cached_table_pages);
  out->set_tables_allocated(s.tables_allocated);
  out->set_tables_freed(s.tables_freed);
  out->set_tables_released(s.tables_released);
  out->set_install_races_lost(s.install_races_lost);
  out->set_block_over_table(s.block_over_table);
  out->set_block_unmap_table(s.block_unmap_table);
  out->set_mapped_pages(s.mapped_pages);
  out->set_maps(s.maps);
  out->set_unmaps(s.unmaps);
  out->set_iotlb_flushes(s.iotlb_flushes);
  out->set_iotlb_flushed_entries(s.iotlb_flushed_entries);
  out->set_fq_pending(s.fq_pending);
  out->set_iova_allocated_pages(s.iova_allocated_pages);
  out->set_dirty_reports(s.dirty_reports);
  out->set_iotlb_inv_leaf(s.iotlb_inv_leaf);
  out->set_iotlb_inv_nonleaf(s.iotlb_inv_nonleaf);
  out->set_iotlb_inv_domain(s.iotlb_inv_domain);
  out->set_iotlb_inv_pages(s.iotlb_inv_pages);
  out->set_model_iotlb(spec.model_iotlb);
  out->set_iotlb_hits(s.iotlb_hits);
  out->set_walk_cache_entries(s.walk_cache_entries);
  out->set_walk_cache_hits(s.walk_cache_hits);
  out->set_walk_cache_stale_walks(s.walk_cache_stale_walks);
  out->set_walk_restarts(s.walk_restarts);
  out->set_failed_reserves(s.failed_reserves);
  out->set_death_races_lost(s.death_races_lost);
  out->set_dirty_tracking(s.dirty_tracking);
  out->set_iommu_pages(s.iommu_pages);
  out->set_released_tables_not_zero(s.released_tables_not_zero);
  out->set_live_mappings(dev.live_mappings());
  out->set_map_calls(dev.map_calls());
  out->set_unmap_calls(dev.unmap_calls());
  out->set_sync_calls(dev.sync_calls());
  FillViolations(dev.violations(), out->mutable_violations());
}

void FillDevice(const DeviceSpec& spec, const pool::Nic& nic, v1::Device* out) {
  out->set_id(spec.id);
  out->set_name(spec.name);
  out->set_ifindex(static_cast<uint32_t>(spec.id));
  out->set_state(nic.bound() ? v1::DEVICE_STATE_BOUND : v1::DEVICE_STATE_UNBOUND);
  out->set_iommu_mode(spec.mode);
  out->set_free_empty_tables(spec.free_empty_tables);
  out->set_address_width(spec.address_width);
  out->set_dma_mask_bits(spec.dma_mask_bits);
  out->set_dma_coherence(spec.coherence);
  out->set_dma_need_sync(nic.device().need_sync());
  for (const std::shared_ptr<pool::PagePool>& p : nic.Pools()) out->add_pool_ids(p->id());
  FillDomain(spec, nic.device(), out->mutable_domain());
}

namespace {

void FillStats(const pool::PagePoolStats& s, v1::PoolStats* out) {
  out->set_alloc_fast(s.alloc_fast);
  out->set_alloc_slow(s.alloc_slow);
  out->set_alloc_slow_high_order(s.alloc_slow_high_order);
  out->set_alloc_empty(s.alloc_empty);
  out->set_alloc_refill(s.alloc_refill);
  out->set_alloc_waive(s.alloc_waive);
  out->set_recycle_cached(s.recycle_cached);
  out->set_recycle_cache_full(s.recycle_cache_full);
  out->set_recycle_ring(s.recycle_ring);
  out->set_recycle_ring_full(s.recycle_ring_full);
  out->set_recycle_released_refcnt(s.recycle_released_refcnt);
}

// The flags as CreatePool stored them: dma_map always present, the rest proto3 scalars.
void FillFlags(const pool::PagePoolParams& p, v1::PoolFlags* out) {
  out->set_dma_map((p.flags & pool::kPpFlagDmaMap) != 0);
  out->set_dma_sync_dev((p.flags & pool::kPpFlagDmaSyncDev) != 0);
  out->set_max_len(p.max_len);
  out->set_offset(p.offset);
}

}  // namespace

void FillPool(uint64_t device_id, const pool::PagePool& pool, v1::Pool* out,
              uint64_t frags_refused) {
  pool::PagePoolInfo info = pool.info();
  const pool::PagePoolParams& params = pool.params();
  out->set_id(pool.id());
  out->set_ifindex(info.ifindex);
  out->set_napi_id(info.napi_id);
  out->set_inflight(info.inflight > 0 ? uint64_t(info.inflight) : 0);
  out->set_inflight_mem(info.inflight_mem);
  out->set_detach_time(info.detach_time);
  FillStats(info.stats, out->mutable_stats());
  out->set_dma_mapped(info.dma_mapped);
  out->set_device_id(device_id);
  out->set_order(params.order);
  out->set_pool_size(params.pool_size);
  FillFlags(params, out->mutable_flags());
  out->set_strategy(FromPoolStrategy(params.strategy));
  out->set_destroyed(info.destroyed);
  out->set_unmapped_at_destroy(info.unmapped_at_destroy);
  out->set_frag_pages(info.frag_pages);
  out->set_frag_refs(info.frag_refs);
  out->set_frag_put_refused(info.frag_put_refused + frags_refused);
  out->set_users(info.users);
  out->set_dma_synced_bytes(info.dma_synced_bytes);
}

void FillDestroyed(const pool::PoolDestroyed& d, v1::DestroyPoolResponse* out) {
  const pool::DestroyResult& r = d.result;
  out->set_pool_id(d.pool->id());
  out->set_inflight_at_destroy(r.inflight_at_destroy > 0 ? uint64_t(r.inflight_at_destroy) : 0);
  out->set_pages_unmapped(r.pages_unmapped);
  out->set_duration_ns(r.duration_ns);
  out->set_strategy(FromPoolStrategy(r.strategy));
  out->set_frames_scanned(r.frames_scanned);
  out->set_grace_periods(r.grace_periods);
  out->set_destroyed(d.destroyed());
  out->set_users_left(r.users_left);
}

void FillPage(const pool::PoolPage& page, v1::Page* out) {
  out->mutable_handle()->set_frame(page.handle.frame);
  out->mutable_handle()->set_generation(page.handle.generation);
  out->set_dma_addr(page.dma_addr);
}

void FillFrag(const pool::PoolFrag& frag, v1::Page* out) {
  v1::FragHandle* f = out->mutable_frag();
  f->mutable_page()->set_frame(frag.handle.page.frame);
  f->mutable_page()->set_generation(frag.handle.page.generation);
  f->set_offset(frag.handle.offset);
  f->set_size(frag.handle.size);
  *out->mutable_handle() = f->page();
  out->set_dma_addr(frag.dma_addr);
}

void FillPageTableEntry(const dma::PresentEntry& e, v1::PageTableEntry* out) {
  out->set_iova(e.iova);
  out->set_phys(e.phys);
  out->set_size(e.size);
  out->set_prot(e.prot);
  out->set_dirty(e.dirty);
  out->set_accessed(e.accessed);
}

void FillWalkCacheEntry(const dma::WalkCacheEntry& e, v1::WalkCacheEntry* out) {
  out->set_level(e.level);
  out->set_iova(e.iova);
  out->set_span(e.span);
  out->set_stale(e.stale);
}

}  // namespace pagepool::server
