// File: dma/device.cc
//
// The DMA-API facade over an IommuDomain (or passthrough) and the mapping checker.
#include "dma/device.h"

#include <array>
#include <atomic>
#include <string>
#include <string_view>
#include <thread>
#include <utility>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/mutex.h"
#include "base/strings.h"
#include "base/thread_slot.h"
#include "dma/iommu_domain.h"
#include "dma/iova_allocator.h"
#include "dma/mapping_checker.h"

namespace pagepool::dma {
namespace {

constexpr unsigned kSlots = 16;  // in-flight counters; a power of two

// One thread slot's in-flight call count and its share of the call totals (kept per slot so the hot
// path never writes a cache line that every thread writes).
struct alignas(64) Slot {
  std::atomic<int64_t> inflight{0};
  std::atomic<uint64_t> map_calls{0};
  std::atomic<uint64_t> unmap_calls{0};
  std::atomic<uint64_t> sync_calls{0};
};

bool ValidDirection(DmaDirection dir) {
  return dir == DmaDirection::kBidirectional || dir == DmaDirection::kToDevice ||
         dir == DmaDirection::kFromDevice;
}

// The device reads memory for kToDevice, writes it for kFromDevice.
uint32_t ProtFor(DmaDirection dir) {
  switch (dir) {
    case DmaDirection::kToDevice: return kProtRead;
    case DmaDirection::kFromDevice: return kProtWrite;
    case DmaDirection::kBidirectional: break;
  }
  return kProtRead | kProtWrite;
}

// Rounds a byte size up to whole 4 KiB pages. REQUIRES: size > 0 and no overflow (checked by
// callers).
uint64_t PagesOf(uint64_t size) { return (size + kPageSize - 1) >> kPageShift; }

}  // namespace

struct Device::Impl {
  // Registers a call in flight on this thread's slot; ok() is false if the device is (being)
  // unbound, in which case the call must refuse. See "Unbind vs concurrent calls" in device.h.
  class CallGuard {
   public:
    explicit CallGuard(Impl& d) : slot_(d.slots[base::ThreadSlot() & (kSlots - 1)]) {
      slot_.inflight.fetch_add(1, std::memory_order_seq_cst);
      ok_ = d.bound.load(std::memory_order_seq_cst);
    }
    ~CallGuard() { slot_.inflight.fetch_sub(1, std::memory_order_release); }
    CallGuard(const CallGuard&) = delete;
    CallGuard& operator=(const CallGuard&) = delete;
    bool ok() const { return ok_; }
    Slot& slot() { return slot_; }

   private:
    Slot& slot_;
    bool ok_;
  };

  absl::Status RefuseUnbound(std::string_view call) {
    checker.OnCallAfterUnbind();
    return absl::FailedPreconditionError(
        absl::StrCat("DMA-API call ", base::AbslView(call), " on unbound device ", config.name));
  }

  // INVALID_ARGUMENT (not counted by the checker) for a direction outside the enum.
  absl::Status CheckDirection(std::string_view call, DmaDirection dir) const {
    if (ValidDirection(dir)) return absl::OkStatus();
    return absl::InvalidArgumentError(absl::StrCat(base::AbslView(call), " on device ", config.name,
                                                   ": invalid direction ", static_cast<int>(dir)));
  }

  // Unmaps a mapping the checker has just accepted from the domain, releasing its IOVA range after
  // the invalidation (now in strict mode, at the flush in lazy mode). Passthrough: nothing to do.
  absl::Status UnmapFromDomain(DmaAddr addr, uint64_t size, IotlbGather* gather = nullptr) {
    if (domain == nullptr) return absl::OkStatus();
    absl::Status st;
    if (gather != nullptr) {
      st = domain->UnmapPages(addr, kPageSize, PagesOf(size), gather, /*release_iova=*/true)
               .status();
    } else {
      st = domain->Unmap(addr, PagesOf(size) << kPageShift, /*release_iova=*/true);
    }
    if (st.ok()) return st;
    return absl::InternalError(absl::StrCat(
        "unmap_page on device ", config.name, " (iova ", base::Hex(addr), ", ", size,
        " bytes): the checker knew the mapping but the domain refused: ", st.ToString()));
  }

  // dma_sync_single_for_device / _for_cpu: both only check and count (see device.h).
  absl::Status Sync(std::string_view call, DmaAddr addr, uint64_t offset, uint64_t size,
                    DmaDirection dir) {
    // dma_sync_single_for_*: `if (dma_dev_need_sync(dev))` around the real sync.
    if (config.coherence == DmaCoherence::kCoherent) return absl::OkStatus();
    if (!bound.load(std::memory_order_acquire)) return RefuseUnbound(call);
    CallGuard guard(*this);
    if (!guard.ok()) return RefuseUnbound(call);
    if (absl::Status st = CheckDirection(call, dir); !st.ok()) return st;
    if (absl::Status st = checker.OnSync(addr, offset, size, dir); !st.ok()) {
      return base::Annotate(st, absl::StrCat(base::AbslView(call), " on device ", config.name));
    }
    guard.slot().sync_calls.fetch_add(1, std::memory_order_relaxed);
    return absl::OkStatus();
  }

  template <typename Member>
  uint64_t SumSlots(Member member) const {
    uint64_t n = 0;
    for (const Slot& s : slots) n += (s.*member).load(std::memory_order_relaxed);
    return n;
  }

  DeviceConfig config;
  std::unique_ptr<IommuDomain> domain;  // nullptr in passthrough
  MappingChecker checker;
  std::atomic<bool> bound{true};
  std::array<Slot, kSlots> slots;
  base::Mutex unbind_mu;  // serialises Unbind calls
};

Device::Device() : impl_(std::make_unique<Impl>()) {}
Device::~Device() = default;

absl::StatusOr<std::unique_ptr<Device>> Device::Create(const DeviceConfig& config) {
  if (config.address_width != 39 && config.address_width != 48 && config.address_width != 57) {
    return absl::InvalidArgumentError(absl::StrCat("device ", config.name, ": address width ",
                                                   config.address_width,
                                                   " bits is not supported (39, 48 or 57)"));
  }
  if (config.dma_mask_bits != 0 &&
      (config.dma_mask_bits < kMinDmaMaskBits || config.dma_mask_bits > config.address_width)) {
    return absl::InvalidArgumentError(
        absl::StrCat("device ", config.name, ": DMA mask of ", config.dma_mask_bits,
                     " bits is outside ", kMinDmaMaskBits, " .. ", config.address_width,
                     " (one page above IOVA 0 up to the address width; 0: the address width)"));
  }
  if (config.mode != IommuMode::kStrict && config.mode != IommuMode::kLazy &&
      config.mode != IommuMode::kPassthrough) {
    return absl::InvalidArgumentError(absl::StrCat("device ", config.name, ": unknown IOMMU mode ",
                                                   static_cast<int>(config.mode)));
  }
  if (config.coherence != DmaCoherence::kNonCoherent &&
      config.coherence != DmaCoherence::kCoherent && config.coherence != DmaCoherence::kSwiotlb) {
    return absl::InvalidArgumentError(absl::StrCat(
        "device ", config.name, ": unknown DMA coherence ", static_cast<int>(config.coherence)));
  }
  std::unique_ptr<Device> dev(new Device());
  dev->impl_->config = config;
  if (config.dma_mask_bits == 0) dev->impl_->config.dma_mask_bits = config.address_width;
  if (config.mode != IommuMode::kPassthrough) {
    DomainConfig dc;
    dc.mode = config.mode;
    dc.free_empty_tables = config.free_empty_tables;
    dc.address_width = config.address_width;
    dc.model_iotlb = config.model_iotlb;
    dc.fq_timer = config.fq_timer;
    // iommu_dma_alloc_iova caps every IOVA at the device's DMA mask.
    dc.iova_limit_bits = dev->impl_->config.dma_mask_bits;
    auto domain = IommuDomain::Create(dc);
    if (!domain.ok()) return base::Annotate(domain.status(), absl::StrCat("device ", config.name));
    dev->impl_->domain = *std::move(domain);
    if (dev->impl_->domain->iova() == nullptr) {
      return absl::InternalError(
          absl::StrCat("device ", config.name, ": domain has no IOVA allocator"));
    }
  }
  return dev;
}

absl::StatusOr<DmaAddr> Device::MapPage(PhysAddr phys, uint64_t size, DmaDirection dir) {
  Impl& d = *impl_;
  if (!d.bound.load(std::memory_order_acquire)) return d.RefuseUnbound("map_page");
  Impl::CallGuard guard(d);
  if (!guard.ok()) return d.RefuseUnbound("map_page");

  if (size == 0 || size > ~uint64_t{0} - kPageSize || (phys & (kPageSize - 1)) != 0 ||
      !ValidDirection(dir) || phys > ~uint64_t{0} - size) {
    return absl::InvalidArgumentError(
        absl::StrCat("map_page on device ", d.config.name, ": invalid arguments (phys ",
                     base::Hex(phys), ", size ", size, ", direction ", static_cast<int>(dir),
                     "): size must be > 0, phys 4 KiB aligned, direction 0-2"));
  }
  const uint64_t pages = PagesOf(size);

  if (d.domain == nullptr) {  // passthrough: the bus address is the physical address
    const unsigned mask_bits = d.config.dma_mask_bits;
    if (mask_bits < 64 && phys + size > (uint64_t{1} << mask_bits)) {
      return absl::InvalidArgumentError(
          absl::StrCat("map_page on device ", d.config.name, ": [", base::Hex(phys), ", +", size,
                       ") is beyond the device's ", mask_bits, "-bit DMA mask"));
    }
    d.checker.OnMap(phys, phys, size, dir);
    guard.slot().map_calls.fetch_add(1, std::memory_order_relaxed);
    return phys;
  }

  IovaAllocator* iova = d.domain->iova();
  absl::StatusOr<uint64_t> pfn = iova->Alloc(pages);
  if (!pfn.ok()) {
    return base::Annotate(pfn.status(),
                          absl::StrCat("map_page on device ", d.config.name, " (", size, " bytes, ",
                                       d.config.dma_mask_bits, "-bit DMA mask)"));
  }
  const DmaAddr addr = *pfn << kPageShift;
  absl::Status st = d.domain->Map(addr, phys, pages << kPageShift, ProtFor(dir));
  if (!st.ok()) {
    iova->Free(*pfn, pages);  // unwind: nothing was mapped
    return base::Annotate(
        st, absl::StrCat("map_page on device ", d.config.name, " (iova ", base::Hex(addr),
                         ", phys ", base::Hex(phys), ", ", size, " bytes)"));
  }
  d.checker.OnMap(addr, phys, size, dir);
  guard.slot().map_calls.fetch_add(1, std::memory_order_relaxed);
  return addr;
}

absl::Status Device::UnmapPage(DmaAddr addr, uint64_t size, DmaDirection dir) {
  Impl& d = *impl_;
  if (!d.bound.load(std::memory_order_acquire)) return d.RefuseUnbound("unmap_page");
  Impl::CallGuard guard(d);
  if (!guard.ok()) return d.RefuseUnbound("unmap_page");
  if (absl::Status st = d.CheckDirection("unmap_page", dir); !st.ok()) return st;
  // The checker accepts only the exact size and direction of a live mapping (so size > 0 here).
  if (absl::Status st = d.checker.OnUnmap(addr, size, dir); !st.ok()) {
    return base::Annotate(st, absl::StrCat("unmap_page on device ", d.config.name));
  }
  if (absl::Status st = d.UnmapFromDomain(addr, size); !st.ok()) return st;
  guard.slot().unmap_calls.fetch_add(1, std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status Device::DmaWrite(DmaAddr addr, uint64_t size) {
  Impl& d = *impl_;
  if (size == 0 || addr > ~uint64_t{0} - size) {
    return absl::InvalidArgumentError(
        absl::StrCat("DMA write by device ", d.config.name, ": invalid range (addr ",
                     base::Hex(addr), ", size ", size, "): size must be > 0 and not wrap"));
  }
  Impl::CallGuard guard(d);
  if (!guard.ok()) {
    return absl::FailedPreconditionError(
        absl::StrCat("DMA write by device ", d.config.name, ": the device is unbound"));
  }
  if (d.domain == nullptr) return absl::OkStatus();
  const DmaAddr last = (addr + size - 1) & ~(kPageSize - 1);
  for (DmaAddr page = addr & ~(kPageSize - 1);; page += kPageSize) {
    absl::StatusOr<PhysAddr> pa = d.domain->Translate(page, /*write=*/true);
    if (!pa.ok()) {
      return base::Annotate(pa.status(), absl::StrCat("DMA write by device ", d.config.name));
    }
    if (page == last) break;
  }
  return absl::OkStatus();
}

void Device::PrefetchUnmap(DmaAddr addr) {
  Impl& d = *impl_;
  if (d.bound.load(std::memory_order_relaxed)) d.checker.Prefetch(addr);
}

absl::Status Device::UnmapPages(absl::Span<const DmaAddr> addrs, uint64_t size, DmaDirection dir) {
  IotlbGather gather;
  absl::Status st = UnmapPagesGather(addrs, size, dir, &gather);
  IotlbSync(&gather);
  return st;
}

void Device::IotlbSync(IotlbGather* gather) {
  if (impl_->domain != nullptr) impl_->domain->IotlbSync(gather);
}

absl::Status Device::UnmapPagesGather(absl::Span<const DmaAddr> addrs, uint64_t size,
                                      DmaDirection dir, IotlbGather* gather) {
  Impl& d = *impl_;
  if (addrs.empty()) return absl::OkStatus();
  auto refuse_all = [&] {
    for (size_t i = 1; i < addrs.size(); ++i) d.checker.OnCallAfterUnbind();
    return d.RefuseUnbound("unmap_page");
  };
  if (!d.bound.load(std::memory_order_acquire)) return refuse_all();
  Impl::CallGuard guard(d);
  if (!guard.ok()) return refuse_all();
  if (absl::Status st = d.CheckDirection("unmap_page", dir); !st.ok()) return st;
  absl::Status first_error;
  uint64_t unmapped = 0;
  constexpr size_t kChunk = 256;
  bool ok[kChunk];
  for (size_t base = 0; base < addrs.size(); base += kChunk) {
    const absl::Span<const DmaAddr> chunk = addrs.subspan(base, kChunk);
    if (absl::Status st = d.checker.OnUnmapBatch(chunk, size, dir, absl::MakeSpan(ok, kChunk));
        !st.ok() && first_error.ok()) {
      first_error = base::Annotate(st, absl::StrCat("unmap_page on device ", d.config.name));
    }
    for (size_t i = 0; i < chunk.size(); ++i) {
      if (!ok[i]) continue;
      if (absl::Status st = d.UnmapFromDomain(chunk[i], size, gather); !st.ok()) {
        if (first_error.ok()) first_error = std::move(st);
        continue;
      }
      ++unmapped;
    }
  }
  guard.slot().unmap_calls.fetch_add(unmapped, std::memory_order_relaxed);
  return first_error;
}

absl::Status Device::SyncForDevice(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir) {
  return impl_->Sync("sync_single_for_device", addr, offset, size, dir);
}

absl::Status Device::SyncForCpu(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir) {
  return impl_->Sync("sync_single_for_cpu", addr, offset, size, dir);
}

absl::Status Device::Unbind() {
  Impl& d = *impl_;
  base::MutexLock l(&d.unbind_mu);
  if (!d.bound.load(std::memory_order_relaxed)) {
    d.checker.OnCallAfterUnbind();
    return absl::FailedPreconditionError(
        absl::StrCat("unbind of device ", d.config.name, ": already unbound"));
  }
  d.bound.store(false, std::memory_order_seq_cst);
  // Wait for calls that registered before they could see `bound` cleared.
  for (Slot& s : d.slots) {
    while (s.inflight.load(std::memory_order_seq_cst) != 0) std::this_thread::yield();
  }
  absl::Status first_error;
  d.checker.OnUnbind([&](DmaAddr addr, uint64_t size, DmaDirection) {
    if (d.domain == nullptr) return;
    absl::Status st = d.domain->Unmap(addr, PagesOf(size) << kPageShift, /*release_iova=*/true);
    if (!st.ok() && first_error.ok()) first_error = st;
  });
  // The device is gone for good: give back what it kept for its past mappings (the checker's
  // history; the domain's queued, RCU-deferred and cached tables), as the kernel frees the domain
  // and its IOVA caches when the device is released.
  d.checker.ReleaseHistory();
  if (d.domain != nullptr) {
    d.domain->FlushQueues();
    d.domain->ReleaseCaches();
  }
  if (!first_error.ok()) {
    return absl::InternalError(
        absl::StrCat("unbind of device ", d.config.name,
                     ": tearing down a live mapping failed: ", first_error.ToString()));
  }
  return absl::OkStatus();
}

bool Device::bound() const { return impl_->bound.load(std::memory_order_acquire); }
const std::string& Device::name() const { return impl_->config.name; }
IommuMode Device::mode() const { return impl_->config.mode; }
DmaCoherence Device::coherence() const { return impl_->config.coherence; }
bool Device::need_sync() const { return impl_->config.coherence != DmaCoherence::kCoherent; }
unsigned Device::address_width() const { return impl_->config.address_width; }
unsigned Device::dma_mask_bits() const { return impl_->config.dma_mask_bits; }
IommuDomain* Device::domain() const { return impl_->domain.get(); }
CheckerCounters Device::violations() const { return impl_->checker.counters(); }
uint64_t Device::live_mappings() const { return impl_->checker.live_mappings(); }
uint64_t Device::map_calls() const { return impl_->SumSlots(&Slot::map_calls); }
uint64_t Device::unmap_calls() const { return impl_->SumSlots(&Slot::unmap_calls); }
uint64_t Device::sync_calls() const { return impl_->SumSlots(&Slot::sync_calls); }

DomainStats Device::domain_stats() const {
  if (impl_->domain == nullptr) {
    DomainStats st;
    st.maps = map_calls();
    st.unmaps = unmap_calls();
    return st;
  }
  return impl_->domain->stats();
}

bool Device::model_iotlb() const { return impl_->domain != nullptr && impl_->config.model_iotlb; }

}  // namespace pagepool::dma
