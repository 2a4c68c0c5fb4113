// File: dma/internal/pt_table.h
//
// Internals of the I/O page table: the table node, the PTE format, the level geometry, the iotlb
// gather (freelist of unlinked tables) and the domain's counters. Not part of the public API.
//
// PTE format (64 bits, a simplified VT-d second-stage entry):
//   bit 0 P present          bit 1 T points to a next-level table (else a leaf)
//   bit 2 R read             bit 3 W write        bit 4 A accessed      bit 5 D dirty
//   leaf:  bits 12..51 the output address (4 KiB, 2 MiB or 1 GiB aligned by level)
//   table: bits 6..63 the address of the PtTable (64-byte aligned), bits 2..5 always zero, so an
//          atomic fetch_and(~D) by a dirty sweep that raced with a table install cannot corrupt it.
#ifndef PAGEPOOL_DMA_INTERNAL_PT_TABLE_H_
#define PAGEPOOL_DMA_INTERNAL_PT_TABLE_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "base/rcu.h"
#include "dma/internal/table_list.h"

namespace pagepool::dma::internal {

inline constexpr unsigned kPtEntries = 512;
inline constexpr unsigned kPtLevelBits = 9;
inline constexpr unsigned kMaxLevels = 5;

inline constexpr uint64_t kPtePresent = 1u << 0;
inline constexpr uint64_t kPteTable = 1u << 1;
inline constexpr uint64_t kPteRead = 1u << 2;
inline constexpr uint64_t kPteWrite = 1u << 3;
inline constexpr uint64_t kPteAccessed = 1u << 4;
inline constexpr uint64_t kPteDirty = 1u << 5;
inline constexpr uint64_t kPteTableAddrMask = ~uint64_t{63};
inline constexpr uint64_t kPteLeafAddrMask = ((uint64_t{1} << 52) - 1) & ~uint64_t{0xfff};
inline constexpr uint64_t kPhysLimit = uint64_t{1} << 52;

// Level 0 holds 4 KiB leaves, level 1 2 MiB leaves (or level-0 tables), level 2 1 GiB leaves.
inline constexpr unsigned LevelShift(unsigned level) { return 12 + kPtLevelBits * level; }
inline constexpr uint64_t LevelSpan(unsigned level) { return uint64_t{1} << LevelShift(level); }
inline constexpr unsigned LevelIndex(uint64_t iova, unsigned level) {
  return static_cast<unsigned>(iova >> LevelShift(level)) & (kPtEntries - 1);
}

class IoPageTable;

// One page-table node: 512 atomic PTEs (exactly one 4 KiB page) followed by metadata in a cache
// line of its own (what the kernel keeps in struct page / struct iommu_pt_page). The present-entry
// count lives in `state`, a field nobody else touches (seed 000: never a refcount).
struct alignas(64) PtTable {
  // `state` = present entries + reservations of in-flight installs, or'ed with kDying once the
  // table has been claimed for freeing. See IoPageTable for the protocol.
  static constexpr uint32_t kDying = 1u << 31;
  static constexpr uint32_t kCountMask = kDying - 1;

  std::atomic<uint64_t> pte[kPtEntries];

  std::atomic<uint32_t> state;
  uint32_t list_len;  // as the head of a pending-RCU list: its length
  // Bumped each time the table is released: a walk-cache entry that recorded another value points
  // to memory freed since (see dma/internal/iotlb.h).
  std::atomic<uint32_t> life;
  PtTable* next;        // gather / pending / cache link
  IoPageTable* owner;   // the page table that allocated it (for the RCU callback)
  base::rcu::Head rcu;  // one per batch: only the head of a batch uses it
};
static_assert(sizeof(PtTable) == 4096 + 64, "entry page + one metadata cache line");
static_assert(offsetof(PtTable, state) == 4096, "metadata is separate from the entry array");

inline bool PteIsPresent(uint64_t pte) { return (pte & kPtePresent) != 0; }
inline bool PteIsTable(uint64_t pte) { return (pte & kPteTable) != 0; }
inline PtTable* PteTable(uint64_t pte) {
  return reinterpret_cast<PtTable*>(pte & kPteTableAddrMask);
}
inline uint64_t MakeTablePte(PtTable* t) {
  return reinterpret_cast<uint64_t>(t) | kPteTable | kPtePresent;
}
inline uint64_t PteLeafAddr(uint64_t pte) { return pte & kPteLeafAddrMask; }

inline void IotlbGather::Add(PtTable* t, uint64_t span_base, uint64_t span) {
  t->next = head;
  head = t;
  if (tail == nullptr) tail = t;
  ++count;
  if (span_base < freed_start) freed_start = span_base;
  if (span_base + span > freed_end) freed_end = span_base + span;
}

inline void IotlbGather::Splice(IotlbGather* other) {
  if (other->head == nullptr) return;
  other->tail->next = head;
  head = other->head;
  if (tail == nullptr) tail = other->tail;
  count += other->count;
  if (other->freed_start < freed_start) freed_start = other->freed_start;
  if (other->freed_end > freed_end) freed_end = other->freed_end;
  *other = IotlbGather();
}

// Per-domain counters (DomainStats). Relaxed atomics, grouped so the ones every map/unmap touches
// share a line of their own, away from the table-lifetime counters and from the PTE arrays.
struct DomainCounters {
  struct alignas(64) Hot {
    std::atomic<uint64_t> maps{0};
    std::atomic<uint64_t> unmaps{0};
    std::atomic<int64_t> mapped_pages{0};
    std::atomic<uint64_t> iotlb_flushes{0};
    std::atomic<uint64_t> iotlb_flushed_entries{0};
  } hot;
  struct alignas(64) Tables {
    std::atomic<int64_t> table_pages{0};
    std::atomic<int64_t> peak_table_pages{0};
    std::atomic<int64_t> pending_free_pages{0};
    std::atomic<uint64_t> tables_allocated{0};
    std::atomic<uint64_t> tables_freed{0};
    std::atomic<uint64_t> tables_released{0};
    std::atomic<uint64_t> install_races_lost{0};
    std::atomic<uint64_t> block_over_table{0};
    std::atomic<uint64_t> block_unmap_table{0};
    std::atomic<int64_t> iommu_pages{0};  // allocated and not yet released (NR_IOMMU_PAGES)
    std::atomic<uint64_t> table_cache_trimmed{0};
    std::atomic<uint64_t> released_not_zero{0};
    std::atomic<uint64_t> walk_restarts{0};
    std::atomic<uint64_t> failed_reserves{0};
    std::atomic<uint64_t> death_races_lost{0};
  } tables;
  struct alignas(64) Other {
    std::atomic<int64_t> fq_pending{0};
    std::atomic<uint64_t> dirty_reports{0};
    std::atomic<uint64_t> faults{0};
    std::atomic<uint64_t> walk_stale{0};
    std::atomic<uint64_t> walk_sections{0};
    std::atomic<uint64_t> gather_syncs{0};
    std::atomic<uint64_t> gather_early_flushes{0};
  } other;
  // Invalidation commands, per thread slot (every strict unmap issues one).
  struct alignas(64) Inv {
    std::atomic<uint64_t> leaf{0};
    std::atomic<uint64_t> nonleaf{0};
    std::atomic<uint64_t> domain{0};
    std::atomic<uint64_t> pages{0};
  };
  static constexpr unsigned kInvSlots = 16;
  Inv inv[kInvSlots];
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_PT_TABLE_H_
