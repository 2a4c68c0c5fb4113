# Page table / IommuDomain / RCU tests (included by tests/dma/CMakeLists.txt).
pagepool_add_test(NAME iommu_domain_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/iommu_domain_test.cc
  LIBS pagepool_dma LABELS unit)
pagepool_add_test(NAME pgtable_differential_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/pgtable_differential_test.cc LIBS pagepool_dma LABELS unit)
pagepool_add_test(NAME iommu_domain_concurrency_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/iommu_domain_concurrency_test.cc LIBS pagepool_dma
  LABELS concurrency)
pagepool_add_test(NAME rcu_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/rcu_test.cc LIBS pagepool_dma
  LABELS concurrency)
