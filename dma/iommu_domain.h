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

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/clock.h"
#include "dma/types.h"

namespace pagepool::dma {

class IovaAllocator;
namespace internal {
struct IommuDomainTestPeer;
}  // namespace internal

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
  // Model an IOTLB that Translate consults (a small cache of 4 KiB read translations; see
  // dma/internal/iotlb.h). Lazy mode then shows stale translations until the flush. Off by default.
  bool model_iotlb = false;
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
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_IOMMU_DOMAIN_H_
