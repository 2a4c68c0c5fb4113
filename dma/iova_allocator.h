// File: dma/iova_allocator.h
//
// The IOVA allocator of one domain, shaped like the kernel's drivers/iommu/iova.c: size-aligned
// ranges (a range of N pages is aligned to the power of two at or above N; as in dma-iommu.c's
// iommu_dma_alloc_iova, only requests under kRoundBelow = 32 pages are also rounded up to it, so
// a larger one takes exactly N pages and the rest of its aligned block stays free), allocated
// top-down from the limit, with per-thread magazine caches for small orders (orders 0-5, 127
// entries a magazine, a loaded and a previous magazine per thread, and a shared depot) in front of
// the shared range allocator.
//
// Structure (see iova_allocator.cc):
//   * The shared allocator is a buddy system over [start_pfn, limit_pfn]: one ordered set of free
//     blocks per order behind one mutex. Size-aligned power-of-two ranges are exactly buddy
//     blocks, so "the highest free size-aligned range" is the top sub-block of the highest free
//     block of a sufficient order: O(orders + log n) per allocation, no scan of allocated ranges.
//     Frees coalesce with their buddy. A hash map of the blocks handed out lets Free reject a range
//     that was never allocated (or was already freed) without corrupting the free sets.
//   * The range caches (the kernel's iova_rcache) sit in front, for orders 0-5: per-thread-ish
//   shards
//     (cache-line aligned, indexed by a per-thread slot number, each with its own small lock) each
//     hold a loaded and a previous magazine of 127 entries per order; a per-order depot holds up to
//     32 full magazines. A magazine hit touches only the thread's shard.
//   * On RESOURCE_EXHAUSTED the allocator flushes every cache and retries once, as the kernel does.
//
// Free() checks cheaply what it can: a range out of bounds or not aligned to its rounded size is
// dropped and counted in invalid_frees. A range that goes to the shared allocator (large orders, a
// magazine overflow, FlushCaches) is also checked against the set of blocks handed out, so a double
// free or a free of a never-allocated range is dropped and counted there. A double free of a small
// range that lands in a magazine is only caught when that magazine reaches the shared allocator (as
// in the kernel, the magazine path trusts its caller).
//
// Thread safety: all methods may be called concurrently from any thread. stats() sums per-shard
// counters without stopping the world: exact when the allocator is quiescent.
#ifndef PAGEPOOL_DMA_IOVA_ALLOCATOR_H_
#define PAGEPOOL_DMA_IOVA_ALLOCATOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "dma/types.h"

namespace pagepool::dma {

struct IovaStats {
  uint64_t allocated_pages = 0;  // pages handed out and not yet freed (cached ones excluded)
  uint64_t cached_pages = 0;     // pages sitting in magazines and the depot
  uint64_t rcache_hits = 0;
  uint64_t rcache_misses = 0;
  uint64_t alloc_failures = 0;
  uint64_t invalid_frees = 0;  // Free() calls dropped: out of range, misaligned, never allocated
};

class IovaAllocator {
 public:
  // Manages IOVA page frames [start_pfn, limit_pfn] (start_pfn >= 1: IOVA 0 is never handed out).
  IovaAllocator(uint64_t start_pfn, uint64_t limit_pfn);
  ~IovaAllocator();
  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;

  // Returns the first page frame of a range of RoundedPages(pages) pages aligned to
  // 2^OrderOf(pages). RESOURCE_EXHAUSTED when the space is full; INVALID_ARGUMENT for 0 pages.
  // Context: any thread.
  absl::StatusOr<uint64_t> Alloc(uint64_t pages);

  // Frees a range returned by Alloc with the same `pages`. Context: any thread.
  void Free(uint64_t pfn, uint64_t pages);

  // Returns every cached range to the shared allocator (the kernel's free_cpu_cached_iovas), and
  // shrinks the table of blocks handed out to what it holds now.
  void FlushCaches();

  IovaStats stats() const;

  // The alignment order (log2 of the power of two at or above `pages`) of a request of `pages`
  // pages. REQUIRES: pages > 0.
  static unsigned OrderOf(uint64_t pages);
  // The pages a request of `pages` pages takes: rounded up to a power of two under kRoundBelow
  // pages, exact from there on. REQUIRES: 0 < pages <= 2^63.
  static uint64_t RoundedPages(uint64_t pages);

  // Requests under this many pages are rounded up to a power of two (dma-iommu.c:
  // 1 << (IOVA_RANGE_CACHE_MAX_SIZE - 1)); the range caches serve only those (and 32 itself).
  static constexpr uint64_t kRoundBelow = 32;

  // Orders below this are served by the per-thread magazine caches (the kernel's
  // IOVA_RANGE_CACHE_MAX_SIZE).
  static constexpr unsigned kRangeCacheMaxOrder = 6;
  // Entries per magazine (the kernel's IOVA_MAG_SIZE).
  static constexpr unsigned kMagazineSize = 127;
  // Full magazines kept in each order's depot (the kernel's MAX_GLOBAL_MAGS); beyond that a full
  // magazine is emptied into the shared allocator.
  static constexpr unsigned kMaxDepotMagazines = 32;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_IOVA_ALLOCATOR_H_
