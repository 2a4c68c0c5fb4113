// File: dma/iommu_domain.h
//
// An IOMMU domain: the I/O page table of one device (VT-d second stage / io-pgtable-arm shaped),
// its IOTLB model, its flush queue (lazy mode) and its IOVA allocator (the kernel's
// iommu_dma_cookie).
//
// Page table: 4 KiB granule, 512 entries per table, 3/4/5 levels for 39/48/57-bit IOVA, leaves of
// 4 KiB, 2 MiB and 1 GiB. Every table keeps its count of present entries in a field of its own (not
// a refcount others may touch: seed 000). With free_empty_tables (on by default) an unmap that
// leaves a table empty unlinks it, cascading upward; the three live-free cases of seed 001 are
// handled whatever the policy. Unlinked tables go on a freelist, are invalidated from the IOTLB,
// and are released only after an RCU grace period, so lockless walkers (Translate, ForEachPresent,
// SweepDirty) never read freed memory.
//
// Walk caches and invalidation (model_iotlb): Translate consults an IOTLB and per-level
// paging-structure caches and fills them (dma/internal/iotlb.h). Every unmap issues invalidation
// commands, counted per kind in DomainStats: leaf-only over the unmapped range when no table was
// freed; when tables were freed, a non-leaf command widened to the freed tables' whole span (seed
// 000's RFC aligned the flush to the freed level; VT-d IH=0; io-pgtable-arm's tlb_flush_walk),
// issued before the tables are handed to RCU. A range is first aligned as VT-d does
// (calculate_psi_aligned_address in drivers/iommu/intel/cache.c); above 2^inv_max_mask pages it
// becomes one domain-wide command (VT-d's address-mask limit, SMMUv3's range limit).
//
// Thread safety: Map/Unmap of disjoint IOVA ranges may run concurrently even when the ranges share
// tables. Translate, ForEachPresent and SweepDirty are lockless and may run concurrently with
// anything. Callers never map or unmap overlapping ranges at the same time (the DMA API's rule).
//
// Design choice: lock-free, not seed 000's per-domain rwlock. Each table has one atomic word,
// present count | DYING. Installing into a table first reserves a slot (count + 1 unless DYING,
// else restart from the root once the parent entry is cleared); the unmap that drops the count to 0
// must win CAS 0 -> DYING before it may unlink the table. Reservation and death are atomic
// operations on the same word, so a table being freed can never swallow a neighbour's new mapping.
// The rwlock makes every map/unmap write one shared line and stalls the whole domain while a table
// is freed; the per-table word is contended only by operations that really share a table (the cost
// of both, measured by tests/bench/dma/dma_bench, is in BENCHMARKS.md). Full protocol:
// dma/internal/io_pgtable.h.
#ifndef PAGEPOOL_DMA_IOMMU_DOMAIN_H_
#define PAGEPOOL_DMA_IOMMU_DOMAIN_H_

#include <cstdint>
#include <functional>
#include <memory>
#include <vector>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/clock.h"
#include "dma/iotlb_gather.h"
#include "dma/types.h"

namespace pagepool::dma {

class IovaAllocator;
namespace internal {
struct IommuDomainTestPeer;
}  // namespace internal

// True in debug builds (no NDEBUG) and sanitizer builds: the default of the domain's debug checks.
#if !defined(NDEBUG) || defined(PAGEPOOL_ASAN) || defined(PAGEPOOL_TSAN)
inline constexpr bool kDebugChecks = true;
#else
inline constexpr bool kDebugChecks = false;
#endif

struct DomainConfig {
  IommuMode mode = IommuMode::kStrict;
  bool free_empty_tables = true;
  unsigned address_width = 48;  // 39, 48 or 57
  // IOVAs handed out stay below 2^iova_limit_bits (0: address_width). The kernel's
  // iommu_dma_alloc_iova caps each allocation at the device's DMA mask; a domain here serves one
  // device, so its allocator is built with that cap (Device passes its dma_mask_bits).
  // REQUIRES: 0, or 13 (one page above IOVA 0) .. address_width.
  unsigned iova_limit_bits = 0;
  base::Clock* clock = nullptr;         // the flush queue's clock; nullptr: base::Clock::Coarse()
  unsigned fq_size = 256;               // lazy mode: entries per flush queue before a flush
  uint64_t fq_timeout_ns = 10'000'000;  // lazy mode: oldest entry flushed after 10 ms
  // Model the device's translation caches that Translate consults and fills: an IOTLB of 4 KiB
  // translations (reads and writes) and per-level paging-structure caches (see
  // dma/internal/iotlb.h). Lazy mode then shows stale translations until the flush. Off by default.
  bool model_iotlb = false;
  // Ranged invalidations of more than 2^inv_max_mask pages become domain-wide (VT-d's MAMV).
  unsigned inv_max_mask = 18;
  // Modelled cost of one invalidation command (a queued-invalidation descriptor and its wait),
  // summed in DomainStats::iotlb_inv_cost_ns; nothing is slept.
  uint64_t inv_cmd_cost_ns = 1000;
  // VT-d caching mode (an emulated IOMMU may cache not-present entries): Map ends with
  // iotlb_sync_map, a leaf invalidation of the new range; the IOTLB model caches faults.
  bool caching_mode = false;
  // Device writes set the leaf's dirty bit (iommufd: set_dirty_tracking). On by default.
  bool dirty_tracking = true;
  // Debug check: every released table is verified all zero (DomainStats::released_tables_not_zero
  // counts the ones that were not). On by default in debug and sanitizer builds (kDebugChecks).
  bool debug_check_released_tables = kDebugChecks;
  // Lazy mode: a timer flushes a queue whose oldest entry is older than fq_timeout_ns even if no
  // further unmap comes (the kernel's fq_timer). Off only for tests that drive FlushExpired by
  // hand.
  bool fq_timer = true;

  // TESTS ONLY: switches that remove a required step, so that tests can show what it prevents.
  // skip_free_widening: an unmap that frees tables invalidates only [iova, iova + size), leaf-only,
  // as if nothing were freed (released tables are then quarantined, never reused, so the device's
  // walk through a freed table is counted instead of crashing).
  bool skip_free_widening_for_test = false;
  // skip_sync_map: caching mode without the iotlb_sync_map after Map.
  bool skip_sync_map_for_test = false;
  // skip_dirty_flush: ReadAndClearDirty clears D without the IOTLB flush that must follow.
  bool skip_dirty_flush_for_test = false;
};

// One valid paging-structure-cache entry of the device (IommuDomain::ForEachWalkCacheEntry).
struct WalkCacheEntry {
  unsigned level;  // the page-table level of the cached entry (1: points to a 4 KiB-leaf table)
  DmaAddr iova;    // first IOVA of the span the entry translates
  uint64_t span;   // 2 MiB, 1 GiB, 512 GiB or 256 TiB
  bool stale;      // the table it points to has been released since (a missed invalidation)
};

// One present entry as a walker sees it.
struct PresentEntry {
  DmaAddr iova;
  PhysAddr phys;
  uint64_t size;  // 4 KiB, 2 MiB or 1 GiB
  uint32_t prot;  // Prot bits
  bool dirty;
  bool accessed;
};

class IommuDomain {
 public:
  // INVALID_ARGUMENT for an address width other than 39/48/57. A passthrough domain has no table.
  static absl::StatusOr<std::unique_ptr<IommuDomain>> Create(const DomainConfig& config);
  ~IommuDomain();  // waits for an RCU grace period, releases every table
  IommuDomain(const IommuDomain&) = delete;
  IommuDomain& operator=(const IommuDomain&) = delete;

  // Maps [iova, iova + size) to [phys, phys + size). size a multiple of 4 KiB; iova and phys 4 KiB
  // aligned. Uses 2 MiB / 1 GiB leaves where both addresses and the remaining size allow (and, per
  // seed 001 case 2, frees an empty table that such a block replaces). ALREADY_EXISTS if any page
  // is already mapped (nothing is left half mapped), INVALID_ARGUMENT for misalignment or an IOVA
  // beyond the address width, RESOURCE_EXHAUSTED if table memory cannot be had. Context: any
  // thread; the caller owns [iova, iova + size).
  absl::Status Map(DmaAddr iova, PhysAddr phys, uint64_t size, uint32_t prot);

  // Unmaps [iova, iova + size). Strict: the IOTLB is invalidated before return and unlinked tables
  // are handed to RCU. Lazy: the invalidation (and the freeing of tables, and of the IOVA range
  // when release_iova) waits in a flush queue. With release_iova the range goes back to iova()
  // after the invalidation. NOT_FOUND if nothing in the range is mapped; INVALID_ARGUMENT if the
  // range cuts a block leaf in part. Unlinked tables are handed to call_rcu in batches; when more
  // than a few thousand are already waiting (a fast unmapper outruns liburcu's call_rcu thread),
  // Unmap waits for a grace period itself and frees them (back-pressure), unless it runs inside an
  // RCU read-side section. Context: any thread; the caller owns [iova, iova + size) and holds no
  // lock that an RCU reader might wait for.
  absl::Status Unmap(DmaAddr iova, uint64_t size, bool release_iova = false);

  // The device's view: a lockless walk. A write sets the leaf's dirty bit; any access sets accessed
  // (a CAS that only succeeds on the unchanged present entry, the software form of the hardware's
  // atomic OR: a blind fetch_or could write A/D bits into an entry an unmap just cleared).
  // NOT_FOUND for an unmapped IOVA, PERMISSION_DENIED for a write to a read-only leaf or a read of
  // a write-only one (DMA faults, counted in faults()). Context: any thread.
  absl::StatusOr<PhysAddr> Translate(DmaAddr iova, bool write);

  // Lockless walk of present leaves in [start, end), in IOVA order (the VT-d debugfs dump).
  // The callback runs under the RCU read lock and must not block. Returning false stops the walk.
  // Context: any thread.
  void ForEachPresent(DmaAddr start, DmaAddr end,
                      absl::FunctionRef<bool(const PresentEntry&)> fn) const;

  // Reads and clears the dirty bits of present leaves in [start, end); calls `fn` once per dirty
  // leaf. Races with Map/Unmap never lose or double-report a write (test-and-clear).
  // Returns the number of dirty leaves reported. Context: any thread.
  uint64_t SweepDirty(DmaAddr start, DmaAddr end,
                      absl::FunctionRef<void(DmaAddr iova, uint64_t size)> fn);

  // map_pages: maps pgcount pages of pgsize (4 KiB, 2 MiB or 1 GiB) from iova to phys, with leaves
  // no larger than pgsize. *mapped (if not null) gets the bytes mapped: all or, on error, 0.
  // Errors as Map, and INVALID_ARGUMENT for a pgsize not supported or iova/phys not aligned to it.
  // In caching mode the new range is synced (iotlb_sync_map) before return.
  // Context: any thread; the caller owns the range.
  absl::Status MapPages(DmaAddr iova, PhysAddr phys, uint64_t pgsize, uint64_t pgcount,
                        uint32_t prot, uint64_t* mapped = nullptr);

  // unmap_pages: unmaps pgcount pages of pgsize at iova into `gather` without invalidating: the
  // range and any table unlinked are added to the gather (a disjoint range kept apart, see
  // dma/iotlb_gather.h); with release_iova the IOVA range is given back after the sync. Returns the
  // bytes unmapped. Lazy mode has no use for a gather (the flush queue batches): the unmap is
  // queued as Unmap would queue it and the gather is left untouched. Errors as Unmap. Context: any
  // thread; the caller owns the range and later calls IotlbSync(gather).
  absl::StatusOr<uint64_t> UnmapPages(DmaAddr iova, uint64_t pgsize, uint64_t pgcount,
                                      IotlbGather* gather, bool release_iova = false);

  // iotlb_sync: invalidates every range gathered (one command per disjoint range; a non-leaf
  // command over the span of the freed tables), then releases the gathered tables (RCU) and IOVA
  // ranges. The gather is empty afterwards. Context: any thread owning the gather.
  void IotlbSync(IotlbGather* gather);

  // iotlb_sync_map: the leaf invalidation of a newly mapped range that caching mode requires
  // (MapPages and Map call it themselves in caching mode). Context: any thread.
  void IotlbSyncMap(DmaAddr iova, uint64_t size);

  // iommufd's set_dirty_tracking. Enabling clears every dirty bit first (and flushes the IOTLB),
  // as iommufd clears the dirty data when tracking starts. FAILED_PRECONDITION in passthrough.
  // Context: any thread.
  absl::Status SetDirtyTracking(bool enable);
  bool dirty_tracking() const;

  // IOMMU_DIRTY_NO_CLEAR: read the dirty bits without clearing them.
  static constexpr uint32_t kDirtyNoClear = 1u << 0;
  // iommufd's read_and_clear_dirty over [iova, iova + size): bitmap bit i (word i / 64, bit i % 64)
  // is set when the page [iova + i * pgsize, +pgsize) holds dirty data; a dirty 2 MiB leaf sets
  // every bit it covers. pgsize (the bitmap granularity) is a power of two >= 4 KiB; iova and size
  // are multiples of it. Unless kDirtyNoClear, the bits read are cleared and the IOTLB is then
  // flushed over them (a cached writable translation would otherwise hide the next write: see
  // iotlb.h). Context: any thread.
  absl::Status ReadAndClearDirty(DmaAddr iova, uint64_t size, uint64_t pgsize, uint32_t flags,
                                 std::vector<uint64_t>* bitmap);

  // iommu_unmap_read_dirty: Unmap (strict: synced before return) that reports every leaf whose
  // dirty bit was set as it was cleared, so no write is lost at unmap. fn runs under the RCU read
  // lock and must not block. Returns the bytes unmapped; errors as Unmap.
  // Context: any thread; the caller owns the range.
  absl::StatusOr<uint64_t> UnmapReadDirty(DmaAddr iova, uint64_t size,
                                          absl::FunctionRef<void(DmaAddr, uint64_t)> fn);

  // The device's paging-structure caches (model_iotlb), for DumpPageTable: a snapshot of the
  // valid entries, lowest level first. Context: any thread.
  void ForEachWalkCacheEntry(absl::FunctionRef<void(const WalkCacheEntry&)> fn) const;

  // Gives the zeroed-table cache back down to its resting size; returns the tables freed. The lazy
  // flush timer and Quiesce call it; a daemon may call it periodically. Context: any thread.
  uint64_t TrimTables();

  // Lazy mode: flushes the queues whose oldest entry is older than fq_timeout_ns (what the flush
  // timer runs). Context: any thread.
  void FlushExpired();

  // Lazy mode: drains every flush queue now (invalidate, release IOVAs and tables). Strict: no-op.
  // Also called internally when a queue is full or its oldest entry is older than fq_timeout_ns.
  // Context: any thread.
  void FlushQueues();

  // Waits until every table unlinked so far has been released (an RCU barrier). For tests and for
  // teardown. In lazy mode tables still waiting in a flush queue are released by their flush: call
  // FlushQueues() first. Context: any thread not holding the RCU read lock.
  void Quiesce();
  // Quiesce, then gives back what the domain keeps for reuse: every cached zeroed table and every
  // IOVA sitting in the range caches (the kernel frees both with the domain). For a domain that is
  // done with (Device::Unbind); it still works afterwards, only colder. Same context as Quiesce.
  void ReleaseCaches();
  // Gives back the cached zeroed tables that no map needed since the last call (IoPageTable::
  // TrimIdle); returns how many. The daemon calls it once a second, so that a device keeps no
  // table memory it is not using after a burst. Context: any thread.
  size_t TrimIdleCaches();

  // Includes every counter listed in DomainStats.
  DomainStats stats() const;
  uint64_t faults() const;
  // Translations served by the IOTLB model (0 unless model_iotlb).
  uint64_t iotlb_hits() const;
  IommuMode mode() const;
  bool free_empty_tables() const;
  unsigned address_width() const;
  // IOVAs handed out are below 2^iova_limit_bits() (address_width unless capped at creation).
  unsigned iova_limit_bits() const;
  unsigned levels() const;
  // The domain's IOVA allocator (nullptr in passthrough).
  IovaAllocator* iova() const;

 private:
  friend struct internal::IommuDomainTestPeer;
  IommuDomain();
  absl::Status MapPagesImpl(DmaAddr iova, PhysAddr phys, uint64_t size, uint32_t prot,
                            unsigned max_leaf);
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_IOMMU_DOMAIN_H_
