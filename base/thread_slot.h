// File: base/thread_slot.h
//
// A small per-thread number used to spread threads over per-thread-ish shards (the IOVA magazine
// caches, the Device's in-flight call counters, the checker's shards) the way the kernel uses the
// CPU number. Threads get consecutive numbers, so N threads land on N different shards when there
// are at least N.
#ifndef PAGEPOOL_BASE_THREAD_SLOT_H_
#define PAGEPOOL_BASE_THREAD_SLOT_H_

#include <atomic>
#include <cstdint>

namespace pagepool::base {

// Context: any thread; the first call on a thread assigns its number.
inline uint32_t ThreadSlot() {
  static std::atomic<uint32_t> next_slot{0};
  thread_local const uint32_t slot = next_slot.fetch_add(1, std::memory_order_relaxed);
  return slot;
}

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_THREAD_SLOT_H_
