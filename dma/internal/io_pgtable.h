// File: dma/internal/io_pgtable.h
//
// The I/O page table proper (the kernel's io-pgtable / VT-d second stage): map, unmap, lockless
// walks, and the life cycle of table pages (allocate, link, unlink, gather, RCU release, recycle).
// The IOTLB model, the flush queue and the IOVA allocator sit above it in IommuDomain.
//
// Concurrency: a lock-free protocol on one atomic word per table, `PtTable::state` = count | DYING.
//
//   * count is the number of present entries plus reservations for entries about to be installed.
//   * Installing into a table first reserves: fetch_add(k); if the old word had DYING set the
//     reservation is undone and the walk restarts from the root, after spinning (with a pause)
//     until the parent entry that pointed at the dying table has been cleared.
//   * Installing a new child table: reserve one slot in the parent, CAS parent PTE 0 -> child. The
//     loser of that race frees its never-published table at once (live-free case 1) and drops its
//     reservation; the winner's child comes pre-reserved for the entry the winner goes on to
//     install.
//   * Removing entries drops the count; whoever drops it to 0 tries CAS 0 -> DYING. Only the winner
//     unlinks the table: it clears the parent PTE, gathers the table and drops the parent's count,
//     cascading upward (the root never dies). Only with free_empty_tables.
//   * The common case walks down without recursion, reading table entries only (DescendToTable):
//     when tables lead to the leaf table, map reserves there as above and unmap clears its leaves;
//     anything else (an entry to link, a block, a dying table) takes the general walk, with nothing
//     changed by the first.
//
// Why a dying table can never swallow a neighbour's new mapping: reserving (count+1 unless DYING)
// and dying (0 -> DYING) are atomic operations on the same word, so they are totally ordered. If
// the reservation comes first the count is no longer 0 and the CAS to DYING fails; if DYING comes
// first the reserver sees it and goes back to the root, where it finds the parent entry cleared and
// installs a fresh table. A PTE is therefore only ever written into a table whose count it holds.
//
// Compared with seed 000's per-domain rwlock (readers for map/unmap, writer while freeing): that
// lock is one shared cache line that every map and unmap of the domain writes (reader count), so
// two CPUs mapping disjoint ranges still bounce it, and a freeing unmap stalls every other
// map/unmap of the domain. The per-table word is only contended by operations that really share a
// table, nothing blocks, and the price is a retry from the root in the (rare) case of racing with a
// table's death. Lockless walkers (Translate, ForEachLeaf, SweepDirty) take neither: they rely on
// RCU, and so do map/unmap for reading the state word of a table that may be dying.
//
// Leaf PTEs inside a range the caller owns are written with plain (release) stores: nobody else may
// write a zero or leaf entry in that range, and the only concurrent writers of a present leaf are
// Translate's A/D update (a CAS that fails if the entry changed) and SweepDirty's fetch_and(~D)
// (harmless on 0 and on a table entry, whose bits 2..5 are zero). Table entries are always CASed.
//
// Deferred freeing: unlinked tables are gathered per operation (IotlbGather); after the caller has
// invalidated the IOTLB it hands the gather to ReleaseGather(), which pushes it onto a pending
// list; every kRcuBatch tables the whole list goes to call_rcu in one call (the callback walks the
// list). If more than kPendingHighWater tables are in flight (liburcu's call_rcu thread sleeps ~10
// ms between batches, so a fast unmapper can get far ahead of it), the unmapping thread instead
// waits for a grace period itself (synchronize_rcu) and releases the batch: back-pressure that
// bounds the memory held by tables waiting to be freed. It never does so while it holds the RCU
// read lock. Released tables are all zero and are kept for reuse instead of freeing: up to
// kCacheMax, or as many as are still in flight while a burst of frees is coming back, never more
// than kCacheBurstMax (see ReleaseBatch); TrimCache (called by Quiesce, by the lazy flush timer and
// by IommuDomain::TrimTables) gives the excess back, and TrimIdle gives back what a whole interval
// did not need. Accounting follows the kernel: a table counts in iommu_pages from its allocation
// until it is really released (NR_IOMMU_PAGES drops in iommu_put_pages_list, not at unlink); the
// zeroed cache is counted apart (cached_table_pages).
//
// Walk caches: Translate may start from a walk-cache hit (dma/internal/iotlb.h) and fills the cache
// with every table entry it reads. Safe because an unmap that unlinks tables invalidates the walk
// caches over the tables' whole span before ReleaseGather (IommuDomain does it), and the walk runs
// under the RCU read lock. With quarantine_for_test the released tables are kept (never reused or
// freed) so that a walk through a stale entry, the bug of a missing invalidation, reads valid
// memory and is counted as a violation instead of crashing.
//
// Lockless walks (ForEachLeaf, ReadDirty) hold the RCU read lock for at most kWalkBatch entries at
// a time, then drop it and walk again from the root at the next IOVA, so a walk over a large range
// never holds back grace periods for long.
//
// Thread safety: everything but the destructor may be called concurrently. The caller guarantees
// that Map/Unmap ranges in flight at the same time do not overlap.
#ifndef PAGEPOOL_DMA_INTERNAL_IO_PGTABLE_H_
#define PAGEPOOL_DMA_INTERNAL_IO_PGTABLE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "base/mutex.h"
#include "dma/internal/pt_table.h"
#include "dma/types.h"

namespace pagepool::dma {
class IommuDomain;
}  // namespace pagepool::dma

namespace pagepool::dma::internal {
class Iotlb;
}  // namespace pagepool::dma::internal

namespace pagepool::dma::internal {

class IoPageTable {
 public:
  static constexpr uint32_t kRcuBatch = 64;  // tables per call_rcu
  static constexpr size_t kCacheMax = 256;   // zeroed tables kept for reuse (1 MiB)
  // Unlinked tables in flight (16 MiB) above which an unmap waits for a grace period itself.
  static constexpr int64_t kPendingHighWater = 4096;
  // The cache of zeroed tables may grow to the tables in flight during a burst, up to this (4 MiB).
  static constexpr size_t kCacheBurstMax = 1024;
  // Present entries a lockless walk visits per RCU read-side section.
  static constexpr uint32_t kWalkBatch = 1024;

  // Tests only: deterministic hooks in the death protocol (Drop). after_count_drop runs when an
  // unmap has dropped a table's count to 0, before its CAS 0 -> DYING; after_death_cas after the
  // CAS won, before the parent entry is cleared. Each gets the table. Set before use, not
  // concurrently. Outside tests hooks_ is null: the only cost is one load and a not-taken branch at
  // each of the two points, which only an unmap that empties a table reaches (never a map, a
  // translate, or an unmap that leaves its tables in use); the calls are in a cold function.
  struct TestHooks {
    std::function<void(PtTable*)> after_count_drop;
    std::function<void(PtTable*)> after_death_cas;
  };

  // levels: 3, 4 or 5. The root is allocated here (and counted).
  IoPageTable(unsigned levels, bool free_empty_tables, DomainCounters* counters);
  // REQUIRES: no other call in flight, every gather released and Quiesce() called.
  ~IoPageTable();
  IoPageTable(const IoPageTable&) = delete;
  IoPageTable& operator=(const IoPageTable&) = delete;

  // Maps [iova, iova + size) -> [phys, ...) with the largest leaves alignment allows. `leaf_bits`
  // are the R/W PTE bits. On failure nothing stays mapped. Tables unlinked on the way (a block over
  // an empty table, rollback) are added to `gather`, which the caller must invalidate and release.
  // REQUIRES: arguments validated by the caller (aligned, within the address width, size > 0).
  // Leaves are no larger than level max_leaf (0: 4 KiB only, 1: up to 2 MiB, 2: up to 1 GiB).
  absl::Status Map(uint64_t iova, uint64_t phys, uint64_t size, uint64_t leaf_bits,
                   IotlbGather* gather, unsigned max_leaf = 2);

  // Unmaps every leaf in [iova, iova + size); returns the number of 4 KiB pages unmapped (0 if
  // none). INVALID_ARGUMENT (nothing changed) if the range cuts a block leaf. Unlinked tables go to
  // `gather`. With `dirty`, each leaf is cleared atomically (exchange) and dirty(iova, size) is
  // called for each one whose D bit was set (iommu_unmap_read_dirty): no dirty bit is lost at
  // unmap.
  absl::StatusOr<uint64_t> Unmap(
      uint64_t iova, uint64_t size, IotlbGather* gather,
      const absl::FunctionRef<void(uint64_t, uint64_t)>* dirty = nullptr);

  // Lockless walks. Context: any thread.
  absl::StatusOr<uint64_t> Translate(uint64_t iova, bool write);
  // Translate as the device does it: starts from a walk-cache hit in `tlb` if any (counting a walk
  // through a released table in walk_stale), fills `tlb`'s walk caches, sets A (and D for a write
  // when track_dirty). *pte_out gets the leaf entry as written. tlb may be nullptr.
  absl::StatusOr<uint64_t> Translate(uint64_t iova, bool write, Iotlb* tlb, bool track_dirty,
                                     uint64_t* pte_out);
  struct Leaf {
    uint64_t iova;
    uint64_t pte;
    unsigned level;
  };
  // Calls fn for each present leaf in [start, end) in order, under the RCU read lock; false stops.
  void ForEachLeaf(uint64_t start, uint64_t end, absl::FunctionRef<bool(const Leaf&)> fn) const;
  // Test-and-clears D on each present leaf in [start, end); fn(iova, size) per dirty leaf.
  uint64_t SweepDirty(uint64_t start, uint64_t end, absl::FunctionRef<void(uint64_t, uint64_t)> fn);
  // SweepDirty, or with clear == false only reads D (IOMMU_DIRTY_NO_CLEAR).
  uint64_t ReadDirty(uint64_t start, uint64_t end, bool clear,
                     absl::FunctionRef<void(uint64_t, uint64_t)> fn);

  // Hands invalidated tables to RCU (batched). Context: any thread; the IOTLB is already flushed.
  void ReleaseGather(IotlbGather* gather);
  // Sends the pending batch to RCU, waits until every table handed over so far is released, and
  // trims the cache of zeroed tables to `keep` (kCacheMax; 0 when the domain is done with, as at
  // unbind). REQUIRES: the caller holds no RCU read lock.
  void Quiesce(size_t keep = kCacheMax);
  // Gives back the cached tables that no allocation needed since the last call: the fewest the
  // cache held in that interval (its low-water mark), so a cache that a steady load keeps drawing
  // from stays, and one left full after a burst empties over two calls. The daemon calls it once a
  // second (the kernel keeps no such cache: its freed tables go back to the page allocator at
  // once). Returns the number of tables freed. Context: any thread.
  size_t TrimIdle();
  // Zeroed tables in the cache now. Context: any thread.
  size_t cached_tables() const;

  // Tests only: runs `hook` in Map after a new table is allocated and before it is installed
  // (to force the install race of live-free case 1 deterministically). Not thread-safe to set.
  void set_install_hook_for_test(std::function<void()> hook) { install_hook_ = std::move(hook); }
  // The walk caches to invalidate over [start, end), the span of a table about to be unlinked,
  // after the table is marked DYING and before the entry pointing to it is cleared
  // (Iotlb::InvalidateWalkRange), so that no paging-structure-cache entry can point to the old
  // table once a new one may be linked in its place (Translate never caches a DYING table).
  // nullptr: none. Set before use.
  void set_walk_caches(Iotlb* tlb) { dying_tlb_ = tlb; }
  // Tests only: see TestHooks. `hooks` must outlive its use; nullptr removes them.
  void set_hooks_for_test(TestHooks* hooks) { hooks_ = hooks; }
  // Tests only: released tables are kept aside (not reused, freed by the destructor). Set before
  // use.
  void set_quarantine_for_test(bool on) { quarantine_on_ = on; }
  // Debug check: every released table is verified all zero (violations in released_not_zero).
  void set_check_released_zero(bool on) { check_zero_ = on; }

  // Frees zeroed cached tables beyond `keep`; returns how many were freed. Context: any thread.
  size_t TrimCache(size_t keep);
  size_t cache_size() const { return cache_size_.load(std::memory_order_relaxed); }

  // False if the root table could not be allocated (the object is then unusable).
  bool ok() const { return root_ != nullptr; }

 private:
  struct Path {
    uint64_t iova;  // an address under the deepest table of the path (for the span of a freed one)
    PtTable* table[kMaxLevels + 1];
    unsigned index[kMaxLevels + 1];  // index[l]: entry of table[l] leading to table[l - 1]
  };

  PtTable* AllocTable();
  void FreeUnpublished(PtTable* t);
  void OnLinked();
  void OnUnlinked(PtTable* t, unsigned level, uint64_t addr, IotlbGather* gather);
  static bool Reserve(PtTable* t, uint32_t n);
  // Drops n from t's count; at 0 (and free_empty_tables) tries to kill and unlink it, cascading.
  void Drop(PtTable* t, uint32_t n, unsigned level, Path* path, IotlbGather* gather);
  // Drop's death path: t's count just reached 0; kill and unlink it, then drop its parent's entry.
  [[gnu::noinline]] void KillEmpty(PtTable* t, unsigned level, Path* path, IotlbGather* gather);
  static void WaitUnlinked(const Path& path, unsigned level, PtTable* dying);

  // Reserves n entries in t (at `level`) unless t is dying; then waits until its killer has
  // cleared the parent entry and returns false (the caller walks again from the root).
  static bool ReserveOrWait(PtTable* t, uint32_t n, const Path& path, unsigned level);

  // Maps n consecutive leaves of level `leaf` from iova, all in one table: descend, then install.
  absl::Status MapLeaves(uint64_t iova, uint64_t phys, unsigned leaf, uint32_t n, uint64_t bits,
                         IotlbGather* gather);
  // Walks from the root to the table at level `leaf` that covers iova, linking missing tables on
  // the way, and returns it with n reservations held in it. Meeting a dying table sends the walk
  // back to the root. ALREADY_EXISTS (a block on the way) or RESOURCE_EXHAUSTED with nothing held.
  absl::StatusOr<PtTable*> DescendAndReserve(uint64_t iova, unsigned leaf, uint32_t n, Path* path,
                                             IotlbGather* gather);
  // One step of the descent from t (at `level`, where we hold *held reservations) to the child
  // covering iova, linking a new child pre-reserved with `want` entries into an empty entry.
  // *held becomes what we hold in the child. nullptr: t is dying (and unlinked by now), walk again.
  absl::StatusOr<PtTable*> StepDown(PtTable* t, unsigned level, uint64_t iova, uint32_t want,
                                    uint32_t* held, Path* path, IotlbGather* gather);
  // Links nt, pre-reserved with `want` entries, into t's empty entry i. The loser of that race
  // frees nt at once (live-free case 1) and gets the winner's entry in *winner.
  // REQUIRES: the caller holds a reservation in t for the entry.
  bool LinkNewTable(PtTable* t, unsigned i, PtTable* nt, uint32_t want, uint64_t* winner);
  // Fast path: writes the n leaves if all n entries are empty. Otherwise takes back what it wrote
  // and returns false. REQUIRES: n reservations held in t (they become the leaves).
  bool InstallLeavesFast(PtTable* t, uint64_t iova, uint64_t phys, unsigned leaf, uint32_t n,
                         uint64_t bits);
  // The careful way: ALREADY_EXISTS (and the n reservations dropped) if an entry holds a leaf or a
  // table with leaves under it; else writes the leaves, unlinking the empty tables they replace
  // (live-free case 2) into `gather`. REQUIRES: n reservations held in t.
  absl::Status InstallLeavesOverTables(PtTable* t, uint64_t iova, uint64_t phys, unsigned leaf,
                                       uint32_t n, uint64_t bits, Path* path, IotlbGather* gather);
  // One unmap's walk: the range, whether it stopped at a cut block, where unlinked tables go, and
  // the path to the table being cleared.
  struct UnmapWalk {
    // path is left uninitialised: the walk writes each entry before anything reads it (zeroing it
    // was a `rep stos` that cost a 4 KiB unmap about a sixth of its time).
    UnmapWalk(uint64_t s, uint64_t e, IotlbGather* g) : start(s), end(e), gather(g) {}
    uint64_t start;
    uint64_t end;
    IotlbGather* gather;
    bool cut = false;
    Path path;
  };
  // Unmaps the part of [w->start, w->end) within t (which maps [base, base + 512 * span)). Sets
  // w->cut and stops at a leaf only partly inside the range.
  uint64_t UnmapLevel(PtTable* t, unsigned level, uint64_t base, UnmapWalk* w);
  // Clears the present 4 KiB leaves in slots [i0, i1] of leaf table t (mapping from base) and
  // returns how many there were (no count change).
  uint32_t ClearLeaves(PtTable* t, uint64_t base, unsigned i0, unsigned i1);
  // ClearLeaves, then drops their count from t.
  uint32_t UnmapLeaves(PtTable* t, uint64_t base, unsigned i0, unsigned i1, UnmapWalk* w);
  // The table at level `leaf` covering iova if only table entries lead to it (recorded in *path),
  // else nullptr (an empty entry or a block on the way). Reads only.
  PtTable* DescendToTable(uint64_t iova, unsigned leaf, Path* path) const;
  // Clears one present leaf entry e at `slot`; with dirty_fn_ set, atomically and reporting D.
  void ClearLeaf(std::atomic<uint64_t>& slot, uint64_t e, uint64_t iova, uint64_t span);
  bool SubtreeHasLeaves(PtTable* t, unsigned level) const;
  // Clears every entry under t (already unlinked by the caller), gathers t and its sub-tables.
  // Returns the 4 KiB pages of the leaves it cleared.
  uint64_t ClearSubtree(PtTable* t, unsigned level, uint64_t base, IotlbGather* gather);
  // The leaf covering iova (pte 0 if none).
  Leaf LookupLeaf(uint64_t iova) const;
  // Visits present leaves of [start, end) in sections of kWalkBatch entries, each under its own RCU
  // read lock; visit(slot, pte, iova, level) returns false to stop. Returns false if stopped.
  bool WalkInSections(
      uint64_t start, uint64_t end,
      absl::FunctionRef<bool(std::atomic<uint64_t>&, uint64_t, uint64_t, unsigned)> visit) const;
  void ReleaseOne(PtTable* t, std::vector<PtTable*>* to_delete);

  static void RcuReleaseBatch(base::rcu::Head* head);
  void ReleaseBatch(PtTable* list);
  void SubmitPending();
  void DeleteSubtree(PtTable* t, unsigned level);
  [[gnu::cold, gnu::noinline]] void RunTestHook(std::function<void(PtTable*)> TestHooks::*hook,
                                                PtTable* t);

  const unsigned top_;    // level of the root
  const uint64_t limit_;  // 1 << address width
  const bool free_empty_tables_;
  TestHooks* hooks_ = nullptr;  // tests only; read next to free_empty_tables_ on the death path
  DomainCounters* const counters_;
  PtTable* root_;
  std::function<void()> install_hook_;
  Iotlb* dying_tlb_ = nullptr;  // see set_walk_caches
  // Marks t and every table under it DYING and invalidates its span in dying_tlb_'s walk caches
  // (before unlinking).
  void KillSubtree(PtTable* t, unsigned level, uint64_t base);
  bool quarantine_on_ = false;
  bool check_zero_ = false;
  // Set for the duration of an Unmap with a dirty callback (iommu_unmap_read_dirty).
  static thread_local const absl::FunctionRef<void(uint64_t, uint64_t)>* dirty_fn_;

  // Gathers handed over and waiting for the next call_rcu (Treiber stack, head carries list_len).
  alignas(64) std::atomic<PtTable*> rcu_pending_{nullptr};

  alignas(64) mutable base::Mutex cache_mu_;
  std::vector<PtTable*> cache_ ABSL_GUARDED_BY(cache_mu_);
  // The fewest tables cache_ held since the last TrimIdle.
  size_t cache_low_ ABSL_GUARDED_BY(cache_mu_) = 0;
  std::atomic<size_t> cache_size_{0};  // hint only, read without the lock
  std::vector<PtTable*> quarantine_ ABSL_GUARDED_BY(cache_mu_);
};

// Gives tests the page table behind an IommuDomain (nullptr in passthrough).
struct IommuDomainTestPeer {
  static IoPageTable* PageTable(IommuDomain& domain);
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_IO_PGTABLE_H_
