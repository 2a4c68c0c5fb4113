// File: pool/internal/spinlock.h
//
// A small test-and-test-and-set spinlock (the kernel's spin_lock for the ptr_ring producer side and
// the buddy allocator), annotated for clang's -Wthread-safety. It yields the CPU after a short spin:
// the machines this runs on have few cores shared by many threads.
//
// Thread safety: any thread. Not recursive.
#ifndef PAGEPOOL_POOL_INTERNAL_SPINLOCK_H_
#define PAGEPOOL_POOL_INTERNAL_SPINLOCK_H_

#include <sched.h>

#include <atomic>

#include "absl/base/thread_annotations.h"

namespace pagepool::pool::internal {

class ABSL_LOCKABLE SpinLock {
 public:
  SpinLock() = default;
  SpinLock(const SpinLock&) = delete;
  SpinLock& operator=(const SpinLock&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() {
    if (!locked_.exchange(true, std::memory_order_acquire)) return;
    LockSlow();
  }
  bool TryLock() ABSL_EXCLUSIVE_TRYLOCK_FUNCTION(true) {
    return !locked_.load(std::memory_order_relaxed) &&
           !locked_.exchange(true, std::memory_order_acquire);
  }
  void Unlock() ABSL_UNLOCK_FUNCTION() { locked_.store(false, std::memory_order_release); }

 private:
  // Out of line and cold: keeps Lock() at one xchg and a branch in its callers (fewer registers
  // saved on their fast paths).
  [[gnu::noinline, gnu::cold]] void LockSlow() {
    for (unsigned spins = 0;; ++spins) {
      while (locked_.load(std::memory_order_relaxed)) {
        if (++spins > 64) {
          sched_yield();
          spins = 0;
        } else {
#if defined(__x86_64__)
          __builtin_ia32_pause();
#endif
        }
      }
      if (!locked_.exchange(true, std::memory_order_acquire)) return;
    }
  }
  std::atomic<bool> locked_{false};
};

class ABSL_SCOPED_LOCKABLE SpinLockHolder {
 public:
  explicit SpinLockHolder(SpinLock* lock) ABSL_EXCLUSIVE_LOCK_FUNCTION(lock) : lock_(lock) {
    lock_->Lock();
  }
  ~SpinLockHolder() ABSL_UNLOCK_FUNCTION() { lock_->Unlock(); }
  SpinLockHolder(const SpinLockHolder&) = delete;
  SpinLockHolder& operator=(const SpinLockHolder&) = delete;

 private:
  SpinLock* const lock_;
};

}  // namespace pagepool::pool::internal

#endif  // PAGEPOOL_POOL_INTERNAL_SPINLOCK_H_
