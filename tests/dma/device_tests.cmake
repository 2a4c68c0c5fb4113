# Tests of the IOVA allocator, the mapping checker and the Device facade (included by
# tests/dma/CMakeLists.txt).
pagepool_add_test(NAME iova_allocator_test SOURCES iova_allocator_test.cc
  LIBS pagepool_dma LABELS unit)
pagepool_add_test(NAME iova_allocator_stress_test SOURCES iova_allocator_stress_test.cc
  LIBS pagepool_dma LABELS concurrency)
pagepool_add_test(NAME mapping_checker_test SOURCES mapping_checker_test.cc
  LIBS pagepool_dma LABELS unit)
