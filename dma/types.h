// File: dma/types.h
//
// Plain types shared by the dma/ layer and its users: addresses, directions, IOMMU modes and the
// figures a domain reports. Nothing here allocates or locks.
#ifndef PAGEPOOL_DMA_TYPES_H_
#define PAGEPOOL_DMA_TYPES_H_

#include <cstdint>
#include <string_view>

namespace pagepool::dma {

using PhysAddr = uint64_t;  // simulated physical address (frame number << 12)
using DmaAddr = uint64_t;   // bus address a device uses: an IOVA, or PhysAddr in passthrough

inline constexpr uint64_t kPageShift = 12;
inline constexpr uint64_t kPageSize = uint64_t{1} << kPageShift;  // 4 KiB granule
inline constexpr uint64_t kSize2M = uint64_t{1} << 21;
inline constexpr uint64_t kSize1G = uint64_t{1} << 30;

// The kernel's enum dma_data_direction.
enum class DmaDirection : uint8_t { kBidirectional = 0, kToDevice = 1, kFromDevice = 2 };

// How the domain translates and invalidates.
//   kStrict       every unmap invalidates the IOTLB before the IOVA and table memory are reused.
//   kLazy         unmaps are batched in a flush queue (256 entries per queue, or 10 ms); IOVAs and
//                 table memory are released only after the flush (the kernel's iommu.strict=0).
//   kPassthrough  no page table: dma_addr == phys (identity mapping, iommu=pt).
enum class IommuMode : uint8_t { kStrict = 0, kLazy = 1, kPassthrough = 2 };

// Whether the CPU's caches see the device's DMA without help, which decides the kernel's
// dma_dev_need_sync(dev) (dev->dma_skip_sync):
//   kNonCoherent  the device does not snoop the CPU caches (many arm64/riscv SoC NICs): every
//                 dma_sync_single_for_device/_for_cpu does cache maintenance. Needs syncing.
//   kCoherent     cache-coherent DMA with no bounce buffering (x86, PCIe on most servers):
//                 dma_skip_sync is set, so the sync calls return at once. Needs no syncing.
//   kSwiotlb      coherent, but mappings go through swiotlb bounce buffers (swiotlb=force, a
//                 DMA mask below the memory, confidential-computing guests): the syncs copy
//                 to and from the bounce buffer. Needs syncing.
enum class DmaCoherence : uint8_t { kNonCoherent = 0, kCoherent = 1, kSwiotlb = 2 };

std::string_view IommuModeName(IommuMode mode);
std::string_view DmaDirectionName(DmaDirection dir);
std::string_view DmaCoherenceName(DmaCoherence coherence);  // "non_coherent", "coherent", "swiotlb"

// Page-table protection bits for IommuDomain::Map.
enum Prot : uint32_t { kProtRead = 1u << 0, kProtWrite = 1u << 1 };

// Counters of the mapping checker (the dma-debug oracle). Every field is a count of violations or
// errors seen since the device was created; tests and load runs assert these stay at zero.
struct CheckerCounters {
  uint64_t double_unmap = 0;        // unmap of an address whose mapping was already unmapped
  uint64_t unknown_unmap = 0;       // unmap of an address that was never mapped
  uint64_t size_mismatch = 0;       // unmap/sync size differs from the mapping's
  uint64_t direction_mismatch = 0;  // unmap/sync direction differs from the mapping's
  uint64_t live_at_unbind = 0;      // mappings still live when the device was unbound
  uint64_t call_after_unbind = 0;   // any DMA-API call on an unbound device (the seed-002 crash)
  uint64_t sync_unknown = 0;        // sync of an address that is not mapped
  uint64_t Total() const {
    return double_unmap + unknown_unmap + size_mismatch + direction_mismatch + live_at_unbind +
           call_after_unbind + sync_unknown;
  }
};

// What a domain reports (GetDomain on the wire).
struct DomainStats {
  uint64_t table_pages = 0;  // I/O page-table pages linked in the table now, root included
  uint64_t table_bytes = 0;  // table_pages * 4096
  uint64_t peak_table_pages = 0;
  uint64_t peak_table_bytes = 0;
  uint64_t pending_free_pages = 0;  // unlinked, waiting for IOTLB flush + RCU grace period
  uint64_t tables_allocated = 0;    // total ever allocated (root included)
  uint64_t tables_freed = 0;        // total ever unlinked from the table
  uint64_t tables_released = 0;     // total whose memory went back after the grace period
  uint64_t install_races_lost = 0;  // live-free case 1: never-published table freed by the loser
  uint64_t block_over_table = 0;    // live-free case 2: block mapping placed over an empty table
  uint64_t block_unmap_table = 0;   // live-free case 3: block-sized unmap that found a table
  uint64_t mapped_pages = 0;        // 4 KiB pages currently mapped (a 2M leaf counts 512)
  uint64_t maps = 0;
  uint64_t unmaps = 0;
  uint64_t iotlb_flushes = 0;          // invalidation commands issued (range or global)
  uint64_t iotlb_flushed_entries = 0;  // unmaps covered by those invalidations
  uint64_t fq_pending = 0;             // lazy mode: unmaps waiting in flush queues
  uint64_t iova_allocated_pages = 0;   // pages of IOVA space currently allocated
  uint64_t dirty_reports = 0;          // dirty leaves reported by sweeps
  uint64_t cached_table_pages = 0;     // zeroed tables kept for reuse (not linked, not pending)

  // Invalidation commands (each counted once, whatever the model's cache holds): ranged leaf-only
  // (VT-d IH=1), ranged non-leaf (also paging-structure caches; issued when tables were freed, over
  // their whole span), domain-wide (a range above 2^inv_max_mask pages, and lazy-mode flushes).
  uint64_t iotlb_inv_leaf = 0;
  uint64_t iotlb_inv_nonleaf = 0;
  uint64_t iotlb_inv_domain = 0;
  uint64_t iotlb_inv_pages = 0;    // 4 KiB pages covered by the ranged commands (aligned ranges)
  uint64_t iotlb_inv_cost_ns = 0;  // commands * DomainConfig::inv_cmd_cost_ns (modelled, not slept)
  // Device translation caches (model_iotlb only).
  uint64_t iotlb_hits = 0;              // translations served by the IOTLB
  uint64_t walk_cache_entries = 0;      // valid paging-structure cache entries now
  uint64_t walk_cache_hits = 0;         // walks started from a paging-structure cache entry
  uint64_t walk_cache_stale_walks = 0;  // VIOLATION: a walk through a table released since its fill
  // The hard paths of the table protocol.
  uint64_t walk_restarts = 0;     // map walks restarted from the root after meeting a dying table
  uint64_t failed_reserves = 0;   // reservations refused because the table was dying
  uint64_t death_races_lost = 0;  // emptied tables kept alive by a reservation before CAS -> DYING
  // Table memory as the kernel counts it.
  uint64_t iommu_pages = 0;  // allocated and not yet released (NR_IOMMU_PAGES), root included
  uint64_t iommu_bytes = 0;
  uint64_t cached_table_bytes = 0;        // cached_table_pages * 4096 (not in iommu_pages)
  uint64_t table_cache_trimmed = 0;       // cached tables given back by trims
  uint64_t released_tables_not_zero = 0;  // VIOLATION (debug check): a released table held entries
  // Gathers and lockless walks.
  uint64_t gather_syncs = 0;  // IotlbSync calls that had something to do
  uint64_t gather_early_flushes =
      0;                           // disjoint ranges beyond IotlbGather::kMaxRanges flushed early
  uint64_t walk_rcu_sections = 0;  // RCU read-side sections of dumps and dirty sweeps
  bool dirty_tracking = false;
  bool model_iotlb = false;  // the device's translation caches are modelled
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_TYPES_H_
