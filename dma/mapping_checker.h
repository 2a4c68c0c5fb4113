// File: dma/mapping_checker.h
//
// The mapping checker: the model's dma-debug. It knows every live mapping of one device (address,
// size, direction, phys) and counts every misuse of the DMA API. Tests and load runs assert on its
// counters; the Device facade consults it on every call.
//
// Structure: a hash table of mappings keyed by DMA address, split in kShards shards (each a
// mutex and an absl::flat_hash_map), so map/unmap of different addresses rarely share a lock.
// The same address may be live more than once (passthrough: two dma_map_page calls on one page give
// the same bus address, which dma-debug allows); each such mapping is counted.
//
// Double unmap vs unknown unmap: an unmapped entry is not erased at once but kept as a tombstone
// (the address, size, direction and phys it had), and its address goes into a per-shard FIFO of the
// last kRecentUnmapsPerShard unmaps; when the FIFO wraps, the oldest tombstone is erased (unless
// the address was mapped again since, or is still in the FIFO from a later unmap). An unmap that
// finds a tombstone is a double unmap; one that finds nothing is an unknown unmap. So memory stays
// bounded (live mappings + kShards * FIFO size), and a double unmap is recognised as such as long
// as it comes within the last ~kShards * kRecentUnmapsPerShard unmaps; an older one is reported as
// an unknown unmap (still counted and refused, only under the other name).
//
// Rules follow the kernel's dma-debug (kernel/dma/debug.c): an unmap must give the mapping's exact
// size and direction; a sync must stay within the mapping and, unless the mapping is bidirectional,
// use its direction. A sync outside the mapping counts as size_mismatch.
//
// Thread safety: all methods may be called concurrently from any thread.
#ifndef PAGEPOOL_DMA_MAPPING_CHECKER_H_
#define PAGEPOOL_DMA_MAPPING_CHECKER_H_

#include <cstdint>
#include <memory>

#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/types/span.h"
#include "dma/types.h"

namespace pagepool::dma {

class MappingChecker {
 public:
  MappingChecker();
  ~MappingChecker();
  MappingChecker(const MappingChecker&) = delete;
  MappingChecker& operator=(const MappingChecker&) = delete;

  // Records a new live mapping. Context: any thread.
  void OnMap(DmaAddr addr, PhysAddr phys, uint64_t size, DmaDirection dir);
  // Validates and forgets a mapping. Counts and returns FAILED_PRECONDITION for a double unmap or
  // an unknown address, INVALID_ARGUMENT for a size or direction mismatch (the mapping stays live).
  absl::Status OnUnmap(DmaAddr addr, uint64_t size, DmaDirection dir);
  // OnUnmap for every address of `addrs` (one size and direction), with exactly its checks and
  // counting per address; ok[i] tells whether addrs[i] was accepted (unmapped). Each shard's lock
  // is taken once per chunk of addresses rather than once per address, and the shard's entries are
  // prefetched ahead. The outcome is that of calling OnUnmap for each address in order (addresses
  // of one shard keep their order; shards are independent). Returns the first refusal's status (OK
  // when every address was accepted). REQUIRES: ok.size() >= addrs.size(). Context: any thread;
  // takes shard locks one at a time.
  absl::Status OnUnmapBatch(absl::Span<const DmaAddr> addrs, uint64_t size, DmaDirection dir,
                            absl::Span<bool> ok);
  // Starts loading into cache what OnUnmap(addr, ...) will read: the entry of `addr` and the
  // tombstone the shard's recent-unmaps FIFO evicts next. A hint with no effect on the checker's
  // state, so a walk that knows its next unmaps can overlap their cache misses with the unmaps
  // before them. Context: any thread; takes the shard's lock briefly.
  void Prefetch(DmaAddr addr);
  // Validates a sync of [addr + offset, +size) against a live mapping.
  absl::Status OnSync(DmaAddr addr, uint64_t offset, uint64_t size, DmaDirection dir);
  // Counts one DMA-API call on an unbound device.
  void OnCallAfterUnbind();
  // Counts every live mapping as live_at_unbind and calls `fn` for each (so the caller can tear it
  // down); afterwards the checker knows no live mapping.
  void OnUnbind(absl::FunctionRef<void(DmaAddr addr, uint64_t size, DmaDirection dir)> fn);

  // Forgets every tombstone and the recent-unmaps FIFOs and gives their memory back (live mappings
  // are kept): from then on an unmap of an address unmapped before is reported as unknown, not as
  // double. Device::Unbind calls it once the device refuses every call, so that an unbound device
  // keeps no memory per past mapping. Context: any thread.
  void ReleaseHistory();
  // Bytes the checker holds (its shards' hash tables and FIFOs, by capacity).
  uint64_t memory_bytes() const;

  CheckerCounters counters() const;
  uint64_t live_mappings() const;
  // True if `addr` has a live mapping. Context: any thread (for tests and debugging).
  bool IsLive(DmaAddr addr) const;

  // The shard that keeps `addr` (its group of neighbouring pages'); tests use it to fill one
  // shard's window of recent unmaps.
  static unsigned ShardOf(DmaAddr addr);

  static constexpr unsigned kShards = 16;
  static constexpr unsigned kRecentUnmapsPerShard = 1024;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_DMA_MAPPING_CHECKER_H_
