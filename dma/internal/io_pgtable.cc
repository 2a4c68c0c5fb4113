#include "dma/internal/io_pgtable.h"

#include <algorithm>
#include <cstddef>
#include <new>
#include <optional>
#include <thread>

#include "absl/strings/str_cat.h"
#include "base/cpu_relax.h"
#include "base/strings.h"
#include "dma/internal/iotlb.h"

namespace pagepool::dma::internal {
namespace {

constexpr uint64_t kLeafFlagMask = kPteAccessed | kPteDirty;

// Clears the 4 KiB leaves in slots [i0, i1] of leaf table t, one store each, and returns how many
// there were. Only for a domain without a dirty-bit reader (ClearLeaf reads the bit otherwise).
uint32_t ClearLeafSlots(PtTable* t, unsigned i0, unsigned i1) {
  uint32_t cleared = 0;
  std::atomic<uint64_t>* const last = &t->pte[i1];
#pragma GCC unroll 4
  for (std::atomic<uint64_t>* slot = &t->pte[i0]; slot <= last; ++slot) {
    if (slot->load(std::memory_order_relaxed) == 0) continue;
    slot->store(0, std::memory_order_release);
    ++cleared;
  }
  return cleared;
}

// Sets `flags` (A, and D for a write) in the present leaf `slot`, last read as `e`: a CAS that
// only succeeds on the unchanged entry (a blind fetch_or could write A/D bits into an entry that an
// unmap just cleared). False if the entry changed other than in A/D (unmapped or remapped).
bool SetLeafFlags(std::atomic<uint64_t>& slot, uint64_t e, uint64_t flags) {
  while ((e & flags) != flags) {
    uint64_t expected = e;
    if (slot.compare_exchange_weak(expected, e | flags, std::memory_order_acq_rel,
                                   std::memory_order_acquire)) {
      return true;
    }
    if ((expected & ~kLeafFlagMask) != (e & ~kLeafFlagMask)) return false;  // remapped/unmapped
    e = expected;
  }
  return true;
}

}  // namespace

thread_local const absl::FunctionRef<void(uint64_t, uint64_t)>* IoPageTable::dirty_fn_ = nullptr;

IoPageTable::IoPageTable(unsigned levels, bool free_empty_tables, DomainCounters* counters)
    : top_(levels - 1),
      limit_(uint64_t{1} << (12 + kPtLevelBits * levels)),
      free_empty_tables_(free_empty_tables),
      counters_(counters) {
  root_ = AllocTable();
  if (root_ != nullptr) OnLinked();
}

IoPageTable::~IoPageTable() {
  SubmitPending();
  base::rcu::Barrier();
  if (root_ != nullptr) DeleteSubtree(root_, top_);
  base::MutexLock l(&cache_mu_);
  for (PtTable* t : cache_) delete t;
  cache_.clear();
  for (PtTable* t : quarantine_) delete t;
  quarantine_.clear();
}

void IoPageTable::DeleteSubtree(PtTable* t, unsigned level) {
  if (level > 0) {
    for (auto& slot : t->pte) {
      const uint64_t e = slot.load(std::memory_order_relaxed);
      if (PteIsPresent(e) && PteIsTable(e)) DeleteSubtree(PteTable(e), level - 1);
    }
  }
  delete t;
}

// ---- table life cycle --------------------------------------------------------------------------

PtTable* IoPageTable::AllocTable() {
  PtTable* t = nullptr;
  if (cache_size_.load(std::memory_order_relaxed) != 0) {
    base::MutexLock l(&cache_mu_);
    if (!cache_.empty()) {
      t = cache_.back();
      cache_.pop_back();
      cache_low_ = std::min(cache_low_, cache_.size());
      cache_size_.store(cache_.size(), std::memory_order_relaxed);
    }
  }
  if (t == nullptr) {
    t = new (std::nothrow) PtTable();  // value-initialised: every PTE 0
    if (t == nullptr) return nullptr;
  }
  t->state.store(0, std::memory_order_relaxed);
  t->list_len = 0;
  t->next = nullptr;
  t->owner = this;
  counters_->tables.tables_allocated.fetch_add(1, std::memory_order_relaxed);
  counters_->tables.iommu_pages.fetch_add(1, std::memory_order_relaxed);
  return t;
}

void IoPageTable::FreeUnpublished(PtTable* t) {
  // Never visible to anyone: no invalidation and no grace period needed (live-free case 1).
  counters_->tables.tables_freed.fetch_add(1, std::memory_order_relaxed);
  counters_->tables.tables_released.fetch_add(1, std::memory_order_relaxed);
  counters_->tables.iommu_pages.fetch_sub(1, std::memory_order_relaxed);
  t->state.store(0, std::memory_order_relaxed);
  {
    base::MutexLock l(&cache_mu_);
    if (cache_.size() < kCacheMax) {
      cache_.push_back(t);
      cache_size_.store(cache_.size(), std::memory_order_relaxed);
      return;
    }
  }
  delete t;
}

void IoPageTable::OnLinked() {
  auto& c = counters_->tables;
  const int64_t now = c.table_pages.fetch_add(1, std::memory_order_relaxed) + 1;
  int64_t peak = c.peak_table_pages.load(std::memory_order_relaxed);
  while (now > peak &&
         !c.peak_table_pages.compare_exchange_weak(peak, now, std::memory_order_relaxed)) {
  }
}

void IoPageTable::OnUnlinked(PtTable* t, unsigned level, uint64_t addr, IotlbGather* gather) {
  auto& c = counters_->tables;
  c.table_pages.fetch_sub(1, std::memory_order_relaxed);
  c.tables_freed.fetch_add(1, std::memory_order_relaxed);
  c.pending_free_pages.fetch_add(1, std::memory_order_relaxed);
  // t holds level-`level` entries: it translated the whole LevelSpan(level + 1) around addr, and
  // the walk caches may hold pointers to it (or below it) for any address of that span.
  const uint64_t span = LevelSpan(level + 1);
  gather->Add(t, addr & ~(span - 1), span);
}

bool IoPageTable::Reserve(PtTable* t, uint32_t n) {
  const uint32_t old = t->state.fetch_add(n, std::memory_order_acq_rel);
  if ((old & PtTable::kDying) == 0) return true;
  t->state.fetch_sub(n, std::memory_order_relaxed);  // undo; the table is already dead
  t->owner->counters_->tables.failed_reserves.fetch_add(1, std::memory_order_relaxed);
  return false;
}

void IoPageTable::RunTestHook(std::function<void(PtTable*)> TestHooks::*hook, PtTable* t) {
  if (hooks_->*hook) (hooks_->*hook)(t);
}

// Every unmap ends with a Drop; almost always the table keeps entries, so the count drop is inline
// and the death path (the test hooks, the walk-cache invalidation, the cascade) is out of line.
inline void IoPageTable::Drop(PtTable* t, uint32_t n, unsigned level, Path* path,
                              IotlbGather* gather) {
  const uint32_t old = t->state.fetch_sub(n, std::memory_order_acq_rel);
  if (old != n || level == top_ || !free_empty_tables_) return;
  KillEmpty(t, level, path, gather);
}

void IoPageTable::KillEmpty(PtTable* t, unsigned level, Path* path, IotlbGather* gather) {
  for (;;) {
    if (__builtin_expect(hooks_ != nullptr, 0)) RunTestHook(&TestHooks::after_count_drop, t);
    uint32_t zero = 0;
    if (!t->state.compare_exchange_strong(zero, PtTable::kDying, std::memory_order_seq_cst,
                                          std::memory_order_relaxed)) {
      // Someone reserved a slot in between: the table lives on.
      counters_->tables.death_races_lost.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    if (__builtin_expect(hooks_ != nullptr, 0)) RunTestHook(&TestHooks::after_death_cas, t);
    if (dying_tlb_ != nullptr) {
      const uint64_t span = LevelSpan(level + 1);
      const uint64_t base = path->iova & ~(span - 1);
      dying_tlb_->InvalidateWalkRange(base, base + span);
    }
    // We own the death of t: unlink it, then drop the parent's entry for it (cascade).
    PtTable* parent = path->table[level + 1];
    parent->pte[path->index[level + 1]].store(0, std::memory_order_release);
    OnUnlinked(t, level, path->iova, gather);
    t = parent;
    ++level;
    const uint32_t old = t->state.fetch_sub(1, std::memory_order_acq_rel);
    if (old != 1 || level == top_ || !free_empty_tables_) return;
  }
}

void IoPageTable::WaitUnlinked(const Path& path, unsigned level, PtTable* dying) {
  // Only a non-root table can die; its killer clears the parent entry right after winning.
  const std::atomic<uint64_t>& slot = path.table[level + 1]->pte[path.index[level + 1]];
  const uint64_t dead = MakeTablePte(dying);
  for (unsigned spins = 0; slot.load(std::memory_order_acquire) == dead; ++spins) {
    if (spins < 64) {
      base::CpuRelax();
    } else {
      std::this_thread::yield();
    }
  }
}

// ---- map ---------------------------------------------------------------------------------------

absl::Status IoPageTable::Map(uint64_t iova, uint64_t phys, uint64_t size, uint64_t leaf_bits,
                              IotlbGather* gather, unsigned max_leaf) {
  base::rcu::ReadLock rl;
  uint64_t done = 0;
  while (done < size) {
    const uint64_t cur = iova + done;
    const uint64_t pa = phys + done;
    const uint64_t rem = size - done;
    unsigned leaf = 0;
    if (rem >= LevelSpan(1)) {  // a block may fit (never for a run under 2 MiB, the common case)
      for (unsigned l = std::min(2u, max_leaf); l >= 1; --l) {
        const uint64_t span = LevelSpan(l);
        if (((cur | pa) & (span - 1)) == 0 && rem >= span) {
          leaf = l;
          break;
        }
      }
    }
    const uint64_t span = LevelSpan(leaf);
    const uint32_t n =
        static_cast<uint32_t>(std::min<uint64_t>(rem / span, kPtEntries - LevelIndex(cur, leaf)));
    absl::Status s = MapLeaves(cur, pa, leaf, n, leaf_bits, gather);
    if (!s.ok()) {
      if (done > 0) {
        // Nothing stays half mapped: undo what this call installed.
        absl::StatusOr<uint64_t> undone = Unmap(iova, done, gather);
        (void)undone;
      }
      return s;
    }
    done += n * span;
  }
  return absl::OkStatus();
}

absl::Status IoPageTable::MapLeaves(uint64_t iova, uint64_t phys, unsigned leaf, uint32_t n,
                                    uint64_t bits, IotlbGather* gather) {
  Path path;
  path.table[top_] = root_;
  path.iova = iova;
  // The common case: the tables down to `leaf` exist, so the walk only reads them and reserves
  // the n entries in the last. Anything else (an entry to link, a block on the way, a dying
  // table) goes through DescendAndReserve; this walk has changed nothing by then.
  PtTable* t = DescendToTable(iova, leaf, &path);
  if (t != nullptr && !ReserveOrWait(t, n, path, leaf)) {
    t = nullptr;  // dying, and unlinked by now: walk again, as DescendAndReserve would
    counters_->tables.walk_restarts.fetch_add(1, std::memory_order_relaxed);
  }
  if (t == nullptr) {
    absl::StatusOr<PtTable*> r = DescendAndReserve(iova, leaf, n, &path, gather);
    if (!r.ok()) return r.status();
    t = *r;
  }
  if (InstallLeavesFast(t, iova, phys, leaf, n, bits)) return absl::OkStatus();
  return InstallLeavesOverTables(t, iova, phys, leaf, n, bits, &path, gather);
}

absl::StatusOr<PtTable*> IoPageTable::DescendAndReserve(uint64_t iova, unsigned leaf, uint32_t n,
                                                        Path* path, IotlbGather* gather) {
  path->table[top_] = root_;
  path->iova = iova;
  for (bool first = true;; first = false) {  // another walk only after meeting a dying table
    if (!first) counters_->tables.walk_restarts.fetch_add(1, std::memory_order_relaxed);
    PtTable* t = root_;
    uint32_t held = 0;  // reservations we hold in t
    for (unsigned level = top_; level > leaf && t != nullptr; --level) {
      absl::StatusOr<PtTable*> child =
          StepDown(t, level, iova, level - 1 == leaf ? n : 1, &held, path, gather);
      if (!child.ok()) return child.status();
      t = *child;
    }
    if (t == nullptr) continue;  // a dying table on the way, unlinked by now: walk again
    // held is 0, or n if we linked t ourselves (it came pre-reserved).
    if (held != 0 || ReserveOrWait(t, n, *path, leaf)) return t;
  }
}

absl::StatusOr<PtTable*> IoPageTable::StepDown(PtTable* t, unsigned level, uint64_t iova,
                                               uint32_t want, uint32_t* held, Path* path,
                                               IotlbGather* gather) {
  const unsigned i = LevelIndex(iova, level);
  path->index[level] = i;
  uint64_t e = t->pte[i].load(std::memory_order_acquire);
  if (e == 0) {
    if (*held == 0) {
      if (!ReserveOrWait(t, 1, *path, level)) return nullptr;
      *held = 1;
    }
    PtTable* nt = AllocTable();
    if (nt == nullptr) {
      Drop(t, *held, level, path, gather);
      return absl::ResourceExhaustedError(
          absl::StrCat("Map: no memory for a page table at iova ", base::Hex(iova)));
    }
    if (LinkNewTable(t, i, nt, want, &e)) {
      // Our reservation in t is now nt's entry; nt holds `want` for what we install into it next.
      *held = want;
      path->table[level - 1] = nt;
      return nt;
    }
  }
  if (*held != 0) {
    // Usually e keeps t alive; if the winner's table e was emptied and unlinked meanwhile, this
    // may drop t to 0 and free it, and the walk below finds e dying and restarts from the root.
    Drop(t, *held, level, path, gather);
    *held = 0;
  }
  if (!PteIsTable(e)) {
    return absl::AlreadyExistsError(
        absl::StrCat("Map: iova ", base::Hex(iova), " lies in a ", LevelSpan(level) >> 10,
                     " KiB block already mapped at ", base::Hex(iova & ~(LevelSpan(level) - 1))));
  }
  PtTable* child = PteTable(e);
  path->table[level - 1] = child;
  return child;
}

bool IoPageTable::ReserveOrWait(PtTable* t, uint32_t n, const Path& path, unsigned level) {
  if (Reserve(t, n)) return true;
  WaitUnlinked(path, level, t);
  return false;
}

bool IoPageTable::LinkNewTable(PtTable* t, unsigned i, PtTable* nt, uint32_t want,
                               uint64_t* winner) {
  if (install_hook_) install_hook_();
  nt->state.store(want, std::memory_order_relaxed);
  uint64_t expected = 0;
  if (t->pte[i].compare_exchange_strong(expected, MakeTablePte(nt), std::memory_order_acq_rel,
                                        std::memory_order_acquire)) {
    OnLinked();
    return true;
  }
  // Lost the race to install (live-free case 1): our table was never visible.
  counters_->tables.install_races_lost.fetch_add(1, std::memory_order_relaxed);
  FreeUnpublished(nt);
  *winner = expected;
  return false;
}

bool IoPageTable::InstallLeavesFast(PtTable* t, uint64_t iova, uint64_t phys, unsigned leaf,
                                    uint32_t n, uint64_t bits) {
  std::atomic<uint64_t>* const first = &t->pte[LevelIndex(iova, leaf)];
  std::atomic<uint64_t>* const end = first + n;
  const uint64_t span = LevelSpan(leaf);
  // phys is span-aligned and phys + n * span <= kPhysLimit, so adding span steps the address
  // field alone.
  uint64_t pte = phys | bits | kPtePresent;
  std::atomic<uint64_t>* slot = first;
#pragma GCC unroll 4
  for (; slot != end; ++slot, pte += span) {
    if (slot->load(std::memory_order_relaxed) != 0) break;
    slot->store(pte, std::memory_order_release);
  }
  if (slot == end) return true;
  // Something is there: take back what we wrote; the caller does it the careful way.
  for (std::atomic<uint64_t>* s = first; s != slot; ++s) s->store(0, std::memory_order_release);
  return false;
}

absl::Status IoPageTable::InstallLeavesOverTables(PtTable* t, uint64_t iova, uint64_t phys,
                                                  unsigned leaf, uint32_t n, uint64_t bits,
                                                  Path* path, IotlbGather* gather) {
  const unsigned i0 = LevelIndex(iova, leaf);
  const uint64_t span = LevelSpan(leaf);
  // Check first, so that a failure leaves this table untouched. The caller owns the range: no one
  // else can make these entries non-zero meanwhile.
  for (uint32_t j = 0; j < n; ++j) {
    const uint64_t e = t->pte[i0 + j].load(std::memory_order_acquire);
    if (e == 0) continue;
    if (leaf > 0 && PteIsTable(e) && !SubtreeHasLeaves(PteTable(e), leaf - 1)) continue;
    Drop(t, n, leaf, path, gather);
    return absl::AlreadyExistsError(
        absl::StrCat("Map: iova ", base::Hex(iova + j * span), " is already mapped"));
  }
  uint32_t replaced = 0;
  for (uint32_t j = 0; j < n; ++j) {
    std::atomic<uint64_t>& slot = t->pte[i0 + j];
    const uint64_t e = slot.load(std::memory_order_relaxed);
    if (e != 0) KillSubtree(PteTable(e), leaf - 1, iova + j * span);
    slot.store((phys + j * span) | bits | kPtePresent, std::memory_order_release);
    if (e != 0) {
      // Live-free case 2: a block replaces an (empty) table; unlink and free it.
      ClearSubtree(PteTable(e), leaf - 1, iova + j * span, gather);
      counters_->tables.block_over_table.fetch_add(1, std::memory_order_relaxed);
      ++replaced;
    }
  }
  if (replaced != 0) Drop(t, replaced, leaf, path, gather);  // those entries were counted already
  return absl::OkStatus();
}

bool IoPageTable::SubtreeHasLeaves(PtTable* t, unsigned level) const {
  if ((t->state.load(std::memory_order_acquire) & PtTable::kCountMask) == 0) return false;
  for (auto& slot : t->pte) {
    const uint64_t e = slot.load(std::memory_order_acquire);
    if (!PteIsPresent(e)) continue;
    if (!PteIsTable(e) || level == 0) return true;
    if (SubtreeHasLeaves(PteTable(e), level - 1)) return true;
  }
  return false;
}

uint64_t IoPageTable::ClearSubtree(PtTable* t, unsigned level, uint64_t base, IotlbGather* gather) {
  uint64_t pages = 0;
  const uint64_t span = LevelSpan(level);
  if (level == 0) {
    pages = ClearLeaves(t, base, 0, kPtEntries - 1);  // as an unmap clears a leaf table's slots
    t->state.store(PtTable::kDying, std::memory_order_release);
    OnUnlinked(t, level, base, gather);
    return pages;
  }
  for (unsigned i = 0; i < kPtEntries; ++i) {
    std::atomic<uint64_t>& slot = t->pte[i];
    const uint64_t e = slot.load(std::memory_order_acquire);
    if (e == 0) continue;
    if (PteIsTable(e) && level > 0) {
      slot.store(0, std::memory_order_release);
      pages += ClearSubtree(PteTable(e), level - 1, base + i * span, gather);
    } else {
      ClearLeaf(slot, e, base + i * span, span);
      pages += span >> 12;
    }
  }
  t->state.store(PtTable::kDying, std::memory_order_release);
  OnUnlinked(t, level, base, gather);
  return pages;
}

void IoPageTable::KillSubtree(PtTable* t, unsigned level, uint64_t base) {
  t->state.fetch_or(PtTable::kDying, std::memory_order_seq_cst);
  if (level > 0) {
    const uint64_t span = LevelSpan(level);
    for (unsigned i = 0; i < kPtEntries; ++i) {
      const uint64_t e = t->pte[i].load(std::memory_order_acquire);
      if (PteIsPresent(e) && PteIsTable(e)) KillSubtree(PteTable(e), level - 1, base + i * span);
    }
  }
  if (dying_tlb_ != nullptr) dying_tlb_->InvalidateWalkRange(base, base + LevelSpan(level + 1));
}

void IoPageTable::ClearLeaf(std::atomic<uint64_t>& slot, uint64_t e, uint64_t iova, uint64_t span) {
  if (dirty_fn_ == nullptr) {
    slot.store(0, std::memory_order_release);
    return;
  }
  // iommu_unmap_read_dirty: a device write may set D until the entry is gone; the exchange takes
  // the entry and its last D bit at once.
  const uint64_t old = slot.exchange(0, std::memory_order_acq_rel);
  (void)e;
  if ((old & (kPtePresent | kPteDirty)) == (kPtePresent | kPteDirty)) (*dirty_fn_)(iova, span);
}

// ---- unmap -------------------------------------------------------------------------------------

IoPageTable::Leaf IoPageTable::LookupLeaf(uint64_t iova) const {
  PtTable* t = root_;
  for (unsigned level = top_;; --level) {
    const uint64_t e = t->pte[LevelIndex(iova, level)].load(std::memory_order_acquire);
    if (!PteIsPresent(e)) return Leaf{iova, 0, level};
    if (!PteIsTable(e)) return Leaf{iova & ~(LevelSpan(level) - 1), e, level};
    t = PteTable(e);
  }
}

absl::StatusOr<uint64_t> IoPageTable::Unmap(
    uint64_t iova, uint64_t size, IotlbGather* gather,
    const absl::FunctionRef<void(uint64_t, uint64_t)>* dirty) {
  struct DirtyScope {  // installs the dirty callback for this thread's unmap
    explicit DirtyScope(const absl::FunctionRef<void(uint64_t, uint64_t)>* fn) { dirty_fn_ = fn; }
    ~DirtyScope() { dirty_fn_ = nullptr; }
  };
  std::optional<DirtyScope> scope;
  if (dirty != nullptr) scope.emplace(dirty);
  base::rcu::ReadLock rl;
  const uint64_t end = iova + size;
  UnmapWalk w(iova, end, gather);
  w.path.table[top_] = root_;
  w.path.iova = iova;
  if (size < LevelSpan(1) && ((iova ^ (end - 1)) >> LevelShift(1)) == 0) {
    // The common case: the range lies in one leaf table and is smaller than it (a 2 MiB range
    // over a leaf table frees the table, live-free case 3). If tables lead all the way down to
    // it, no block can be cut and UnmapLevel would only descend: walk down without recursion and
    // clear the leaves as its level 0 does. Anything else (a block or nothing on the way) takes
    // the general walk below; this one has changed nothing.
    if (PtTable* t = DescendToTable(iova, 0, &w.path)) {
      return UnmapLeaves(t, iova & ~(LevelSpan(1) - 1), LevelIndex(iova, 0), LevelIndex(end - 1, 0),
                         &w);
    }
  }
  if (size > kPageSize) {
    // A block can only be cut at either end of the range; check both before touching anything.
    for (uint64_t a : {iova, end - 1}) {
      const Leaf l = LookupLeaf(a);
      if (l.pte == 0 || l.level == 0) continue;
      if (l.iova < iova || l.iova + LevelSpan(l.level) > end) {
        return absl::InvalidArgumentError(
            absl::StrCat("Unmap: [", base::Hex(iova), ", ", base::Hex(end), ") cuts the ",
                         LevelSpan(l.level) >> 10, " KiB block mapped at ", base::Hex(l.iova)));
      }
    }
  }
  const uint64_t pages = UnmapLevel(root_, top_, 0, &w);
  if (w.cut) {
    // Only reachable for a single-page unmap inside a block: nothing was changed.
    const Leaf l = LookupLeaf(iova);
    return absl::InvalidArgumentError(
        absl::StrCat("Unmap: [", base::Hex(iova), ", ", base::Hex(end), ") cuts the ",
                     LevelSpan(l.level) >> 10, " KiB block mapped at ", base::Hex(l.iova)));
  }
  return pages;
}

uint32_t IoPageTable::ClearLeaves(PtTable* t, uint64_t base, unsigned i0, unsigned i1) {
  // One store per present leaf with no dirty-bit reader; with one, ClearLeaf reads each D bit.
  if (dirty_fn_ == nullptr) return ClearLeafSlots(t, i0, i1);
  uint32_t removed = 0;
  for (unsigned i = i0; i <= i1; ++i) {
    std::atomic<uint64_t>& slot = t->pte[i];
    const uint64_t e = slot.load(std::memory_order_relaxed);
    if (e == 0) continue;
    ClearLeaf(slot, e, base + uint64_t{i} * kPageSize, kPageSize);
    ++removed;
  }
  return removed;
}

uint32_t IoPageTable::UnmapLeaves(PtTable* t, uint64_t base, unsigned i0, unsigned i1,
                                  UnmapWalk* w) {
  // 4 KiB leaves only, each entirely inside the range.
  const uint32_t removed = ClearLeaves(t, base, i0, i1);
  if (removed != 0) Drop(t, removed, 0, &w->path, w->gather);
  return removed;
}

PtTable* IoPageTable::DescendToTable(uint64_t iova, unsigned leaf, Path* path) const {
  PtTable* t = root_;
  for (unsigned level = top_; level > leaf; --level) {
    const unsigned i = LevelIndex(iova, level);
    const uint64_t e = t->pte[i].load(std::memory_order_acquire);
    if (!PteIsTable(e)) return nullptr;  // nothing mapped here, or a block
    path->index[level] = i;
    t = PteTable(e);
    path->table[level - 1] = t;
  }
  return t;
}

uint64_t IoPageTable::UnmapLevel(PtTable* t, unsigned level, uint64_t base, UnmapWalk* w) {
  const uint64_t span = LevelSpan(level);
  // The range clipped to t's span [base, base + 512 * span).
  const uint64_t start = std::max(w->start, base);
  const uint64_t end = std::min(w->end, base + kPtEntries * span);
  const unsigned i0 = LevelIndex(start, level);
  const unsigned i1 = LevelIndex(end - 1, level);
  uint32_t removed = 0;
  uint64_t pages = 0;
  if (level == 0) return UnmapLeaves(t, base, i0, i1, w);
  for (unsigned i = i0; i <= i1; ++i) {
    std::atomic<uint64_t>& slot = t->pte[i];
    const uint64_t e = slot.load(std::memory_order_acquire);
    if (e == 0) continue;
    const uint64_t es = base + uint64_t{i} * span;
    const bool full = start <= es && es + span <= end;
    if (!PteIsTable(e)) {
      if (!full) {
        w->cut = true;
        break;
      }
      ClearLeaf(slot, e, es, span);
      ++removed;
      pages += span >> 12;
      continue;
    }
    PtTable* child = PteTable(e);
    if (full) {
      // Live-free case 3: a block-sized unmap found a table; clear it and free it.
      KillSubtree(child, level - 1, es);
      slot.store(0, std::memory_order_release);
      ++removed;
      pages += ClearSubtree(child, level - 1, es, w->gather);
      counters_->tables.block_unmap_table.fetch_add(1, std::memory_order_relaxed);
      continue;
    }
    w->path.table[level - 1] = child;
    w->path.index[level] = i;
    w->path.iova = es;
    pages += UnmapLevel(child, level - 1, es, w);
    if (w->cut) break;
  }
  if (removed != 0) Drop(t, removed, level, &w->path, w->gather);
  return pages;
}

// ---- lockless walkers --------------------------------------------------------------------------

absl::StatusOr<uint64_t> IoPageTable::Translate(uint64_t iova, bool write) {
  uint64_t pte;
  return Translate(iova, write, nullptr, true, &pte);
}

absl::StatusOr<uint64_t> IoPageTable::Translate(uint64_t iova, bool write, Iotlb* tlb,
                                                bool track_dirty, uint64_t* pte_out) {
  base::rcu::ReadLock rl;
  const uint64_t want = kPteAccessed | (write && track_dirty ? kPteDirty : 0);
  const uint64_t need = write ? kPteWrite : kPteRead;
  for (;;) {  // one walk; another only if the leaf was unmapped or remapped under the A/D update
    PtTable* t = root_;
    unsigned level = top_;
    const uint64_t gen = tlb != nullptr ? tlb->generation(iova) : 0;
    Iotlb::WalkHit hit;
    if (tlb != nullptr && tlb->LookupWalk(iova, top_, &hit)) {
      // The device trusts its paging-structure cache. A table released since the fill is a walk of
      // freed memory (only possible if an invalidation was missed): count it, walk it anyway.
      if (hit.table->life.load(std::memory_order_acquire) != hit.life) {
        counters_->other.walk_stale.fetch_add(1, std::memory_order_relaxed);
      }
      t = hit.table;
      level = hit.level;
    }
    std::atomic<uint64_t>* slot = &t->pte[LevelIndex(iova, level)];
    uint64_t e = slot->load(std::memory_order_acquire);
    while (PteIsPresent(e) && PteIsTable(e)) {
      PtTable* child = PteTable(e);
      // Never cache a DYING table: its killer has invalidated (or is invalidating) its span.
      if (tlb != nullptr && (child->state.load(std::memory_order_seq_cst) & PtTable::kDying) == 0) {
        tlb->FillWalk(iova, level, child, child->life.load(std::memory_order_relaxed), gen);
      }
      t = child;
      --level;
      slot = &t->pte[LevelIndex(iova, level)];
      e = slot->load(std::memory_order_acquire);
    }
    if (!PteIsPresent(e)) {
      return absl::NotFoundError(
          absl::StrCat("DMA fault: iova ", base::Hex(iova), " is not mapped"));
    }
    if ((e & need) == 0) {
      return absl::PermissionDeniedError(absl::StrCat("DMA fault: ", write ? "write to" : "read of",
                                                      " iova ", base::Hex(iova), " not permitted"));
    }
    if (SetLeafFlags(*slot, e, want)) {
      *pte_out = e | want;
      return PteLeafAddr(e) + (iova & (LevelSpan(level) - 1));
    }
  }
}

namespace {

// Visits present leaves of [start, end) under t, in order, until visit returns false or the budget
// of present entries runs out; then *next is the first IOVA not visited. Returns false when
// stopped.
template <typename Visit>
bool WalkTable(PtTable* t, unsigned level, uint64_t base, uint64_t start, uint64_t end,
               uint32_t* budget, uint64_t* next, bool* stopped, Visit& visit) {
  const uint64_t span = LevelSpan(level);
  const unsigned i0 = LevelIndex(start, level);
  const unsigned i1 = LevelIndex(end - 1, level);
  for (unsigned i = i0; i <= i1; ++i) {
    std::atomic<uint64_t>& slot = t->pte[i];
    const uint64_t e = slot.load(std::memory_order_acquire);
    if (!PteIsPresent(e)) continue;
    const uint64_t es = base + uint64_t{i} * span;
    if (*budget == 0) {
      *next = std::max(start, es);
      return false;
    }
    --*budget;
    if (PteIsTable(e)) {
      if (!WalkTable(PteTable(e), level - 1, es, std::max(start, es), std::min(end, es + span),
                     budget, next, stopped, visit)) {
        return false;
      }
      continue;
    }
    if (!visit(slot, e, es, level)) {
      *stopped = true;
      return false;
    }
  }
  return true;
}

}  // namespace

bool IoPageTable::WalkInSections(
    uint64_t start, uint64_t end,
    absl::FunctionRef<bool(std::atomic<uint64_t>&, uint64_t, uint64_t, unsigned)> visit) const {
  end = std::min(end, limit_);
  uint64_t cursor = start;
  while (cursor < end) {
    base::rcu::ReadLock rl;
    counters_->other.walk_sections.fetch_add(1, std::memory_order_relaxed);
    uint32_t budget = kWalkBatch;
    uint64_t next = end;
    bool stopped = false;
    if (WalkTable(root_, top_, 0, cursor, end, &budget, &next, &stopped, visit)) return true;
    if (stopped) return false;
    cursor = next;  // the section's budget ran out: drop the read lock, walk again from there
  }
  return true;
}

void IoPageTable::ForEachLeaf(uint64_t start, uint64_t end,
                              absl::FunctionRef<bool(const Leaf&)> fn) const {
  WalkInSections(start, end,
                 [&](std::atomic<uint64_t>&, uint64_t e, uint64_t iova, unsigned level) {
                   return fn(Leaf{iova, e, level});
                 });
}

uint64_t IoPageTable::SweepDirty(uint64_t start, uint64_t end,
                                 absl::FunctionRef<void(uint64_t, uint64_t)> fn) {
  return ReadDirty(start, end, /*clear=*/true, fn);
}

uint64_t IoPageTable::ReadDirty(uint64_t start, uint64_t end, bool clear,
                                absl::FunctionRef<void(uint64_t, uint64_t)> fn) {
  uint64_t reported = 0;
  WalkInSections(start, end,
                 [&](std::atomic<uint64_t>& slot, uint64_t e, uint64_t iova, unsigned level) {
                   if ((e & kPteDirty) == 0) return true;
                   if (!clear) {
                     fn(iova, LevelSpan(level));
                     ++reported;
                     return true;
                   }
                   // Test-and-clear: a device write landing now either sets D before this (reported
                   // now) or after (reported next sweep); never lost, never twice. A table entry
                   // has bit D clear.
                   const uint64_t old = slot.fetch_and(~kPteDirty, std::memory_order_acq_rel);
                   if ((old & (kPteDirty | kPtePresent | kPteTable)) == (kPteDirty | kPtePresent)) {
                     fn(iova, LevelSpan(level));
                     ++reported;
                   }
                   return true;
                 });
  return reported;
}

// ---- deferred freeing --------------------------------------------------------------------------

void IoPageTable::ReleaseGather(IotlbGather* gather) {
  if (gather->empty()) return;
  uint32_t len;
  {
    base::rcu::ReadLock rl;  // keeps the current list head alive while we read its list_len
    PtTable* const first = gather->head;
    PtTable* const last = gather->tail;
    PtTable* old = rcu_pending_.load(std::memory_order_acquire);
    do {
      last->next = old;
      len = gather->count + (old != nullptr ? old->list_len : 0);
      first->list_len = len;
    } while (!rcu_pending_.compare_exchange_weak(old, first, std::memory_order_acq_rel,
                                                 std::memory_order_acquire));
  }
  *gather = IotlbGather();
  if (len < kRcuBatch) return;
  if (counters_->tables.pending_free_pages.load(std::memory_order_relaxed) > kPendingHighWater &&
      !base::rcu::ReadLockHeld()) {
    // Back-pressure: the call_rcu thread is behind (it waits ~10 ms between batches), so this
    // thread waits for a grace period itself and releases the batch, bounding the memory in flight.
    PtTable* list = rcu_pending_.exchange(nullptr, std::memory_order_acq_rel);
    if (list == nullptr) return;
    base::rcu::Synchronize();
    ReleaseBatch(list);
    return;
  }
  SubmitPending();
}

void IoPageTable::SubmitPending() {
  PtTable* list = rcu_pending_.exchange(nullptr, std::memory_order_acq_rel);
  if (list != nullptr) base::rcu::CallRcu(&list->rcu, &IoPageTable::RcuReleaseBatch);
}

void IoPageTable::RcuReleaseBatch(base::rcu::Head* head) {
  base::rcu::CallbackBegin();
  PtTable* list =
      reinterpret_cast<PtTable*>(reinterpret_cast<char*>(head) - offsetof(PtTable, rcu));
  list->owner->ReleaseBatch(list);
}

void IoPageTable::ReleaseOne(PtTable* t, std::vector<PtTable*>* to_delete) {
  t->life.fetch_add(1, std::memory_order_release);
  if (check_zero_) {
    for (const auto& slot : t->pte) {
      if (slot.load(std::memory_order_relaxed) != 0) {
        counters_->tables.released_not_zero.fetch_add(1, std::memory_order_relaxed);
        break;
      }
    }
  }
  to_delete->push_back(t);
}

void IoPageTable::ReleaseBatch(PtTable* t) {
  // Tables come back in bursts (one call_rcu batch per grace period, and liburcu's call_rcu thread
  // waits ~10 ms between batches), so the cache may grow to the number of tables still in flight
  // (up to kCacheBurstMax): that memory was already in use, and keeping it saves the next burst of
  // maps a malloc, a page fault and a 4 KiB clear per table. Beyond that the cache trims itself.
  const int64_t in_flight = counters_->tables.pending_free_pages.load(std::memory_order_relaxed);
  const size_t cap = std::min<size_t>(
      kCacheBurstMax,
      std::max<size_t>(kCacheMax, in_flight > 0 ? static_cast<size_t>(in_flight) : 0));
  std::vector<PtTable*> released;
  for (; t != nullptr; t = t->next) ReleaseOne(t, &released);
  const int64_t n = static_cast<int64_t>(released.size());
  std::vector<PtTable*> excess;
  {
    base::MutexLock l(&cache_mu_);
    for (PtTable* r : released) {
      r->next = nullptr;
      if (quarantine_on_) {
        quarantine_.push_back(r);
      } else if (cache_.size() < cap) {
        cache_.push_back(r);  // all entries are zero already: an unlinked table is empty
      } else {
        excess.push_back(r);
      }
    }
    while (cache_.size() > cap) {
      excess.push_back(cache_.back());
      cache_.pop_back();
    }
    cache_low_ = std::min(cache_low_, cache_.size());
    cache_size_.store(cache_.size(), std::memory_order_relaxed);
  }
  for (PtTable* x : excess) delete x;
  counters_->tables.tables_released.fetch_add(n, std::memory_order_relaxed);
  counters_->tables.iommu_pages.fetch_sub(n, std::memory_order_relaxed);
  counters_->tables.pending_free_pages.fetch_sub(n, std::memory_order_relaxed);
}

size_t IoPageTable::TrimCache(size_t keep) {
  std::vector<PtTable*> excess;
  {
    base::MutexLock l(&cache_mu_);
    while (cache_.size() > keep) {
      excess.push_back(cache_.back());
      cache_.pop_back();
    }
    cache_low_ = std::min(cache_low_, cache_.size());
    cache_size_.store(cache_.size(), std::memory_order_relaxed);
  }
  for (PtTable* t : excess) delete t;
  counters_->tables.table_cache_trimmed.fetch_add(excess.size(), std::memory_order_relaxed);
  return excess.size();
}

size_t IoPageTable::TrimIdle() {
  PtTable* excess = nullptr;
  size_t n = 0;
  {
    base::MutexLock l(&cache_mu_);
    // The tables below the low-water mark were not taken in the whole interval. The ones taken
    // from the top since are interchangeable with them, so free from the top.
    for (size_t idle = std::min(cache_low_, cache_.size()); n < idle; ++n) {
      PtTable* c = cache_.back();
      cache_.pop_back();
      c->next = excess;
      excess = c;
    }
    cache_low_ = cache_.size();
    cache_size_.store(cache_.size(), std::memory_order_relaxed);
  }
  while (excess != nullptr) {
    PtTable* next = excess->next;
    delete excess;
    excess = next;
  }
  counters_->tables.table_cache_trimmed.fetch_add(n, std::memory_order_relaxed);
  return n;
}

size_t IoPageTable::cached_tables() const {
  base::MutexLock l(&cache_mu_);
  return cache_.size();
}

void IoPageTable::Quiesce(size_t keep) {
  SubmitPending();
  base::rcu::Barrier();
  TrimCache(keep);
}

}  // namespace pagepool::dma::internal
