# Tests of the IOVA allocator, the mapping checker and the Device facade (included by
# tests/dma/CMakeLists.txt).
pagepool_add_test(NAME iova_allocator_test SOURCES iova_allocator_test.cc
  LIBS pagepool_dma LABELS unit)
pagepool_add_test(NAME iova_allocator_stress_test SOURCES iova_allocator_stress_test.cc
  LIBS pagepool_dma LABELS concurrency)
pagepool_add_test(NAME mapping_checker_test SOURCES mapping_checker_test.cc
  LIBS pagepool_dma LABELS unit)
pagepool_add_test(NAME mapping_checker_stress_test SOURCES mapping_checker_stress_test.cc
  LIBS pagepool_dma LABELS concurrency)
# The Device needs IommuDomain's implementation (dma/iommu_domain.cc, built from
# pgtable_sources.cmake); until it exists these two would not link.
if(EXISTS ${PROJECT_SOURCE_DIR}/dma/iommu_domain.cc)
  pagepool_add_test(NAME device_test SOURCES device_test.cc LIBS pagepool_dma LABELS unit)
  pagepool_add_test(NAME device_stress_test SOURCES device_stress_test.cc
    LIBS pagepool_dma LABELS concurrency)
endif()
