// File: dma/internal/iova_mutex.h
//
// A std::mutex with clang thread-safety annotations, for the IOVA allocator, the mapping checker and
// the Device. Why not absl::Mutex: Debian's abseil 20220623 is built without ThreadSanitizer, so its
// Mutex (implemented in the shared library with plain atomics) carries no happens-before edges that
// TSan can see, and every field it protects is reported as a data race. std::mutex goes through
// pthread_mutex_lock, which TSan intercepts; libstdc++'s std::mutex has no capability annotations, so
// this wrapper adds them and ABSL_GUARDED_BY keeps working under clang's -Wthread-safety.
#ifndef PAGEPOOL_DMA_INTERNAL_IOVA_MUTEX_H_
#define PAGEPOOL_DMA_INTERNAL_IOVA_MUTEX_H_

#include <mutex>

#include "absl/base/thread_annotations.h"

namespace pagepool::dma::internal {

class ABSL_LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() ABSL_EXCLUSIVE_LOCK_FUNCTION() { mu_.lock(); }
  void Unlock() ABSL_UNLOCK_FUNCTION() { mu_.unlock(); }

 private:
  std::mutex mu_;
};

// RAII lock, used as `MutexLock l(&mu_);` like absl::MutexLock.
class ABSL_SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mu) ABSL_EXCLUSIVE_LOCK_FUNCTION(mu) : mu_(mu) { mu_->Lock(); }
  ~MutexLock() ABSL_UNLOCK_FUNCTION() { mu_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mu_;
};

}  // namespace pagepool::dma::internal

#endif  // PAGEPOOL_DMA_INTERNAL_IOVA_MUTEX_H_
