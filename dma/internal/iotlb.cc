#include "dma/internal/iotlb.h"

#include "base/cpu_relax.h"
#include "dma/internal/pt_table.h"

namespace pagepool::dma::internal {

bool Iotlb::Lookup(uint64_t iova, uint64_t* phys) const {
  const uint64_t pfn = iova >> 12;
  const Entry& e = entries_[IndexOf(pfn)];
  const uint32_t s1 = e.seq.load(std::memory_order_acquire);
  if ((s1 & 1) != 0) return false;
  const uint64_t tag = e.tag.load(std::memory_order_relaxed);
  const uint64_t pa = e.phys.load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  if (e.seq.load(std::memory_order_relaxed) != s1 || tag != ((pfn << 1) | 1)) return false;
  *phys = pa + (iova & 0xfff);
  hits_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Iotlb::Fill(uint64_t iova, uint64_t phys, uint64_t generation) {
  const uint64_t pfn = iova >> 12;
  Entry& e = entries_[IndexOf(pfn)];
  uint32_t s = e.seq.load(std::memory_order_relaxed);
  if ((s & 1) != 0 || !e.seq.compare_exchange_strong(s, s + 1, std::memory_order_acq_rel,
                                                     std::memory_order_relaxed)) {
    return;  // someone else is writing this entry: skip the fill
  }
  std::atomic_thread_fence(std::memory_order_release);
  if (generation_.load(std::memory_order_acquire) == generation) {
    e.tag.store((pfn << 1) | 1, std::memory_order_relaxed);
    e.phys.store(phys & ~uint64_t{0xfff}, std::memory_order_relaxed);
  }
  e.seq.store(s + 2, std::memory_order_release);
}

template <typename Match>
void Iotlb::ClearEntry(Entry& e, Match match) {
  for (;;) {
    uint32_t s = e.seq.load(std::memory_order_relaxed);
    if ((s & 1) != 0) {
      base::CpuRelax();
      continue;
    }
    if (!e.seq.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) {
      continue;
    }
    std::atomic_thread_fence(std::memory_order_release);
    if (match(e.tag.load(std::memory_order_relaxed))) e.tag.store(0, std::memory_order_relaxed);
    e.seq.store(s + 2, std::memory_order_release);
    return;
  }
}

void Iotlb::InvalidateRange(uint64_t iova, uint64_t size) {
  generation_.fetch_add(1, std::memory_order_acq_rel);
  const uint64_t first = iova >> 12;
  const uint64_t pages = size >> 12;
  auto in_range = [&](uint64_t tag) {
    return (tag & 1) != 0 && (tag >> 1) >= first && (tag >> 1) - first < pages;
  };
  if (pages >= kEntries) {
    for (Entry& e : entries_) ClearEntry(e, in_range);
    return;
  }
  for (uint64_t p = first; p < first + pages; ++p) ClearEntry(entries_[IndexOf(p)], in_range);
}

void Iotlb::InvalidateAll() {
  generation_.fetch_add(1, std::memory_order_acq_rel);
  for (Entry& e : entries_) ClearEntry(e, [](uint64_t) { return true; });
}

}  // namespace pagepool::dma::internal
