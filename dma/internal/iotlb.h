// File: dma/internal/iotlb.h
//
// The device's translation caches (DomainConfig::model_iotlb): an IOTLB of 4 KiB leaf translations
// and per-level paging-structure ("walk") caches of table entries, both filled by Translate, and
// the invalidation commands that empty them.
//
// IOTLB: direct-mapped, kEntries entries, keyed by page frame. An entry remembers the leaf's
// permissions and whether the leaf's dirty bit was already set when it was filled: a write that
// hits an entry with dirty_known does not walk (as hardware does not set D again), so clearing D in
// the page table without invalidating the IOTLB loses the next write's dirty bit (see
// IommuDomain::ReadAndClearDirty), and after a lazy unmap a writable translation stays usable until
// the flush queue's invalidation.
//
// Walk caches: for each level L >= 1, kWalkEntries entries keyed by iova >> LevelShift(L); an entry
// holds the table pointer read from a level-L table entry (so a hit lets the walk start in the
// level L - 1 table) and that table's `life` stamp at fill time. A walk through an entry whose
// table has been released since (its `life` changed) is a walk of freed memory: the model counts it
// as a violation (DomainStats::walk_cache_stale_walks) instead of crashing; see io_pgtable.h for
// how the tables are kept readable for that check.
//
// Invalidation (counted by the caller, see IommuDomain):
//   * InvalidateRange(start, end, leaf_only): drops the IOTLB entries of pages in [start, end);
//   unless
//     leaf_only (VT-d IH=1, ARM's leaf TLBI), also every walk-cache entry whose span intersects it.
//   * InvalidateAll(): everything (a domain-selective invalidation).
//
// Races between fills and invalidations: each entry is a seqlock (seq odd while written). Fills
// read a fill generation of the IOVA's region (kRegions counters, by 2 MiB region, hashed) before
// their page walk and give up if it changed by the time they write the entry; an invalidation bumps
// the generation of every region it covers before clearing entries, waiting for a fill in progress.
// So a walk that raced with an unmap can never install an entry that outlives the invalidation. A
// bitmap of valid entries lets an invalidation skip empty slots without touching them: a slot's bit
// is set by a fill and cleared by the invalidation that empties it, both under the slot's seqlock.
//
// Thread safety: every method may be called concurrently from any thread.
#ifndef PAGEPOOL_DMA_INTERNAL_IOTLB_H_
#define PAGEPOOL_DMA_INTERNAL_IOTLB_H_

#include <atomic>
#include <cstdint>

#include "absl/functional/function_ref.h"

namespace pagepool::dma::internal {

struct PtTable;

class Iotlb {
 public:
  static constexpr unsigned kEntries = 512;
  static constexpr unsigned kWalkEntries = 64;  // per level
  static constexpr unsigned kWalkLevels = 5;    // levels 1..4 used (index by level)
  static constexpr unsigned kRegions = 64;

  // A leaf translation.
  struct LeafHit {
    uint64_t phys;     // the translated address
    bool dirty_known;  // the leaf's D bit was set when the entry was filled
    bool not_present;  // a cached fault (caching mode): the device faults without walking
  };
  // A walk-cache hit: continue the walk in `table`, a table at `level` (holding level-`level`
  // entries), whose life stamp was `life` at fill time.
  struct WalkHit {
    PtTable* table;
    unsigned level;
    uint32_t life;
  };
  // One valid walk-cache entry, for dumps.
  struct WalkEntry {
    unsigned level;  // the level of the table entry cached (the table pointed to is level - 1)
    uint64_t iova;   // first IOVA of the entry's span
    uint64_t span;   // LevelSpan(level)
    const PtTable* table;
    uint32_t life;
  };

  Iotlb() = default;
  Iotlb(const Iotlb&) = delete;
  Iotlb& operator=(const Iotlb&) = delete;

  // The fill generation for iova; read it before the page walk whose result is filled.
  uint64_t generation(uint64_t iova) const {
    return gen_[RegionOf(iova)].v.load(std::memory_order_acquire) +
           global_gen_.v.load(std::memory_order_acquire);
  }

  // IOTLB lookup: a hit needs read permission (a read) or write permission and dirty_known (a
  // write; without dirty_known the device walks to set D).
  bool Lookup(uint64_t iova, bool write, LeafHit* hit) const;
  // Caches iova's page unless an invalidation of its region happened since `generation`.
  void Fill(uint64_t iova, uint64_t phys, bool readable, bool writable, bool dirty,
            uint64_t generation);

  // Caches "iova is not mapped" (VT-d caching mode may cache not-present entries).
  void FillNotPresent(uint64_t iova, uint64_t generation);

  // The lowest-level walk-cache hit for iova among levels 1..top (false if none).
  bool LookupWalk(uint64_t iova, unsigned top, WalkHit* hit) const;
  // Caches the level-`level` entry covering iova, which points to `table` (stamp `life`).
  void FillWalk(uint64_t iova, unsigned level, PtTable* table, uint32_t life, uint64_t generation);

  // Inline (below): on every strict unmap's path.
  void InvalidateRange(uint64_t start, uint64_t end, bool leaf_only);
  // Only the walk-cache entries intersecting [start, end) (a table about to be unlinked; the leaf
  // translations under it are the unmap's own invalidation's business, lazily in lazy mode).
  void InvalidateWalkRange(uint64_t start, uint64_t end);
  void InvalidateAll();

  // Calls fn for every valid walk-cache entry (a snapshot; entries may change meanwhile).
  void ForEachWalkEntry(absl::FunctionRef<void(const WalkEntry&)> fn) const;

  uint64_t hits() const { return hits_.load(std::memory_order_relaxed); }
  uint64_t walk_hits() const { return walk_hits_.load(std::memory_order_relaxed); }

 private:
  struct Entry {
    std::atomic<uint32_t> seq{0};
    std::atomic<uint32_t> aux{0};  // leaf: flag bits; walk: the table's life stamp
    std::atomic<uint64_t> tag{0};  // (key << 1) | 1 when valid
    std::atomic<uint64_t> val{0};  // leaf: physical page; walk: the table pointer
  };
  struct alignas(64) Gen {
    std::atomic<uint64_t> v{0};
  };
  struct Bitmap {
    std::atomic<uint64_t> w[kEntries / 64];
  };
  static unsigned RegionOf(uint64_t iova) { return static_cast<unsigned>(iova >> 21) % kRegions; }
  // Bumps the fill generation of every region [start, end) touches (inline for the common case of
  // one region; BumpGenerationsSlow for more).
  void BumpGenerations(uint64_t start, uint64_t end);
  void BumpGenerationsSlow(uint64_t first_region, uint64_t last_region);
  // Writes an entry (seqlock) if the region's generation is still `generation`, setting its bit
  // `bit` in `valid` first.
  // The generation is a region's counter plus the global one (bumped alone by invalidations too
  // large to bump region by region); both only grow, so the sum changes when either does.
  bool WriteEntry(Entry& e, std::atomic<uint64_t>& valid, uint64_t bit, uint64_t tag, uint64_t val,
                  uint32_t aux, unsigned region, uint64_t generation);
  // Clears e if `match(tag)`, waiting for a writer in progress, and its bit in `valid` when e is
  // (now) empty.
  template <typename Match>
  static void ClearEntry(Entry& e, std::atomic<uint64_t>& valid, uint64_t bit, Match match);
  // ClearEntry(match) on every valid leaf entry among `count` slots from `slot` on (wrapping).
  template <typename Match>
  void ClearValidLeaves(unsigned slot, unsigned count, Match match);
  // Whether a leaf entry of a page in [start, end) may be valid: exact within one bitmap word, any
  // valid leaf at all for a range across words. Read after the generation bump.
  bool AnyValidLeaf(uint64_t start, uint64_t end) const;
  // Whether any walk-cache entry is valid. Read after the generation bump.
  bool AnyValidWalk() const;
  // The clearing, out of line so that an invalidation that finds nothing to clear (the common
  // case) is a leaf function: the leaf entries of pages in [start, end), the walk-cache entries
  // whose span intersects it, or either.
  void ClearLeaves(uint64_t start, uint64_t end);
  void ClearWalks(uint64_t start, uint64_t end);
  [[gnu::noinline]] void ClearRange(uint64_t start, uint64_t end, bool leaves, bool walks);

  Entry entries_[kEntries];
  Entry walk_[kWalkLevels][kWalkEntries];
  Bitmap leaf_valid_{};
  std::atomic<uint64_t> walk_valid_[kWalkLevels]{};
  Gen gen_[kRegions];
  Gen global_gen_;
  mutable std::atomic<uint64_t> hits_{0};
  mutable std::atomic<uint64_t> walk_hits_{0};
};

inline void Iotlb::BumpGenerations(uint64_t start, uint64_t end) {
  const uint64_t first = start >> 21;
  const uint64_t last = (end - 1) >> 21;
  if (first == last) {  // the common case: a range inside one 2 MiB region
    gen_[first % kRegions].v.fetch_add(1, std::memory_order_seq_cst);
    return;
  }
  BumpGenerationsSlow(first, last);
}

inline bool Iotlb::AnyValidLeaf(uint64_t start, uint64_t end) const {
  const uint64_t first = start >> 12;
  const uint64_t pages = (end - start) >> 12;
  if (pages == 0) return false;  // less than a page
  const unsigned bit = static_cast<unsigned>(first % 64);
  if (pages <= 64 - bit) {
    // Within one bitmap word: exactly those slots.
    const uint64_t mask = (~uint64_t{0} >> (64 - pages)) << bit;  // 1 <= pages <= 64
    return (leaf_valid_.w[(first % kEntries) / 64].load(std::memory_order_seq_cst) & mask) != 0;
  }
  // Across words: every word, a superset of the slots (ClearLeaves then checks each slot).
  static_assert(kEntries / 64 == 8);
  const auto& w = leaf_valid_.w;
  constexpr auto o = std::memory_order_seq_cst;
  return ((w[0].load(o) | w[1].load(o) | w[2].load(o) | w[3].load(o)) |
          (w[4].load(o) | w[5].load(o) | w[6].load(o) | w[7].load(o))) != 0;
}

inline bool Iotlb::AnyValidWalk() const {
  static_assert(kWalkLevels == 5);
  constexpr auto o = std::memory_order_seq_cst;
  return (walk_valid_[1].load(o) | walk_valid_[2].load(o) | walk_valid_[3].load(o) |
          walk_valid_[4].load(o)) != 0;
}

inline void Iotlb::InvalidateRange(uint64_t start, uint64_t end, bool leaf_only) {
  if (end <= start) return;
  BumpGenerations(start, end);
  // Then the valid bits (see WriteEntry). Most invalidations find none set among their slots: the
  // clearing, out of line, runs only when one is.
  const bool leaves = AnyValidLeaf(start, end);
  const bool walks = !leaf_only && AnyValidWalk();
  if (leaves || walks) ClearRange(start, end, leaves, walks);
}

inline void Iotlb::InvalidateWalkRange(uint64_t start, uint64_t end) {
  if (end <= start) return;
  BumpGenerations(start, end);
  if (AnyValidWalk()) ClearWalks(start, end);
}

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_IOTLB_H_
