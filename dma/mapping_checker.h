// File: dma/mapping_checker.h
//
// The mapping checker: the model's dma-debug. It knows every live mapping of one device (address,
// size, direction, phys) and counts every misuse of the DMA API. Tests and load runs assert on its
// counters; the Device facade consults it on every call.
//
// Thread safety: all methods may be called concurrently from any thread.
#ifndef PAGEPOOL_DMA_MAPPING_CHECKER_H_
#define PAGEPOOL_DMA_MAPPING_CHECKER_H_

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "dma/types.h"

namespace pagepool::dma {

class MappingChecker {
 public:
  MappingChecker();
  ~MappingChecker();

  // Records a new live mapping. Context: any thread.
  void OnMap(DmaAddr addr, PhysAddr phys, uint64_t size, DmaDirection dir);
  // Validates and forgets a mapping. Counts and returns FAILED_PRECONDITION for a double unmap or an
  // unknown address, INVALID_ARGUMENT for a size or direction mismatch (the mapping stays live).
  absl::Status OnUnmap(DmaAddr addr, uint64_t size, DmaDirection dir);
  // Validates a sync of [addr + offset, +size) against a live mapping.
  absl::Status OnSync(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir);
  // Counts one DMA-API call on an unbound device.
  void OnCallAfterUnbind();
  // Counts every live mapping as live_at_unbind and calls `fn` for each (so the caller can tear it
  // down); afterwards the checker knows no live mapping.
  void OnUnbind(absl::FunctionRef<void(DmaAddr addr, uint64_t size, DmaDirection dir)> fn);

  CheckerCounters counters() const;
  uint64_t live_mappings() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_MAPPING_CHECKER_H_
