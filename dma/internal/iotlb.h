// File: dma/internal/iotlb.h
//
// An optional model of the IOTLB (DomainConfig::model_iotlb): a small direct-mapped cache of 4 KiB
// read translations that Translate consults before walking the page table. It makes the cost of
// lazy invalidation visible: after an unmap in lazy mode, a device read of the old IOVA can still
// hit the cached translation (a stale DMA) until the flush queue's invalidation; strict mode
// invalidates the range before Unmap returns.
//
// Only reads are cached; writes always walk (so the dirty bit is set exactly as without the model).
//
// Each entry is a seqlock (seq odd while being written). Invalidation bumps a generation first and
// then clears entries, waiting for any fill in progress on them; a fill records the generation
// before its page walk and gives up if it changed, so a walk that raced with an unmap can never
// install a translation that outlives the invalidation.
//
// Thread safety: every method may be called concurrently from any thread.
#ifndef PAGEPOOL_DMA_INTERNAL_IOTLB_H_
#define PAGEPOOL_DMA_INTERNAL_IOTLB_H_

#include <atomic>
#include <cstdint>

namespace pagepool::dma::internal {

class Iotlb {
 public:
  static constexpr unsigned kEntries = 512;

  Iotlb() = default;
  Iotlb(const Iotlb&) = delete;
  Iotlb& operator=(const Iotlb&) = delete;

  // On a hit stores the translation of iova in *phys.
  bool Lookup(uint64_t iova, uint64_t* phys) const;
  // The generation to hand to Fill; read it before the page walk.
  uint64_t generation() const { return generation_.load(std::memory_order_acquire); }
  // Caches iova's page -> phys's page unless an invalidation happened since `generation`.
  void Fill(uint64_t iova, uint64_t phys, uint64_t generation);
  // Drops every cached page of [iova, iova + size).
  void InvalidateRange(uint64_t iova, uint64_t size);
  // Drops everything (a domain-wide invalidation).
  void InvalidateAll();

  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    std::atomic<uint32_t> seq{0};
    std::atomic<uint64_t> tag{0};   // (page frame << 1) | 1 when valid
    std::atomic<uint64_t> phys{0};  // physical page address
  };
  static unsigned IndexOf(uint64_t pfn) { return static_cast<unsigned>(pfn % kEntries); }
  // Waits for the entry to be free, takes it, clears it if `match` says so, releases it.
  template <typename Match>
  void ClearEntry(Entry& e, Match match);

  Entry entries_[kEntries];
  alignas(64) std::atomic<uint64_t> generation_{0};
  mutable std::atomic<uint64_t> hits_{0};
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_IOTLB_H_
