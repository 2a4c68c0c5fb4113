#include "dma/iommu_domain.h"

#include <memory>
#include <vector>

#include "absl/strings/str_cat.h"
#include "base/strings.h"
#include "dma/internal/flush_queue.h"
#include "dma/internal/io_pgtable.h"
#include "dma/internal/iotlb.h"
#include "dma/internal/pt_table.h"
#include "dma/iova_allocator.h"

namespace pagepool::dma {
namespace {

using internal::DomainCounters;
using internal::FlushQueue;
using internal::FqEntry;
using internal::IoPageTable;
using internal::IotlbGather;

unsigned LevelsForWidth(unsigned width) {
  switch (width) {
    case 39: return 3;
    case 48: return 4;
    case 57: return 5;
    default: return 0;
  }
}

uint64_t Relaxed(const std::atomic<uint64_t>& a) { return a.load(std::memory_order_relaxed); }
uint64_t RelaxedNonNeg(const std::atomic<int64_t>& a) {
  const int64_t v = a.load(std::memory_order_relaxed);
  return v < 0 ? 0 : static_cast<uint64_t>(v);
}

}  // namespace

struct IommuDomain::Impl {
  DomainConfig config;
  unsigned levels = 0;
  uint64_t limit = 0;  // 1 << address_width
  DomainCounters counters;
  std::unique_ptr<IovaAllocator> iova;
  std::unique_ptr<IoPageTable> pt;
  std::unique_ptr<FlushQueue> fq;
  std::unique_ptr<internal::Iotlb> iotlb;  // only with model_iotlb

  // The IOTLB invalidation of one lazy-mode batch, then the release of what it protected.
  void FlushBatch(std::vector<FqEntry>& entries) {
    counters.hot.iotlb_flushes.fetch_add(1, std::memory_order_relaxed);
    counters.hot.iotlb_flushed_entries.fetch_add(entries.size(), std::memory_order_relaxed);
    counters.other.fq_pending.fetch_sub(static_cast<int64_t>(entries.size()),
                                        std::memory_order_relaxed);
    if (iotlb) iotlb->InvalidateAll();  // the flush queue's domain-wide invalidation
    IotlbGather all;
    for (FqEntry& e : entries) {
      if (e.iova_pages != 0) iova->Free(e.iova >> kPageShift, e.iova_pages);
      all.Splice(&e.tables);
    }
    pt->ReleaseGather(&all);
  }

  // Strict-mode (and walk-cache) invalidation of tables unlinked outside an unmap's own flush.
  void FlushAndRelease(IotlbGather* gather) {
    if (gather->empty()) return;
    counters.hot.iotlb_flushes.fetch_add(1, std::memory_order_relaxed);
    if (iotlb) iotlb->InvalidateAll();
    pt->ReleaseGather(gather);
  }

  absl::Status CheckRange(const char* op, DmaAddr iova, uint64_t size) const {
    if (config.mode == IommuMode::kPassthrough) {
      return absl::FailedPreconditionError(
          absl::StrCat(op, ": passthrough domain has no page table (iova ", base::Hex(iova), ")"));
    }
    if (size == 0 || (size & (kPageSize - 1)) != 0) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": size ", base::Hex(size), " at iova ",
                                                     base::Hex(iova),
                                                     " is not a non-zero multiple of 4 KiB"));
    }
    if ((iova & (kPageSize - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": iova ", base::Hex(iova), " is not 4 KiB aligned"));
    }
    if (iova >= limit || size > limit - iova) {
      return absl::InvalidArgumentError(absl::StrCat(op, ": [", base::Hex(iova), ", +",
                                                     base::Hex(size), ") is beyond the ",
                                                     config.address_width, "-bit address width"));
    }
    return absl::OkStatus();
  }
};

IommuDomain::IommuDomain() : impl_(std::make_unique<Impl>()) {}

IommuDomain::~IommuDomain() {
  if (impl_->fq) impl_->fq->FlushAll();
  impl_->fq.reset();
  impl_->pt.reset();  // hands everything to RCU, waits (barrier), frees the tables
  impl_->iova.reset();
}

absl::StatusOr<std::unique_ptr<IommuDomain>> IommuDomain::Create(const DomainConfig& config) {
  const unsigned levels = LevelsForWidth(config.address_width);
  if (levels == 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("address width ", config.address_width, " is not supported (39, 48 or 57)"));
  }
  if (config.mode != IommuMode::kStrict && config.mode != IommuMode::kLazy &&
      config.mode != IommuMode::kPassthrough) {
    return absl::InvalidArgumentError("unknown IOMMU mode");
  }
  if (config.iova_limit_bits != 0 &&
      (config.iova_limit_bits <= kPageShift || config.iova_limit_bits > config.address_width)) {
    return absl::InvalidArgumentError(absl::StrCat("IOVA limit of ", config.iova_limit_bits,
                                                   " bits is outside ", kPageShift + 1, " .. ",
                                                   config.address_width, " (the address width)"));
  }
  std::unique_ptr<IommuDomain> d(new IommuDomain());
  Impl& impl = *d->impl_;
  impl.config = config;
  if (impl.config.iova_limit_bits == 0) impl.config.iova_limit_bits = config.address_width;
  impl.levels = levels;
  impl.limit = uint64_t{1} << config.address_width;
  if (config.mode == IommuMode::kPassthrough) return d;

  impl.iova = std::make_unique<IovaAllocator>(
      1, (uint64_t{1} << (impl.config.iova_limit_bits - kPageShift)) - 1);
  impl.pt = std::make_unique<IoPageTable>(levels, config.free_empty_tables, &impl.counters);
  if (!impl.pt->ok()) return absl::ResourceExhaustedError("no memory for the root page table");
  if (config.model_iotlb) impl.iotlb = std::make_unique<internal::Iotlb>();
  if (config.mode == IommuMode::kLazy) {
    // By default the flush queue reads the tick: its 10 ms deadline needs no better, and every
    // lazy unmap reads it.
    base::Clock* fq_clock = config.clock != nullptr ? config.clock : base::Clock::Coarse();
    Impl* p = &impl;
    impl.fq = std::make_unique<FlushQueue>(fq_clock, config.fq_size, config.fq_timeout_ns,
                                           [p](std::vector<FqEntry>& e) { p->FlushBatch(e); });
  }
  return d;
}

absl::Status IommuDomain::Map(DmaAddr iova, PhysAddr phys, uint64_t size, uint32_t prot) {
  Impl& impl = *impl_;
  if (absl::Status s = impl.CheckRange("Map", iova, size); !s.ok()) return s;
  if ((phys & (kPageSize - 1)) != 0 || phys >= internal::kPhysLimit ||
      size > internal::kPhysLimit - phys) {
    return absl::InvalidArgumentError(absl::StrCat("Map: phys ", base::Hex(phys), " (iova ",
                                                   base::Hex(iova),
                                                   ") is not 4 KiB aligned or beyond 52 bits"));
  }
  if ((prot & (kProtRead | kProtWrite)) == 0 || (prot & ~uint32_t{kProtRead | kProtWrite}) != 0) {
    return absl::InvalidArgumentError(absl::StrCat("Map: prot ", prot, " at iova ", base::Hex(iova),
                                                   " must be read and/or write"));
  }
  const uint64_t bits = ((prot & kProtRead) ? internal::kPteRead : 0) |
                        ((prot & kProtWrite) ? internal::kPteWrite : 0);
  IotlbGather gather;
  absl::Status s = impl.pt->Map(iova, phys, size, bits, &gather);
  impl.FlushAndRelease(&gather);  // tables replaced by blocks or unlinked by a rollback
  if (!s.ok()) {
    // A failed map wrote leaves before finding the conflict (fast path) or rolled back what it had
    // mapped: a device read in between may have filled the IOTLB model with a translation that
    // nothing will unmap. Drop them (model bookkeeping, not counted as a flush).
    if (impl.iotlb) impl.iotlb->InvalidateRange(iova, size);
    return s;
  }
  impl.counters.hot.maps.fetch_add(1, std::memory_order_relaxed);
  impl.counters.hot.mapped_pages.fetch_add(static_cast<int64_t>(size >> kPageShift),
                                           std::memory_order_relaxed);
  return absl::OkStatus();
}

absl::Status IommuDomain::Unmap(DmaAddr iova, uint64_t size, bool release_iova) {
  Impl& impl = *impl_;
  if (absl::Status s = impl.CheckRange("Unmap", iova, size); !s.ok()) return s;
  IotlbGather gather;
  absl::StatusOr<uint64_t> pages = impl.pt->Unmap(iova, size, &gather);
  if (!pages.ok() || *pages == 0) {
    impl.FlushAndRelease(&gather);
    if (!pages.ok()) return pages.status();
    return absl::NotFoundError(absl::StrCat("Unmap: nothing mapped in [", base::Hex(iova), ", ",
                                            base::Hex(iova + size), ")"));
  }
  impl.counters.hot.unmaps.fetch_add(1, std::memory_order_relaxed);
  impl.counters.hot.mapped_pages.fetch_sub(static_cast<int64_t>(*pages), std::memory_order_relaxed);
  const uint64_t iova_pages = release_iova ? size >> kPageShift : 0;
  if (impl.config.mode == IommuMode::kStrict) {
    // Invalidate before anything is reused: the IOVA and the tables are released only after.
    // (One flush covering one entry per successful strict unmap: stats() derives both counters from
    // `unmaps` instead of two more atomic adds here.)
    if (impl.iotlb) impl.iotlb->InvalidateRange(iova, size);
    if (iova_pages != 0) impl.iova->Free(iova >> kPageShift, iova_pages);
    impl.pt->ReleaseGather(&gather);
    return absl::OkStatus();
  }
  impl.counters.other.fq_pending.fetch_add(1, std::memory_order_relaxed);
  impl.fq->Add(FqEntry{iova, size, iova_pages, gather});
  return absl::OkStatus();
}

absl::StatusOr<PhysAddr> IommuDomain::Translate(DmaAddr iova, bool write) {
  Impl& impl = *impl_;
  if (impl.config.mode == IommuMode::kPassthrough) return iova;
  if (iova >= impl.limit) {
    impl.counters.other.faults.fetch_add(1, std::memory_order_relaxed);
    return absl::NotFoundError(absl::StrCat("DMA fault: iova ", base::Hex(iova), " is beyond the ",
                                            impl.config.address_width, "-bit address width"));
  }
  uint64_t generation = 0;
  if (impl.iotlb && !write) {
    uint64_t cached;
    if (impl.iotlb->Lookup(iova, &cached)) return cached;
    generation = impl.iotlb->generation();
  }
  absl::StatusOr<uint64_t> pa = impl.pt->Translate(iova, write);
  if (!pa.ok()) {
    impl.counters.other.faults.fetch_add(1, std::memory_order_relaxed);
  } else if (impl.iotlb && !write) {
    impl.iotlb->Fill(iova, *pa, generation);
  }
  return pa;
}

void IommuDomain::ForEachPresent(DmaAddr start, DmaAddr end,
                                 absl::FunctionRef<bool(const PresentEntry&)> fn) const {
  if (!impl_->pt) return;
  impl_->pt->ForEachLeaf(start, end, [&](const IoPageTable::Leaf& leaf) {
    PresentEntry e;
    e.iova = leaf.iova;
    e.phys = internal::PteLeafAddr(leaf.pte);
    e.size = internal::LevelSpan(leaf.level);
    e.prot = ((leaf.pte & internal::kPteRead) ? uint32_t{kProtRead} : 0u) |
             ((leaf.pte & internal::kPteWrite) ? uint32_t{kProtWrite} : 0u);
    e.dirty = (leaf.pte & internal::kPteDirty) != 0;
    e.accessed = (leaf.pte & internal::kPteAccessed) != 0;
    return fn(e);
  });
}

uint64_t IommuDomain::SweepDirty(DmaAddr start, DmaAddr end,
                                 absl::FunctionRef<void(DmaAddr iova, uint64_t size)> fn) {
  if (!impl_->pt) return 0;
  const uint64_t n = impl_->pt->SweepDirty(start, end, fn);
  impl_->counters.other.dirty_reports.fetch_add(n, std::memory_order_relaxed);
  return n;
}

void IommuDomain::FlushQueues() {
  if (impl_->fq) impl_->fq->FlushAll();
}

void IommuDomain::Quiesce() {
  if (impl_->pt) impl_->pt->Quiesce();
}

void IommuDomain::ReleaseCaches() {
  if (impl_->pt) impl_->pt->Quiesce(/*keep=*/0);
  if (impl_->iova) impl_->iova->FlushCaches();
}

size_t IommuDomain::TrimIdleCaches() { return impl_->pt ? impl_->pt->TrimIdle() : 0; }

DomainStats IommuDomain::stats() const {
  const DomainCounters& c = impl_->counters;
  DomainStats s;
  s.table_pages = RelaxedNonNeg(c.tables.table_pages);
  s.table_bytes = s.table_pages * kPageSize;
  s.peak_table_pages = RelaxedNonNeg(c.tables.peak_table_pages);
  s.peak_table_bytes = s.peak_table_pages * kPageSize;
  s.pending_free_pages = RelaxedNonNeg(c.tables.pending_free_pages);
  s.tables_allocated = Relaxed(c.tables.tables_allocated);
  s.tables_freed = Relaxed(c.tables.tables_freed);
  s.tables_released = Relaxed(c.tables.tables_released);
  s.install_races_lost = Relaxed(c.tables.install_races_lost);
  s.block_over_table = Relaxed(c.tables.block_over_table);
  s.block_unmap_table = Relaxed(c.tables.block_unmap_table);
  s.mapped_pages = RelaxedNonNeg(c.hot.mapped_pages);
  s.maps = Relaxed(c.hot.maps);
  s.unmaps = Relaxed(c.hot.unmaps);
  s.iotlb_flushes = Relaxed(c.hot.iotlb_flushes);
  s.iotlb_flushed_entries = Relaxed(c.hot.iotlb_flushed_entries);
  if (impl_->config.mode == IommuMode::kStrict) {
    s.iotlb_flushes += s.unmaps;
    s.iotlb_flushed_entries += s.unmaps;
  }
  s.fq_pending = RelaxedNonNeg(c.other.fq_pending);
  s.iova_allocated_pages = impl_->iova ? impl_->iova->stats().allocated_pages : 0;
  s.cached_table_pages = impl_->pt ? impl_->pt->cached_tables() : 0;
  s.dirty_reports = Relaxed(c.other.dirty_reports);
  return s;
}

uint64_t IommuDomain::faults() const { return Relaxed(impl_->counters.other.faults); }
uint64_t IommuDomain::iotlb_hits() const { return impl_->iotlb ? impl_->iotlb->hits() : 0; }
IommuMode IommuDomain::mode() const { return impl_->config.mode; }
bool IommuDomain::free_empty_tables() const { return impl_->config.free_empty_tables; }
unsigned IommuDomain::address_width() const { return impl_->config.address_width; }
unsigned IommuDomain::iova_limit_bits() const { return impl_->config.iova_limit_bits; }
unsigned IommuDomain::levels() const { return impl_->levels; }
IovaAllocator* IommuDomain::iova() const { return impl_->iova.get(); }

internal::IoPageTable* internal::IommuDomainTestPeer::PageTable(IommuDomain& domain) {
  return domain.impl_->pt.get();
}

}  // namespace pagepool::dma
