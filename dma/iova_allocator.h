// File: dma/iova_allocator.h
//
// The IOVA allocator of one domain, shaped like the kernel's drivers/iommu/iova.c: size-aligned ranges
// (a request of N pages is rounded up to a power of two and aligned to it), allocated top-down from the
// limit, with per-thread magazine caches for small orders (orders 0-5, 127 entries a magazine, a loaded
// and a previous magazine per thread, and a shared depot) in front of the shared range allocator.
//
// Thread safety: all methods may be called concurrently from any thread.
#ifndef PAGEPOOL_DMA_IOVA_ALLOCATOR_H_
#define PAGEPOOL_DMA_IOVA_ALLOCATOR_H_

#include <cstdint>
#include <memory>

#include "absl/status/statusor.h"
#include "dma/types.h"

namespace pagepool::dma {

struct IovaStats {
  uint64_t allocated_pages = 0;   // pages handed out and not yet freed (cached ones excluded)
  uint64_t cached_pages = 0;      // pages sitting in magazines and the depot
  uint64_t rcache_hits = 0;
  uint64_t rcache_misses = 0;
  uint64_t alloc_failures = 0;
};

class IovaAllocator {
 public:
  // Manages IOVA page frames [start_pfn, limit_pfn] (start_pfn >= 1: IOVA 0 is never handed out).
  IovaAllocator(uint64_t start_pfn, uint64_t limit_pfn);
  ~IovaAllocator();
  IovaAllocator(const IovaAllocator&) = delete;
  IovaAllocator& operator=(const IovaAllocator&) = delete;

  // Returns the first page frame of a size-aligned range of at least `pages` pages.
  // RESOURCE_EXHAUSTED when the space is full; INVALID_ARGUMENT for 0 pages.
  // Context: any thread.
  absl::StatusOr<uint64_t> Alloc(uint64_t pages);

  // Frees a range returned by Alloc with the same `pages`. Context: any thread.
  void Free(uint64_t pfn, uint64_t pages);

  // Returns every cached range to the shared allocator (the kernel's free_cpu_cached_iovas).
  void FlushCaches();

  IovaStats stats() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_IOVA_ALLOCATOR_H_
