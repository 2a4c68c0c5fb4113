// File: base/mutex.h
//
// The one mutex type of pagepoold, and its RAII holder. Every lock in the tree is a base::Mutex, so
// clang's -Wthread-safety checks every ABSL_GUARDED_BY field and ThreadSanitizer sees every
// acquire/release.
//
// Why not absl::Mutex: Debian's abseil 20220623 is built without ThreadSanitizer, so its Mutex
// (plain atomics inside the shared library) carries no happens-before edge TSan can see. Why not
// std::mutex: an uncontended lock/unlock pair is two calls into libpthread, too much for the
// page_pool hot paths (the ptr_ring producer lock, the in-flight index's writer lock), which the
// kernel guards with a spinlock.
//
// What it is: a futex mutex (Drepper, "Futexes Are Tricky", mutex 2). The word is 0 (unlocked), 1
// (locked) or 2 (locked, maybe with sleepers). Lock is one CAS when uncontended; a contended Lock
// spins briefly (critical sections here are short and there are few cores), then sleeps on the
// futex, so a thread waiting behind a long holder (a pool destroy) costs no CPU. Unlock is one
// exchange, plus a futex wake only when someone may sleep. Under PAGEPOOL_TSAN the operations carry
// TSan's mutex annotations, so reports name the lock and lock-order inversions are detected.
//
// Thread safety: any thread. Not recursive; Unlock only by the thread that locked. Fair enough for
// short sections (a woken sleeper competes with spinners), not FIFO.
#ifndef PAGEPOOL_BASE_MUTEX_H_
#define PAGEPOOL_BASE_MUTEX_H_

#include <atomic>
#include <cstdint>

#include "absl/base/thread_annotations.h"

#ifdef PAGEPOOL_TSAN
#include <sanitizer/tsan_interface.h>
#endif

namespace pagepool::base {

class ABSL_LOCKABLE Mutex {
 public:
  constexpr Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_pre_lock(this, 0);
#endif
    uint32_t expected = kUnlocked;
    if (!state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire,
                                        std::memory_order_relaxed)) {
      LockSlow();
    }
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_post_lock(this, 0, 0);
#endif
  }

  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_pre_lock(this, __tsan_mutex_try_lock);
#endif
    uint32_t expected = kUnlocked;
    const bool ok = state_.compare_exchange_strong(expected, kLocked, std::memory_order_acquire,
                                                   std::memory_order_relaxed);
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_post_lock(this, ok ? __tsan_mutex_try_lock : __tsan_mutex_try_lock_failed, 0);
#endif
    return ok;
  }

  void Unlock() ABSL_UNLOCK_FUNCTION() {
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_pre_unlock(this, 0);
#endif
    if (state_.exchange(kUnlocked, std::memory_order_release) == kContended) Wake();
#ifdef PAGEPOOL_TSAN
    __tsan_mutex_post_unlock(this, 0);
#endif
  }

  // Tells -Wthread-safety that the caller holds the lock (for callbacks run under it).
  void AssertHeld() const ABSL_ASSERT_EXCLUSIVE_LOCK() {}

 private:
  static constexpr uint32_t kUnlocked = 0;
  static constexpr uint32_t kLocked = 1;
  static constexpr uint32_t kContended = 2;

  // Out of line and cold: keeps Lock() at one CAS and a branch in its callers.
  [[gnu::noinline, gnu::cold]] void LockSlow();
  [[gnu::noinline, gnu::cold]] void Wake();

  std::atomic<uint32_t> state_{kUnlocked};
};

// RAII lock: `MutexLock l(&mu_);`.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace pagepool::base

#endif  // PAGEPOOL_BASE_MUTEX_H_
