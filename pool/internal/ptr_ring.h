// File: pool/internal/ptr_ring.h
//
// PtrRing: the kernel's ptr_ring (include/linux/ptr_ring.h) for PageRecord pointers. A slot is full
// when non-null: producers (any thread) serialise on the producer lock and fail when the slot at
// the producer index is still full; the consumer side (the pool's NAPI context, or Destroy) takes
// the consumer lock, takes the slot at the consumer index and clears it. Close() makes every later
// Produce fail (used at pool destroy so no page is stranded in a ring nobody drains).
//
// Thread safety: Produce and Close from any thread; Consume from any thread (serialised by the
// consumer lock); Empty and Count are lock-free peeks.
#ifndef PAGEPOOL_POOL_INTERNAL_PTR_RING_H_
#define PAGEPOOL_POOL_INTERNAL_PTR_RING_H_

#include <atomic>
#include <cstdint>
#include <memory>

#include "absl/base/thread_annotations.h"
#include "base/mutex.h"
#include "pool/phys_memory.h"

namespace pagepool::pool::internal {

class PtrRing {
 public:
  explicit PtrRing(uint32_t size) : size_(size), queue_(new std::atomic<PageRecord*>[size]) {
    for (uint32_t i = 0; i < size_; ++i) queue_[i].store(nullptr, std::memory_order_relaxed);
  }
  PtrRing(const PtrRing&) = delete;
  PtrRing& operator=(const PtrRing&) = delete;

  enum class ProduceResult { kOk, kFull, kClosed };

  // ptr_ring_produce: kFull when the slot at the producer index is still full (-ENOSPC), kClosed
  // after Close().
  // Context: any thread; takes the producer lock.
  ProduceResult Produce(PageRecord* page) {
    base::MutexLock l(&producer_lock_);
    if (closed_) return ProduceResult::kClosed;
    if (queue_[producer_].load(std::memory_order_relaxed) != nullptr) return ProduceResult::kFull;
    queue_[producer_].store(page, std::memory_order_release);
    if (++producer_ >= size_) producer_ = 0;
    produced_.store(produced_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return ProduceResult::kOk;
  }

  // Runs fn() under the consumer lock (page_pool_refill_alloc_cache's
  // spin_lock(&r->consumer_lock)).
  template <typename Fn>
  void WithConsumerLock(Fn&& fn) {
    base::MutexLock l(&consumer_lock_);
    fn();
  }

  // __ptr_ring_consume. REQUIRES: the caller holds the consumer lock (WithConsumerLock).
  PageRecord* ConsumeLocked() ABSL_NO_THREAD_SAFETY_ANALYSIS {
    uint32_t c = consumer_.load(std::memory_order_relaxed);
    PageRecord* page = queue_[c].load(std::memory_order_acquire);
    if (page == nullptr) return nullptr;
    queue_[c].store(nullptr, std::memory_order_release);
    if (++c >= size_) c = 0;
    consumer_.store(c, std::memory_order_relaxed);
    consumed_.store(consumed_.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    return page;
  }

  // ptr_ring_consume (takes the consumer lock).
  PageRecord* Consume() {
    base::MutexLock l(&consumer_lock_);
    return ConsumeLocked();
  }

  // __ptr_ring_empty: a lockless peek at the consumer's slot.
  // Context: the consumer (the pool's NAPI context); others get a hint.
  bool Empty() const ABSL_NO_THREAD_SAFETY_ANALYSIS {
    return queue_[consumer_.load(std::memory_order_relaxed)].load(std::memory_order_acquire) ==
           nullptr;
  }

  // Close: every later Produce fails. Context: any thread; takes the producer lock.
  void Close() {
    base::MutexLock l(&producer_lock_);
    closed_ = true;
  }

  uint64_t Count() const {
    return produced_.load(std::memory_order_relaxed) - consumed_.load(std::memory_order_relaxed);
  }
  uint32_t size() const { return size_; }

 private:
  const uint32_t size_;
  std::unique_ptr<std::atomic<PageRecord*>[]> queue_;
  alignas(64) base::Mutex producer_lock_;
  uint32_t producer_ ABSL_GUARDED_BY(producer_lock_) = 0;
  bool closed_ ABSL_GUARDED_BY(producer_lock_) = false;
  std::atomic<uint64_t> produced_{0};
  alignas(64) base::Mutex consumer_lock_;
  std::atomic<uint32_t> consumer_{0};  // written under consumer_lock_, peeked by Empty()
  std::atomic<uint64_t> consumed_{0};
};

}  // namespace pagepool::pool::internal

#endif  // PAGEPOOL_POOL_INTERNAL_PTR_RING_H_
