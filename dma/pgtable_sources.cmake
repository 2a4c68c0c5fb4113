# Page table, IommuDomain, RCU wrapper, flush queue (included by dma/CMakeLists.txt).
list(APPEND PAGEPOOL_DMA_SOURCES
  iommu_domain.cc
  rcu.cc
  internal/io_pgtable.cc
  internal/flush_queue.cc
  internal/iotlb.cc)
