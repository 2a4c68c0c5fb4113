# Tests added by the adversarial review of dma/ (included by tests/dma/CMakeLists.txt).
pagepool_add_test(NAME dma_review_stress_test
  SOURCES ${CMAKE_CURRENT_LIST_DIR}/dma_review_stress_test.cc LIBS pagepool_dma LABELS concurrency)
pagepool_add_test(NAME dma_review_test SOURCES ${CMAKE_CURRENT_LIST_DIR}/dma_review_test.cc
  LIBS pagepool_dma LABELS unit)
