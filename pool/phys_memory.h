// File: pool/phys_memory.h
//
// Simulated physical memory: a fixed array of 4 KiB page frames, each with a compact `struct
// page`-like record (PageRecord, 32 bytes), and a buddy allocator over the frames (orders
// 0..kMaxOrder, like the kernel's MAX_PAGE_ORDER = 10).
//
// Size: set at creation (default 4 GiB = 1 Mi frames), rounded down to whole 4 MiB blocks. The
// record array is one anonymous mmap with MAP_NORESERVE, and the buddy allocator carves max-order
// blocks from an untouched frontier only when its free lists run dry, so a 64 GiB (16 Mi frames,
// 512 MiB of records) table costs only the records that were ever touched. There is no per-frame
// heap allocation.
//
// A frame's physical address is `frame << 12` (dma::PhysAddr), the address given to the DMA API.
// Frame 0 is reserved at creation and never handed out, so physical (and passthrough DMA) address 0
// never names a page and dma_addr 0 can mean "not mapped".
//
// Out of memory is RESOURCE_EXHAUSTED, never a crash.
//
// Thread safety: allocation and free take one allocator lock (a bulk allocation takes it once).
// PageRecord fields are atomics: any thread may read them at any time (the SCAN strategy reads
// every record while other threads allocate and free); who may write which field is documented on
// the field.
#ifndef PAGEPOOL_POOL_PHYS_MEMORY_H_
#define PAGEPOOL_POOL_PHYS_MEMORY_H_

#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "absl/functional/function_ref.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/types/span.h"
#include "base/mutex.h"
#include "dma/types.h"

namespace pagepool::pool {

using FrameNumber = uint64_t;

// The kernel's pp_magic layout on x86_64 (include/linux/mm.h, include/net/page_pool/types.h):
// PP_SIGNATURE = 0x40 + POISON_POINTER_DELTA; the DMA index lives in the bits between the signature
// and the poison: PP_DMA_INDEX_SHIFT = 1 + __fls(0x40) = 7, PP_DMA_INDEX_BITS = min(32, 48 - 7)
// = 32.
inline constexpr uint64_t kPoisonPointerDelta = 0xdead000000000000ull;
inline constexpr uint64_t kPpSignature = 0x40 + kPoisonPointerDelta;
inline constexpr unsigned kPpDmaIndexShift = 7;
inline constexpr unsigned kPpDmaIndexBits = 32;
inline constexpr uint64_t kPpDmaIndexMask = ((uint64_t{1} << kPpDmaIndexBits) - 1)
                                            << kPpDmaIndexShift;
// Bits 0-1 belong to page->lru / compound_head in the kernel and are masked out too.
inline constexpr uint64_t kPpMagicMask = ~(kPpDmaIndexMask | 0x3ull);

// One frame's record, the model's `struct page`. 32 bytes (static_assert in phys_memory.cc).
// Only the head frame of an allocated block carries meaningful pp fields.
struct PageRecord {
  // pp_magic: kPpSignature | (dma index id << kPpDmaIndexShift) while the page belongs to a
  // page_pool; 0 otherwise. Written by the owning pool (set on slow-path allocation, index
  // set/cleared by the path that tracks/untracks it, cleared on release).
  std::atomic<uint64_t> pp_magic{0};
  // dma_addr of the page's mapping while the pool holds it mapped; 0 when unmapped. The party that
  // unmaps claims it with exchange(0). While the frame is a free buddy block head this word holds
  // the free-list links instead (allocator-private).
  std::atomic<uint64_t> dma_addr{0};
  // owning pool id (high 32 bits; 0: none) and generation (low 32 bits). The generation is bumped
  // when a page is handed to a user and when it is given back; give-back claims the handle by CAS
  // on the whole word, so a stale, double or wrong-pool give-back fails exactly once. Never reset,
  // so a handle stays stale across frees and reallocations.
  std::atomic<uint64_t> owner_gen{0};
  // Allocator state: bits 0-4 order, bits 5-7 kind (FrameKind in phys_memory.cc). Allocator lock
  // only.
  std::atomic<uint32_t> state{0};
  // The kernel's page->_refcount (get_page/put_page): 1 when allocated; the frame block is freed
  // when it drops to 0.
  std::atomic<uint16_t> page_ref{0};
  // The kernel's pp_ref_count (page_pool_ref_netmem / fragments): 1 while the pool holds the page.
  std::atomic<uint16_t> pp_ref_count{0};

  static constexpr uint32_t OwnerOf(uint64_t owner_gen) { return uint32_t(owner_gen >> 32); }
  static constexpr uint32_t GenerationOf(uint64_t owner_gen) { return uint32_t(owner_gen); }
  static constexpr uint64_t MakeOwnerGen(uint32_t owner, uint32_t gen) {
    return (uint64_t{owner} << 32) | gen;
  }
  // Sets the owning pool id (0: none) and keeps the generation, so stale handles stay stale.
  // REQUIRES: the caller owns the page (nobody else writes owner_gen meanwhile): a plain load and
  // store, no read-modify-write.
  void SetOwnerKeepGeneration(uint32_t owner, std::memory_order order) {
    const uint64_t og = owner_gen.load(std::memory_order_relaxed);
    owner_gen.store(MakeOwnerGen(owner, GenerationOf(og)), order);
  }
  // True when pp_magic carries the page_pool signature (the kernel's page_pool_page_is_pp()).
  bool IsPagePool() const {
    return (pp_magic.load(std::memory_order_relaxed) & kPpMagicMask) == kPpSignature;
  }
  // The in-flight index id stored in pp_magic (0: not tracked).
  uint32_t DmaIndex() const {
    return uint32_t((pp_magic.load(std::memory_order_acquire) & kPpDmaIndexMask) >>
                    kPpDmaIndexShift);
  }
};

struct PhysMemoryConfig {
  uint64_t bytes = uint64_t{4} << 30;  // rounded down to 4 KiB frames; at least one max-order block
  unsigned numa_nodes = 1;             // frames are split evenly; FrameNid(frame) reports the node
};

struct PhysMemoryStats {
  uint64_t frames = 0;
  uint64_t frames_free = 0;
  uint64_t alloc_calls = 0;            // blocks handed out
  uint64_t free_calls = 0;             // blocks freed
  uint64_t alloc_failures = 0;         // RESOURCE_EXHAUSTED answers
  uint64_t touched_frames = 0;         // frames below the carve frontier (records ever initialised)
  uint64_t record_bytes_reserved = 0;  // virtual size of the record array
};

class PhysMemory {
 public:
  static constexpr unsigned kMaxOrder = 10;  // 4 MiB blocks, the kernel's MAX_PAGE_ORDER

  // INVALID_ARGUMENT for a size below one max-order block (4 MiB) or above 2^43 bytes (8 TiB),
  // RESOURCE_EXHAUSTED if the record array cannot be reserved.
  static absl::StatusOr<std::unique_ptr<PhysMemory>> Create(const PhysMemoryConfig& config);
  ~PhysMemory();
  PhysMemory(const PhysMemory&) = delete;
  PhysMemory& operator=(const PhysMemory&) = delete;

  // alloc_pages(order): returns the head frame of a free block of 2^order frames. The head record
  // gets page_ref 1, pp fields cleared (owner_gen keeps its generation). RESOURCE_EXHAUSTED when no
  // block of that order can be had, INVALID_ARGUMENT for order > kMaxOrder. Context: any thread;
  // takes the allocator lock.
  absl::StatusOr<FrameNumber> AllocPages(unsigned order);

  // alloc_pages_bulk: up to out.size() order-0 frames under one lock acquisition. Returns how many
  // were allocated (0 when memory is exhausted; the caller answers RESOURCE_EXHAUSTED).
  // Context: any thread; takes the allocator lock.
  size_t AllocBulk(absl::Span<FrameNumber> out);

  // __free_pages(frame, order) of a block from AllocPages/AllocBulk, regardless of page_ref.
  // REQUIRES: `frame` is an allocated head of that order (checked: INVALID_ARGUMENT /
  // FAILED_PRECONDITION). Context: any thread; takes the allocator lock.
  absl::Status FreePages(FrameNumber frame, unsigned order);

  // get_page / put_page on a block head. PutPage frees the block (with its recorded order) when
  // page_ref reaches 0 and returns true then.
  // Context: any thread.
  void GetPage(FrameNumber frame);
  bool PutPage(FrameNumber frame);

  // The record of a frame. REQUIRES: frame < frames(). Records live as long as the PhysMemory.
  PageRecord& record(FrameNumber frame) const { return records_[frame]; }
  FrameNumber FrameOf(const PageRecord* rec) const { return FrameNumber(rec - records_); }
  static dma::PhysAddr PhysOf(FrameNumber frame) { return frame << dma::kPageShift; }
  // Order of an allocated block head (0 for anything else).
  unsigned OrderOf(FrameNumber frame) const;
  // NUMA node of a frame (frames split evenly over numa_nodes).
  unsigned FrameNid(FrameNumber frame) const {
    return numa_nodes_ == 1 ? 0 : unsigned(frame / frames_per_node_);
  }

  // Walk of the frames below the carve frontier (frames above it were never allocated, so they hold
  // no page_pool page), in frame order, without taking the allocator lock. Records may change under
  // the walk; fn must read them with atomics. Returns the number of frames visited.
  // Context: any thread.
  uint64_t ScanFrames(absl::FunctionRef<void(FrameNumber, PageRecord&)> fn) const;
  // Full-frame scan for the SCAN strategy: like ScanFrames, but walks every frame of memory, as the
  // kernel walks every pfn of every zone (never-touched records read as zero pages, cheaply, but
  // the cost still grows with memory size). Returns frames().
  // Context: any thread.
  uint64_t ScanAllFrames(absl::FunctionRef<void(FrameNumber, PageRecord&)> fn) const;
  // ScanAllFrames that stops as soon as fn returns false (seed 002's scan stops once every page
  // in flight is found). Returns the number of frames visited, the last one included.
  // Context: any thread.
  uint64_t ScanAllFramesUntil(absl::FunctionRef<bool(FrameNumber, PageRecord&)> fn) const;

  uint64_t frames() const { return frames_; }
  uint64_t bytes() const { return frames_ << dma::kPageShift; }
  uint64_t frames_free() const { return frames_free_.load(std::memory_order_relaxed); }
  PhysMemoryStats stats() const;

 private:
  PhysMemory(PageRecord* records, uint64_t frames, size_t map_bytes, unsigned numa_nodes);
  absl::StatusOr<FrameNumber> AllocLocked(unsigned order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void FreeLocked(FrameNumber frame, unsigned order) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void ListPush(unsigned order, FrameNumber frame) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);
  void ListRemove(unsigned order, FrameNumber frame) ABSL_EXCLUSIVE_LOCKS_REQUIRED(lock_);

  PageRecord* const records_;
  const uint64_t frames_;
  const size_t map_bytes_;
  const unsigned numa_nodes_;
  const uint64_t frames_per_node_;

  mutable base::Mutex lock_;
  // Heads of the per-order free lists (kNil when empty); links live in the heads' dma_addr word.
  uint64_t free_head_[kMaxOrder + 1] ABSL_GUARDED_BY(lock_);
  uint64_t free_count_[kMaxOrder + 1] ABSL_GUARDED_BY(lock_);
  // Frames at and above the frontier were never handed to the buddy lists (records untouched).
  std::atomic<uint64_t> frontier_{0};
  std::atomic<uint64_t> frames_free_{0};
  std::atomic<uint64_t> alloc_calls_{0};
  std::atomic<uint64_t> free_calls_{0};
  std::atomic<uint64_t> alloc_failures_{0};
};

}  // namespace pagepool::pool

#endif  // PAGEPOOL_POOL_PHYS_MEMORY_H_
