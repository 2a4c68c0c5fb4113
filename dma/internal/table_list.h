// File: dma/internal/table_list.h
//
// The freelist half of the kernel's iommu_iotlb_gather: page tables unlinked by one or more
// operations, waiting for the IOTLB (and walk-cache) invalidation and then an RCU grace period,
// plus the IOVA span those tables covered (what the invalidation must be widened to). Linked
// through PtTable::next. Light on purpose (PtTable is only declared) so that dma/iotlb_gather.h can
// hold one.
//
// Thread safety: none; a list belongs to one operation (or one gather) at a time.
#ifndef PAGEPOOL_DMA_INTERNAL_TABLE_LIST_H_
#define PAGEPOOL_DMA_INTERNAL_TABLE_LIST_H_

#include <cstdint>

namespace pagepool::dma::internal {

struct PtTable;

struct IotlbGather {
  PtTable* head = nullptr;
  PtTable* tail = nullptr;
  uint32_t count = 0;
  // Union of the spans of the tables on the list: [freed_start, freed_end), empty if none.
  uint64_t freed_start = ~uint64_t{0};
  uint64_t freed_end = 0;

  // Adds t, an unlinked table whose entries covered [span_base, span_base + span).
  void Add(PtTable* t, uint64_t span_base, uint64_t span);
  // Moves every table of `other` here (other becomes empty).
  void Splice(IotlbGather* other);
  bool empty() const { return head == nullptr; }
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_TABLE_LIST_H_
