// File: dma/mapping_checker.cc
//
// The mapping checker (dma-debug model): sharded hash table of mappings with bounded tombstones.
#include "dma/mapping_checker.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <string>
#include <string_view>
#include <tuple>
#include <utility>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "absl/container/flat_hash_map.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "base/mutex.h"
#include "base/strings.h"

namespace pagepool::dma {
namespace {

// Where an address lives: its shard and its slot in the shard's table. Like dma-debug's hash_fn
// (dev_addr >> HASH_FN_SHIFT), neighbouring pages stay neighbours: the kNeighbours pages of an
// aligned group share a shard and take consecutive positions in its table, so a walk that unmaps
// a bulk allocation's pages (consecutive frames, or an IOVA range) reads the table sequentially
// rather than at two random places per page. Groups are spread by a multiplicative hash.
constexpr unsigned kNeighbourShift = 6;  // kNeighbours = 64 pages
inline uint64_t GroupHash(DmaAddr addr) {
  const uint64_t group =
      (addr >> (kPageShift + kNeighbourShift)) ^ ((addr & (kPageSize - 1)) << 40);
  return group * 0x9E3779B97F4A7C15ull;
}
struct AddrHash {
  // abseil's Swiss table takes the position from bits 7 and up (H1) and a control tag from bits
  // 0..6 (H2): the position is the group's hash with the page's index in the group below it.
  size_t operator()(DmaAddr addr) const {
    const uint64_t g = GroupHash(addr);
    const uint64_t in_group = (addr >> kPageShift) & ((uint64_t{1} << kNeighbourShift) - 1);
    const uint64_t position = ((g >> 20) << kNeighbourShift) | in_group;
    const uint64_t tag = ((g >> 57) ^ (in_group * 0x2b)) & 0x7f;
    return size_t((position << 7) | tag);
  }
};

struct Entry {
  PhysAddr phys;
  uint64_t size;
  DmaDirection dir;
  uint32_t live;  // number of live mappings at this address; 0: a tombstone (recently unmapped)
  uint32_t queued = 0;  // slots of the shard's recent-unmaps FIFO holding this address
};

struct alignas(64) Shard {
  base::Mutex mu;
  absl::flat_hash_map<DmaAddr, Entry, AddrHash> entries ABSL_GUARDED_BY(mu);
  // FIFO of the addresses tombstoned last: a ring once it reaches kRecentUnmapsPerShard.
  std::vector<DmaAddr> recent ABSL_GUARDED_BY(mu);
  size_t recent_head ABSL_GUARDED_BY(mu) = 0;
  uint64_t live ABSL_GUARDED_BY(mu) = 0;

  // Records that `addr` became a tombstone; forgets the oldest tombstone when the FIFO is full.
  // The same address may be in the FIFO several times (an IOVA is reused at once): its tombstone
  // goes only when its last copy leaves. REQUIRES: `e` is the entry of `addr`.
  void RecordUnmapLocked(DmaAddr addr, Entry& e) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    ++e.queued;
    PushRecentLocked(addr);
  }
  // Puts `addr` in the FIFO; its entry's `queued` already counts this slot.
  void PushRecentLocked(DmaAddr addr) ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu) {
    if (recent.size() < MappingChecker::kRecentUnmapsPerShard) {
      recent.push_back(addr);
      return;
    }
    const DmaAddr oldest = recent[recent_head];
    recent[recent_head] = addr;
    recent_head = (recent_head + 1) % recent.size();
    auto it = entries.find(oldest);
    if (it == entries.end()) return;
    if (--it->second.queued == 0 && it->second.live == 0) entries.erase(it);
  }
};

// Debian's abseil has its own absl::string_view, which StrCat wants.
absl::string_view DirName(DmaDirection dir) {
  const std::string_view name = DmaDirectionName(dir);
  return absl::string_view(name.data(), name.size());
}

std::string Describe(uint64_t size, DmaDirection dir) {
  return absl::StrCat(size, " bytes, ", DirName(dir));
}

}  // namespace

struct MappingChecker::Impl {
  static unsigned ShardIndexFor(DmaAddr addr) {
    // A group of neighbouring pages shares a shard (see AddrHash); groups are spread.
    return unsigned(GroupHash(addr) >> 60) & (kShards - 1);
  }
  Shard& ShardFor(DmaAddr addr) { return shards[ShardIndexFor(addr)]; }
  // OnUnmap's check and bookkeeping for one address of shard `s`.
  // Inlined into OnUnmap and OnUnmapBatch: the per-unmap cost is the point of both.
  [[gnu::always_inline]] inline absl::Status UnmapLocked(Shard& s, DmaAddr addr, uint64_t size,
                                                         DmaDirection dir)
      ABSL_EXCLUSIVE_LOCKS_REQUIRED(s.mu);

  std::array<Shard, kShards> shards;
  std::atomic<uint64_t> double_unmap{0};
  std::atomic<uint64_t> unknown_unmap{0};
  std::atomic<uint64_t> size_mismatch{0};
  std::atomic<uint64_t> direction_mismatch{0};
  std::atomic<uint64_t> live_at_unbind{0};
  std::atomic<uint64_t> call_after_unbind{0};
  std::atomic<uint64_t> sync_unknown{0};
};

static_assert((MappingChecker::kShards & (MappingChecker::kShards - 1)) == 0 &&
                  MappingChecker::kShards <= 16,
              "ShardFor takes the top 4 bits of the hash");

unsigned MappingChecker::ShardOf(DmaAddr addr) { return Impl::ShardIndexFor(addr); }

MappingChecker::MappingChecker() : impl_(std::make_unique<Impl>()) {}
MappingChecker::~MappingChecker() = default;

void MappingChecker::OnMap(DmaAddr addr, PhysAddr phys, uint64_t size, DmaDirection dir) {
  Shard& s = impl_->ShardFor(addr);
  base::MutexLock l(&s.mu);
  auto [it, inserted] = s.entries.try_emplace(addr, Entry{phys, size, dir, 1});
  if (!inserted) {
    Entry& e = it->second;
    if (e.live == 0) {
      e = Entry{phys, size, dir, 1, e.queued};  // reuse of a recently unmapped address
    } else {
      ++e.live;  // the same bus address mapped again (passthrough); the first mapping's figures
                 // stay
    }
  }
  ++s.live;
}

inline absl::Status MappingChecker::Impl::UnmapLocked(Shard& s, DmaAddr addr, uint64_t size,
                                                      DmaDirection dir) {
  auto it = s.entries.find(addr);
  if (it == s.entries.end()) {
    unknown_unmap.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(absl::StrCat(
        "DMA-API: device driver tries to free DMA memory it has not allocated: unmap of ",
        base::Hex(addr), " (", Describe(size, dir), ")"));
  }
  Entry& e = it->second;
  if (e.live == 0) {
    double_unmap.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(absl::StrCat(
        "DMA-API: double unmap of ", base::Hex(addr), " (", Describe(size, dir),
        "): already unmapped (was phys ", base::Hex(e.phys), ", ", Describe(e.size, e.dir), ")"));
  }
  const bool size_bad = size != e.size;
  const bool dir_bad = dir != e.dir;
  if (size_bad || dir_bad) {
    std::string msg = absl::StrCat("DMA-API: device driver frees DMA memory with different ");
    if (size_bad) {
      size_mismatch.fetch_add(1, std::memory_order_relaxed);
      absl::StrAppend(&msg, "size [device address=", base::Hex(addr), "] [map size=", e.size,
                      " bytes] [unmap size=", size, " bytes]");
    }
    if (dir_bad) {
      direction_mismatch.fetch_add(1, std::memory_order_relaxed);
      absl::StrAppend(&msg, size_bad ? " and " : "", "direction [device address=", base::Hex(addr),
                      "] [mapped as ", DirName(e.dir), "] [unmapped as ", DirName(dir), "]");
    }
    absl::StrAppend(&msg, "; the mapping stays live");
    return absl::InvalidArgumentError(msg);
  }
  --s.live;
  if (--e.live == 0) s.RecordUnmapLocked(addr, e);
  return absl::OkStatus();
}

absl::Status MappingChecker::OnUnmap(DmaAddr addr, uint64_t size, DmaDirection dir) {
  Shard& s = impl_->ShardFor(addr);
  base::MutexLock l(&s.mu);
  return impl_->UnmapLocked(s, addr, size, dir);
}

absl::Status MappingChecker::OnUnmapBatch(absl::Span<const DmaAddr> addrs, uint64_t size,
                                          DmaDirection dir, absl::Span<bool> ok) {
  absl::Status first_error;
  // Chunks of kChunk addresses, each sorted by shard (a counting sort of indices) so that every
  // shard lock is taken once per chunk; a shard's addresses keep their order.
  constexpr size_t kChunk = 256;
  constexpr size_t kPrefetchDistance = 8;
  for (size_t base = 0; base < addrs.size(); base += kChunk) {
    const size_t n = std::min(kChunk, addrs.size() - base);
    uint8_t shard_of[kChunk];
    uint16_t start[kShards + 1] = {};
    for (size_t i = 0; i < n; ++i) {
      shard_of[i] = uint8_t(impl_->ShardIndexFor(addrs[base + i]));
      ++start[shard_of[i] + 1];
    }
    for (unsigned k = 0; k < kShards; ++k) start[k + 1] += start[k];
    uint16_t order[kChunk];
    uint16_t fill[kShards];
    std::copy(start, start + kShards, fill);
    for (size_t i = 0; i < n; ++i) order[fill[shard_of[i]]++] = uint16_t(i);
    for (unsigned k = 0; k < kShards; ++k) {
      if (start[k] == start[k + 1]) continue;
      Shard& s = impl_->shards[k];
      base::MutexLock l(&s.mu);
      const size_t end = start[k + 1];
      for (size_t j = start[k]; j < end && j < start[k] + kPrefetchDistance; ++j) {
        s.entries.prefetch(addrs[base + order[j]]);
      }
      for (size_t j = start[k]; j < end; ++j) {
        if (j + kPrefetchDistance < end) {
          s.entries.prefetch(addrs[base + order[j + kPrefetchDistance]]);
          // The tombstone the FIFO will evict then (if every unmap until then tombstones).
          if (s.recent.size() == kRecentUnmapsPerShard) {
            s.entries.prefetch(s.recent[(s.recent_head + kPrefetchDistance) % s.recent.size()]);
          }
        }
        const size_t i = base + order[j];
        absl::Status st = impl_->UnmapLocked(s, addrs[i], size, dir);
        ok[i] = st.ok();
        if (!st.ok() && first_error.ok()) first_error = std::move(st);
      }
    }
  }
  return first_error;
}

void MappingChecker::Prefetch(DmaAddr addr) {
  Shard& s = impl_->ShardFor(addr);
  base::MutexLock l(&s.mu);
  s.entries.prefetch(addr);
  if (s.recent.size() == kRecentUnmapsPerShard) s.entries.prefetch(s.recent[s.recent_head]);
}

absl::Status MappingChecker::OnSync(DmaAddr addr, uint64_t offset, uint64_t size,
                                    DmaDirection dir) {
  Shard& s = impl_->ShardFor(addr);
  base::MutexLock l(&s.mu);
  auto it = s.entries.find(addr);
  if (it == s.entries.end() || it->second.live == 0) {
    impl_->sync_unknown.fetch_add(1, std::memory_order_relaxed);
    return absl::FailedPreconditionError(absl::StrCat(
        "DMA-API: device driver tries to sync DMA memory it has not allocated [device address=",
        base::Hex(addr), "] [offset=", offset, "] [", Describe(size, dir), "]",
        it == s.entries.end() ? "" : " (recently unmapped)"));
  }
  const Entry& e = it->second;
  if (offset > e.size || size > e.size - offset) {
    impl_->size_mismatch.fetch_add(1, std::memory_order_relaxed);
    return absl::InvalidArgumentError(absl::StrCat(
        "DMA-API: device driver syncs DMA memory outside allocated boundaries [device address=",
        base::Hex(addr), "] [map size=", e.size, " bytes] [sync offset=", offset,
        "] [sync size=", size, " bytes]"));
  }
  if (e.dir != DmaDirection::kBidirectional && dir != e.dir) {
    impl_->direction_mismatch.fetch_add(1, std::memory_order_relaxed);
    return absl::InvalidArgumentError(absl::StrCat(
        "DMA-API: device driver syncs DMA memory with different direction [device address=",
        base::Hex(addr), "] [size=", e.size, " bytes] [mapped as ", DirName(e.dir), "] [synced as ",
        DirName(dir), "]"));
  }
  return absl::OkStatus();
}

void MappingChecker::OnCallAfterUnbind() {
  impl_->call_after_unbind.fetch_add(1, std::memory_order_relaxed);
}

void MappingChecker::OnUnbind(
    absl::FunctionRef<void(DmaAddr addr, uint64_t size, DmaDirection dir)> fn) {
  for (Shard& s : impl_->shards) {
    std::vector<std::tuple<DmaAddr, uint64_t, DmaDirection>> live;
    {
      base::MutexLock l(&s.mu);
      if (s.live == 0) continue;
      std::vector<DmaAddr> tombstoned;
      for (auto& [addr, e] : s.entries) {
        if (e.live == 0) continue;
        for (uint32_t i = 0; i < e.live; ++i) live.emplace_back(addr, e.size, e.dir);
        e.live = 0;
        ++e.queued;  // counted before any push, so no push below erases a tombstone of this walk
        tombstoned.push_back(addr);
      }
      // Recorded after the walk: recording may erase an older tombstone.
      for (DmaAddr addr : tombstoned) s.PushRecentLocked(addr);
      s.live = 0;
    }
    impl_->live_at_unbind.fetch_add(live.size(), std::memory_order_relaxed);
    for (const auto& [addr, size, dir] : live) fn(addr, size, dir);
  }
}

CheckerCounters MappingChecker::counters() const {
  CheckerCounters c;
  c.double_unmap = impl_->double_unmap.load(std::memory_order_relaxed);
  c.unknown_unmap = impl_->unknown_unmap.load(std::memory_order_relaxed);
  c.size_mismatch = impl_->size_mismatch.load(std::memory_order_relaxed);
  c.direction_mismatch = impl_->direction_mismatch.load(std::memory_order_relaxed);
  c.live_at_unbind = impl_->live_at_unbind.load(std::memory_order_relaxed);
  c.call_after_unbind = impl_->call_after_unbind.load(std::memory_order_relaxed);
  c.sync_unknown = impl_->sync_unknown.load(std::memory_order_relaxed);
  return c;
}

void MappingChecker::ReleaseHistory() {
  for (Shard& s : impl_->shards) {
    base::MutexLock l(&s.mu);
    absl::flat_hash_map<DmaAddr, Entry, AddrHash> entries;
    for (auto& [addr, e] : s.entries) {
      if (e.live > 0) entries.emplace(addr, Entry{e.phys, e.size, e.dir, e.live, 0});
    }
    s.entries.swap(entries);
    std::vector<DmaAddr>().swap(s.recent);
    s.recent_head = 0;
  }
}

uint64_t MappingChecker::memory_bytes() const {
  uint64_t n = sizeof(Impl);
  for (Shard& s : impl_->shards) {
    base::MutexLock l(&s.mu);
    // A flat_hash_map slot per capacity plus one control byte; the FIFO's capacity.
    n += s.entries.capacity() * (sizeof(std::pair<const DmaAddr, Entry>) + 1);
    n += s.recent.capacity() * sizeof(DmaAddr);
  }
  return n;
}

uint64_t MappingChecker::live_mappings() const {
  uint64_t n = 0;
  for (Shard& s : impl_->shards) {
    base::MutexLock l(&s.mu);
    n += s.live;
  }
  return n;
}

bool MappingChecker::IsLive(DmaAddr addr) const {
  Shard& s = impl_->ShardFor(addr);
  base::MutexLock l(&s.mu);
  auto it = s.entries.find(addr);
  return it != s.entries.end() && it->second.live > 0;
}

}  // namespace pagepool::dma
