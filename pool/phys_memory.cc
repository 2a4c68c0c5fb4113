// File: pool/phys_memory.cc
#include "pool/phys_memory.h"

#include <bit>
#include <new>
#include <utility>

#include "absl/strings/str_cat.h"
#include <sys/mman.h>

namespace pagepool::pool {
namespace {

static_assert(sizeof(PageRecord) <= 32, "the per-frame record must stay within 32 bytes");
static_assert(std::atomic<uint64_t>::is_always_lock_free);
static_assert(std::atomic<uint16_t>::is_always_lock_free);

constexpr uint64_t kNil = 0xffffffffull;
constexpr uint64_t kBlockFrames = uint64_t{1} << PhysMemory::kMaxOrder;
constexpr uint64_t kMaxBytes = uint64_t{1} << 43;

// PageRecord::state layout.
constexpr uint32_t kOrderMask = 0x1f;
constexpr uint32_t kKindShift = 5;
enum FrameKind : uint32_t { kKindNone = 0, kKindFreeHead = 1, kKindAllocated = 2 };

constexpr uint32_t MakeState(FrameKind kind, unsigned order) {
  return (kind << kKindShift) | order;
}
constexpr FrameKind KindOf(uint32_t state) { return FrameKind(state >> kKindShift); }
constexpr unsigned OrderOfState(uint32_t state) { return state & kOrderMask; }

constexpr uint64_t Next(uint64_t links) { return links & 0xffffffffull; }
constexpr uint64_t Prev(uint64_t links) { return links >> 32; }
constexpr uint64_t Links(uint64_t prev, uint64_t next) { return (prev << 32) | next; }

// Counters written only under the allocator lock (read anywhere): no locked instruction needed.
inline void LockedAdd(std::atomic<uint64_t>& c, uint64_t d) {
  c.store(c.load(std::memory_order_relaxed) + d, std::memory_order_relaxed);
}
inline void LockedSub(std::atomic<uint64_t>& c, uint64_t d) {
  c.store(c.load(std::memory_order_relaxed) - d, std::memory_order_relaxed);
}

// The head record of a block just taken off a free list or the frontier (allocator lock held):
// allocated with page_ref 1, pp fields cleared, the generation kept (stale handles stay stale).
inline void MarkAllocated(PageRecord& r, unsigned order) {
  r.state.store(MakeState(kKindAllocated, order), std::memory_order_relaxed);
  r.pp_magic.store(0, std::memory_order_relaxed);
  r.SetOwnerKeepGeneration(0, std::memory_order_relaxed);
  r.pp_ref_count.store(0, std::memory_order_relaxed);
  r.page_ref.store(1, std::memory_order_release);
}

}  // namespace

absl::StatusOr<std::unique_ptr<PhysMemory>> PhysMemory::Create(const PhysMemoryConfig& config) {
  const uint64_t frames = (config.bytes >> dma::kPageShift) / kBlockFrames * kBlockFrames;
  if (frames == 0 || config.bytes > kMaxBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("memory size ", config.bytes, " bytes: must be 4 MiB .. 8 TiB"));
  }
  if (config.numa_nodes == 0 || config.numa_nodes > frames / kBlockFrames) {
    return absl::InvalidArgumentError(
        absl::StrCat("numa_nodes ", config.numa_nodes, ": must be 1 .. ", frames / kBlockFrames));
  }
  const size_t map_bytes = size_t(frames * sizeof(PageRecord));
  // MAP_NORESERVE: untouched records cost neither memory nor commit charge.
  void* p = mmap(nullptr, map_bytes, PROT_READ | PROT_WRITE,
                 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (p == MAP_FAILED) {
    return absl::ResourceExhaustedError(
        absl::StrCat("cannot reserve ", map_bytes, " bytes for the frame records"));
  }
  return std::unique_ptr<PhysMemory>(
      new PhysMemory(static_cast<PageRecord*>(p), frames, map_bytes, config.numa_nodes));
}

PhysMemory::PhysMemory(PageRecord* records, uint64_t frames, size_t map_bytes, unsigned numa_nodes)
    : records_(records),
      frames_(frames),
      map_bytes_(map_bytes),
      numa_nodes_(numa_nodes),
      frames_per_node_(frames / numa_nodes) {
  base::MutexLock l(&lock_);
  for (unsigned o = 0; o <= kMaxOrder; ++o) {
    free_head_[o] = kNil;
    free_count_[o] = 0;
  }
  frames_free_.store(frames, std::memory_order_relaxed);
  // Reserve frame 0 (see the header): the first carve splits block 0 and hands out frame 0.
  (void)AllocLocked(0);
  alloc_calls_.store(0, std::memory_order_relaxed);
}

PhysMemory::~PhysMemory() { munmap(records_, map_bytes_); }

void PhysMemory::ListPush(unsigned order, FrameNumber frame) {
  PageRecord& r = records_[frame];
  const uint64_t head = free_head_[order];
  r.dma_addr.store(Links(kNil, head), std::memory_order_relaxed);
  r.state.store(MakeState(kKindFreeHead, order), std::memory_order_relaxed);
  if (head != kNil) {
    PageRecord& h = records_[head];
    h.dma_addr.store(Links(frame, Next(h.dma_addr.load(std::memory_order_relaxed))),
                     std::memory_order_relaxed);
  }
  free_head_[order] = frame;
  ++free_count_[order];
}

void PhysMemory::ListRemove(unsigned order, FrameNumber frame) {
  PageRecord& r = records_[frame];
  const uint64_t links = r.dma_addr.load(std::memory_order_relaxed);
  const uint64_t prev = Prev(links), next = Next(links);
  if (prev == kNil) {
    free_head_[order] = next;
  } else {
    PageRecord& p = records_[prev];
    p.dma_addr.store(Links(Prev(p.dma_addr.load(std::memory_order_relaxed)), next),
                     std::memory_order_relaxed);
  }
  if (next != kNil) {
    PageRecord& n = records_[next];
    n.dma_addr.store(Links(prev, Next(n.dma_addr.load(std::memory_order_relaxed))),
                     std::memory_order_relaxed);
  }
  r.dma_addr.store(0, std::memory_order_relaxed);
  r.state.store(0, std::memory_order_relaxed);
  --free_count_[order];
}

absl::StatusOr<FrameNumber> PhysMemory::AllocLocked(unsigned order) {
  unsigned o = order;
  while (o <= kMaxOrder && free_head_[o] == kNil) ++o;
  FrameNumber frame;
  if (o <= kMaxOrder) {
    frame = free_head_[o];
    ListRemove(o, frame);
  } else {
    // Free lists are dry: carve a fresh max-order block from the untouched frontier.
    const uint64_t frontier = frontier_.load(std::memory_order_relaxed);
    if (frontier + kBlockFrames > frames_) {
      LockedAdd(alloc_failures_, 1);
      return absl::ResourceExhaustedError(
          absl::StrCat("out of simulated memory: no free block of order ", order, " (",
                       frames_free(), " of ", frames_, " frames free)"));
    }
    frame = frontier;
    frontier_.store(frontier + kBlockFrames, std::memory_order_release);
    o = kMaxOrder;
  }
  // Split: keep the low half, free the high halves.
  while (o > order) {
    --o;
    ListPush(o, frame + (uint64_t{1} << o));
  }
  records_[frame].dma_addr.store(0, std::memory_order_relaxed);
  MarkAllocated(records_[frame], order);
  LockedSub(frames_free_, uint64_t{1} << order);
  LockedAdd(alloc_calls_, 1);
  return frame;
}

void PhysMemory::FreeLocked(FrameNumber frame, unsigned order) {
  const unsigned freed_order = order;
  records_[frame].state.store(0, std::memory_order_relaxed);
  records_[frame].page_ref.store(0, std::memory_order_relaxed);
  while (order < kMaxOrder) {
    const FrameNumber buddy = frame ^ (uint64_t{1} << order);
    const uint32_t bs = records_[buddy].state.load(std::memory_order_relaxed);
    if (KindOf(bs) != kKindFreeHead || OrderOfState(bs) != order) break;
    ListRemove(order, buddy);
    frame = std::min(frame, buddy);
    ++order;
  }
  ListPush(order, frame);
  LockedAdd(frames_free_, uint64_t{1} << freed_order);
  LockedAdd(free_calls_, 1);
}

absl::StatusOr<FrameNumber> PhysMemory::AllocPages(unsigned order) {
  if (order > kMaxOrder) {
    return absl::InvalidArgumentError(absl::StrCat("order ", order, " above ", kMaxOrder));
  }
  base::MutexLock l(&lock_);
  return AllocLocked(order);
}

size_t PhysMemory::AllocBulk(absl::Span<FrameNumber> out) {
  base::MutexLock l(&lock_);
  size_t n = 0;
  for (; n < out.size(); ++n) {
    // Fast case inline: an order-0 page on its list (ListRemove clears its dma_addr word).
    if (free_head_[0] != kNil) {
      const FrameNumber f = free_head_[0];
      ListRemove(0, f);
      MarkAllocated(records_[f], 0);
      LockedSub(frames_free_, 1);
      LockedAdd(alloc_calls_, 1);
      out[n] = f;
      continue;
    }
    absl::StatusOr<FrameNumber> f = AllocLocked(0);
    if (!f.ok()) break;
    out[n] = *f;
  }
  return n;
}

absl::Status PhysMemory::FreePages(FrameNumber frame, unsigned order) {
  if (frame >= frames_ || order > kMaxOrder || (frame & ((uint64_t{1} << order) - 1)) != 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("free of frame ", frame, " order ", order, ": not a block of this memory"));
  }
  base::MutexLock l(&lock_);
  const uint32_t s = records_[frame].state.load(std::memory_order_relaxed);
  if (KindOf(s) != kKindAllocated || OrderOfState(s) != order) {
    return absl::FailedPreconditionError(absl::StrCat("free of frame ", frame, " order ", order,
                                                      ": not an allocated block of that order"));
  }
  FreeLocked(frame, order);
  return absl::OkStatus();
}

void PhysMemory::GetPage(FrameNumber frame) {
  records_[frame].page_ref.fetch_add(1, std::memory_order_relaxed);
}

bool PhysMemory::PutPage(FrameNumber frame) {
  if (records_[frame].page_ref.fetch_sub(1, std::memory_order_acq_rel) != 1) return false;
  base::MutexLock l(&lock_);
  FreeLocked(frame, OrderOfState(records_[frame].state.load(std::memory_order_relaxed)));
  return true;
}

unsigned PhysMemory::OrderOf(FrameNumber frame) const {
  const uint32_t s = records_[frame].state.load(std::memory_order_relaxed);
  return KindOf(s) == kKindAllocated ? OrderOfState(s) : 0;
}

uint64_t PhysMemory::ScanFrames(absl::FunctionRef<void(FrameNumber, PageRecord&)> fn) const {
  const uint64_t end = frontier_.load(std::memory_order_acquire);
  for (uint64_t f = 0; f < end; ++f) fn(f, records_[f]);
  return end;
}

uint64_t PhysMemory::ScanAllFrames(absl::FunctionRef<void(FrameNumber, PageRecord&)> fn) const {
  for (uint64_t f = 0; f < frames_; ++f) fn(f, records_[f]);
  return frames_;
}

uint64_t PhysMemory::ScanAllFramesUntil(
    absl::FunctionRef<bool(FrameNumber, PageRecord&)> fn) const {
  for (uint64_t f = 0; f < frames_; ++f) {
    if (!fn(f, records_[f])) return f + 1;
  }
  return frames_;
}

PhysMemoryStats PhysMemory::stats() const {
  PhysMemoryStats s;
  s.frames = frames_;
  s.frames_free = frames_free();
  s.alloc_calls = alloc_calls_.load(std::memory_order_relaxed);
  s.free_calls = free_calls_.load(std::memory_order_relaxed);
  s.alloc_failures = alloc_failures_.load(std::memory_order_relaxed);
  s.touched_frames = frontier_.load(std::memory_order_relaxed);
  s.record_bytes_reserved = map_bytes_;
  return s;
}

}  // namespace pagepool::pool
