#include "dma/internal/iotlb.h"

#include <algorithm>
#include <thread>

#include "base/cpu_relax.h"
#include "dma/internal/pt_table.h"

namespace pagepool::dma::internal {
namespace {

constexpr uint32_t kLeafRead = 1u << 0;
constexpr uint32_t kLeafWrite = 1u << 1;
constexpr uint32_t kLeafDirty = 1u << 2;
constexpr uint32_t kLeafNotPresent = 1u << 3;

uint64_t Tag(uint64_t key) { return (key << 1) | 1; }

// Reads a seqlocked entry; false if it is being written or does not hold `tag`.
bool ReadEntry(const std::atomic<uint32_t>& seq, const std::atomic<uint64_t>& tag_slot,
               const std::atomic<uint64_t>& val_slot, const std::atomic<uint32_t>& aux_slot,
               uint64_t tag, uint64_t* val, uint32_t* aux) {
  const uint32_t s1 = seq.load(std::memory_order_acquire);
  if ((s1 & 1) != 0) return false;
  const uint64_t t = tag_slot.load(std::memory_order_relaxed);
  *val = val_slot.load(std::memory_order_relaxed);
  *aux = aux_slot.load(std::memory_order_relaxed);
  std::atomic_thread_fence(std::memory_order_acquire);
  return seq.load(std::memory_order_relaxed) == s1 && t == tag;
}

}  // namespace

bool Iotlb::WriteEntry(Entry& e, std::atomic<uint64_t>& valid, uint64_t bit, uint64_t tag,
                       uint64_t val, uint32_t aux, unsigned region, uint64_t generation) {
  uint32_t s = e.seq.load(std::memory_order_relaxed);
  if ((s & 1) != 0 || !e.seq.compare_exchange_strong(s, s + 1, std::memory_order_acq_rel,
                                                     std::memory_order_relaxed)) {
    return false;  // someone else is writing this entry: skip the fill
  }
  std::atomic_thread_fence(std::memory_order_release);
  // The valid bit first (seq_cst), then the generation: an invalidation bumps the generation
  // (seq_cst) before reading the bits, so either it sees our bit, or we see its generation. The
  // bit changes only under the entry's seqlock (here and in ClearEntry), so an invalidation that
  // clears it for an empty entry cannot clear it under a fill that then writes.
  valid.fetch_or(bit, std::memory_order_seq_cst);
  const bool ok = gen_[region].v.load(std::memory_order_seq_cst) +
                      global_gen_.v.load(std::memory_order_seq_cst) ==
                  generation;
  if (ok) {
    e.tag.store(tag, std::memory_order_relaxed);
    e.val.store(val, std::memory_order_relaxed);
    e.aux.store(aux, std::memory_order_relaxed);
  } else if ((e.tag.load(std::memory_order_relaxed) & 1) == 0) {
    valid.fetch_and(~bit, std::memory_order_relaxed);  // nothing cached here
  }
  e.seq.store(s + 2, std::memory_order_release);
  return ok;
}

template <typename Match>
void Iotlb::ClearEntry(Entry& e, std::atomic<uint64_t>& valid, uint64_t bit, Match match) {
  for (unsigned spins = 0;; ++spins) {
    uint32_t s = e.seq.load(std::memory_order_relaxed);
    if ((s & 1) != 0) {
      // A fill is writing the entry. It holds the seqlock for a few stores, unless its thread was
      // preempted: after a while let the writer run (more threads than CPUs).
      if (spins < 64) {
        base::CpuRelax();
      } else {
        std::this_thread::yield();
      }
      continue;
    }
    if (!e.seq.compare_exchange_weak(s, s + 1, std::memory_order_acq_rel,
                                     std::memory_order_relaxed)) {
      continue;
    }
    std::atomic_thread_fence(std::memory_order_release);
    uint64_t tag = e.tag.load(std::memory_order_relaxed);
    if ((tag & 1) != 0 && match(tag >> 1)) {
      e.tag.store(0, std::memory_order_relaxed);
      tag = 0;
    }
    // An empty entry needs no bit: invalidations skip it until a fill sets the bit again.
    if ((tag & 1) == 0) valid.fetch_and(~bit, std::memory_order_relaxed);
    e.seq.store(s + 2, std::memory_order_release);
    return;
  }
}

// ---- IOTLB -------------------------------------------------------------------------------------

bool Iotlb::Lookup(uint64_t iova, bool write, LeafHit* hit) const {
  const uint64_t pfn = iova >> 12;
  const Entry& e = entries_[pfn % kEntries];
  uint64_t pa;
  uint32_t flags;
  if (!ReadEntry(e.seq, e.tag, e.val, e.aux, Tag(pfn), &pa, &flags)) return false;
  hit->not_present = (flags & kLeafNotPresent) != 0;
  const uint32_t need = write ? (kLeafWrite | kLeafDirty) : kLeafRead;
  if (!hit->not_present && (flags & need) != need) return false;
  hit->phys = pa + (iova & 0xfff);
  hit->dirty_known = (flags & kLeafDirty) != 0;
  hits_.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void Iotlb::Fill(uint64_t iova, uint64_t phys, bool readable, bool writable, bool dirty,
                 uint64_t generation) {
  const uint64_t pfn = iova >> 12;
  const unsigned i = pfn % kEntries;
  const uint32_t flags =
      (readable ? kLeafRead : 0) | (writable ? kLeafWrite : 0) | (dirty ? kLeafDirty : 0);
  WriteEntry(entries_[i], leaf_valid_.w[i / 64], uint64_t{1} << (i % 64), Tag(pfn),
             phys & ~uint64_t{0xfff}, flags, RegionOf(iova), generation);
}

void Iotlb::FillNotPresent(uint64_t iova, uint64_t generation) {
  const uint64_t pfn = iova >> 12;
  const unsigned i = pfn % kEntries;
  WriteEntry(entries_[i], leaf_valid_.w[i / 64], uint64_t{1} << (i % 64), Tag(pfn), 0,
             kLeafNotPresent, RegionOf(iova), generation);
}

// ---- walk caches -------------------------------------------------------------------------------

bool Iotlb::LookupWalk(uint64_t iova, unsigned top, WalkHit* hit) const {
  for (unsigned level = 1; level <= top && level < kWalkLevels; ++level) {
    if (walk_valid_[level].load(std::memory_order_relaxed) == 0) continue;
    const uint64_t key = iova >> LevelShift(level);
    const Entry& e = walk_[level][key % kWalkEntries];
    uint64_t table;
    uint32_t life;
    if (!ReadEntry(e.seq, e.tag, e.val, e.aux, Tag(key), &table, &life)) continue;
    hit->table = reinterpret_cast<PtTable*>(table);
    hit->level = level - 1;
    hit->life = life;
    walk_hits_.fetch_add(1, std::memory_order_relaxed);
    return true;
  }
  return false;
}

void Iotlb::FillWalk(uint64_t iova, unsigned level, PtTable* table, uint32_t life,
                     uint64_t generation) {
  if (level == 0 || level >= kWalkLevels) return;
  const uint64_t key = iova >> LevelShift(level);
  const unsigned i = key % kWalkEntries;
  WriteEntry(walk_[level][i], walk_valid_[level], uint64_t{1} << i, Tag(key),
             reinterpret_cast<uint64_t>(table), life, RegionOf(iova), generation);
}

void Iotlb::ForEachWalkEntry(absl::FunctionRef<void(const WalkEntry&)> fn) const {
  for (unsigned level = 1; level < kWalkLevels; ++level) {
    uint64_t valid = walk_valid_[level].load(std::memory_order_acquire);
    while (valid != 0) {
      const unsigned i = static_cast<unsigned>(__builtin_ctzll(valid));
      valid &= valid - 1;
      const Entry& e = walk_[level][i];
      const uint32_t s1 = e.seq.load(std::memory_order_acquire);
      const uint64_t tag = e.tag.load(std::memory_order_relaxed);
      const uint64_t table = e.val.load(std::memory_order_relaxed);
      const uint32_t life = e.aux.load(std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_acquire);
      if ((s1 & 1) != 0 || e.seq.load(std::memory_order_relaxed) != s1 || (tag & 1) == 0) {
        continue;
      }
      fn(WalkEntry{level, (tag >> 1) << LevelShift(level), LevelSpan(level),
                   reinterpret_cast<const PtTable*>(table), life});
    }
  }
}

// ---- invalidation ------------------------------------------------------------------------------

void Iotlb::BumpGenerationsSlow(uint64_t first, uint64_t last) {
  if (last - first + 1 >= kRegions / 8) {
    global_gen_.v.fetch_add(1, std::memory_order_seq_cst);
    return;
  }
  for (uint64_t r = first; r <= last; ++r) {
    gen_[r % kRegions].v.fetch_add(1, std::memory_order_seq_cst);
  }
}

// The valid entries among `count` slots from `slot` on (wrapping), one bitmap word at a time: a
// word's bits are read once for up to 64 slots, still after the generation bump (see WriteEntry).
template <typename Match>
void Iotlb::ClearValidLeaves(unsigned slot, unsigned count, Match match) {
  static_assert(kEntries % 64 == 0);
  for (unsigned left = count; left != 0;) {
    const unsigned bit = slot % 64;
    const unsigned n = std::min(left, 64 - bit);
    const uint64_t mask = (n == 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1) << bit;
    uint64_t bits = leaf_valid_.w[slot / 64].load(std::memory_order_seq_cst) & mask;
    while (bits != 0) {
      const unsigned b = static_cast<unsigned>(__builtin_ctzll(bits));
      bits &= bits - 1;
      ClearEntry(entries_[slot - bit + b], leaf_valid_.w[slot / 64], uint64_t{1} << b, match);
    }
    left -= n;
    slot = (slot + n) % kEntries;
  }
}

void Iotlb::ClearLeaves(uint64_t start, uint64_t end) {
  const uint64_t first = start >> 12;
  const uint64_t pages = (end - start) >> 12;
  auto in_range = [&](uint64_t pfn) { return pfn >= first && pfn - first < pages; };
  // A range of kEntries pages or more covers every slot.
  ClearValidLeaves(static_cast<unsigned>(first % kEntries),
                   static_cast<unsigned>(std::min<uint64_t>(pages, kEntries)), in_range);
}

void Iotlb::ClearWalks(uint64_t start, uint64_t end) {
  for (unsigned level = 1; level < kWalkLevels; ++level) {
    uint64_t valid = walk_valid_[level].load(std::memory_order_seq_cst);
    if (valid == 0) continue;
    const unsigned shift = LevelShift(level);
    const uint64_t kfirst = start >> shift;
    const uint64_t klast = (end - 1) >> shift;
    auto overlaps = [&](uint64_t key) { return key >= kfirst && key <= klast; };
    while (valid != 0) {
      const unsigned i = static_cast<unsigned>(__builtin_ctzll(valid));
      valid &= valid - 1;
      ClearEntry(walk_[level][i], walk_valid_[level], uint64_t{1} << i, overlaps);
    }
  }
}

void Iotlb::ClearRange(uint64_t start, uint64_t end, bool leaves, bool walks) {
  if (leaves) ClearLeaves(start, end);
  if (walks) ClearWalks(start, end);
}

void Iotlb::InvalidateAll() {
  global_gen_.v.fetch_add(1, std::memory_order_seq_cst);
  auto all = [](uint64_t) { return true; };
  ClearValidLeaves(0, kEntries, all);
  ClearWalks(0, ~uint64_t{0});  // every walk-cache entry's span intersects the whole space
}

}  // namespace pagepool::dma::internal
