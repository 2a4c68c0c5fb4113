// File: server/runtime.cc
//
// Runtime: creation, devices, pools, events, ticks and shutdown. Page batches are in
// runtime_pages.cc, the Prometheus output in runtime_metrics.cc, the wire conversion in
// wire_convert.cc.
#include "server/runtime.h"

#include <algorithm>
#include <chrono>
#include <iostream>
#include <utility>

#include "absl/strings/str_cat.h"
#include "base/clock.h"
#include "base/strings.h"
#include "dma/device.h"
#include "dma/iommu_domain.h"

namespace pagepool::server {
namespace v1 = ::pagepool::v1;
using internal::DeviceEntry;
using internal::PoolRef;

namespace {

// Sums what destroy paths did; each pool's inflight counted from 0 up.
template <typename Out>
void AddDestroyed(const std::vector<pool::PoolDestroyed>& destroyed, Out* out) {
  for (const pool::PoolDestroyed& d : destroyed) {
    const int64_t inflight = d.result.inflight_at_destroy;
    out->inflight_at_destroy += inflight > 0 ? uint64_t(inflight) : 0;
    out->pages_unmapped += d.result.pages_unmapped;
  }
}

// The counts an UnbindDeviceResponse and a ShutdownReport share.
struct DestroySums {
  uint64_t inflight_at_destroy = 0;
  uint64_t pages_unmapped = 0;
};

int64_t WallNanos() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::system_clock::now().time_since_epoch())
      .count();
}

absl::Status ShuttingDown(std::string_view call) {
  return absl::UnavailableError(
      absl::StrCat(base::AbslView(call), ": the daemon is shutting down"));
}

}  // namespace

// ---- Creation and lookups ----

absl::StatusOr<std::unique_ptr<Runtime>> Runtime::Create(const RuntimeOptions& options) {
  pool::PhysMemoryConfig mc;
  mc.bytes = options.memory_bytes;
  auto memory = pool::PhysMemory::Create(mc);
  if (!memory.ok()) return base::Annotate(memory.status(), "simulated memory");
  return std::unique_ptr<Runtime>(new Runtime(options, std::move(*memory)));
}

Runtime::Runtime(const RuntimeOptions& options, std::shared_ptr<pool::PhysMemory> memory)
    : options_(options), memory_(std::move(memory)) {}

Runtime::~Runtime() {
  std::map<uint64_t, std::shared_ptr<DeviceEntry>> devices;
  {
    base::MutexLock l(&mu_);
    devices.swap(devices_);
  }
  devices.clear();  // ~Nic destroys pools still live, in their NAPI contexts: not under mu_
}

Runtime::DeviceList Runtime::DevicesLocked() const {
  DeviceList out;
  out.reserve(devices_.size());
  for (const auto& [id, d] : devices_) out.push_back(d);
  return out;
}

Runtime::DeviceList Runtime::Devices() const {
  base::MutexLock l(&mu_);
  return DevicesLocked();
}

PoolRef Runtime::FindPoolLocked(uint64_t pool_id) const {
  for (const auto& [id, d] : devices_) {
    if (std::shared_ptr<pool::NicPool> p = d->nic->FindNicPool(pool_id)) {
      return PoolRef{d, p, LedgerLocked(pool_id)};
    }
  }
  return PoolRef{};
}

std::shared_ptr<FragLedger> Runtime::LedgerLocked(uint64_t pool_id) const {
  auto it = ledgers_.find(pool_id);
  return it == ledgers_.end() ? nullptr : it->second;
}

void Runtime::FillPoolLocked(const DeviceEntry& device, const pool::PagePool& p,
                             v1::Pool* out) const {
  std::shared_ptr<FragLedger> ledger = LedgerLocked(p.id());
  FillPool(device.spec.id, p, out, ledger == nullptr ? 0 : ledger->refused());
}

std::vector<PoolRef> Runtime::PoolsLocked(uint64_t device_id) const {
  std::vector<PoolRef> out;
  for (const auto& [id, d] : devices_) {
    if (device_id != 0 && id != device_id) continue;
    for (std::shared_ptr<pool::NicPool>& p : d->nic->NicPools()) {
      std::shared_ptr<FragLedger> ledger = LedgerLocked(p->id());
      out.push_back({d, std::move(p), std::move(ledger)});
    }
  }
  std::sort(out.begin(), out.end(),
            [](const PoolRef& a, const PoolRef& b) { return a.pool->id() < b.pool->id(); });
  return out;
}

size_t Runtime::PoolCountLocked() const {
  size_t n = 0;
  for (const auto& [id, d] : devices_) n += d->nic->pool_count();
  return n;
}

absl::StatusOr<std::shared_ptr<DeviceEntry>> Runtime::FindDevice(uint64_t id) {
  base::MutexLock l(&mu_);
  if (shut_down_) return absl::UnavailableError("the daemon is shutting down");
  auto it = devices_.find(id);
  if (it == devices_.end()) return absl::NotFoundError(absl::StrCat("device ", id, " not found"));
  return it->second;
}

absl::StatusOr<PoolRef> Runtime::FindPool(uint64_t id) {
  base::MutexLock l(&mu_);
  if (shut_down_) return absl::UnavailableError("the daemon is shutting down");
  PoolRef ref = FindPoolLocked(id);
  if (ref.pool == nullptr) {
    return absl::NotFoundError(absl::StrCat("pool ", id, " not found (never created, or deleted)"));
  }
  return ref;
}

// ---- Events ----

void Runtime::PublishPool(v1::EventType type, const DeviceEntry& device, const pool::PagePool& p) {
  v1::Event ev;
  ev.set_type(type);
  FillPoolLocked(device, p, ev.mutable_pool());
  events_.Publish(std::move(ev));
}

void Runtime::PublishDevice(v1::EventType type, const v1::Device& device) {
  v1::Event ev;
  ev.set_type(type);
  *ev.mutable_device() = device;
  events_.Publish(std::move(ev));
}

void Runtime::PublishDestroyed(const DeviceEntry& device,
                               const std::vector<pool::PoolDestroyed>& destroyed) {
  for (const pool::PoolDestroyed& d : destroyed) {
    if (!d.destroyed()) continue;  // other users still hold it: it is as live as before
    PublishPool(d.forgotten ? v1::EVENT_TYPE_POOL_DELETE : v1::EVENT_TYPE_POOL_DETACH, device,
                *d.pool);
    if (d.forgotten) ledgers_.erase(d.pool->id());  // nothing in flight: no fragment is held
  }
}

bool Runtime::Subscribe(EventSink* sink, bool include_existing) {
  base::MutexLock l(&mu_);  // no device or pool event can be published while we hold it
  if (include_existing) {
    std::vector<v1::Event> existing;
    for (const auto& [id, d] : devices_) {
      v1::Event& ev = existing.emplace_back();
      ev.set_type(v1::EVENT_TYPE_DEVICE_ADD);
      FillDevice(d->spec, *d->nic, ev.mutable_device());
    }
    for (const PoolRef& p : PoolsLocked()) {
      v1::Event& ev = existing.emplace_back();
      ev.set_type(v1::EVENT_TYPE_POOL_ADD);
      FillPoolLocked(*p.device, p.pool->pool(), ev.mutable_pool());
    }
    const int64_t now_ns = WallNanos();
    for (v1::Event& ev : existing) {
      ev.set_time_ns(now_ns);  // seq stays 0: a replay of what exists, not a change
      sink->OnEvent(ev);
    }
  }
  return events_.Subscribe(sink);
}

void Runtime::Unsubscribe(EventSink* sink) { events_.Unsubscribe(sink); }

void Runtime::CloseEvents() { events_.Close(); }

// ---- Devices ----

absl::Status Runtime::CreateDevice(const v1::CreateDeviceRequest& req, v1::Device* out) {
  if (!v1::IommuMode_IsValid(req.iommu_mode())) {
    return absl::InvalidArgumentError(
        absl::StrCat("CreateDevice: iommu_mode ", req.iommu_mode(), " is not an IommuMode (0..3)"));
  }
  if (!v1::DmaCoherence_IsValid(req.dma_coherence())) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateDevice: dma_coherence ", req.dma_coherence(), " is not a DmaCoherence (0..3)"));
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
  const uint32_t mask_bits = req.dma_mask_bits() == 0 ? width : req.dma_mask_bits();
  if (mask_bits < dma::Device::kMinDmaMaskBits || mask_bits > width) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreateDevice: dma_mask_bits ", req.dma_mask_bits(), " is outside ",
        dma::Device::kMinDmaMaskBits, " .. ", width,
        " (one page of IOVA above IOVA 0 up to the address width; 0: the address width)"));
  }
  auto entry = std::make_shared<DeviceEntry>();
  DeviceSpec& spec = entry->spec;
  spec.mode =
      req.iommu_mode() == v1::IOMMU_MODE_UNSPECIFIED ? v1::IOMMU_MODE_STRICT : req.iommu_mode();
  spec.free_empty_tables = req.has_free_empty_tables() ? req.free_empty_tables() : true;
  spec.address_width = width;
  spec.dma_mask_bits = mask_bits;
  spec.coherence = req.dma_coherence() == v1::DMA_COHERENCE_UNSPECIFIED
                       ? v1::DMA_COHERENCE_NON_COHERENT
                       : req.dma_coherence();
  spec.model_iotlb = req.model_iotlb();

  base::MutexLock l(&mu_);
  if (shut_down_) return ShuttingDown("CreateDevice");
  if (devices_.size() >= options_.max_devices) {
    return absl::ResourceExhaustedError(absl::StrCat("CreateDevice: device limit reached (",
                                                     options_.max_devices, ", --max-devices)"));
  }
  spec.id = next_device_id_;
  spec.name = req.name().empty() ? absl::StrCat("dev", spec.id) : req.name();
  pool::NicConfig nc = ToNicConfig(spec);
  nc.warn = [](std::string_view line) { std::cerr << "pagepoold: " << line << std::endl; };
  auto nic = pool::Nic::Create(memory_, nc);
  if (!nic.ok()) return base::Annotate(nic.status(), "CreateDevice");
  ++next_device_id_;
  entry->nic = std::move(*nic);
  devices_[spec.id] = entry;
  FillDevice(spec, *entry->nic, out);
  PublishDevice(v1::EVENT_TYPE_DEVICE_ADD, *out);
  return absl::OkStatus();
}

absl::Status Runtime::GetDevice(uint64_t device_id, v1::Device* out) {
  base::MutexLock l(&mu_);
  auto it = devices_.find(device_id);
  if (it == devices_.end()) {
    return absl::NotFoundError(absl::StrCat("GetDevice: device ", device_id, " not found"));
  }
  FillDevice(it->second->spec, *it->second->nic, out);
  return absl::OkStatus();
}

void Runtime::ListDevices(v1::ListDevicesResponse* out) {
  base::MutexLock l(&mu_);
  for (const auto& [id, d] : devices_) FillDevice(d->spec, *d->nic, out->add_devices());
}

absl::Status Runtime::UnbindDevice(uint64_t device_id, v1::UnbindDeviceResponse* out) {
  std::shared_ptr<DeviceEntry> dev;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return ShuttingDown("UnbindDevice");
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
  }
  // The Nic stops each pool's NAPI context and destroys the pool in it (page_pool_destroy after
  // napi_disable, as a driver's remove path does), then unbinds the device.
  absl::StatusOr<pool::UnbindResult> r = dev->nic->Unbind();
  if (!r.ok()) return base::Annotate(r.status(), absl::StrCat("UnbindDevice ", device_id));
  DestroySums sums;
  AddDestroyed(r->destroyed, &sums);
  out->set_pools_destroyed(r->pools_destroyed);
  out->set_inflight_at_destroy(sums.inflight_at_destroy);
  out->set_pages_unmapped(sums.pages_unmapped);

  base::MutexLock l(&mu_);
  PublishDestroyed(*dev, r->destroyed);  // pools destroyed before have had their events
  FillDevice(dev->spec, *dev->nic, out->mutable_device());
  PublishDevice(v1::EVENT_TYPE_DEVICE_CHANGE, out->device());
  dev->unbind_done = true;
  return absl::OkStatus();
}

absl::Status Runtime::DeleteDevice(uint64_t device_id, v1::Device* out) {
  std::shared_ptr<DeviceEntry> dev;  // freed after mu_ is dropped, unless a call still holds it
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return ShuttingDown("DeleteDevice");
    auto it = devices_.find(device_id);
    if (it == devices_.end()) {
      return absl::NotFoundError(absl::StrCat("DeleteDevice: device ", device_id, " not found"));
    }
    DeviceEntry& d = *it->second;
    if (d.nic->bound() || (d.unbinding && !d.unbind_done)) {
      return absl::FailedPreconditionError(
          absl::StrCat("DeleteDevice: device ", device_id,
                       d.unbinding ? " is being unbound" : " is bound: unbind it first"));
    }
    if (const size_t pools = d.nic->pool_count(); pools != 0) {
      return absl::FailedPreconditionError(absl::StrCat(
          "DeleteDevice: device ", device_id, " still has ", pools,
          " detached pool(s) with pages in flight; a pool goes at the 1 s tick after its last "
          "page comes back (ListPools shows them)"));
    }
    FillDevice(d.spec, *d.nic, out);
    deleted_violations_ += d.nic->device().violations().Total();
    ++devices_deleted_;
    dev = std::move(it->second);
    devices_.erase(it);
    PublishDevice(v1::EVENT_TYPE_DEVICE_DELETE, *out);
  }
  return absl::OkStatus();
}

absl::Status Runtime::GetDomain(uint64_t device_id, v1::DomainInfo* out) {
  auto dev = FindDevice(device_id);
  if (!dev.ok()) return base::Annotate(dev.status(), "GetDomain");
  FillDomain((*dev)->spec, (*dev)->nic->device(), out);
  return absl::OkStatus();
}

absl::Status Runtime::DumpPageTable(uint64_t device_id, uint64_t start, uint64_t end,
                                    uint64_t limit, std::vector<v1::PageTableEntry>* out) {
  auto dev = FindDevice(device_id);
  if (!dev.ok()) return base::Annotate(dev.status(), "DumpPageTable");
  uint64_t space_end = uint64_t{1} << (*dev)->spec.address_width;
  if (end == 0) end = space_end;
  if (start >= end) {
    return absl::InvalidArgumentError(absl::StrCat("DumpPageTable: start 0x", absl::Hex(start),
                                                   " is not below end 0x", absl::Hex(end)));
  }
  dma::IommuDomain* dom = (*dev)->nic->device().domain();
  if (dom == nullptr) return absl::OkStatus();  // passthrough: no page table, nothing to dump
  dom->ForEachPresent(start, std::min(end, space_end), [&](const dma::PresentEntry& e) {
    FillPageTableEntry(e, &out->emplace_back());
    return limit == 0 || out->size() < limit;
  });
  return absl::OkStatus();
}

absl::Status Runtime::DumpWalkCache(uint64_t device_id, std::vector<v1::WalkCacheEntry>* out) {
  auto dev = FindDevice(device_id);
  if (!dev.ok()) return base::Annotate(dev.status(), "DumpPageTable");
  dma::IommuDomain* dom = (*dev)->nic->device().domain();
  if (dom == nullptr) return absl::OkStatus();  // passthrough (or unbound): no caches
  dom->ForEachWalkCacheEntry(
      [&](const dma::WalkCacheEntry& e) { FillWalkCacheEntry(e, &out->emplace_back()); });
  return absl::OkStatus();
}

// ---- Pools ----

absl::Status Runtime::CreatePool(const v1::CreatePoolRequest& req, v1::Pool* out,
                                 v1::DestroyPoolResponse* replaced) {
  if (req.keep_old_xdp_rxq() && req.replaces_pool_id() == 0) {
    return absl::InvalidArgumentError(
        "CreatePool: keep_old_xdp_rxq is for a queue restart: it needs replaces_pool_id");
  }
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
  DeviceEntry& d = **dev;
  const pool::PagePoolParams params = ToPoolParams(req);
  // A page of order N needs a size-aligned IOVA range of 2^N pages below the DMA mask and above
  // IOVA 0: a device whose mask leaves no such range could never map one.
  const uint32_t need_bits = dma::Device::kMinDmaMaskBits + req.order();
  if ((params.flags & pool::kPpFlagDmaMap) != 0 && d.spec.mode != v1::IOMMU_MODE_PASSTHROUGH &&
      d.spec.dma_mask_bits < need_bits) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreatePool: order ", req.order(), " pages need a DMA mask of at least ", need_bits,
        " bits (a size-aligned IOVA range of ", uint64_t{1} << req.order(),
        " pages above IOVA 0); device ", req.device_id(), " has ", d.spec.dma_mask_bits));
  }
  if (req.replaces_pool_id() != 0) return RestartQueue(req, d, params, out, replaced);

  base::MutexLock l(&mu_);
  if (shut_down_) return ShuttingDown("CreatePool");
  if (d.unbinding || !d.nic->bound()) {
    return absl::FailedPreconditionError(
        absl::StrCat("CreatePool: device ", req.device_id(), " is unbound"));
  }
  if (PoolCountLocked() + pools_reserved_ >= options_.max_pools) {
    return absl::ResourceExhaustedError(absl::StrCat(
        "CreatePool: pool limit reached (", options_.max_pools, " pools exist, --max-pools)"));
  }
  auto p = d.nic->CreateNicPool(params, req.xdp_rxq());
  if (!p.ok()) {
    return base::Annotate(p.status(), absl::StrCat("CreatePool on device ", req.device_id()));
  }
  pools_created_.fetch_add(1, std::memory_order_relaxed);
  ledgers_[(*p)->id()] = std::make_shared<FragLedger>();
  FillPool(d.spec.id, (*p)->pool(), out);
  v1::Event ev;
  ev.set_type(v1::EVENT_TYPE_POOL_ADD);
  *ev.mutable_pool() = *out;
  events_.Publish(std::move(ev));
  return absl::OkStatus();
}

absl::Status Runtime::RestartQueue(const v1::CreatePoolRequest& req, DeviceEntry& d,
                                   const pool::PagePoolParams& params, v1::Pool* out,
                                   v1::DestroyPoolResponse* replaced) {
  const uint64_t old_id = req.replaces_pool_id();
  auto found = FindPool(old_id);
  if (!found.ok()) {
    return base::Annotate(found.status(), absl::StrCat("CreatePool: replaces_pool_id ", old_id));
  }
  const PoolRef old = *std::move(found);
  if (old.device.get() != &d) {
    return absl::InvalidArgumentError(absl::StrCat(
        "CreatePool: replaces_pool_id ", old_id, " is a pool of device ", old.device->spec.id,
        ", not of device ", d.spec.id, " (a queue restart stays on its device)"));
  }
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return ShuttingDown("CreatePool");
    if (d.unbinding || !d.nic->bound()) {
      return absl::FailedPreconditionError(
          absl::StrCat("CreatePool: device ", d.spec.id, " is unbound: no queue restarts"));
    }
    if (PoolCountLocked() + pools_reserved_ >= options_.max_pools) {
      return absl::ResourceExhaustedError(
          absl::StrCat("CreatePool: pool limit reached (", options_.max_pools,
                       " pools exist, --max-pools; a queue restart needs its new pool before the "
                       "old one goes)"));
    }
    ++pools_reserved_;
  }
  bool reserved = true;
  pool::RestartOptions options;
  options.xdp_rxq = req.xdp_rxq();
  options.keep_old_xdp_rxq = req.keep_old_xdp_rxq();
  options.on_created = [&](const std::shared_ptr<pool::NicPool>& created) {
    // Announced before the old queue stops: a watcher sees the new pool's ADD first.
    base::MutexLock l(&mu_);
    --pools_reserved_;
    reserved = false;
    pools_created_.fetch_add(1, std::memory_order_relaxed);
    FillPool(d.spec.id, created->pool(), out);
    v1::Event ev;
    ev.set_type(v1::EVENT_TYPE_POOL_ADD);
    *ev.mutable_pool() = *out;
    events_.Publish(std::move(ev));
  };
  absl::StatusOr<pool::QueueRestart> r = d.nic->RestartQueue(*old.pool, params, options);
  if (reserved) {
    base::MutexLock l(&mu_);
    --pools_reserved_;
  }
  if (!r.ok()) {
    return base::Annotate(r.status(), absl::StrCat("CreatePool: restart of the queue of pool ",
                                                   old_id, " on device ", d.spec.id));
  }
  if (replaced != nullptr) FillDestroyed(r->old, replaced);
  base::MutexLock l(&mu_);
  PublishDestroyed(d, {r->old});
  return absl::OkStatus();
}

absl::Status Runtime::GetPool(uint64_t pool_id, v1::Pool* out) {
  auto p = FindPool(pool_id);
  if (!p.ok()) return base::Annotate(p.status(), "GetPool");
  FillPool(p->device->spec.id, p->pool->pool(), out, p->frags == nullptr ? 0 : p->frags->refused());
  return absl::OkStatus();
}

absl::Status Runtime::ListPools(uint64_t device_id, v1::ListPoolsResponse* out) {
  base::MutexLock l(&mu_);
  if (device_id != 0 && devices_.find(device_id) == devices_.end()) {
    return absl::NotFoundError(absl::StrCat("ListPools: device ", device_id,
                                            " not found (device_id 0 lists every device's pools)"));
  }
  for (const PoolRef& p : PoolsLocked(device_id)) {
    FillPoolLocked(*p.device, p.pool->pool(), out->add_pools());
  }
  return absl::OkStatus();
}

absl::Status Runtime::DestroyPool(uint64_t pool_id, v1::DestroyPoolResponse* out,
                                  bool xdp_rxq_unreg) {
  const char* call = xdp_rxq_unreg ? "DestroyPool (xdp_rxq_unreg)" : "DestroyPool";
  auto found = FindPool(pool_id);
  if (!found.ok()) return base::Annotate(found.status(), call);
  const PoolRef& p = *found;
  absl::StatusOr<pool::PoolDestroyed> d =
      xdp_rxq_unreg ? p.device->nic->XdpRxqUnreg(*p.pool) : p.device->nic->DestroyPool(*p.pool);
  if (!d.ok()) return base::Annotate(d.status(), call);
  FillDestroyed(*d, out);

  base::MutexLock l(&mu_);
  PublishDestroyed(*p.device, {*d});
  return absl::OkStatus();
}

absl::Status Runtime::ListInflight(uint64_t pool_id, InflightCursor* cursor, size_t max,
                                   std::vector<InflightRecord>* out) {
  out->clear();
  if (cursor->pool_.pool == nullptr) {
    auto p = FindPool(pool_id);
    if (!p.ok()) return base::Annotate(p.status(), "ListInflight");
    cursor->pool_ = *std::move(p);
  }
  if (cursor->done_) return absl::OkStatus();
  max = max == 0 ? kInflightChunk : std::min(max, kInflightChunk);
  out->reserve(max);
  const pool::PagePool& pp = cursor->pool_.pool->pool();
  const uint32_t next = pp.ForEachInflightFrom(
      cursor->next_index_id_, max, [&](uint32_t id, pool::PageHandle h, dma::DmaAddr addr) {
        const pool::PpRefInfo refs = pp.PpRefCount(h.frame);
        out->push_back(InflightRecord{id, h.generation, h.frame, addr, uint16_t(refs.pp_ref_count),
                                      uint16_t(std::clamp<int64_t>(refs.user_refs, 0, UINT16_MAX)),
                                      refs.frag_page});
        return true;
      });
  if (next == 0) {
    cursor->done_ = true;
  } else {
    cursor->next_index_id_ = next;
  }
  return absl::OkStatus();
}

// ---- Ticks and shutdown ----

void Runtime::ForEachDomain(absl::FunctionRef<void(dma::IommuDomain&)> fn) {
  DeviceList devs;
  {
    base::MutexLock l(&mu_);
    if (shut_down_) return;
    devs = DevicesLocked();
  }
  for (auto& d : devs) {
    if (dma::IommuDomain* domain = d->nic->device().domain()) fn(*domain);
  }
}

void Runtime::FlushQueueTick() {
  ForEachDomain([](dma::IommuDomain& domain) {
    if (domain.mode() == dma::IommuMode::kLazy) domain.FlushQueues();
  });
}

void Runtime::TrimCachesTick() {
  ForEachDomain([](dma::IommuDomain& domain) { domain.TrimIdleCaches(); });
}

void Runtime::ReleaseRetryTick() {
  // Under mu_ throughout: a pool a Nic forgets here is announced before any lookup, listing or
  // replay can miss it.
  base::MutexLock l(&mu_);
  if (shut_down_) return;
  const uint64_t now = base::Clock::Real()->NowNanos();
  struct Row {
    v1::EventType type;
    const DeviceEntry* device;
    std::shared_ptr<pool::PagePool> pool;
  };
  std::vector<Row> rows;
  std::map<uint64_t, int64_t> reported;
  for (const auto& [id, d] : devices_) {
    std::vector<std::shared_ptr<pool::PagePool>> released;
    d->nic->ReleaseRetry(now, &released);
    for (auto& p : released) rows.push_back({v1::EVENT_TYPE_POOL_DELETE, d.get(), std::move(p)});
    for (std::shared_ptr<pool::PagePool>& p : d->nic->Pools()) {
      if (!p->destroyed()) continue;
      const int64_t inflight = p->inflight();
      if (inflight <= 0) continue;  // the next tick forgets it
      auto last = reported_inflight_.find(p->id());
      reported[p->id()] = inflight;
      if (last != reported_inflight_.end() && last->second == inflight) continue;
      rows.push_back({v1::EVENT_TYPE_POOL_CHANGE, d.get(), std::move(p)});
    }
  }
  reported_inflight_.swap(reported);
  std::sort(rows.begin(), rows.end(),
            [](const Row& a, const Row& b) { return a.pool->id() < b.pool->id(); });
  for (const Row& r : rows) {
    PublishPool(r.type, *r.device, *r.pool);
    if (r.type == v1::EVENT_TYPE_POOL_DELETE) ledgers_.erase(r.pool->id());
  }
}

ShutdownReport Runtime::Shutdown() {
  events_.Close();
  DeviceList devs;
  ShutdownReport rep;
  {
    base::MutexLock l(&mu_);
    shut_down_ = true;
    devs = DevicesLocked();
  }
  rep.devices = devs.size();
  rep.pools_created = pools_created_.load();
  for (auto& d : devs) {
    pool::UnbindResult r = d->nic->DestroyLivePools();
    rep.pools += r.pools_destroyed;
    AddDestroyed(r.destroyed, &rep);
  }
  for (auto& d : devs) rep.violations += d->nic->device().violations().Total();
  {
    base::MutexLock l(&mu_);
    rep.violations += deleted_violations_;
  }
  return rep;
}

}  // namespace pagepool::server
