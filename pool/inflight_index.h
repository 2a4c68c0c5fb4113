// File: pool/inflight_index.h
//
// InflightIndex: the per-pool index of DMA-mapped pages, an RCU radix tree shaped like the kernel's
// xarray (include/linux/xarray.h, lib/xarray.c) as used by the merged upstream page_pool fix
// (page_pool_register_dma_index / page_pool_release_dma_index):
//
//   * 64-slot nodes (XA_CHUNK_SHIFT = 6); the tree grows upward as ids grow and shrinks back; a
//   node
//     whose last entry goes away is unlinked and freed after an RCU grace period.
//   * Alloc() hands out the lowest free id in [1, limit] (xa_alloc with XA_FLAGS_ALLOC1), in
//     O(height): every node keeps a free-slot bitmap (XA_FREE_MARK) whose bit i is set when slot i,
//     or the subtree under it, has room.
//   * Load(), ForEach() and ForEachFrom() are lock-free and run under the RCU read lock (they take
//     it themselves, like xa_load, xa_for_each and xa_for_each_start). ForEachFrom() walks a
//     bounded piece from a given id and says where to resume, so a long walk can be split into
//     pieces, each its own read section.
//   * Writers (Alloc, CompareExchange, Erase) are serialised by one lock per index (xa_lock).
//   * CompareExchange(id, page, nullptr) returns whether this caller removed the entry, so exactly
//   one
//     of the return path and the destroy path ever unmaps a page (xa_cmpxchg).
//
// Memory: nodes * sizeof(node) (about 576 bytes, as xa_node); about 9 bytes per tracked page when
// ids are dense. Nodes left empty are unlinked and freed after a grace period, except that a tree
// of at most 4 nodes keeps them (no churn for small pools); unlinked nodes are handed to RCU in
// batches of up to 32, so up to 31 may wait (unaccounted) until the next batch or the destructor.
//
// Thread safety: all methods may be called from any thread concurrently. Entries are PageRecord
// pointers; records live in PhysMemory for its whole life, so a pointer read under RCU stays valid
// memory after the read lock is dropped (its contents may have changed).
#ifndef PAGEPOOL_POOL_INFLIGHT_INDEX_H_
#define PAGEPOOL_POOL_INFLIGHT_INDEX_H_

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "pool/phys_memory.h"

namespace pagepool::pool {

namespace internal {
struct IndexNode;
}  // namespace internal

struct InflightIndexStats {
  uint64_t entries = 0;          // ids in use
  uint64_t nodes = 0;            // nodes linked in the tree
  uint64_t node_bytes = 0;       // nodes * InflightIndex::NodeSize()
  uint64_t height = 0;           // levels (0: empty tree)
  uint64_t nodes_allocated = 0;  // total ever
  uint64_t nodes_freed = 0;      // total handed to RCU for freeing
  uint64_t alloc_failures = 0;   // Alloc() answers RESOURCE_EXHAUSTED (ID space full)
  double bytes_per_entry = 0;    // node_bytes / entries (0 when empty)
};

class InflightIndex {
 public:
  // x86_64's PP_DMA_INDEX_BITS = 32: ids 1 .. 2^32 - 1.
  static constexpr uint32_t kDefaultLimit = 0xffffffffu;

  // `limit` is the highest id handed out (>= 1).
  explicit InflightIndex(uint32_t limit = kDefaultLimit);
  // Frees every node at once. REQUIRES: no concurrent callers.
  ~InflightIndex();
  InflightIndex(const InflightIndex&) = delete;
  InflightIndex& operator=(const InflightIndex&) = delete;

  // xa_alloc: stores `page` (non-null) at the lowest free id in [1, limit] and returns the id.
  // RESOURCE_EXHAUSTED when every id up to the limit is in use (or a node cannot be allocated).
  // Context: any thread; takes the index lock.
  absl::StatusOr<uint32_t> Alloc(PageRecord* page);

  // xa_alloc for several pages under one lock acquisition: pages[i] gets ids[i], each the lowest
  // free id at its turn (so the result is exactly that of calling Alloc for each page in order).
  // Stops at the first failure (ID space full); returns how many pages got an id. REQUIRES:
  // ids.size() >= pages.size(); no null page. Context: any thread; takes the index lock once.
  size_t AllocBulk(absl::Span<PageRecord* const> pages, absl::Span<uint32_t> ids);

  // xa_load: the entry at `id`, or nullptr.
  // Context: any thread; lock-free (takes the RCU read lock itself; may nest in one).
  PageRecord* Load(uint32_t id) const;

  // xa_cmpxchg(id, expected, desired) for desired == nullptr (the only use the pool has): if the
  // entry at `id` is `expected`, removes it and returns true; otherwise changes nothing and returns
  // false. Of any number of concurrent callers with the same (id, expected), exactly one gets true.
  // REQUIRES: desired == nullptr (anything else is a programming error and returns false).
  // Context: any thread; takes the index lock.
  bool CompareExchange(uint32_t id, PageRecord* expected, PageRecord* desired = nullptr);

  // xa_erase: removes and returns the entry at `id` (nullptr if none).
  // Context: any thread; takes the index lock.
  PageRecord* Erase(uint32_t id);

  // xa_for_each: calls fn(id, page) for every entry in increasing id order, lock-free under the RCU
  // read lock (taken here). Entries added or removed during the walk may or may not be seen; every
  // entry present for the whole walk is seen once. fn must not block for long and must not call
  // synchronize; it may call CompareExchange/Erase. Returning false stops the walk.
  // Context: any thread.
  void ForEach(absl::FunctionRef<bool(uint32_t id, PageRecord* page)> fn) const;

  // xa_for_each_start, a bounded piece at a time: calls fn(id, page) for the entries with
  // id >= first_id in increasing id order, at most `max` of them (0: no limit), under one RCU read
  // section (taken here). Returns the id to resume at: the id of the first entry left unvisited
  // when `max` entries were visited, one past the id at which fn returned false, or 0 (never an
  // id) when no entry at or above first_id was left (the walk is done). A walk split into pieces
  // (ForEachFrom(1), then from each returned id until 0) sees what xa_for_each sees: every entry
  // present for the whole walk exactly once, in increasing id order; entries added or removed
  // during it may or may not be seen. fn obeys ForEach's rules.
  // Context: any thread.
  uint32_t ForEachFrom(uint32_t first_id, size_t max,
                       absl::FunctionRef<bool(uint32_t id, PageRecord* page)> fn) const;

  bool empty() const { return entries_.load(std::memory_order_relaxed) == 0; }
  uint64_t size() const { return entries_.load(std::memory_order_relaxed); }
  // Bytes of nodes linked in the tree now (nodes * NodeSize()).
  uint64_t memory_bytes() const;
  InflightIndexStats stats() const;
  static size_t NodeSize();

 private:
  // The leaf the last allocation went to, and its first id (Alloc's and AllocBulk's shortcut).
  // Valid while every id below `base` is in use and the leaf is linked.
  struct LeafHint {
    internal::IndexNode* leaf = nullptr;
    uint64_t base = 0;
  };
  // xa_alloc of one page: the hinted leaf if it still has the lowest free id, else a descent from
  // the root (grown first if full). Updates *hint to the leaf used.
  absl::StatusOr<uint32_t> AllocLocked(PageRecord* page, LeafHint* hint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  // AllocLocked's shortcut: the id taken in the hinted leaf, or 0 (never an id) when it cannot
  // give the lowest free id. Does not count the entry.
  uint32_t AllocFromHintLocked(PageRecord* page, const LeafHint& hint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  // The root, created if the tree is empty and grown upward while it is full (xas_expand).
  // RESOURCE_EXHAUSTED when the limit allows no more ids or a node cannot be allocated.
  absl::StatusOr<internal::IndexNode*> RootWithRoomLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  // Stores `page` at the lowest free id under `root`, creating missing nodes on the way down.
  // Does not count the entry.
  // REQUIRES: root has room (RootWithRoomLocked).
  absl::StatusOr<uint32_t> DescendAndStoreLocked(internal::IndexNode* root, PageRecord* page,
                                                 LeafHint* hint)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  // A new node, counted; nullptr when memory is exhausted.
  internal::IndexNode* NewNodeLocked(unsigned shift) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  absl::Status IdSpaceFullLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);  // counts the failure
  static absl::Status NodeOutOfMemory();
  void DeleteNodeLocked(internal::IndexNode* node) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void RemoveLocked(internal::IndexNode* leaf, unsigned offset)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  internal::IndexNode* LeafForLocked(uint32_t id) const ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void ShrinkLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void FlushRetiredLocked() ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  // Drops hint_ when `id` (being removed) lies below its leaf.
  void ForgetHintBelowLocked(uint64_t id) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);

  static constexpr unsigned kRetireBatch = 32;
  static constexpr uint64_t kKeepNodes = 4;

  const uint32_t limit_;
  mutable base::Mutex lock_;
  std::atomic<internal::IndexNode*> root_{nullptr};
  // Unlinked nodes waiting to be handed to RCU (at most kRetireBatch; not counted in nodes_).
  internal::IndexNode* retired_ ABSL_GUARDED_BY(lock_) = nullptr;
  // Where Alloc's lowest free id was last found (one xa_alloc per call, each under the lock; the
  // hint only spares the descent from the root while it stays right).
  LeafHint hint_ ABSL_GUARDED_BY(lock_);
  unsigned retired_count_ ABSL_GUARDED_BY(lock_) = 0;
  std::atomic<uint64_t> entries_{0};
  std::atomic<uint64_t> nodes_{0};
  std::atomic<uint64_t> nodes_allocated_{0};
  std::atomic<uint64_t> nodes_freed_{0};
  std::atomic<uint64_t> alloc_failures_{0};
};

}  // namespace pagepool::pool

#endif  // PAGEPOOL_POOL_INFLIGHT_INDEX_H_
