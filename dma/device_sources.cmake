# dma/ sources of the IOVA allocator, the mapping checker and the Device facade (included by
# dma/CMakeLists.txt).
list(APPEND PAGEPOOL_DMA_SOURCES iova_allocator.cc mapping_checker.cc device.cc)
