// File: dma/iotlb_gather.h
//
// IotlbGather: the kernel's struct iommu_iotlb_gather. Unmaps through IommuDomain::UnmapPages (or
// Device::UnmapPagesGather) add their IOVA range and the page tables they unlinked to a gather
// instead of invalidating at once; IommuDomain::IotlbSync issues the invalidation commands for
// everything gathered and then releases the tables (after an RCU grace period) and the IOVA ranges.
// As in iommu_iotlb_gather_add_page, a range that adjoins or overlaps the gathered ones is merged
// into them; a disjoint range is kept apart (up to kMaxRanges, then the ranges gathered so far are
// invalidated at once), so that disjoint ranges are invalidated by separate commands, never by one
// command spanning the hole between them (iommu_iotlb_gather_is_disjoint).
//
// Thread safety: none. A gather belongs to one thread; it must be synced (IotlbSync) on the domain
// that filled it before it is destroyed or reused on another domain.
#ifndef PAGEPOOL_DMA_IOTLB_GATHER_H_
#define PAGEPOOL_DMA_IOTLB_GATHER_H_

#include <cstdint>
#include <vector>

#include "dma/internal/table_list.h"
#include "dma/types.h"

namespace pagepool::dma {

class IotlbGather {
 public:
  static constexpr unsigned kMaxRanges = 8;

  IotlbGather() = default;
  IotlbGather(const IotlbGather&) = delete;
  IotlbGather& operator=(const IotlbGather&) = delete;

  // Nothing gathered: no range to invalidate, no table and no IOVA to release.
  bool empty() const { return nranges_ == 0 && tables_.empty() && iova_.empty(); }
  // The disjoint IOVA ranges gathered and not yet invalidated, [start, end) each.
  unsigned range_count() const { return nranges_; }
  uint64_t range_start(unsigned i) const { return ranges_[i].start; }
  uint64_t range_end(unsigned i) const { return ranges_[i].end; }
  // The page size of the last unmap added (the kernel's gather->pgsize).
  uint64_t pgsize() const { return pgsize_; }
  // Page tables unlinked and waiting for the sync.
  uint32_t freed_tables() const { return tables_.count; }
  // iommu_iotlb_gather_is_disjoint: true if [iova, iova + size) neither overlaps nor adjoins any
  // gathered range (false when nothing is gathered).
  bool IsDisjoint(DmaAddr iova, uint64_t size) const;

 private:
  friend class IommuDomain;
  struct Range {
    uint64_t start;
    uint64_t end;
  };
  struct IovaRelease {
    uint64_t pfn;
    uint64_t pages;
  };
  // Merges [start, end) into an adjoining range; false if it is disjoint from all of them.
  bool MergeRange(uint64_t start, uint64_t end);

  Range ranges_[kMaxRanges];
  unsigned nranges_ = 0;
  uint64_t pgsize_ = 0;
  internal::IotlbGather tables_;
  std::vector<IovaRelease> iova_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_IOTLB_GATHER_H_
