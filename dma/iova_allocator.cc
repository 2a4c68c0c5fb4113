// File: dma/iova_allocator.cc
//
// The IOVA allocator: a buddy system (the shared allocator) behind per-thread magazine caches (the
// kernel's iova_rcache). See iova_allocator.h for the contract and the structure.
#include "dma/iova_allocator.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <bit>
#include <memory>
#include <thread>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/btree_set.h"
#include "absl/container/flat_hash_map.h"
#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "base/mutex.h"
#include "base/thread_slot.h"

namespace pagepool::dma {
namespace {

constexpr unsigned kNumOrders = 64;  // orders 0..63
constexpr unsigned kCachedOrders = IovaAllocator::kRangeCacheMaxOrder;

// A magazine: a small stack of cached page frames, all of one order (the kernel's iova_magazine).
struct Magazine {
  unsigned size = 0;
  std::array<uint64_t, IovaAllocator::kMagazineSize> pfns;
  bool full() const { return size == pfns.size(); }
  bool empty() const { return size == 0; }
};

// One per-thread-ish cache (the kernel's per-CPU iova_cpu_rcache, for every cached order).
struct alignas(64) Shard {
  base::Mutex mu;
  std::array<std::unique_ptr<Magazine>, kCachedOrders> loaded ABSL_GUARDED_BY(mu);
  std::array<std::unique_ptr<Magazine>, kCachedOrders> prev ABSL_GUARDED_BY(mu);
  uint64_t hits ABSL_GUARDED_BY(mu) = 0;
  uint64_t misses ABSL_GUARDED_BY(mu) = 0;
};

// Full magazines shared by all shards, per order (the kernel's rcache->depot).
struct alignas(64) Depot {
  base::Mutex mu;
  std::vector<std::unique_ptr<Magazine>> mags ABSL_GUARDED_BY(mu);
};

unsigned ShardCount() {
  unsigned n = std::thread::hardware_concurrency();
  n = std::clamp(n, 4u, 32u);
  return std::bit_ceil(n);
}

}  // namespace

struct IovaAllocator::Impl {
  Impl(uint64_t start, uint64_t limit)
      : start_pfn(std::max<uint64_t>(start, 1)),
        limit_pfn(limit),
        num_shards(ShardCount()),
        shards(new Shard[num_shards]) {
    base::MutexLock l(&mu);
    // Greedy decomposition of [start_pfn, limit_pfn] into maximal aligned blocks: none of them is
    // the buddy of another, so coalescing never builds a block reaching outside the range.
    uint64_t pfn = start_pfn;
    while (limit_pfn >= pfn) {
      const uint64_t remaining = limit_pfn - pfn + 1;  // >= 1; no overflow since pfn >= 1
      unsigned order = std::min<unsigned>(std::countr_zero(pfn), std::bit_width(remaining) - 1);
      order = std::min(order, kNumOrders - 1);
      InsertFreeLocked(pfn, order);
      const uint64_t size = uint64_t{1} << order;
      if (size == remaining) break;
      pfn += size;
    }
  }

  // Shared allocator ----------------------------------------------------------------------------

  void InsertFreeLocked(uint64_t pfn, unsigned order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    free_blocks[order].insert(pfn);
    nonempty |= uint64_t{1} << order;
  }

  void EraseFreeLocked(absl::btree_set<uint64_t>::iterator it, unsigned order)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    free_blocks[order].erase(it);
    if (free_blocks[order].empty()) nonempty &= ~(uint64_t{1} << order);
  }

  // Takes the highest free size-aligned block of `order`: the top sub-block of the free block (of
  // any order >= `order`) that ends highest, and hands out its first `pages` pages (2^order, or
  // fewer for a request of kRoundBelow pages or more, as the kernel does not round those); the
  // rest of the block goes back to the free sets. Returns false when none is free.
  // REQUIRES: 2^(order-1) < pages <= 2^order.
  bool AllocSharedLocked(unsigned order, uint64_t pages, uint64_t* out)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    uint64_t candidates = nonempty & (~uint64_t{0} << order);
    if (candidates == 0) return false;
    unsigned best_order = 0;
    uint64_t best_pfn = 0;
    bool found = false;
    while (candidates != 0) {
      const unsigned o = std::countr_zero(candidates);
      candidates &= candidates - 1;
      const uint64_t pfn = *free_blocks[o].rbegin();
      // Free blocks are disjoint: the one starting highest also ends highest.
      if (!found || pfn > best_pfn) {
        found = true;
        best_pfn = pfn;
        best_order = o;
      }
    }
    EraseFreeLocked(std::prev(free_blocks[best_order].end()), best_order);
    uint64_t pfn = best_pfn;
    unsigned o = best_order;
    while (o > order) {  // split, keeping the upper half: top-down
      --o;
      InsertFreeLocked(pfn, o);
      pfn += uint64_t{1} << o;
    }
    // The unused tail [pfn + pages, pfn + 2^order): maximal aligned blocks, none of them the buddy
    // of another or of a free block (their buddies overlap the range handed out).
    const uint64_t end = pfn + (uint64_t{1} << order);
    for (uint64_t p = pfn + pages; p < end;) {
      const unsigned o = std::min<unsigned>(std::countr_zero(p), std::bit_width(end - p) - 1);
      InsertFreeLocked(p, o);
      p += uint64_t{1} << o;
    }
    allocated.emplace(pfn, pages);
    handed_out_pages += pages;
    *out = pfn;
    return true;
  }

  // Inserts the free block (pfn, order), coalescing with free buddies.
  void InsertCoalescingLocked(uint64_t pfn, unsigned order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    while (order + 1 < kNumOrders) {
      const uint64_t buddy = pfn ^ (uint64_t{1} << order);
      auto b = free_blocks[order].find(buddy);
      if (b == free_blocks[order].end()) break;
      EraseFreeLocked(b, order);
      pfn = std::min(pfn, buddy);
      ++order;
    }
    InsertFreeLocked(pfn, order);
  }

  // Returns a range of `pages` pages handed out by AllocSharedLocked, coalescing with free
  // buddies. A range that was not handed out (or not with this size) is dropped and counted.
  void FreeSharedLocked(uint64_t pfn, uint64_t pages) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    auto it = allocated.find(pfn);
    if (it == allocated.end() || it->second != pages) {
      invalid_frees.fetch_add(1, std::memory_order_relaxed);
      return;
    }
    allocated.erase(it);
    handed_out_pages -= pages;
    // pfn is aligned to the range's order: its aligned pieces, largest first.
    const uint64_t end = pfn + pages;
    for (uint64_t p = pfn; p < end;) {
      const unsigned o = std::min<unsigned>(std::countr_zero(p), std::bit_width(end - p) - 1);
      InsertCoalescingLocked(p, o);
      p += uint64_t{1} << o;
    }
  }

  void FreeSharedMany(std::vector<std::unique_ptr<Magazine>>& mags, unsigned order) {
    if (mags.empty()) return;
    base::MutexLock l(&mu);
    for (const auto& mag : mags) {
      for (unsigned i = 0; i < mag->size; ++i) FreeSharedLocked(mag->pfns[i], uint64_t{1} << order);
    }
  }

  // Range caches (iova_rcache)
  // ---------------------------------------------------------------------

  // Shards are picked by thread slot modulo the shard count, so threads spread evenly over them
  // (better than hashing std::thread::id).
  Shard& ThisShard() { return shards[base::ThreadSlot() & (num_shards - 1)]; }

  // __iova_rcache_get: loaded, then prev, then a full magazine from the depot.
  bool RcacheGet(unsigned order, uint64_t* out) {
    Shard& s = ThisShard();
    std::unique_ptr<Magazine> empty_mag;  // deleted after the lock is dropped
    base::MutexLock l(&s.mu);
    auto& loaded = s.loaded[order];
    auto& prev = s.prev[order];
    if (loaded == nullptr || loaded->empty()) {
      if (prev != nullptr && !prev->empty()) {
        std::swap(loaded, prev);
      } else {
        Depot& d = depots[order];
        base::MutexLock dl(&d.mu);
        if (d.mags.empty()) {
          ++s.misses;
          return false;
        }
        empty_mag = std::move(loaded);
        loaded = std::move(d.mags.back());
        d.mags.pop_back();
      }
    }
    *out = loaded->pfns[--loaded->size];
    ++s.hits;
    return true;
  }

  // __iova_rcache_insert: loaded, then prev, else push the full loaded magazine to the depot (or,
  // if the depot is full, empty it into the shared allocator) and start a new one.
  void RcacheInsert(uint64_t pfn, unsigned order) {
    Shard& s = ThisShard();
    std::vector<std::unique_ptr<Magazine>> to_free;
    {
      base::MutexLock l(&s.mu);
      auto& loaded = s.loaded[order];
      auto& prev = s.prev[order];
      if (loaded == nullptr) loaded = std::make_unique<Magazine>();
      if (loaded->full()) {
        if (prev == nullptr) prev = std::make_unique<Magazine>();
        if (!prev->full()) {
          std::swap(loaded, prev);
        } else {
          auto fresh = std::make_unique<Magazine>();
          {
            Depot& d = depots[order];
            base::MutexLock dl(&d.mu);
            if (d.mags.size() < kMaxDepotMagazines) {
              d.mags.push_back(std::move(loaded));
            } else {
              to_free.push_back(std::move(loaded));
            }
          }
          loaded = std::move(fresh);
        }
      }
      loaded->pfns[loaded->size++] = pfn;
    }
    FreeSharedMany(to_free, order);
  }

  const uint64_t start_pfn;
  const uint64_t limit_pfn;
  const unsigned num_shards;  // a power of two
  std::unique_ptr<Shard[]> shards;
  std::array<Depot, kCachedOrders> depots;

  base::Mutex mu;
  std::array<absl::btree_set<uint64_t>, kNumOrders> free_blocks ABSL_GUARDED_BY(mu);
  uint64_t nonempty ABSL_GUARDED_BY(mu) = 0;  // bit o set iff free_blocks[o] is non-empty
  // Ranges handed out by the shared allocator (those sitting in magazines included): pfn -> pages.
  absl::flat_hash_map<uint64_t, uint64_t> allocated ABSL_GUARDED_BY(mu);
  uint64_t handed_out_pages ABSL_GUARDED_BY(mu) = 0;

  std::atomic<uint64_t> alloc_failures{0};
  std::atomic<uint64_t> invalid_frees{0};
};

IovaAllocator::IovaAllocator(uint64_t start_pfn, uint64_t limit_pfn)
    : impl_(std::make_unique<Impl>(start_pfn, limit_pfn)) {}

IovaAllocator::~IovaAllocator() = default;

unsigned IovaAllocator::OrderOf(uint64_t pages) {
  return pages <= 1 ? 0 : static_cast<unsigned>(std::bit_width(pages - 1));
}

uint64_t IovaAllocator::RoundedPages(uint64_t pages) {
  return pages < kRoundBelow ? std::bit_ceil(pages) : pages;
}

absl::StatusOr<uint64_t> IovaAllocator::Alloc(uint64_t pages) {
  if (pages == 0) return absl::InvalidArgumentError("IOVA alloc of 0 pages");
  const unsigned order = OrderOf(pages);
  const uint64_t span = RoundedPages(pages);
  uint64_t pfn = 0;
  if (order < kCachedOrders && impl_->RcacheGet(order, &pfn)) return pfn;
  if (order < kNumOrders) {
    {
      base::MutexLock l(&impl_->mu);
      if (impl_->AllocSharedLocked(order, span, &pfn)) return pfn;
    }
    // As alloc_iova_fast: give back every cached range and try once more.
    FlushCaches();
    base::MutexLock l(&impl_->mu);
    if (impl_->AllocSharedLocked(order, span, &pfn)) return pfn;
  }
  impl_->alloc_failures.fetch_add(1, std::memory_order_relaxed);
  return absl::ResourceExhaustedError(
      absl::StrCat("IOVA space exhausted: no free size-aligned range of ", pages, " pages (order ",
                   order, ") in pfns [", impl_->start_pfn, ", ", impl_->limit_pfn, "]"));
}

void IovaAllocator::Free(uint64_t pfn, uint64_t pages) {
  const unsigned order = pages == 0 ? 0 : OrderOf(pages);
  const uint64_t align = order < kNumOrders ? uint64_t{1} << order : 0;
  const uint64_t span = order < kNumOrders ? RoundedPages(pages) : 0;
  if (pages == 0 || order >= kNumOrders || (pfn & (align - 1)) != 0 || pfn < impl_->start_pfn ||
      pfn > impl_->limit_pfn || impl_->limit_pfn - pfn < span - 1) {
    impl_->invalid_frees.fetch_add(1, std::memory_order_relaxed);
    return;
  }
  if (order < kCachedOrders) {
    impl_->RcacheInsert(pfn, order);
    return;
  }
  base::MutexLock l(&impl_->mu);
  impl_->FreeSharedLocked(pfn, span);
}

void IovaAllocator::FlushCaches() {
  for (unsigned order = 0; order < kCachedOrders; ++order) {
    std::vector<std::unique_ptr<Magazine>> mags;
    for (unsigned i = 0; i < impl_->num_shards; ++i) {
      Shard& s = impl_->shards[i];
      base::MutexLock l(&s.mu);
      if (s.loaded[order] != nullptr && !s.loaded[order]->empty()) {
        mags.push_back(std::move(s.loaded[order]));
      }
      if (s.prev[order] != nullptr && !s.prev[order]->empty()) {
        mags.push_back(std::move(s.prev[order]));
      }
    }
    {
      Depot& d = impl_->depots[order];
      base::MutexLock l(&d.mu);
      for (auto& mag : d.mags) mags.push_back(std::move(mag));
      d.mags.clear();
    }
    impl_->FreeSharedMany(mags, order);
  }
  // The table of blocks handed out keeps the capacity of its busiest moment: give back what is
  // well above what it holds now (after a burst, or everything at unbind).
  base::MutexLock l(&impl_->mu);
  if (impl_->allocated.capacity() > 4 * impl_->allocated.size() + 64) impl_->allocated.rehash(0);
}

IovaStats IovaAllocator::stats() const {
  IovaStats st;
  uint64_t cached = 0;
  uint64_t handed_out = 0;
  {
    base::MutexLock l(&impl_->mu);
    handed_out = impl_->handed_out_pages;
    for (unsigned i = 0; i < impl_->num_shards; ++i) {
      Shard& s = impl_->shards[i];
      base::MutexLock sl(&s.mu);
      st.rcache_hits += s.hits;
      st.rcache_misses += s.misses;
      for (unsigned o = 0; o < kCachedOrders; ++o) {
        if (s.loaded[o] != nullptr) cached += uint64_t{s.loaded[o]->size} << o;
        if (s.prev[o] != nullptr) cached += uint64_t{s.prev[o]->size} << o;
      }
    }
    for (unsigned o = 0; o < kCachedOrders; ++o) {
      Depot& d = impl_->depots[o];
      base::MutexLock dl(&d.mu);
      for (const auto& mag : d.mags) cached += uint64_t{mag->size} << o;
    }
  }
  st.cached_pages = cached;
  // Both figures are exact when the allocator is quiescent; under concurrent use a magazine may
  // move between a shard and the depot while they are summed.
  st.allocated_pages = handed_out > cached ? handed_out - cached : 0;
  st.alloc_failures = impl_->alloc_failures.load(std::memory_order_relaxed);
  st.invalid_frees = impl_->invalid_frees.load(std::memory_order_relaxed);
  return st;
}

}  // namespace pagepool::dma
