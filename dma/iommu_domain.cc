#include "dma/iommu_domain.h"

#include <algorithm>
#include <bit>
#include <memory>
#include <vector>

#include "absl/base/attributes.h"
#include "absl/base/optimization.h"
#include "absl/strings/str_cat.h"
#include "base/strings.h"
#include "base/thread_slot.h"
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
using TableList = internal::IotlbGather;

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
  std::atomic<bool> dirty_tracking{true};

  DomainCounters::Inv& InvSlot() {
    return counters.inv[base::ThreadSlot() & (DomainCounters::kInvSlots - 1)];
  }

  // One domain-wide invalidation command.
  void InvalidateDomain() {
    InvSlot().domain.fetch_add(1, std::memory_order_relaxed);
    if (iotlb) iotlb->InvalidateAll();
  }

  // One ranged invalidation command over [start, end), aligned as VT-d aligns a page-selective
  // invalidation (drivers/iommu/intel/cache.c, calculate_psi_aligned_address: the power-of-two
  // range that covers it; if the start is not aligned to it, the mask grows to the lowest bit
  // where start and end agree above it). Above 2^inv_max_mask pages: domain-wide.
  void InvalidateRange(uint64_t start, uint64_t end, bool leaf_only) {
    const uint64_t pfn = start >> kPageShift;
    const uint64_t pages = (end - start) >> kPageShift;
    unsigned mask = pages <= 1 ? 0 : static_cast<unsigned>(std::bit_width(pages - 1));
    if (mask < 64 && (pfn & ((uint64_t{1} << mask) - 1)) != 0) {
      const uint64_t end_pfn = pfn + pages - 1;
      const uint64_t shared = ~(pfn ^ end_pfn) & ~((uint64_t{1} << mask) - 1);
      mask = shared != 0 ? static_cast<unsigned>(std::countr_zero(shared)) : 64;
    }
    if (mask > config.inv_max_mask || mask >= 52) {
      InvalidateDomain();
      return;
    }
    const uint64_t aligned = uint64_t{1} << mask;
    DomainCounters::Inv& c = InvSlot();
    (leaf_only ? c.leaf : c.nonleaf).fetch_add(1, std::memory_order_relaxed);
    c.pages.fetch_add(aligned, std::memory_order_relaxed);
    if (iotlb) {
      const uint64_t a = (pfn & ~(aligned - 1)) << kPageShift;
      iotlb->InvalidateRange(a, a + (aligned << kPageShift), leaf_only);
    }
  }

  // The invalidation an unmap of [start, end) needs: leaf-only when no table was unlinked; else a
  // non-leaf command over the unlinked tables' whole span (widened: those tables translated more
  // than [start, end)), and leaf-only commands for any part of the range outside that span.
  void InvalidateUnmapped(uint64_t start, uint64_t end, const TableList& tables) {
    if (tables.empty() || config.skip_free_widening_for_test) {
      if (end > start) InvalidateRange(start, end, /*leaf_only=*/true);
      return;
    }
    InvalidateRange(tables.freed_start, tables.freed_end, /*leaf_only=*/false);
    if (start < tables.freed_start) {
      InvalidateRange(start, std::min(end, tables.freed_start), true);
    }
    if (end > tables.freed_end) InvalidateRange(std::max(start, tables.freed_end), end, true);
  }

  // The IOTLB invalidation of one lazy-mode batch, then the release of what it protected.
  void FlushBatch(std::vector<FqEntry>& entries) {
    counters.hot.iotlb_flushes.fetch_add(1, std::memory_order_relaxed);
    counters.hot.iotlb_flushed_entries.fetch_add(entries.size(), std::memory_order_relaxed);
    counters.other.fq_pending.fetch_sub(static_cast<int64_t>(entries.size()),
                                        std::memory_order_relaxed);
    InvalidateDomain();  // the flush queue's domain-wide invalidation
    TableList all;
    for (FqEntry& e : entries) {
      if (e.iova_pages != 0) iova->Free(e.iova >> kPageShift, e.iova_pages);
      all.Splice(&e.tables);
    }
    pt->ReleaseGather(&all);
  }

  // Invalidation of tables unlinked by a map (a block over an empty table, a rollback) covering
  // [start, end), then their release.
  void FlushAndRelease(uint64_t start, uint64_t end, TableList* gather) {
    if (gather->empty()) return;
    counters.hot.iotlb_flushes.fetch_add(1, std::memory_order_relaxed);
    InvalidateUnmapped(start, end, *gather);
    pt->ReleaseGather(gather);
  }

  absl::Status CheckPgsize(const char* op, DmaAddr iova, uint64_t pgsize, uint64_t pgcount,
                           unsigned* level) const {
    *level = pgsize == kPageSize ? 0 : pgsize == kSize2M ? 1 : pgsize == kSize1G ? 2 : 3;
    if (*level == 3 || pgcount == 0 || (iova & (pgsize - 1)) != 0 || pgcount > (limit / pgsize)) {
      return absl::InvalidArgumentError(
          absl::StrCat(op, ": pgsize ", pgsize, " x ", pgcount, " at iova ", base::Hex(iova),
                       " is not 4 KiB / 2 MiB / 1 GiB pages aligned to their size"));
    }
    return absl::OkStatus();
  }

  // Every map and unmap starts here, so the common case is a few compares inline and the message
  // is built out of line.
  absl::Status CheckRange(const char* op, DmaAddr iova, uint64_t size) const {
    if (ABSL_PREDICT_TRUE(config.mode != IommuMode::kPassthrough && size != 0 &&
                          ((iova | size) & (kPageSize - 1)) == 0 && iova < limit &&
                          size <= limit - iova)) {
      return absl::OkStatus();
    }
    return RangeError(op, iova, size);
  }

  ABSL_ATTRIBUTE_NOINLINE absl::Status RangeError(const char* op, DmaAddr iova,
                                                  uint64_t size) const {
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
    return absl::InvalidArgumentError(absl::StrCat(op, ": [", base::Hex(iova), ", +",
                                                   base::Hex(size), ") is beyond the ",
                                                   config.address_width, "-bit address width"));
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
  impl.dirty_tracking.store(config.dirty_tracking, std::memory_order_relaxed);
  impl.pt->set_quarantine_for_test(config.skip_free_widening_for_test);
  if (impl.iotlb && !config.skip_free_widening_for_test) impl.pt->set_walk_caches(impl.iotlb.get());
  impl.pt->set_check_released_zero(config.debug_check_released_tables);
  if (config.mode == IommuMode::kLazy) {
    // By default the flush queue reads the tick: its 10 ms deadline needs no better, and every
    // lazy unmap reads it.
    base::Clock* fq_clock = config.clock != nullptr ? config.clock : base::Clock::Coarse();
    Impl* p = &impl;
    impl.fq = std::make_unique<FlushQueue>(
        fq_clock, config.fq_size, config.fq_timeout_ns,
        [p](std::vector<FqEntry>& e) { p->FlushBatch(e); },
        config.fq_timer ? FlushQueue::IdleFn([p] { p->pt->TrimCache(IoPageTable::kCacheMax); })
                        : FlushQueue::IdleFn());
  }
  return d;
}

// Inlined into Map and MapPages: a 4 KiB map is a few hundred instructions, a call is 10 of them.
ABSL_ATTRIBUTE_ALWAYS_INLINE inline absl::Status IommuDomain::MapPagesImpl(
    DmaAddr iova, PhysAddr phys, uint64_t size, uint32_t prot, unsigned max_leaf) {
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
  TableList gather;
  absl::Status s = impl.pt->Map(iova, phys, size, bits, &gather, max_leaf);
  // Tables replaced by blocks or unlinked by a rollback.
  impl.FlushAndRelease(iova, iova + size, &gather);
  if (!s.ok()) {
    // A failed map wrote leaves before finding the conflict (fast path) or rolled back what it had
    // mapped: a device read in between may have filled the IOTLB model with a translation that
    // nothing will unmap. Drop them (model bookkeeping, not counted as a flush).
    if (impl.iotlb) impl.iotlb->InvalidateRange(iova, iova + size, /*leaf_only=*/true);
    return s;
  }
  impl.counters.hot.maps.fetch_add(1, std::memory_order_relaxed);
  impl.counters.hot.mapped_pages.fetch_add(static_cast<int64_t>(size >> kPageShift),
                                           std::memory_order_relaxed);
  if (impl.config.caching_mode && !impl.config.skip_sync_map_for_test) IotlbSyncMap(iova, size);
  return absl::OkStatus();
}

absl::Status IommuDomain::Map(DmaAddr iova, PhysAddr phys, uint64_t size, uint32_t prot) {
  return MapPagesImpl(iova, phys, size, prot, 2);
}

absl::Status IommuDomain::MapPages(DmaAddr iova, PhysAddr phys, uint64_t pgsize, uint64_t pgcount,
                                   uint32_t prot, uint64_t* mapped) {
  if (mapped != nullptr) *mapped = 0;
  unsigned level = 0;
  if (impl_->config.mode != IommuMode::kPassthrough) {
    if (absl::Status s = impl_->CheckPgsize("MapPages", iova, pgsize, pgcount, &level); !s.ok()) {
      return s;
    }
    if ((phys & (pgsize - 1)) != 0) {
      return absl::InvalidArgumentError(
          absl::StrCat("MapPages: phys ", base::Hex(phys), " is not aligned to pgsize ", pgsize));
    }
  }
  absl::Status s = MapPagesImpl(iova, phys, pgsize * pgcount, prot, level);
  if (s.ok() && mapped != nullptr) *mapped = pgsize * pgcount;
  return s;
}

void IommuDomain::IotlbSyncMap(DmaAddr iova, uint64_t size) {
  if (!impl_->pt || size == 0) return;
  impl_->InvalidateRange(iova, iova + size, /*leaf_only=*/true);
}

absl::Status IommuDomain::Unmap(DmaAddr iova, uint64_t size, bool release_iova) {
  Impl& impl = *impl_;
  if (absl::Status s = impl.CheckRange("Unmap", iova, size); !s.ok()) return s;
  TableList gather;
  absl::StatusOr<uint64_t> pages = impl.pt->Unmap(iova, size, &gather);
  if (!pages.ok() || *pages == 0) {
    impl.FlushAndRelease(iova, iova + size, &gather);
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
    impl.InvalidateUnmapped(iova, iova + size, gather);
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
  internal::Iotlb* tlb = impl.iotlb.get();
  uint64_t generation = 0;
  if (tlb != nullptr) {
    internal::Iotlb::LeafHit hit;
    if (tlb->Lookup(iova, write, &hit)) {
      if (!hit.not_present) return hit.phys;
      impl.counters.other.faults.fetch_add(1, std::memory_order_relaxed);
      return absl::NotFoundError(absl::StrCat("DMA fault: iova ", base::Hex(iova),
                                              " (a not-present entry cached in caching mode)"));
    }
    generation = tlb->generation(iova);
  }
  uint64_t pte = 0;
  absl::StatusOr<uint64_t> pa = impl.pt->Translate(
      iova, write, tlb, impl.dirty_tracking.load(std::memory_order_relaxed), &pte);
  if (!pa.ok()) {
    impl.counters.other.faults.fetch_add(1, std::memory_order_relaxed);
    if (tlb != nullptr && impl.config.caching_mode && absl::IsNotFound(pa.status())) {
      tlb->FillNotPresent(iova, generation);
    }
  } else if (tlb != nullptr) {
    tlb->Fill(iova, *pa, (pte & internal::kPteRead) != 0, (pte & internal::kPteWrite) != 0,
              (pte & internal::kPteDirty) != 0, generation);
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
  uint64_t lo = ~uint64_t{0};
  uint64_t hi = 0;
  const uint64_t n = impl_->pt->SweepDirty(start, end, [&](uint64_t iova, uint64_t size) {
    lo = std::min(lo, iova);
    hi = std::max(hi, iova + size);
    fn(iova, size);
  });
  impl_->counters.other.dirty_reports.fetch_add(n, std::memory_order_relaxed);
  // The flush after clearing: a cached writable translation would hide the next write.
  if (n != 0 && !impl_->config.skip_dirty_flush_for_test) impl_->InvalidateRange(lo, hi, true);
  return n;
}

bool IotlbGather::IsDisjoint(DmaAddr iova, uint64_t size) const {
  if (nranges_ == 0) return false;
  for (unsigned i = 0; i < nranges_; ++i) {
    if (!(iova + size < ranges_[i].start || iova > ranges_[i].end)) return false;
  }
  return true;
}

bool IotlbGather::MergeRange(uint64_t start, uint64_t end) {
  for (unsigned i = 0; i < nranges_; ++i) {
    Range& r = ranges_[i];
    if (end < r.start || start > r.end) continue;  // neither overlaps nor adjoins
    r.start = std::min(r.start, start);
    r.end = std::max(r.end, end);
    return true;
  }
  return false;
}

absl::StatusOr<uint64_t> IommuDomain::UnmapPages(DmaAddr iova, uint64_t pgsize, uint64_t pgcount,
                                                 IotlbGather* gather, bool release_iova) {
  Impl& impl = *impl_;
  unsigned level = 0;
  if (impl.config.mode != IommuMode::kPassthrough) {
    if (absl::Status s = impl.CheckPgsize("UnmapPages", iova, pgsize, pgcount, &level); !s.ok()) {
      return s;
    }
  }
  const uint64_t size = pgsize * pgcount;
  if (absl::Status s = impl.CheckRange("UnmapPages", iova, size); !s.ok()) return s;
  if (impl.config.mode == IommuMode::kLazy) {
    if (absl::Status s = Unmap(iova, size, release_iova); !s.ok()) return s;
    return size;
  }
  if (gather->IsDisjoint(iova, size) && gather->nranges_ == IotlbGather::kMaxRanges) {
    // As iommu_iotlb_gather_add_page syncs before a disjoint range: invalidate what is gathered
    // now (tables and IOVAs stay gathered until IotlbSync, covered by these commands).
    impl.counters.other.gather_early_flushes.fetch_add(1, std::memory_order_relaxed);
    for (unsigned i = 0; i < gather->nranges_; ++i) {
      impl.InvalidateRange(gather->ranges_[i].start, gather->ranges_[i].end, true);
    }
    gather->nranges_ = 0;
  }
  absl::StatusOr<uint64_t> pages = impl.pt->Unmap(iova, size, &gather->tables_);
  if (!pages.ok()) return pages.status();
  if (*pages == 0) {
    return absl::NotFoundError(absl::StrCat("UnmapPages: nothing mapped in [", base::Hex(iova),
                                            ", ", base::Hex(iova + size), ")"));
  }
  impl.counters.hot.unmaps.fetch_add(1, std::memory_order_relaxed);
  impl.counters.hot.mapped_pages.fetch_sub(static_cast<int64_t>(*pages), std::memory_order_relaxed);
  if (!gather->MergeRange(iova, iova + size)) {
    gather->ranges_[gather->nranges_++] = IotlbGather::Range{iova, iova + size};
  }
  gather->pgsize_ = pgsize;
  if (release_iova) gather->iova_.push_back({iova >> kPageShift, size >> kPageShift});
  return size;
}

void IommuDomain::IotlbSync(IotlbGather* gather) {
  Impl& impl = *impl_;
  if (gather->empty() || !impl.pt) return;
  impl.counters.other.gather_syncs.fetch_add(1, std::memory_order_relaxed);
  TableList& tables = gather->tables_;
  if (!tables.empty() && !impl.config.skip_free_widening_for_test) {
    impl.InvalidateRange(tables.freed_start, tables.freed_end, /*leaf_only=*/false);
  }
  for (unsigned i = 0; i < gather->nranges_; ++i) {
    uint64_t start = gather->ranges_[i].start;
    uint64_t end = gather->ranges_[i].end;
    if (!tables.empty() && !impl.config.skip_free_widening_for_test) {
      // The parts inside the freed span are covered by the non-leaf command.
      if (start >= tables.freed_start && end <= tables.freed_end) continue;
    }
    impl.InvalidateRange(start, end, /*leaf_only=*/true);
  }
  for (const IotlbGather::IovaRelease& r : gather->iova_) impl.iova->Free(r.pfn, r.pages);
  impl.pt->ReleaseGather(&tables);
  gather->nranges_ = 0;
  gather->pgsize_ = 0;
  gather->iova_.clear();
  gather->tables_ = TableList();
}

absl::Status IommuDomain::SetDirtyTracking(bool enable) {
  Impl& impl = *impl_;
  if (!impl.pt) {
    return absl::FailedPreconditionError("SetDirtyTracking: passthrough domain has no page table");
  }
  if (enable && !impl.dirty_tracking.load(std::memory_order_acquire)) {
    impl.pt->SweepDirty(0, impl.limit, [](uint64_t, uint64_t) {});
    impl.InvalidateDomain();
  }
  impl.dirty_tracking.store(enable, std::memory_order_release);
  return absl::OkStatus();
}

bool IommuDomain::dirty_tracking() const {
  return impl_->dirty_tracking.load(std::memory_order_acquire);
}

absl::Status IommuDomain::ReadAndClearDirty(DmaAddr iova, uint64_t size, uint64_t pgsize,
                                            uint32_t flags, std::vector<uint64_t>* bitmap) {
  Impl& impl = *impl_;
  if (!impl.pt) return absl::FailedPreconditionError("ReadAndClearDirty: passthrough domain");
  if (pgsize < kPageSize || (pgsize & (pgsize - 1)) != 0 || size == 0 ||
      ((iova | size) & (pgsize - 1)) != 0 || iova >= impl.limit || size > impl.limit - iova) {
    return absl::InvalidArgumentError(absl::StrCat(
        "ReadAndClearDirty: [", base::Hex(iova), ", +", base::Hex(size), ") with bitmap pgsize ",
        pgsize, ": pgsize must be a power of two >= 4 KiB and divide iova and size"));
  }
  const uint64_t bits = size / pgsize;
  bitmap->assign((bits + 63) / 64, 0);
  const bool clear = (flags & kDirtyNoClear) == 0;
  uint64_t lo = ~uint64_t{0};
  uint64_t hi = 0;
  const uint64_t n = impl.pt->ReadDirty(iova, iova + size, clear, [&](uint64_t a, uint64_t len) {
    const uint64_t s0 = std::max(a, iova) - iova;
    const uint64_t s1 = std::min(a + len, iova + size) - iova;
    for (uint64_t b = s0 / pgsize; b <= (s1 - 1) / pgsize; ++b) {
      (*bitmap)[b / 64] |= uint64_t{1} << (b % 64);
    }
    lo = std::min(lo, a);
    hi = std::max(hi, a + len);
  });
  impl.counters.other.dirty_reports.fetch_add(n, std::memory_order_relaxed);
  // iommufd syncs the gather after a clearing read (iommu_read_and_clear_dirty); NO_CLEAR needs
  // none.
  if (clear && n != 0 && !impl.config.skip_dirty_flush_for_test) impl.InvalidateRange(lo, hi, true);
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> IommuDomain::UnmapReadDirty(
    DmaAddr iova, uint64_t size, absl::FunctionRef<void(DmaAddr, uint64_t)> fn) {
  Impl& impl = *impl_;
  if (absl::Status s = impl.CheckRange("UnmapReadDirty", iova, size); !s.ok()) return s;
  TableList tables;
  const absl::FunctionRef<void(uint64_t, uint64_t)> report = fn;
  absl::StatusOr<uint64_t> pages = impl.pt->Unmap(iova, size, &tables, &report);
  if (pages.ok() && *pages != 0) {
    impl.counters.hot.unmaps.fetch_add(1, std::memory_order_relaxed);
    impl.counters.hot.mapped_pages.fetch_sub(static_cast<int64_t>(*pages),
                                             std::memory_order_relaxed);
  }
  impl.InvalidateUnmapped(iova, iova + size, tables);
  impl.pt->ReleaseGather(&tables);
  if (!pages.ok()) return pages.status();
  if (*pages == 0) {
    return absl::NotFoundError(absl::StrCat("UnmapReadDirty: nothing mapped in [", base::Hex(iova),
                                            ", ", base::Hex(iova + size), ")"));
  }
  return *pages << kPageShift;
}

void IommuDomain::ForEachWalkCacheEntry(absl::FunctionRef<void(const WalkCacheEntry&)> fn) const {
  if (!impl_->iotlb) return;
  base::rcu::ReadLock rl;  // the tables pointed to stay readable for the stale check
  impl_->iotlb->ForEachWalkEntry([&](const internal::Iotlb::WalkEntry& e) {
    const bool stale = e.table->life.load(std::memory_order_acquire) != e.life;
    fn(WalkCacheEntry{e.level, e.iova, e.span, stale});
  });
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
void IommuDomain::FlushExpired() {
  if (impl_->fq) impl_->fq->FlushExpired();
}

uint64_t IommuDomain::TrimTables() {
  return impl_->pt ? impl_->pt->TrimCache(IoPageTable::kCacheMax) : 0;
}

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
  for (const DomainCounters::Inv& inv : c.inv) {
    s.iotlb_inv_leaf += Relaxed(inv.leaf);
    s.iotlb_inv_nonleaf += Relaxed(inv.nonleaf);
    s.iotlb_inv_domain += Relaxed(inv.domain);
    s.iotlb_inv_pages += Relaxed(inv.pages);
  }
  s.iotlb_inv_cost_ns =
      (s.iotlb_inv_leaf + s.iotlb_inv_nonleaf + s.iotlb_inv_domain) * impl_->config.inv_cmd_cost_ns;
  if (impl_->iotlb) {
    s.iotlb_hits = impl_->iotlb->hits();
    s.walk_cache_hits = impl_->iotlb->walk_hits();
    impl_->iotlb->ForEachWalkEntry(
        [&](const internal::Iotlb::WalkEntry&) { ++s.walk_cache_entries; });
    s.model_iotlb = true;
  }
  s.walk_cache_stale_walks = Relaxed(c.other.walk_stale);
  s.walk_restarts = Relaxed(c.tables.walk_restarts);
  s.failed_reserves = Relaxed(c.tables.failed_reserves);
  s.death_races_lost = Relaxed(c.tables.death_races_lost);
  s.iommu_pages = RelaxedNonNeg(c.tables.iommu_pages);
  s.iommu_bytes = s.iommu_pages * kPageSize;
  s.cached_table_bytes = s.cached_table_pages * kPageSize;
  s.table_cache_trimmed = Relaxed(c.tables.table_cache_trimmed);
  s.released_tables_not_zero = Relaxed(c.tables.released_not_zero);
  s.gather_syncs = Relaxed(c.other.gather_syncs);
  s.gather_early_flushes = Relaxed(c.other.gather_early_flushes);
  s.walk_rcu_sections = Relaxed(c.other.walk_sections);
  s.dirty_tracking = dirty_tracking();
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
