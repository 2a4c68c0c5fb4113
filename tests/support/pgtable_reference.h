// File: tests/support/pgtable_reference.h
//
// PgtableReference: a reference model of the I/O page table (dma/internal/io_pgtable.h) for
// differential tests and fuzzing. Leaves are kept in a std::map keyed by IOVA, with the same leaf
// choice as the page table (the largest of 4 KiB, 2 MiB, 1 GiB that both addresses and the
// remaining size allow), and every non-root table is counted by the leaves under it, so
// tables() is the number of tables a page table that frees every table the moment it empties
// holds (root included). It also keeps each leaf's protection and dirty bit, as Translate and
// SweepDirty see them.
//
// The model does not validate ranges: callers decide first whether the page table accepts a Map
// (no page of the range mapped yet: AnyIn) and report Unmap's outcome from Unmap's result.
//
// Thread safety: none (a plain value type).
#ifndef PAGEPOOL_TESTS_SUPPORT_PGTABLE_REFERENCE_H_
#define PAGEPOOL_TESTS_SUPPORT_PGTABLE_REFERENCE_H_

#include <cstdint>
#include <map>
#include <utility>

#include "dma/types.h"

namespace pagepool::dma {

class PgtableReference {
 public:
  struct Leaf {
    uint64_t phys;
    unsigned level;  // 0: 4 KiB, 1: 2 MiB, 2: 1 GiB
    uint32_t prot = kProtRead | kProtWrite;
    bool dirty = false;
  };
  enum class UnmapResult { kOk, kNotFound, kCut };

  // `levels` of the table: 3, 4 or 5 (39, 48, 57-bit address width).
  explicit PgtableReference(unsigned levels) : top_(levels - 1) {}

  static unsigned Shift(unsigned level) { return 12 + 9 * level; }
  static uint64_t LeafSize(unsigned level) { return uint64_t{1} << Shift(level); }

  // The leaf that covers iova, if any.
  const std::pair<const uint64_t, Leaf>* Find(uint64_t iova) const {
    auto it = leaves_.upper_bound(iova);
    if (it == leaves_.begin()) return nullptr;
    --it;
    if (iova - it->first < LeafSize(it->second.level)) return &*it;
    return nullptr;
  }
  // Whether any page of [start, end) is mapped.
  bool AnyIn(uint64_t start, uint64_t end) const {
    if (Find(start) != nullptr) return true;
    auto it = leaves_.lower_bound(start);
    return it != leaves_.end() && it->first < end;
  }
  // Maps [iova, iova + size) to phys with the page table's leaf choice.
  // REQUIRES: the page table accepted the same Map (aligned, in range, !AnyIn).
  void Map(uint64_t iova, uint64_t phys, uint64_t size, uint32_t prot = kProtRead | kProtWrite) {
    for (uint64_t done = 0; done < size;) {
      unsigned level = 0;
      for (unsigned l = 2; l >= 1; --l) {
        const uint64_t span = LeafSize(l);
        if ((((iova + done) | (phys + done)) & (span - 1)) == 0 && size - done >= span) {
          level = l;
          break;
        }
      }
      Add(iova + done, Leaf{phys + done, level, prot, false});
      done += LeafSize(level);
    }
  }
  // Unmaps every leaf in [iova, iova + size): kCut (nothing done) when a leaf straddles either end,
  // kNotFound when no leaf starts in the range.
  UnmapResult Unmap(uint64_t iova, uint64_t size) {
    const uint64_t end = iova + size;
    for (uint64_t a : {iova, end - 1}) {
      if (auto* l = Find(a)) {
        const uint64_t span = LeafSize(l->second.level);
        if (l->first < iova || l->first + span > end) return UnmapResult::kCut;
      }
    }
    auto it = leaves_.lower_bound(iova);
    if (it == leaves_.end() || it->first >= end) return UnmapResult::kNotFound;
    while (it != leaves_.end() && it->first < end) {
      const uint64_t key = it->first;
      const Leaf leaf = it->second;
      ++it;
      Remove(key, leaf);
    }
    return UnmapResult::kOk;
  }
  // A device write through the leaf at `iova` (Translate with write = true that succeeded).
  void SetDirty(uint64_t iova) { leaves_.at(iova).dirty = true; }
  void ClearDirty() {
    for (auto& [iova, leaf] : leaves_) leaf.dirty = false;
  }

  uint64_t tables() const { return tables_.size() + 1; }
  uint64_t pages() const { return pages_; }
  const std::map<uint64_t, Leaf>& leaves() const { return leaves_; }

 private:
  void Add(uint64_t iova, Leaf leaf) {
    leaves_[iova] = leaf;
    pages_ += uint64_t{1} << (Shift(leaf.level) - 12);
    for (unsigned k = leaf.level; k < top_; ++k) ++tables_[{k, iova >> Shift(k + 1)}];
  }
  void Remove(uint64_t iova, Leaf leaf) {
    leaves_.erase(iova);
    pages_ -= uint64_t{1} << (Shift(leaf.level) - 12);
    for (unsigned k = leaf.level; k < top_; ++k) {
      auto it = tables_.find({k, iova >> Shift(k + 1)});
      if (--it->second == 0) tables_.erase(it);
    }
  }

  const unsigned top_;
  std::map<uint64_t, Leaf> leaves_;
  std::map<std::pair<unsigned, uint64_t>, uint64_t> tables_;  // (level, index) -> leaves under it
  uint64_t pages_ = 0;
};

}  // namespace pagepool::dma

#endif  // PAGEPOOL_TESTS_SUPPORT_PGTABLE_REFERENCE_H_
