// File: dma/internal/flush_queue.h
//
// The lazy-mode flush queue (the kernel's iova_fq in dma-iommu.c): unmapped ranges wait here, with
// the page tables they unlinked and the IOVA they will give back, until one IOTLB invalidation
// covers the whole batch. A queue is flushed when it holds `size` entries (256) or when its oldest
// entry is older than `timeout_ns` (10 ms) by the injected clock, checked when an entry is added
// and by the flush timer: as the kernel's fq_timer, a timer thread is armed by the first entry
// queued and, once timeout_ns has passed, flushes every shard whose oldest entry has expired, so a
// lone entry on an idle shard is flushed on time without waiting for another Add. FlushAll()
// flushes everything. Queues are sharded per thread (the kernel has one per CPU) so that unmaps on
// different threads rarely share a lock.
//
// Thread safety: Add, FlushExpired and FlushAll may be called from any thread concurrently. The
// flush callback runs on the calling thread (or the timer thread), outside every shard lock.
#ifndef PAGEPOOL_DMA_INTERNAL_FLUSH_QUEUE_H_
#define PAGEPOOL_DMA_INTERNAL_FLUSH_QUEUE_H_

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#include "absl/base/thread_annotations.h"
#include "base/clock.h"
#include "base/condvar.h"
#include "base/mutex.h"
#include "dma/internal/pt_table.h"

namespace pagepool::dma::internal {

struct FqEntry {
  uint64_t iova = 0;
  uint64_t size = 0;
  uint64_t iova_pages = 0;  // IOVA pages to give back after the flush (0: none)
  IotlbGather tables;       // tables unlinked by this unmap
};

class FlushQueue {
 public:
  static constexpr unsigned kShards = 8;
  // Called with the entries of one flush; it must invalidate the IOTLB once and then release.
  using FlushFn = std::function<void(std::vector<FqEntry>& entries)>;
  // Run by the timer thread after each timeout (e.g. to trim caches); empty: no timer thread.
  using IdleFn = std::function<void()>;

  // With a non-empty `on_timer`, starts the flush timer thread.
  FlushQueue(base::Clock* clock, unsigned size, uint64_t timeout_ns, FlushFn flush,
             IdleFn on_timer = IdleFn());
  // Stops the timer thread (waking it at once, wherever it sleeps) and joins it; a flush it has
  // started finishes first. REQUIRES: FlushAll() called (entries left are dropped).
  // Context: any thread but the timer thread, not holding an RCU read lock (the timer's flush may
  // wait for a grace period).
  ~FlushQueue();

  // Queues an entry on the calling thread's shard; flushes that shard if it is full or stale.
  // Context: any thread.
  void Add(FqEntry entry);
  // Flushes every shard with one invalidation. Context: any thread.
  void FlushAll();
  // Flushes (with one invalidation) the shards whose oldest entry is at least timeout_ns old by the
  // injected clock. Returns true if entries remain queued. Context: any thread.
  bool FlushExpired();

 private:
  struct alignas(64) Shard {
    base::Mutex mu;
    std::vector<FqEntry> entries ABSL_GUARDED_BY(mu);
    uint64_t oldest_ns ABSL_GUARDED_BY(mu) = 0;
  };
  static unsigned ShardOfThisThread();
  void TimerLoop();
  void ArmTimer();

  base::Clock* const clock_;
  const unsigned size_;
  const uint64_t timeout_ns_;
  const FlushFn flush_;
  std::unique_ptr<Shard[]> shards_;
  const IdleFn on_timer_;
  // Read without timer_mu_ by Add, so that an Add on an armed timer takes no second lock.
  std::atomic<bool> armed_hint_{false};
  // The timer thread sleeps on timer_cv_ until armed (or stopped), then for one timeout.
  base::Mutex timer_mu_;
  base::CondVar timer_cv_;
  bool armed_ ABSL_GUARDED_BY(timer_mu_) = false;
  bool stop_ ABSL_GUARDED_BY(timer_mu_) = false;
  std::thread timer_;
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_FLUSH_QUEUE_H_
