#include "server/runtime.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "dma/iommu_domain.h"
#include "pool/nic.h"
#include "pool/page_pool.h"
#include "pool/phys_memory.h"
#include "server/metrics_text.h"
#include "base/clock.h"
#include "base/strings.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;
using google::protobuf::RepeatedPtrField;

namespace internal {

struct DeviceEntry {
  uint64_t id = 0;
  std::string name;
  v1::IommuMode mode = v1::IOMMU_MODE_STRICT;
  bool free_empty_tables = true;
  uint32_t address_width = 48;
  std::unique_ptr<pool::Nic> nic;
  // Set (under Runtime::mu_) when UnbindDevice starts: no pool may be created from then on.
  bool unbinding = false;
};

struct PoolEntry {
  uint64_t id = 0;
  std::shared_ptr<DeviceEntry> device;
  std::shared_ptr<pool::PagePool> pool;
  v1::PoolFlags flags;
  uint32_t pool_size = 0;
  v1::Strategy strategy = v1::STRATEGY_XARRAY;
  // The pool's NAPI context. Allocation and direct recycling hold it; Destroy holds it too, so the
  // pool's REQUIRES ("the NAPI context no longer allocates") holds while it runs.
  base::Mutex napi_mu;
  // Set under napi_mu just before Destroy: the NAPI context is stopped for good.
  bool napi_stopped ABSL_GUARDED_BY(napi_mu) = false;
  // Release-retry tick only: the inflight last reported by POOL_CHANGE.
  int64_t reported_inflight = -1;
};

}  // namespace internal

using internal::DeviceEntry;
using internal::PoolEntry;

struct Runtime::Backend {
  std::shared_ptr<pool::PhysMemory> memory;
  std::atomic<uint64_t> pools_created{0};
};

namespace {

dma::IommuMode ToDmaMode(v1::IommuMode m) {
  switch (m) {
    case v1::IOMMU_MODE_LAZY: return dma::IommuMode::kLazy;
    case v1::IOMMU_MODE_PASSTHROUGH: return dma::IommuMode::kPassthrough;
    default: return dma::IommuMode::kStrict;
  }
}

pool::DestroyStrategy ToPoolStrategy(v1::Strategy s) {
  switch (s) {
    case v1::STRATEGY_SCAN: return pool::DestroyStrategy::kScan;
    case v1::STRATEGY_NONE: return pool::DestroyStrategy::kNone;
    default: return pool::DestroyStrategy::kXarray;
  }
}

v1::Strategy FromPoolStrategy(pool::DestroyStrategy s) {
  switch (s) {
    case pool::DestroyStrategy::kScan: return v1::STRATEGY_SCAN;
    case pool::DestroyStrategy::kNone: return v1::STRATEGY_NONE;
    default: return v1::STRATEGY_XARRAY;
  }
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

void FillDomain(const DeviceEntry& d, v1::DomainInfo* out) {
  const dma::Device& dev = d.nic->device();
  dma::DomainStats s = dev.domain_stats();
  out->set_device_id(d.id);
  out->set_iommu_mode(d.mode);
  out->set_free_empty_tables(d.free_empty_tables);
  out->set_address_width(d.address_width);
  if (dma::IommuDomain* dom = dev.domain()) {
    out->set_levels(dom->levels());
    out->set_faults(dom->faults());
  }
  out->set_table_pages(s.table_pages);
  out->set_table_bytes(s.table_bytes);
  out->set_peak_table_pages(s.peak_table_pages);
  out->set_peak_table_bytes(s.peak_table_bytes);
  out->set_pending_free_pages(s.pending_free_pages);
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
  out->set_live_mappings(dev.live_mappings());
  out->set_map_calls(dev.map_calls());
  out->set_unmap_calls(dev.unmap_calls());
  out->set_sync_calls(dev.sync_calls());
  FillViolations(dev.violations(), out->mutable_violations());
}

void FillPool(const PoolEntry& e, v1::Pool* out) {
  pool::PagePoolInfo info = e.pool->info();
  out->set_id(e.id);
  out->set_ifindex(info.ifindex);
  out->set_napi_id(info.napi_id);
  out->set_inflight(info.inflight > 0 ? uint64_t(info.inflight) : 0);
  out->set_inflight_mem(info.inflight_mem);
  out->set_detach_time(info.detach_time);
  v1::PoolStats* st = out->mutable_stats();
  st->set_alloc_fast(info.stats.alloc_fast);
  st->set_alloc_slow(info.stats.alloc_slow);
  st->set_alloc_slow_high_order(info.stats.alloc_slow_high_order);
  st->set_alloc_empty(info.stats.alloc_empty);
  st->set_alloc_refill(info.stats.alloc_refill);
  st->set_alloc_waive(info.stats.alloc_waive);
  st->set_recycle_cached(info.stats.recycle_cached);
  st->set_recycle_cache_full(info.stats.recycle_cache_full);
  st->set_recycle_ring(info.stats.recycle_ring);
  st->set_recycle_ring_full(info.stats.recycle_ring_full);
  st->set_recycle_released_refcnt(info.stats.recycle_released_refcnt);
  out->set_dma_mapped(info.dma_mapped);
  out->set_device_id(e.device->id);
  out->set_order(e.pool->params().order);
  out->set_pool_size(e.pool_size);
  *out->mutable_flags() = e.flags;
  out->set_strategy(e.strategy);
  out->set_destroyed(info.destroyed);
  out->set_unmapped_at_destroy(info.unmapped_at_destroy);
}

void FillDevice(const DeviceEntry& d, const std::vector<uint64_t>& pool_ids, v1::Device* out) {
  out->set_id(d.id);
  out->set_name(d.name);
  out->set_ifindex(static_cast<uint32_t>(d.id));
  out->set_state(d.nic->bound() ? v1::DEVICE_STATE_BOUND : v1::DEVICE_STATE_UNBOUND);
  out->set_iommu_mode(d.mode);
  out->set_free_empty_tables(d.free_empty_tables);
  out->set_address_width(d.address_width);
  for (uint64_t id : pool_ids) out->add_pool_ids(id);
  FillDomain(d, out->mutable_domain());
}

// Scratch space for a batch, kept per gRPC thread so that batches do not allocate.
std::vector<pool::PoolPage>& ScratchPages() {
  thread_local std::vector<pool::PoolPage> pages;
  pages.clear();
  return pages;
}

// Counts of a batch of give-backs.
struct GiveBackTally {
  uint64_t cached = 0, ring = 0, released = 0, returned = 0, unmapped = 0;
  uint64_t refused = 0;
  absl::Status first_error;
  void Refuse(absl::Status s, int index, const char* what, uint64_t pool_id) {
    if (refused++ == 0) {
      first_error = absl::Status(s.code(), absl::StrCat(what, " on pool ", pool_id, ": page #", index,
                                                        ": ", std::string(s.message())));
    }
  }
  absl::Status Result() const {
    if (refused == 0) return absl::OkStatus();
    if (refused == 1) return first_error;
    return absl::Status(first_error.code(), absl::StrCat(std::string(first_error.message()), " (",
                                                         refused, " pages refused in all)"));
  }
};

}  // namespace

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(const RuntimeOptions& options) {
  pool::PhysMemoryConfig mc;
  mc.bytes = options.memory_bytes;
  auto memory = pool::PhysMemory::Create(mc);
  if (!memory.ok()) return base::Annotate(memory.status(), "simulated memory");
  std::unique_ptr<Runtime> rt(new Runtime(options));
  rt->backend_->memory = std::move(*memory);
  return rt;
}

Runtime::Runtime(const RuntimeOptions& options)
    : options_(options), backend_(std::make_unique<Backend>()) {}

Runtime::~Runtime() {
  base::MutexLock l(&mu_);
  pools_.clear();
  devices_.clear();  // ~Nic destroys pools still live
}

absl::StatusOr<std::shared_ptr<DeviceEntry>> Runtime::FindDevice(uint64_t id) {
  base::MutexLock l(&mu_);
  if (shut_down_) return absl::UnavailableError("the daemon is shutting down");
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("device ", id, " not found"));
  return it->second;
}

absl::StatusOr<std::shared_ptr<PoolEntry>> Runtime::FindPool(uint64_t id) {
  base::MutexLock l(&mu_);
  if (shut_down_) return absl::UnavailableError("the daemon is shutting down");
  auto it = pools_.find(id);
  if (it == pools_.end()) {
    return absl::NotFoundError(absl::StrCat("pool ", id, " not found (never created, or deleted)"));
  }
  return it->second;
}

// ---- Devices ----

absl::Status Runtime::CreateDevice(const v1::CreateDeviceRequest& req, v1::Device* out) {
  if (!v1::IommuMode_IsValid(req.iommu_mode())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateDevice: iommu_mode ", req.iommu_mode(), " is not an IommuMode (0..3)"));
  }
  if (req.name().size() > 64) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateDevice: name is ", req.name().size(), " bytes, at most 64"));
  }
  uint32_t width = req.address_width() == 0 ? 48 : req.address_width();
  if (width != 39 && width != 48 && width != 57) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateDevice: address_width ", req.address_width(), " is not 39, 48 or 57"));
  }
  auto entry = std::make_shared<DeviceEntry>();
  entry->mode = req.iommu_mode() == v1::IOMMU_MODE_UNSPECIFIED ? v1::IOMMU_MODE_STRICT
                                                                : req.iommu_mode();
  entry->free_empty_tables = req.has_free_empty_tables() ? req.free_empty_tables() : true;
  entry->address_width = width;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return absl::UnavailableError("CreateDevice: the daemon is shutting down");
    if (devices_.size() >= options_.max_devices) {
      return absl::ResourceExhaustedError(absl::StrCat(
          "CreateDevice: device limit reached (", options_.max_devices, ", --max-devices)"));
    }
    entry->id = next_device_id_++;
    entry->name = req.name().empty() ? absl::StrCat("dev", entry->id) : req.name();
    pool::NicConfig nc;
    nc.device.name = entry->name;
    nc.device.mode = ToDmaMode(entry->mode);
    nc.device.free_empty_tables = entry->free_empty_tables;
    nc.device.address_width = width;
    nc.ifindex = static_cast<uint32_t>(entry->id);
    nc.warn = [](std::string_view line) {
      std::cerr << "pagepoold: " << line << std::endl;
    };
    auto nic = pool::Nic::Create(backend_->memory, nc);
    if (!nic.ok()) {
      --next_device_id_;
      return base::Annotate(nic.status(), "CreateDevice");
    }
    entry->nic = std::move(*nic);
    devices_[entry->id] = entry;
    FillDevice(*entry, {}, out);
    v1::Event ev;
    ev.set_type(v1::EVENT_TYPE_DEVICE_ADD);
    *ev.mutable_device() = *out;
    events_.Publish(std::move(ev));
  }
  return absl::OkStatus();
}

absl::Status Runtime::GetDevice(uint64_t device_id, v1::Device* out) {
  base::MutexLock l(&mu_);
  auto it = devices_.find(device_id);
  if (it == devices_.end()) {
    return absl::NotFoundError(absl::StrCat("GetDevice: device ", device_id, " not found"));
  }
  std::vector<uint64_t> ids;
  for (const auto& [id, p] : pools_) {
    if (p->device->id == device_id) ids.push_back(id);
  }
  FillDevice(*it->second, ids, out);
  return absl::OkStatus();
}

void Runtime::ListDevices(v1::ListDevicesResponse* out) {
  base::MutexLock l(&mu_);
  for (const auto& [id, d] : devices_) {
    std::vector<uint64_t> ids;
    for (const auto& [pid, p] : pools_) {
      if (p->device->id == id) ids.push_back(pid);
    }
    FillDevice(*d, ids, out->add_devices());
  }
}

absl::Status Runtime::UnbindDevice(uint64_t device_id, v1::UnbindDeviceResponse* out) {
  std::shared_ptr<DeviceEntry> dev;
  std::vector<std::shared_ptr<PoolEntry>> victims;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return absl::UnavailableError("UnbindDevice: the daemon is shutting down");
    auto it = devices_.find(device_id);
    if (it == devices_.end()) {
      return absl::NotFoundError(absl::StrCat("UnbindDevice: device ", device_id, " not found"));
    }
    dev = it->second;
    if (dev->unbinding || !dev->nic->bound()) {
      return absl::FailedPreconditionError(
          absl::StrCat("UnbindDevice: device ", device_id, " is already unbound"));
    }
    dev->unbinding = true;
    for (const auto& [id, p] : pools_) {
      if (p->device == dev) victims.push_back(p);
    }
  }
  // Stop each pool's NAPI context for good and destroy the pool in it (page_pool_destroy after
  // napi_disable, as a driver's remove path does), then unbind the device.
  uint64_t pools_destroyed = 0, inflight = 0, unmapped = 0;
  std::vector<std::shared_ptr<PoolEntry>> destroyed;  // by this call: only these get an event
  for (auto& p : victims) {
    base::MutexLock napi(&p->napi_mu);
    p->napi_stopped = true;
    if (p->pool->destroyed()) continue;  // destroyed before (its DETACH/DELETE was published then)
    auto d = dev->nic->DestroyPool(p->id);
    if (!d.ok()) continue;  // destroyed meanwhile (a racing DestroyPool found it first)
    destroyed.push_back(p);
    ++pools_destroyed;
    inflight += d->inflight_at_destroy > 0 ? uint64_t(d->inflight_at_destroy) : 0;
    unmapped += d->pages_unmapped;
  }
  absl::StatusOr<pool::UnbindResult> r = dev->nic->Unbind();
  if (!r.ok()) return base::Annotate(r.status(), absl::StrCat("UnbindDevice ", device_id));
  out->set_pools_destroyed(static_cast<uint32_t>(pools_destroyed + r->pools_destroyed));
  out->set_inflight_at_destroy(
      inflight + (r->inflight_at_destroy > 0 ? uint64_t(r->inflight_at_destroy) : 0));
  out->set_pages_unmapped(unmapped + r->pages_unmapped);

  base::MutexLock l(&mu_);
  for (auto& p : destroyed) {
    v1::Event ev;
    FillPool(*p, ev.mutable_pool());
    bool released = p->pool->info().released || p->pool->inflight() <= 0;
    ev.set_type(released ? v1::EVENT_TYPE_POOL_DELETE : v1::EVENT_TYPE_POOL_DETACH);
    if (released) pools_.erase(p->id);
    events_.Publish(std::move(ev));
  }
  std::vector<uint64_t> ids;
  for (const auto& [id, p] : pools_) {
    if (p->device == dev) ids.push_back(id);
  }
  FillDevice(*dev, ids, out->mutable_device());
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_DEVICE_CHANGE);
  *ev.mutable_device() = out->device();
  events_.Publish(std::move(ev));
  return absl::OkStatus();
}

absl::Status Runtime::GetDomain(uint64_t device_id, v1::DomainInfo* out) {
  auto dev = FindDevice(device_id);
  if (!dev.ok()) return base::Annotate(dev.status(), "GetDomain");
  FillDomain(**dev, out);
  return absl::OkStatus();
}

absl::Status Runtime::DumpPageTable(uint64_t device_id, uint64_t start, uint64_t end,
                                    uint64_t limit, std::vector<v1::PageTableEntry>* out) {
  auto dev = FindDevice(device_id);
  if (!dev.ok()) return base::Annotate(dev.status(), "DumpPageTable");
  uint64_t space_end = uint64_t{1} << (*dev)->address_width;
  if (end == 0) end = space_end;
  if (start >= end) {
    return absl::InvalidArgumentError(
        absl::StrCat("DumpPageTable: start 0x", absl::Hex(start), " is not below end 0x",
                     absl::Hex(end)));
  }
  dma::IommuDomain* dom = (*dev)->nic->device().domain();
  if (dom == nullptr) return absl::OkStatus();  // passthrough: no page table, nothing to dump
  dom->ForEachPresent(start, std::min(end, space_end), [&](const dma::PresentEntry& e) {
    v1::PageTableEntry& o = out->emplace_back();
    o.set_iova(e.iova);
    o.set_phys(e.phys);
    o.set_size(e.size);
    o.set_prot(e.prot);
    o.set_dirty(e.dirty);
    o.set_accessed(e.accessed);
    return limit == 0 || out->size() < limit;
  });
  return absl::OkStatus();
}

// ---- Pools ----

absl::Status Runtime::CreatePool(const v1::CreatePoolRequest& req, v1::Pool* out) {
  if (!v1::Strategy_IsValid(req.strategy())) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreatePool: strategy ", req.strategy(), " is not a Strategy (0..3)"));
  }
  if (req.order() > pool::PhysMemory::kMaxOrder) {
    return absl::InvalidArgumentError(absl::StrCat("CreatePool: order ", req.order(),
                                                   " is above the maximum order ",
                                                   pool::PhysMemory::kMaxOrder));
  }
  auto dev = FindDevice(req.device_id());
  if (!dev.ok()) return base::Annotate(dev.status(), "CreatePool");
  auto entry = std::make_shared<PoolEntry>();
  entry->device = *dev;
  entry->flags = req.flags();
  if (!entry->flags.has_dma_map()) entry->flags.set_dma_map(true);
  entry->pool_size = req.pool_size();
  entry->strategy =
      req.strategy() == v1::STRATEGY_UNSPECIFIED ? v1::STRATEGY_XARRAY : req.strategy();

  pool::PagePoolParams pp;
  pp.flags = (entry->flags.dma_map() ? pool::kPpFlagDmaMap : 0) |
             (entry->flags.dma_sync_dev() ? pool::kPpFlagDmaSyncDev : 0);
  pp.order = req.order();
  pp.pool_size = req.pool_size();
  pp.max_len = entry->flags.max_len();
  pp.offset = entry->flags.offset();
  pp.napi_id = req.napi_id();
  pp.strategy = ToPoolStrategy(entry->strategy);

  base::MutexLock l(&mu_);
  if (shut_down_) return absl::UnavailableError("CreatePool: the daemon is shutting down");
  if (entry->device->unbinding || !entry->device->nic->bound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CreatePool: device ", req.device_id(), " is unbound"));
  }
  if (pools_.size() >= options_.max_pools) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "CreatePool: pool limit reached (", options_.max_pools, " pools exist, --max-pools)"));
  }
  auto p = entry->device->nic->CreatePool(pp);
  if (!p.ok()) return base::Annotate(p.status(), absl::StrCat("CreatePool on device ", req.device_id()));
  entry->pool = std::move(*p);
  entry->id = entry->pool->id();
  pools_[entry->id] = entry;
  backend_->pools_created.fetch_add(1, std::memory_order_relaxed);
  FillPool(*entry, out);
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_POOL_ADD);
  *ev.mutable_pool() = *out;
  events_.Publish(std::move(ev));
  return absl::OkStatus();
}

absl::Status Runtime::GetPool(uint64_t pool_id, v1::Pool* out) {
  auto p = FindPool(pool_id);
  if (!p.ok()) return base::Annotate(p.status(), "GetPool");
  FillPool(**p, out);
  return absl::OkStatus();
}

void Runtime::ListPools(uint64_t device_id, v1::ListPoolsResponse* out) {
  base::MutexLock l(&mu_);
  for (const auto& [id, p] : pools_) {
    if (device_id == 0 || p->device->id == device_id) FillPool(*p, out->add_pools());
  }
}

absl::Status Runtime::DestroyPool(uint64_t pool_id, v1::DestroyPoolResponse* out) {
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "DestroyPool");
  std::shared_ptr<PoolEntry> p = *found;
  absl::StatusOr<pool::DestroyResult> r;
  {
    base::MutexLock napi(&p->napi_mu);
    if (p->napi_stopped || p->pool->destroyed()) {
      return absl::FailedPreconditionError(
          absl::StrCat("DestroyPool: pool ", pool_id, " is already destroyed"));
    }
    p->napi_stopped = true;
    r = p->device->nic->DestroyPool(pool_id);
  }
  if (!r.ok()) return base::Annotate(r.status(), absl::StrCat("DestroyPool ", pool_id));
  out->set_pool_id(pool_id);
  out->set_inflight_at_destroy(r->inflight_at_destroy > 0 ? uint64_t(r->inflight_at_destroy) : 0);
  out->set_pages_unmapped(r->pages_unmapped);
  out->set_duration_ns(r->duration_ns);
  out->set_strategy(FromPoolStrategy(r->strategy));
  out->set_frames_scanned(r->frames_scanned);

  base::MutexLock l(&mu_);
  v1::Event ev;
  FillPool(*p, ev.mutable_pool());
  ev.set_type(r->released ? v1::EVENT_TYPE_POOL_DELETE : v1::EVENT_TYPE_POOL_DETACH);
  if (r->released) pools_.erase(pool_id);
  events_.Publish(std::move(ev));
  return absl::OkStatus();
}

absl::Status Runtime::ListInflight(uint64_t pool_id, uint64_t limit,
                                   std::vector<InflightRecord>* out) {
  auto p = FindPool(pool_id);
  if (!p.ok()) return base::Annotate(p.status(), "ListInflight");
  (*p)->pool->ForEachInflight([&](uint32_t id, pool::PageHandle h, dma::DmaAddr addr) {
    out->push_back(InflightRecord{id, h.generation, h.frame, addr});
    return limit == 0 || out->size() < limit;
  });
  return absl::OkStatus();
}

// ---- Pages ----

absl::Status Runtime::Allocate(uint64_t pool_id, uint32_t count, RepeatedPtrField<v1::Page>* out) {
  if (count == 0) return absl::InvalidArgumentError("Allocate: count is 0, must be at least 1");
  if (count > options_.max_pages_per_call) {
    return absl::ResourceExhaustedError(absl::StrCat("Allocate: count ", count, " is above the limit ",
                                                     options_.max_pages_per_call,
                                                     " (--max-pages-per-call)"));
  }
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Allocate");
  PoolEntry& p = **found;
  std::vector<pool::PoolPage>& pages = ScratchPages();
  absl::Status s;
  {
    base::MutexLock napi(&p.napi_mu);
    if (p.napi_stopped) {
      return absl::FailedPreconditionError(
          absl::StrCat("Allocate: pool ", pool_id, " is destroyed"));
    }
    s = p.pool->AllocateBulk(count, &pages);
  }
  if (!s.ok()) return base::Annotate(s, absl::StrCat("Allocate ", count, " pages from pool ", pool_id));
  out->Reserve(static_cast<int>(pages.size()));
  for (const pool::PoolPage& pg : pages) {
    v1::Page* o = out->Add();
    o->mutable_handle()->set_frame(pg.handle.frame);
    o->mutable_handle()->set_generation(pg.handle.generation);
    o->set_dma_addr(pg.dma_addr);
  }
  return absl::OkStatus();
}

namespace {

// Recycles `pages` into `p`; direct (in the NAPI context) when napi_local and the pool is live.
void RecycleBatch(PoolEntry& p, const RepeatedPtrField<v1::PageHandle>& pages, bool napi_local,
                  GiveBackTally* t) {
  auto one = [&](int i, bool direct) {
    const v1::PageHandle& h = pages[i];
    auto r = p.pool->Recycle(pool::PageHandle{h.frame(), h.generation()}, direct);
    if (!r.ok()) {
      t->Refuse(r.status(), i, "Recycle", p.id);
      return;
    }
    switch (*r) {
      case pool::RecycleResult::kCached: ++t->cached; break;
      case pool::RecycleResult::kRing: ++t->ring; break;
      case pool::RecycleResult::kReleased: ++t->released; break;
    }
  };
  if (napi_local) {
    base::MutexLock napi(&p.napi_mu);
    // A destroyed pool has no NAPI context any more: its pages go the ring way (released).
    bool direct = !p.napi_stopped;
    for (int i = 0; i < pages.size(); ++i) one(i, direct);
  } else {
    for (int i = 0; i < pages.size(); ++i) one(i, false);
  }
}

void ReturnBatch(PoolEntry& p, const RepeatedPtrField<v1::PageHandle>& pages, GiveBackTally* t) {
  for (int i = 0; i < pages.size(); ++i) {
    const v1::PageHandle& h = pages[i];
    auto r = p.pool->Return(pool::PageHandle{h.frame(), h.generation()});
    if (!r.ok()) {
      t->Refuse(r.status(), i, "Return", p.id);
      continue;
    }
    ++t->returned;
    if (*r) ++t->unmapped;
  }
}

}  // namespace

absl::Status Runtime::Recycle(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                              bool napi_local, v1::RecycleResponse* out) {
  if (pages.empty()) return absl::InvalidArgumentError("Recycle: no pages given");
  if (static_cast<uint32_t>(pages.size()) > options_.max_pages_per_call) {
    return absl::ResourceExhaustedError(absl::StrCat("Recycle: ", pages.size(),
                                                     " pages is above the limit ",
                                                     options_.max_pages_per_call,
                                                     " (--max-pages-per-call)"));
  }
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Recycle");
  GiveBackTally t;
  RecycleBatch(**found, pages, napi_local, &t);
  out->set_cached(t.cached);
  out->set_ring(t.ring);
  out->set_released(t.released);
  return t.Result();
}

absl::Status Runtime::Return(uint64_t pool_id, const RepeatedPtrField<v1::PageHandle>& pages,
                             v1::ReturnResponse* out) {
  if (pages.empty()) return absl::InvalidArgumentError("Return: no pages given");
  if (static_cast<uint32_t>(pages.size()) > options_.max_pages_per_call) {
    return absl::ResourceExhaustedError(absl::StrCat("Return: ", pages.size(),
                                                     " pages is above the limit ",
                                                     options_.max_pages_per_call,
                                                     " (--max-pages-per-call)"));
  }
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), "Return");
  GiveBackTally t;
  ReturnBatch(**found, pages, &t);
  out->set_returned(t.returned);
  out->set_unmapped(t.unmapped);
  return t.Result();
}

uint64_t Runtime::Traffic(const v1::TrafficRequest& req, v1::TrafficResponse* out) {
  out->set_seq(req.seq());
  auto fail = [&](const absl::Status& s, uint32_t ops) {
    if (out->errors() == 0) {
      out->set_error_code(static_cast<int>(s.code()));
      out->set_error_message(std::string(s.message()));
    }
    out->set_errors(out->errors() + ops);
  };
  uint64_t total = uint64_t{req.allocate()} + req.recycle_size() + req.return_pages_size();
  if (total > options_.max_pages_per_call) {
    fail(absl::ResourceExhaustedError(absl::StrCat(
             "Traffic: batch of ", total, " page ops is above the limit ",
             options_.max_pages_per_call, " (--max-pages-per-call)")),
         1);
    return 0;
  }
  auto found = FindPool(req.pool_id());
  if (!found.ok()) {
    fail(base::Annotate(found.status(), "Traffic"), 1);
    return 0;
  }
  PoolEntry& p = **found;
  uint64_t ops = 0;
  GiveBackTally t;
  if (!req.recycle().empty()) RecycleBatch(p, req.recycle(), req.napi_local(), &t);
  if (!req.return_pages().empty()) ReturnBatch(p, req.return_pages(), &t);
  out->set_recycled_cached(t.cached);
  out->set_recycled_ring(t.ring);
  out->set_recycled_released(t.released);
  out->set_returned(t.returned);
  ops += t.cached + t.ring + t.released + t.returned;
  if (t.refused > 0) fail(t.Result(), static_cast<uint32_t>(t.refused));
  if (req.allocate() > 0) {
    absl::Status s = Allocate(req.pool_id(), req.allocate(), out->mutable_allocated());
    if (s.ok()) {
      ops += req.allocate();
    } else {
      fail(s, 1);
    }
  }
  return ops;
}

// ---- Events, ticks, shutdown ----

bool Runtime::Subscribe(EventSink* sink, bool include_existing) {
  base::MutexLock l(&mu_);  // no device or pool event can be published while we hold it
  if (include_existing) {
    std::vector<v1::Event> existing;
    for (const auto& [id, d] : devices_) {
      v1::Event& ev = existing.emplace_back();
      ev.set_type(v1::EVENT_TYPE_DEVICE_ADD);
      std::vector<uint64_t> ids;
      for (const auto& [pid, p] : pools_) {
        if (p->device == d) ids.push_back(pid);
      }
      FillDevice(*d, ids, ev.mutable_device());
    }
    for (const auto& [id, p] : pools_) {
      v1::Event& ev = existing.emplace_back();
      ev.set_type(v1::EVENT_TYPE_POOL_ADD);
      FillPool(*p, ev.mutable_pool());
    }
    const int64_t now_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                               std::chrono::system_clock::now().time_since_epoch())
                               .count();
    for (v1::Event& ev : existing) {
      ev.set_time_ns(now_ns);  // seq stays 0: a replay of what exists, not a change
      sink->OnEvent(ev);
    }
  }
  return events_.Subscribe(sink);
}

void Runtime::Unsubscribe(EventSink* sink) { events_.Unsubscribe(sink); }

void Runtime::CloseEvents() { events_.Close(); }

void Runtime::FlushQueueTick() {
  std::vector<std::shared_ptr<DeviceEntry>> devs;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return;
    for (const auto& [id, d] : devices_) devs.push_back(d);
  }
  for (auto& d : devs) {
    dma::IommuDomain* domain = d->nic->device().domain();
    if (domain != nullptr && domain->mode() == dma::IommuMode::kLazy) domain->FlushQueues();
  }
}

void Runtime::ReleaseRetryTick() {
  std::vector<std::shared_ptr<DeviceEntry>> devs;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return;
    for (const auto& [id, d] : devices_) devs.push_back(d);
  }
  uint64_t now = base::Clock::Real()->NowNanos();
  for (auto& d : devs) d->nic->ReleaseRetry(now);

  base::MutexLock l(&mu_);
  for (auto it = pools_.begin(); it != pools_.end();) {
    PoolEntry& p = *it->second;
    if (!p.pool->destroyed()) {
      ++it;
      continue;
    }
    int64_t inflight = p.pool->inflight();
    bool gone = p.device->nic->FindPool(p.id) == nullptr || p.pool->info().released;
    if (gone || inflight <= 0) {
      v1::Event ev;
      ev.set_type(v1::EVENT_TYPE_POOL_DELETE);
      FillPool(p, ev.mutable_pool());
      events_.Publish(std::move(ev));
      it = pools_.erase(it);
      continue;
    }
    if (inflight != p.reported_inflight) {
      p.reported_inflight = inflight;
      v1::Event ev;
      ev.set_type(v1::EVENT_TYPE_POOL_CHANGE);
      FillPool(p, ev.mutable_pool());
      events_.Publish(std::move(ev));
    }
    ++it;
  }
}

ShutdownReport Runtime::Shutdown() {
  events_.Close();
  std::vector<std::shared_ptr<PoolEntry>> live;
  ShutdownReport rep;
  {
    base::MutexLock l(&mu_);
    shut_down_ = true;
    rep.devices = devices_.size();
    for (const auto& [id, p] : pools_) live.push_back(p);
  }
  rep.pools_created = backend_->pools_created.load();
  for (auto& p : live) {
    base::MutexLock napi(&p->napi_mu);
    if (p->napi_stopped || p->pool->destroyed()) continue;
    p->napi_stopped = true;
    auto r = p->device->nic->DestroyPool(p->id);
    if (!r.ok()) continue;
    ++rep.pools;
    rep.inflight_at_destroy += r->inflight_at_destroy > 0 ? uint64_t(r->inflight_at_destroy) : 0;
    rep.pages_unmapped += r->pages_unmapped;
  }
  base::MutexLock l(&mu_);
  for (const auto& [id, d] : devices_) rep.violations += d->nic->device().violations().Total();
  return rep;
}

// ---- Metrics ----

void Runtime::AppendMetrics(std::string* out) {
  std::vector<std::shared_ptr<DeviceEntry>> devs;
  std::vector<std::shared_ptr<PoolEntry>> pools;
  {
    base::MutexLock l(&mu_);
    for (const auto& [id, d] : devices_) devs.push_back(d);
    for (const auto& [id, p] : pools_) pools.push_back(p);
  }
  MetricsText m(out);
  const pool::PhysMemory& mem = *backend_->memory;
  m.Family("memory_frames", "gauge", "Frames (4 KiB) of simulated physical memory.");
  m.Sample("memory_frames", {}, mem.frames());
  m.Family("memory_frames_free", "gauge", "Free frames of simulated physical memory.");
  m.Sample("memory_frames_free", {}, mem.frames_free());
  m.Family("devices", "gauge", "Devices by state.");
  uint64_t bound = 0;
  for (auto& d : devs) bound += d->nic->bound() ? 1 : 0;
  m.Sample("devices", {{"state", "bound"}}, bound);
  m.Sample("devices", {{"state", "unbound"}}, uint64_t(devs.size() - bound));
  m.Family("pools_created_total", "counter", "Pools ever created.");
  m.Sample("pools_created_total", {}, backend_->pools_created.load());

  struct PoolRow {
    std::string id, ifindex, strategy;
    pool::PagePoolInfo info;
  };
  std::vector<PoolRow> rows;
  for (auto& p : pools) {
    rows.push_back({std::to_string(p->id), std::to_string(p->device->id),
                    std::string(pool::DestroyStrategyName(p->pool->strategy())), p->pool->info()});
  }
  auto pool_gauge = [&](const char* name, const char* type, const char* help, auto get) {
    m.Family(name, type, help);
    for (const PoolRow& r : rows) {
      m.Sample(name, {{"pool_id", r.id}, {"ifindex", r.ifindex}, {"strategy", r.strategy}},
               uint64_t(get(r.info)));
    }
  };
  using I = pool::PagePoolInfo;
  pool_gauge("pool_inflight", "gauge", "Pages of the pool in flight (hold_cnt - release_cnt).",
             [](const I& i) { return i.inflight > 0 ? i.inflight : 0; });
  pool_gauge("pool_inflight_mem_bytes", "gauge", "Bytes of the pool's pages in flight.",
             [](const I& i) { return i.inflight_mem; });
  pool_gauge("pool_dma_mapped", "gauge", "Pages of the pool DMA-mapped now.",
             [](const I& i) { return i.dma_mapped; });
  pool_gauge("pool_detached", "gauge", "1 when the pool was destroyed with pages still in flight.",
             [](const I& i) { return i.destroyed ? 1 : 0; });
  pool_gauge("pool_alloc_fast_total", "counter", "Allocations from the alloc cache.",
             [](const I& i) { return i.stats.alloc_fast; });
  pool_gauge("pool_alloc_slow_total", "counter", "Order-0 slow-path allocations.",
             [](const I& i) { return i.stats.alloc_slow; });
  pool_gauge("pool_alloc_slow_high_order_total", "counter", "Higher-order slow-path allocations.",
             [](const I& i) { return i.stats.alloc_slow_high_order; });
  pool_gauge("pool_alloc_empty_total", "counter", "Refills that found the ptr_ring empty.",
             [](const I& i) { return i.stats.alloc_empty; });
  pool_gauge("pool_alloc_refill_total", "counter", "Alloc cache refills from the ptr_ring.",
             [](const I& i) { return i.stats.alloc_refill; });
  pool_gauge("pool_alloc_waive_total", "counter", "Ring pages waived at refill (other NUMA node).",
             [](const I& i) { return i.stats.alloc_waive; });
  pool_gauge("pool_recycle_cached_total", "counter", "Pages recycled into the alloc cache.",
             [](const I& i) { return i.stats.recycle_cached; });
  pool_gauge("pool_recycle_cache_full_total", "counter", "Direct recycles that found the cache full.",
             [](const I& i) { return i.stats.recycle_cache_full; });
  pool_gauge("pool_recycle_ring_total", "counter", "Pages recycled into the ptr_ring.",
             [](const I& i) { return i.stats.recycle_ring; });
  pool_gauge("pool_recycle_ring_full_total", "counter", "Recycles that found the ptr_ring full.",
             [](const I& i) { return i.stats.recycle_ring_full; });
  pool_gauge("pool_recycle_released_refcnt_total", "counter",
             "Pages released because their refcount was not 1.",
             [](const I& i) { return i.stats.recycle_released_refcnt; });
  pool_gauge("pool_index_bytes", "gauge", "Bytes of the pool's in-flight index nodes.",
             [](const I& i) { return i.index.node_bytes; });

  struct DevRow {
    std::string id, mode;
    dma::DomainStats s;
    dma::CheckerCounters v;
    uint64_t live;
  };
  std::vector<DevRow> drows;
  for (auto& d : devs) {
    const dma::Device& dev = d->nic->device();
    drows.push_back({std::to_string(d->id), v1::IommuMode_Name(d->mode), dev.domain_stats(),
                     dev.violations(), dev.live_mappings()});
  }
  auto dom = [&](const char* name, const char* type, const char* help, auto get) {
    m.Family(name, type, help);
    for (const DevRow& r : drows) {
      m.Sample(name, {{"device_id", r.id}, {"iommu_mode", r.mode}}, uint64_t(get(r)));
    }
  };
  dom("domain_table_pages", "gauge", "I/O page-table pages linked now.",
      [](const DevRow& r) { return r.s.table_pages; });
  dom("domain_table_bytes", "gauge", "I/O page-table bytes linked now.",
      [](const DevRow& r) { return r.s.table_bytes; });
  dom("domain_mapped_pages", "gauge", "4 KiB pages mapped now.",
      [](const DevRow& r) { return r.s.mapped_pages; });
  dom("domain_live_mappings", "gauge", "DMA mappings live now (mapping checker).",
      [](const DevRow& r) { return r.live; });
  dom("domain_tables_freed_total", "counter", "Page tables unlinked from the table.",
      [](const DevRow& r) { return r.s.tables_freed; });
  dom("domain_maps_total", "counter", "Page-table map operations.",
      [](const DevRow& r) { return r.s.maps; });
  dom("domain_unmaps_total", "counter", "Page-table unmap operations.",
      [](const DevRow& r) { return r.s.unmaps; });
  dom("domain_iotlb_flushes_total", "counter", "IOTLB invalidations issued.",
      [](const DevRow& r) { return r.s.iotlb_flushes; });
  m.Family("domain_violations_total", "counter", "Mapping-checker violations, by kind.");
  for (const DevRow& r : drows) {
    const std::pair<const char*, uint64_t> kinds[] = {
        {"double_unmap", r.v.double_unmap},
        {"unknown_unmap", r.v.unknown_unmap},
        {"size_mismatch", r.v.size_mismatch},
        {"direction_mismatch", r.v.direction_mismatch},
        {"live_at_unbind", r.v.live_at_unbind},
        {"call_after_unbind", r.v.call_after_unbind},
        {"sync_unknown", r.v.sync_unknown},
    };
    for (const auto& [kind, v] : kinds) {
      m.Sample("domain_violations_total", {{"device_id", r.id}, {"kind", kind}}, v);
    }
  }
}

}  // namespace pagepool::server
